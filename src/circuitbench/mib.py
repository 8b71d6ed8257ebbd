"""MIB's circuit-localization metrics: CPR and CMD from a faithfulness curve over circuit sizes.

For each of MIB's ten edge fractions ``p`` the ``int(p * n_edges)`` best-scored edges are kept,
dangling edges are pruned (so a circuit can end up smaller) and the circuit's normalized
faithfulness ``f_p`` is measured. Over the linear axis of fractions, with the trapezoid rule:

- CPR (circuit performance ratio, higher is better): the area under ``f``; 0.999 at ``f = 1``;
- CMD (circuit-model distance, lower is better): the area under ``|1 - f|``.

MIB reports CPR with edges ranked by signed score and CMD with them ranked by absolute score; both
rankings are computed here, and every row says which one it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph, Ranking
from circuitbench.patching import PatchedModel, PatchingCache

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def area_metrics(fractions: Sequence[float], faithfulness: Sequence[float]) -> dict[str, float]:
    """CPR and CMD of the curve ``faithfulness`` over ``fractions`` (increasing)."""
    if len(fractions) != len(faithfulness) or len(fractions) < 2:
        raise ValueError("need one faithfulness per fraction, at least two")
    if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError(f"fractions must increase: {list(fractions)}")
    cpr = cmd = 0.0
    for i in range(len(fractions) - 1):
        width = fractions[i + 1] - fractions[i]
        f0, f1 = faithfulness[i], faithfulness[i + 1]
        cpr += width * (f0 + f1) / 2
        cmd += width * (abs(1 - f0) + abs(1 - f1)) / 2
    return {"cpr": cpr, "cmd": cmd}


def faithfulness_curve(
    model: PatchedModel,
    cache: PatchingCache,
    scores: Graph,
    ranking: Ranking | str,
    fractions: Sequence[float] = MIB_FRACTIONS,
) -> list[dict[str, Any]]:
    """One row per fraction: the edges asked for, kept after pruning, and the circuit's
    faithfulness, KL and logit difference on the cached data."""
    total = model.shape.n_edges
    rows = []
    for fraction in fractions:
        asked = int(fraction * total)
        graph = scores.top_n(asked, ranking, prune_dangling=True)
        result = evaluate_graph(model, cache, graph)
        rows.append(
            {
                "ranking": Ranking(ranking).value,
                "fraction": fraction,
                "edges_asked": asked,
                "n_edges": graph.n_edges_in_graph,
                "faithfulness": result["faithfulness"],
                "kl": result["kl"],
                "logit_diff": result["metric"],
            }
        )
    return rows


def faithfulness_curves(
    model: PatchedModel, cache: PatchingCache, scores: Graph
) -> dict[str, list[dict[str, Any]]]:
    """The curve under each ranking (signed, absolute). Scores that are never negative (Edge
    Pruning's and HAP's soft masks) rank the same either way: their signed curve is the absolute
    one, evaluated once."""
    absolute = faithfulness_curve(model, cache, scores, Ranking.ABSOLUTE)
    if bool((scores.edge_scores[model.shape.valid] >= 0).all()):
        signed = [{**row, "ranking": Ranking.SIGNED.value} for row in absolute]
    else:
        signed = faithfulness_curve(model, cache, scores, Ranking.SIGNED)
    return {Ranking.SIGNED.value: signed, Ranking.ABSOLUTE.value: absolute}


def curve_summary(curve: list[dict[str, Any]]) -> dict[str, float]:
    """CPR, CMD, the mean faithfulness and each ``f_<fraction>`` of one curve."""
    faithfulness = [row["faithfulness"] for row in curve]
    return {
        **area_metrics([row["fraction"] for row in curve], faithfulness),
        "mean_faithfulness": sum(faithfulness) / len(faithfulness),
        **{f"f_{row['fraction']:g}": row["faithfulness"] for row in curve},
    }
