"""How well a found circuit recovers a known one (``docs/metrics.md``).

- :func:`overlap`: true/false positives and negatives of a found set against the truth over a
  universe; precision ``|C ∩ G| / |C|``, recall (TPR) ``|C ∩ G| / |G|``, IoU
  ``|C ∩ G| / |C ∪ G|`` and the true FPR ``|C \\ G| / (N - |G|)``. A ratio with a zero
  denominator is NaN (e.g. the precision of an empty circuit).
- :func:`roc_points` / :func:`roc_auc`: sweep a threshold over the distinct scores (an item is
  positive when its score is >= the threshold, so tied items enter together), add (0, 0) and
  (1, 1), integrate with the trapezoid rule. This equals ``P(s+ > s-) + P(s+ = s-) / 2``.
- :func:`recovery`: one row for a found :class:`~circuitbench.graph.Graph` against a truth graph:
  edges (dangling edges pruned, as the effective circuit) and heads (``Graph.heads()``), and the
  ROC-AUC of ``|score|`` where the method has scores.

Where scores exist is a method's statement, carried in the graph's ``meta``:
``edge_score_universe`` names the edges its edge scores cover (``all``, or ``head_paths``: head
writers into head q/k/v inputs and the logits, what path patching measures); without it the
edge scores are a binary circuit and get no AUC. Head scores are the graph's ``node_scores`` of
the heads; a head without a score (NaN) ranks last (score 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from circuitbench.graph import QKV, Graph, GraphShape

EDGE_UNIVERSES = ("all", "head_paths")


@dataclass(frozen=True)
class Overlap:
    """Counts of a found set against the truth, within a universe of ``tp + fp + fn + tn``."""

    tp: int
    fp: int
    fn: int
    tn: int

    @staticmethod
    def _ratio(numerator: int, denominator: int) -> float:
        return numerator / denominator if denominator else math.nan

    @property
    def precision(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def iou(self) -> float:
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def fpr(self) -> float:
        return self._ratio(self.fp, self.fp + self.tn)

    def as_dict(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}found": self.tp + self.fp,
            f"{prefix}true": self.tp + self.fn,
            f"{prefix}tp": self.tp,
            f"{prefix}fp": self.fp,
            f"{prefix}fn": self.fn,
            f"{prefix}precision": self.precision,
            f"{prefix}recall": self.recall,
            f"{prefix}iou": self.iou,
            f"{prefix}fpr": self.fpr,
        }


def overlap(
    found: torch.Tensor, truth: torch.Tensor, universe: torch.Tensor | None = None
) -> Overlap:
    """``found`` and ``truth``: bool tensors of one shape; ``universe`` (same shape, default all)
    restricts the items counted. A found or true item outside the universe is an error."""
    if found.shape != truth.shape:
        raise ValueError(f"found {tuple(found.shape)} and truth {tuple(truth.shape)} differ")
    found, truth = found.bool(), truth.bool()
    universe = torch.ones_like(found) if universe is None else universe.bool()
    if (found & ~universe).any() or (truth & ~universe).any():
        raise ValueError("found or true items lie outside the universe")
    return Overlap(
        tp=int((found & truth).sum()),
        fp=int((found & ~truth & universe).sum()),
        fn=int((~found & truth).sum()),
        tn=int((~found & ~truth & universe).sum()),
    )


def roc_points(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """``(fpr, tpr)`` lists, from (0, 0) to (1, 1), one point per distinct score (descending).
    ``scores`` and ``labels`` are 1-D; NaN scores are errors (choose a rank for them first)."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    if scores.shape != labels.shape:
        raise ValueError("scores and labels must have the same number of items")
    if scores.isnan().any():
        raise ValueError("NaN scores: give unscored items a score before the ROC")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an ROC needs positives and negatives (got {n_pos} and {n_neg})")
    fpr, tpr = [0.0], [0.0]
    for threshold in torch.unique(scores).flip(0):
        chosen = scores >= threshold
        tpr.append(int((chosen & labels).sum()) / n_pos)
        fpr.append(int((chosen & ~labels).sum()) / n_neg)
    if (fpr[-1], tpr[-1]) != (1.0, 1.0):
        fpr.append(1.0)
        tpr.append(1.0)
    return fpr, tpr


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Trapezoid area under :func:`roc_points`; NaN when there are no positives or negatives."""
    labels = labels.bool().flatten()
    if not labels.any() or labels.all():
        return math.nan
    fpr, tpr = roc_points(scores, labels)
    return sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))


def edge_universe(shape: GraphShape, name: str) -> torch.Tensor:
    """``[n_writers, n_receivers]`` bool: the edges of universe ``name`` (see module doc)."""
    if name == "all":
        return shape.valid.clone()
    if name == "head_paths":
        is_head = torch.zeros(shape.n_writers, dtype=torch.bool)
        head_port = torch.zeros(shape.n_receivers, dtype=torch.bool)
        for layer in range(shape.n_layers):
            for head in range(shape.n_heads):
                is_head[shape.head_writer(layer, head)] = True
                for which in QKV:
                    head_port[shape.qkv_receiver(layer, head, which)] = True
        head_port[shape.logits_receiver] = True
        return shape.valid & is_head[:, None] & head_port[None, :]
    raise ValueError(f"edge universe must be one of {EDGE_UNIVERSES}, got {name!r}")


def head_matrix(shape: GraphShape, heads: dict[int, list[int]]) -> torch.Tensor:
    """``[n_layers, n_heads]`` bool of a head view ``{layer: [heads]}``."""
    out = torch.zeros(shape.n_layers, shape.n_heads, dtype=torch.bool)
    for layer, layer_heads in heads.items():
        out[int(layer), layer_heads] = True
    return out


def head_scores(graph: Graph) -> torch.Tensor:
    """``[n_layers, n_heads]`` node scores of the heads (NaN where a head has none)."""
    shape = graph.shape
    index = [
        shape.head_writer(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)
    ]
    return graph.node_scores[index].view(shape.n_layers, shape.n_heads)


def ranked(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """What a method ranks by: ``|score|`` (default), or the score itself when the method keeps
    its highest signed scores (``meta["score_ranking"] == "signed"``, e.g. FLAP). NaN ranks
    last."""
    if graph.meta.get("score_ranking", "absolute") == "signed":
        return scores.nan_to_num(float(scores.nan_to_num(0.0).min()) - 1.0)
    return scores.abs().nan_to_num(0.0)


def recovery(found: Graph, truth: Graph) -> dict[str, Any]:
    """Edge and head overlap of ``found`` with ``truth``, and ROC-AUC of the scores as the method
    ranks them (:func:`ranked`) where ``found`` has scores (module doc). One flat row."""
    shape = truth.shape
    found.check_shape(shape.n_layers, shape.n_heads)
    valid = shape.valid
    true_edges = truth.edge_in_graph & valid
    found_edges = found.prune_dangling().edge_in_graph & valid
    row: dict[str, Any] = overlap(found_edges, true_edges, valid).as_dict("edges_")
    true_heads = head_matrix(shape, truth.heads())
    found_heads = head_matrix(shape, found.heads())
    row.update(overlap(found_heads, true_heads).as_dict("heads_"))
    universe_name = found.meta.get("edge_score_universe")
    row["edge_score_universe"] = universe_name or ""
    row["edge_auc"] = math.nan
    row["edge_auc_positives"] = 0
    if universe_name:
        universe = edge_universe(shape, universe_name)
        labels = true_edges[universe]
        row["edge_auc_positives"] = int(labels.sum())
        row["edge_auc"] = roc_auc(ranked(found, found.edge_scores[universe]), labels)
    scores = head_scores(found)
    row["head_auc"] = (
        math.nan if scores.isnan().all() else roc_auc(ranked(found, scores), true_heads)
    )
    return row


def roc_curves(found: Graph, truth: Graph) -> dict[str, dict[str, list[float]]]:
    """The ROC points behind :func:`recovery`'s AUCs (``{"edges"|"heads": {"fpr", "tpr"}}``),
    for figures; a level without scores or without positives is left out."""
    shape = truth.shape
    out: dict[str, dict[str, list[float]]] = {}
    universe_name = found.meta.get("edge_score_universe")
    if universe_name:
        universe = edge_universe(shape, universe_name)
        labels = (truth.edge_in_graph & shape.valid)[universe]
        if labels.any() and not labels.all():
            fpr, tpr = roc_points(ranked(found, found.edge_scores[universe]), labels)
            out["edges"] = {"fpr": fpr, "tpr": tpr}
    scores = head_scores(found)
    labels = head_matrix(shape, truth.heads())
    if not scores.isnan().all() and labels.any() and not labels.all():
        fpr, tpr = roc_points(ranked(found, scores), labels)
        out["heads"] = {"fpr": fpr, "tpr": tpr}
    return out
