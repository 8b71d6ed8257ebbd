"""Planted ground-truth circuits: the truth table, the recovery table and the recovery figure.

- ``planted_truth``: per planted model, its structure and the verification of its true edge set
  (the truth alone reproduces the model; removing any true edge degrades it; edges outside the
  truth are inert).
- ``planted_recovery``: per planted model and method, precision, recall and IoU of edges and of
  heads against the truth, ROC-AUC of the method's scores, and the found circuit's faithfulness.
- the figure: per planted model, the overlap scores as bars (top), the edge ROC curves (middle)
  and the head ROC curves (bottom) of the methods that score edges or heads.

Methods appear in :data:`METHOD_ORDER` (head-level methods, then edge-level ones), with one colour
each across the figure; a method not listed follows, alphabetically.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pandas as pd

from circuitbench.report.common import PAPER_STYLE, save_figure, save_table

log = logging.getLogger(__name__)

TRUTH_TITLE = "Planted models: the verified ground truth"
TRUTH_CAPTION = (
    "Hand-set GPT-2-architecture models. The truth is the set of edges that carry the task's "
    "clean-vs-corrupted signal, checked with the patched forward under interchange ablation on "
    "the test split: truth_faithfulness is the normalized faithfulness of the true edges alone; "
    "min_degradation the smallest drop of faithfulness when one true edge is removed (from the "
    "truth or from the full model); other_effect (max_other_effect in the CSV) the largest "
    "change of faithfulness when edges outside the truth are removed from the full model (all of "
    "a receiver's at once, or one at a time: other_edges in the CSV)."
)
TRUTH_COLUMNS = [
    "planted",
    "structure",
    "n_layers",
    "n_heads",
    "n_edges",
    "n_true_edges",
    "true_heads",
    "accuracy",
    "full_metric",
    "truth_faithfulness",
    "min_degradation",
    "other_effect",
    "passed",
]
RECOVERY_TITLE = "Planted models: does each method recover the circuit we know?"
RECOVERY_CAPTION = (
    "Each method's circuit against the verified truth. Edges: the found circuit's edges after "
    "pruning dangling ones (a head-level method's circuit is node-induced: every edge among its "
    "heads, the MLPs, the input and the logits), against the true edges, over all edges; "
    "precision is blank for an empty circuit. Heads: Graph.heads() of each. Circuit size: "
    "path_patching, APP, FLAP, C-FLAP and ACDC (its threshold tau) choose their own; EAP and "
    "EAP-IG are cut to the top-n "
    "edges whose count after dangling pruning is closest to circuit_edges (the number of true "
    "edges); Edge Pruning trains toward that sparsity and lands where its threshold search "
    "lands; HAP trains toward it inside its top-k EAP subgraph and is cut to circuit_edges. "
    "AUC: ROC-AUC of the scores as the method ranks them (|score| unless ranking is signed; ties "
    "count 1/2). Edges: over the edges the method scores (edge_score_universe): path patching's "
    "measured head paths, EAP / EAP-IG attributions over all edges, Edge Pruning / HAP "
    "deterministic soft masks over all edges (mostly 0 or 1, so close to the circuit's own "
    "TPR/FPR), ACDC's rise of its criterion when each edge was tested (untested edges 0); "
    "heads: over all heads (EAP / EAP-IG: a head's best outgoing edge score; EP / HAP: "
    "its node mask). Blank where the method has no such scores or the universe holds no true "
    "item. faithfulness: the found circuit's normalized faithfulness, interchange ablation, test "
    "split."
)
RECOVERY_COLUMNS = [
    "planted",
    "method",
    "edges_found",
    "edges_true",
    "circuit_edges",
    "edges_precision",
    "edges_recall",
    "edges_iou",
    "heads_found",
    "heads_true",
    "heads_precision",
    "heads_recall",
    "heads_iou",
    "edge_auc",
    "head_auc",
    "circuit_faithfulness",
]
# Head-level methods first (path patching and APP, then their pruning stages), then edge-level.
METHOD_ORDER = [
    "path_patching",
    "app",
    "flap",
    "cflap",
    "eap",
    "eap_ig",
    "edge_pruning",
    "hap",
    "acdc",
]
# Edge-level methods' ROC curves are dashed, so that curves on top of each other stay visible.
EDGE_LEVEL = {"eap", "eap_ig", "edge_pruning", "hap", "acdc"}
EDGE_LEVEL_STYLE = "--"
BARS = [
    ("edges_precision", "edge P"),
    ("edges_recall", "edge R"),
    ("edges_iou", "edge IoU"),
    ("heads_precision", "head P"),
    ("heads_recall", "head R"),
    ("heads_iou", "head IoU"),
]


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: :data:`METHOD_ORDER`, then unknown methods alphabetically."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def read_rows(paths: list[Path]) -> pd.DataFrame:
    # Head lists ("a0.h1 a1.h2") and names stay text.
    text = {"true_heads": str, "found_heads": str, "planted": str, "method": str}
    return pd.concat([pd.read_csv(path, dtype=text) for path in paths], ignore_index=True)


def recovery_figure(recovery: pd.DataFrame, curves: dict[tuple[str, str], dict]):
    """Per planted model (columns): overlap bars (one colour per method), then the edge ROC curves
    and the head ROC curves of the methods that have such scores (edge-level methods dashed),
    each labelled with its AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planted = list(dict.fromkeys(recovery["planted"]))
    methods = sorted(dict.fromkeys(recovery["method"]), key=method_rank)
    colours = plt.get_cmap("tab10")
    colour = {method: colours(i % 10) for i, method in enumerate(methods)}
    levels = (("edges", "edge_auc", "edge ROC"), ("heads", "head_auc", "head ROC"))
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            3, len(planted), figsize=(3.4 * len(planted), 8.4), squeeze=False
        )
        width = 0.8 / max(len(methods), 1)
        for column, name in enumerate(planted):
            top = axes[0, column]
            rows = recovery[recovery["planted"] == name].set_index("method")
            for i, method in enumerate(methods):
                if method not in rows.index:
                    continue
                values = [float(rows.loc[method, key]) for key, _ in BARS]
                positions = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(BARS))]
                top.bar(positions, values, width, color=colour[method], label=method)
                # A zero has no bar: mark it on the axis so it reads as 0, not as missing.
                zeros = [x for x, v in zip(positions, values, strict=True) if v == 0]
                top.scatter(
                    zeros, [0.0] * len(zeros), marker="x", s=14, color=colour[method], zorder=4
                )
            top.set_xticks(range(len(BARS)), [label for _, label in BARS], rotation=45, ha="right")
            top.set_ylim(-0.04, 1.05)
            structure = textwrap.fill(str(rows["structure"].iloc[0]), 34)
            top.set_title(f"{name}\n{structure}", fontsize=8)
            for row, (kind, auc_key, label) in enumerate(levels, start=1):
                axis = axes[row, column]
                for method in methods:
                    curve = curves.get((name, method), {}).get(kind)
                    if curve and method in rows.index:
                        auc = float(rows.loc[method, auc_key])
                        axis.plot(
                            curve["fpr"],
                            curve["tpr"],
                            EDGE_LEVEL_STYLE if method in EDGE_LEVEL else "-",
                            color=colour[method],
                            linewidth=1.3,
                            alpha=0.85,
                            label=f"{method} {auc:.2f}",
                        )
                axis.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
                axis.set_xlim(-0.02, 1.02)
                axis.set_ylim(-0.02, 1.02)
                axis.set_title(label, fontsize=8)
                if row == len(levels):
                    axis.set_xlabel("false positive rate")
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(loc="lower right", title="AUC", fontsize=6, title_fontsize=6)
                else:
                    axis.text(0.5, 0.5, "no scores", ha="center", va="center", color="grey")
        axes[0, 0].set_ylabel("score vs. truth")
        for row in (1, 2):
            axes[row, 0].set_ylabel("true positive rate")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.suptitle(
            "Recovery of planted ground-truth circuits (× on the axis: a score of 0)", fontsize=10
        )
        figure.tight_layout(rect=(0, 0.05, 1, 1))
        if handles:
            figure.legend(
                handles, labels, loc="lower center", ncol=min(len(handles), 4), frameon=False
            )
    return figure


