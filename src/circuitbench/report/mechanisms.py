"""The mechanism tables and figure, from the ``mechanisms`` step's CSV files.

- ``mechanisms``: per model x task, accuracy on the test split and on each shortcut probe, the
  logit difference lost by mean-ablating each layer and every layer >= 1 (and, for the edge
  groups, the heads' edges into MLPs and into the logits), and the dense path-patching
  circuit's layers, heads selected through q/k/v, classes and compositions;
- ``mechanism_heads``: per model x head, the head scores, copy scores and IOI classes;
- ``figures/mechanisms_<model>``: the head-score maps, the layer ablations and the probes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from circuitbench.io import atomic_write_text
from circuitbench.report.common import PAPER_STYLE, save_figure, save_table

TASK_LABELS = {
    "ioi": "IOI",
    "greater_than": "Greater-Than",
    "gendered_pronouns": "Gendered Pronouns",
    "induction": "Induction",
    "docstring": "Docstring",
}
SCORE_LABELS = {
    "previous_token": "previous-token",
    "induction": "induction",
    "duplicate_token": "duplicate-token",
}


def _read(runs: list[Path], name: str) -> pd.DataFrame:
    frames = [pd.read_csv(Path(run) / name, dtype={"head": str}) for run in runs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def mechanism_table(
    probes: pd.DataFrame, ablations: pd.DataFrame, circuits: pd.DataFrame
) -> pd.DataFrame:
    rows = []
    for (model, task), group in probes.groupby(["model", "task"], sort=False):
        by_probe = group.set_index("probe")
        row: dict = {"model": model, "task": task, "accuracy": by_probe.loc["test", "accuracy"]}
        for probe, values in by_probe.iterrows():
            if probe == "test":
                continue
            row[f"probe:{probe}"] = values["accuracy"]
            if probe == "absent_query":
                row["probe:absent_query_context_surname"] = values["distractor_rate"]
        cost = ablations[(ablations.model == model) & (ablations.task == task)]
        for _, c in cost.iterrows():
            row[f"cost:{c.ablated}"] = c.cost
        hit = (
            circuits[(circuits.model == model) & (circuits.task == task)] if len(circuits) else None
        )
        if hit is not None and len(hit):
            c = hit.iloc[0]
            row.update(
                {
                    "pp_heads": c.pp_heads if isinstance(c.pp_heads, str) else "",
                    "pp_layer_span": c.pp_layer_span,
                    "pp_n_via_qkv": c.pp_n_via_qkv,
                    "pp_via_qkv": c.pp_via_qkv if isinstance(c.pp_via_qkv, str) else "",
                    "pp_n_classes": c.pp_n_classes,
                    "pp_classes": c.pp_classes,
                    "pp_selects_composition": bool(c.pp_selects_composition),
                    "compositions": c.compositions,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(value) -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{100 * value:.0f}%")
    )


def markdown_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a reviewer reads it: one text cell per group of columns."""
    view = []
    for _, row in table.iterrows():
        probes = " · ".join(
            f"{key.removeprefix('probe:')} {row[key]:.2f}"
            for key in table.columns
            if key.startswith("probe:") and not pd.isna(row[key])
        )
        layers = " · ".join(
            f"{key.removeprefix('cost:layer ')}: {_pct(row[key])}"
            for key in table.columns
            if key.startswith("cost:layer ") and key != "cost:layers >= 1" and not pd.isna(row[key])
        )
        classes = ""
        if isinstance(row.get("pp_classes"), str):
            counts: dict[str, int] = {}
            for cs in json.loads(row["pp_classes"]).values():
                for c in cs or ["unclassified"]:
                    counts[c] = counts.get(c, 0) + 1
            classes = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
        view.append(
            {
                "model": row["model"],
                "task": row["task"],
                "accuracy": row["accuracy"],
                "probes (accuracy)": probes,
                "cost, layers >= 1": _pct(row.get("cost:layers >= 1")),
                "cost per layer": layers,
                "heads -> MLPs / -> logits": f"{_pct(row.get('cost:heads -> MLPs'))} / "
                f"{_pct(row.get('cost:heads -> logits'))}",
                "PP heads (layer span)": f"{row.get('pp_heads', '')}"
                f" ({row.get('pp_layer_span', '')})",
                "PP via q/k/v": row.get("pp_via_qkv", ""),
                "PP head classes": classes,
            }
        )
    return pd.DataFrame(view)


