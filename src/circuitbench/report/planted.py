"""Planted ground-truth circuits: the truth table, the recovery table and the recovery figure.

- ``planted_truth``: per planted model, its structure and the verification of its true edge set
  (the truth alone reproduces the model; removing any true edge degrades it; edges outside the
  truth are inert).
- ``planted_recovery``: per planted model and method, precision, recall and IoU of edges and of
  heads against the truth, ROC-AUC of the method's scores, and the found circuit's faithfulness.
- the figure: per planted model, the overlap scores as bars (top) and the ROC curves of the
  score-based methods (bottom).
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
    "precision is blank for an empty circuit. Heads: Graph.heads() of each. AUC: ROC-AUC of "
    "|score| (edges: over the edges the method scores, edge_score_universe; heads: over all "
    "heads); blank where the method has no such scores or the universe holds no true item. "
    "faithfulness: the found circuit's normalized faithfulness, interchange ablation, test split."
)
RECOVERY_COLUMNS = [
    "planted",
    "method",
    "edges_found",
    "edges_true",
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
BARS = [
    ("edges_precision", "edge P"),
    ("edges_recall", "edge R"),
    ("edges_iou", "edge IoU"),
    ("heads_precision", "head P"),
    ("heads_recall", "head R"),
    ("heads_iou", "head IoU"),
]


def read_rows(paths: list[Path]) -> pd.DataFrame:
    # Head lists ("a0.h1 a1.h2") and names stay text.
    text = {"true_heads": str, "found_heads": str, "planted": str, "method": str}
    return pd.concat([pd.read_csv(path, dtype=text) for path in paths], ignore_index=True)


def recovery_figure(recovery: pd.DataFrame, curves: dict[tuple[str, str], dict]):
    """Top row: overlap bars per planted model (one colour per method). Bottom row: ROC curves
    (heads solid, edges dashed) of the methods that have scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planted = list(dict.fromkeys(recovery["planted"]))
    methods = list(dict.fromkeys(recovery["method"]))
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            2, len(planted), figsize=(3.2 * len(planted), 5.6), squeeze=False
        )
        width = 0.8 / max(len(methods), 1)
        colours = plt.get_cmap("tab10")
        for column, name in enumerate(planted):
            top, bottom = axes[0, column], axes[1, column]
            rows = recovery[recovery["planted"] == name].set_index("method")
            for i, method in enumerate(methods):
                if method not in rows.index:
                    continue
                values = [float(rows.loc[method, key]) for key, _ in BARS]
                positions = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(BARS))]
                top.bar(positions, values, width, color=colours(i), label=method)
                for kind, style in (("heads", "-"), ("edges", "--")):
                    curve = curves.get((name, method), {}).get(kind)
                    if curve:
                        auc = rows.loc[method, "head_auc" if kind == "heads" else "edge_auc"]
                        bottom.plot(
                            curve["fpr"],
                            curve["tpr"],
                            style,
                            color=colours(i),
                            drawstyle="default",
                            label=f"{method} {kind} (AUC {auc:.2f})",
                        )
            top.set_xticks(range(len(BARS)), [label for _, label in BARS], rotation=45, ha="right")
            top.set_ylim(0, 1.05)
            structure = textwrap.fill(str(rows["structure"].iloc[0]), 34)
            top.set_title(f"{name}\n{structure}", fontsize=8)
            bottom.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
            bottom.set_xlim(-0.02, 1.02)
            bottom.set_ylim(-0.02, 1.02)
            bottom.set_xlabel("false positive rate")
            if bottom.get_legend_handles_labels()[0]:
                bottom.legend(loc="lower right")
            else:
                bottom.text(0.5, 0.5, "no scores", ha="center", va="center", color="grey")
        axes[0, 0].set_ylabel("score vs. truth")
        axes[1, 0].set_ylabel("true positive rate")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.suptitle("Recovery of planted ground-truth circuits", fontsize=10)
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        if handles:
            figure.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
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
    recovery = recovery.sort_values(["planted", "method"], kind="stable").reset_index(drop=True)
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