def write_report(
    builds: list[Path], runs: list[Path], table: Path, truth_table: Path, figure_stem: Path
) -> None:
    """The truth table from ``<build>/truth.csv``, the recovery table from
    ``<run>/recovery.csv``, and the figure (with ``<run>/roc.json``)."""
    truth = read_rows([Path(b) / "truth.csv" for b in builds]).sort_values("planted")
    truth["other_effect"] = [f"{v:.1e}" for v in truth["max_other_effect"]]
    save_table(truth, truth_table, TRUTH_TITLE, TRUTH_CAPTION, TRUTH_COLUMNS)
    recovery = read_rows([Path(r) / "recovery.csv" for r in runs])
    if "circuit_edges" not in recovery:  # rows of a stage without sized methods
        recovery["circuit_edges"] = float("nan")
    # The size a method was cut to or trained toward: an edge count, blank for the others.
    recovery["circuit_edges"] = [str(int(v)) if v == v else "" for v in recovery["circuit_edges"]]
    recovery["_order"] = [method_rank(m) for m in recovery["method"]]
    recovery = recovery.sort_values(["planted", "_order"], kind="stable")
    recovery = recovery.drop(columns="_order").reset_index(drop=True)
    save_table(recovery, table, RECOVERY_TITLE, RECOVERY_CAPTION, RECOVERY_COLUMNS)
    curves = {}
    for run in runs:
        payload = json.loads((Path(run) / "roc.json").read_text(encoding="utf-8"))
        curves[(payload["planted"], payload["method"])] = payload["curves"]
    save_figure(recovery_figure(recovery, curves), figure_stem)
    log.info(
        "planted report: %d models, %d method runs -> %s, %s, %s",
        len(truth),
        len(recovery),
        table,
        truth_table,
        figure_stem,
    )