CAPTION = (
    "Test split and shortcut probes (docs/tasks.md): accuracy = the full-vocabulary argmax is a "
    "correct answer; for absent_query, a surname not in the context (the CSV also gives how often "
    "a context surname wins). Cost: the share of the test split's logit difference lost when "
    "every writer of a layer, or of every layer >= 1, is mean-ablated (means per template), and "
    "when the heads' edges into MLPs or their direct edges into the logits are. PP: the dense "
    "path-patching circuit, the heads it selected through another head's q, k or v, and its "
    "heads' IOI classes (docs/mechanisms.md)."
)


def head_scores_figure(heads: pd.DataFrame, table: pd.DataFrame, model: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = heads[heads.model == model]
    n_layers = int(mine.layer.max()) + 1
    n_heads = len(mine) // n_layers
    rows = table[table.model == model]
    with plt.rc_context(PAPER_STYLE):
        figure = plt.figure(figsize=(11, 6.4))
        grid = figure.add_gridspec(2, 3, height_ratios=[1, 1.15], hspace=0.45, wspace=0.3)
        for i, (key, label) in enumerate(SCORE_LABELS.items()):
            axis = figure.add_subplot(grid[0, i])
            values = mine[key].to_numpy().reshape(n_layers, n_heads)
            image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            axis.set_title(f"({'abc'[i]}) {label} score")
            axis.set_xlabel("head")
            axis.set_ylabel("layer")
            axis.set_xticks(range(n_heads))
            axis.set_yticks(range(n_layers))
            for layer in range(n_layers):
                for head in range(n_heads):
                    if values[layer, head] >= 0.5:
                        axis.text(head, layer, f"{values[layer, head]:.2f}", ha="center",
                                  va="center", fontsize=6, color="black")  # fmt: skip
        figure.colorbar(image, ax=[figure.axes[0], figure.axes[1], figure.axes[2]], shrink=0.8)
        axis = figure.add_subplot(grid[1, :2])
        tasks = list(rows.task)
        layer_keys = [f"cost:layer {layer}" for layer in range(n_layers)] + ["cost:layers >= 1"]
        width = 0.8 / len(layer_keys)
        for j, key in enumerate(layer_keys):
            values = [100 * float(rows.iloc[t].get(key, float("nan"))) for t in range(len(tasks))]
            label = key.removeprefix("cost:").replace("layers >= 1", "layers ≥ 1")
            axis.bar([t + (j - len(layer_keys) / 2 + 0.5) * width for t in range(len(tasks))],
                     values, width, label=label)  # fmt: skip
        axis.axhline(50, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xticks(range(len(tasks)))
        axis.set_xticklabels([TASK_LABELS.get(t, t) for t in tasks])
        axis.set_ylabel("logit difference lost (%)")
        axis.set_title("(d) mean-ablating a layer, or every layer ≥ 1 (dashed: 50%)")
        axis.legend(ncol=3, frameon=False, loc="upper left")
        axis = figure.add_subplot(grid[1, 2])
        probe_cols = [c for c in rows.columns if c.startswith("probe:") and "context" not in c]
        labels, values, colors = [], [], []
        for t, task in enumerate(tasks):
            labels.append(f"{TASK_LABELS.get(task, task)}: test")
            values.append(float(rows.iloc[t]["accuracy"]))
            colors.append("#1f77b4")
            for col in probe_cols:
                value = rows.iloc[t].get(col)
                if value is not None and not pd.isna(value):
                    labels.append(f"  {col.removeprefix('probe:')}")
                    values.append(float(value))
                    colors.append("#ff7f0e")
        axis.barh(range(len(values)), values, color=colors)
        axis.axvline(0.9, color="grey", linewidth=0.8, linestyle="--")
        axis.set_yticks(range(len(values)))
        axis.set_yticklabels(labels, fontsize=6)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.set_xlabel("accuracy")
        axis.set_title("(e) test split and probes (dashed: 0.9)")
        figure.suptitle(f"{model}: what the model does inside", y=0.99)
    return figure


def write_report(runs: list[Path], tables: Path, figures: Path) -> None:
    probes = _read(runs, "probes.csv")
    ablations = _read(runs, "ablations.csv")
    circuits = _read(runs, "circuits.csv")
    heads = _read(runs, "heads.csv")
    table = mechanism_table(probes, ablations, circuits)
    view = markdown_view(table)
    stem = Path(tables) / "mechanisms"
    # The Markdown and LaTeX carry the reviewer's view (one text cell per group of columns);
    # the CSV keeps every column.
    save_table(view, stem, "Mechanisms: shortcut probes, layer ablations, circuits", CAPTION)
    atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    head_columns = [c for c in heads.columns if c not in ("layer",)]
    save_table(
        heads[head_columns],
        Path(tables) / "mechanism_heads",
        "Heads: attention scores, copy scores and IOI classes",
        "Scores on a repeated random block (previous-token, induction, duplicate-token), copy "
        "scores of the OV circuit on names, mean attention between IOI's named positions, and "
        "the IOI classes they give (docs/mechanisms.md).",
    )
    gates = gate_rows(table)
    save_table(
        gates,
        Path(tables) / "mechanism_gates",
        "Mechanism gates of the default suite",
        "What the default toy suite must show (docs/mechanisms.md): each gate, the measured value "
        "from the mechanisms table, and whether it holds.",
    )
    for model in table.model.unique():
        save_figure(head_scores_figure(heads, table, model), Path(figures) / f"mechanisms_{model}")


# -- the default suite's gates -------------------------------------------------------------------

# (task, what is measured, the column, the bound, "min" | "max"). Every row of the default suite's
# mechanism table must meet them (docs/mechanisms.md); CI fails otherwise.
GATES = (
    ("*", "test accuracy", "accuracy", 0.9, "min"),
    ("*", "accuracy with positions shifted", "probe:position_shifted", 0.9, "min"),
    ("ioi", "accuracy with IO named twice", "probe:io_twice", 0.9, "min"),
    ("induction", "accuracy with two names in context", "probe:two_names", 0.9, "min"),
    (
        "induction",
        "absent query: a context surname wins",
        "probe:absent_query_context_surname",
        0.1,
        "max",
    ),
    *(
        (task, "logit difference lost, layers >= 1 mean-ablated", "cost:layers >= 1", 0.5, "min")
        for task in ("ioi", "induction", "greater_than", "docstring")
    ),
    (
        "induction",
        "PP selects previous-token -> induction through k",
        "pp_selects_composition",
        1,
        "min",
    ),
    ("ioi", "PP circuit: layers spanned", "pp_layer_span", 3, "min"),
    ("ioi", "PP circuit: IOI classes among its heads", "pp_n_classes", 3, "min"),
    ("ioi", "PP circuit: heads selected through q/k/v", "pp_n_via_qkv", 1, "min"),
    (
        "greater_than",
        "logit difference lost, heads -> MLP edges ablated",
        "cost:heads -> MLPs",
        0.5,
        "min",
    ),
)


def gate_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Each gate on each model: the measured value and whether it holds. A missing value fails."""
    rows = []
    for model in table.model.unique():
        mine = table[table.model == model]
        for task, what, column, bound, kind in GATES:
            tasks = list(mine.task) if task == "*" else [task]
            for name in tasks:
                hit = mine[mine.task == name]
                value = hit.iloc[0].get(column) if len(hit) else None
                value = float(value) if value is not None and not pd.isna(value) else float("nan")
                ok = value >= bound if kind == "min" else value <= bound
                rows.append(
                    {
                        "model": model,
                        "task": name,
                        "gate": what,
                        "column": column,
                        "bound": f"{'≥' if kind == 'min' else '≤'} {bound:g}",
                        "value": value,
                        "passed": bool(ok),
                    }
                )
    return pd.DataFrame(rows)
