"""APP's outputs, paper vs ours (``docs/results.md``).

- ``app_table2_<model>``: rows PP / FLAP / C-FLAP / Merged / APP (ours, test split) and the paper's
  rows of the matching paper model; columns the five tasks; each of our cells is
  ``Perf. % / Size (Sparsity) / TPR / Precision / IoU`` against our dense PP circuit.
  ``app_table2_<model>_long.csv``: the same numbers one row per model x task x method, with
  provenance.
- ``app_speedup``: per model x task, the grid-summed FLOPs (APP's accounting) and wall seconds of
  dense PP and APP, with and without the FLAP/C-FLAP stage, the ratios, forward passes, and the
  search-space reduction ``1 - |Merged| / N_heads``; the paper's GPT-2 small ratios beside ours.
- figures ``app_speedup_<model>`` (FLOPs, wall seconds, search-space reduction per task) and
  ``app_sweep_<model>`` (performance vs head sparsity for FLAP and C-FLAP, cliffs marked).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuitbench.io import atomic_write_text
from circuitbench.metrics import overlap, speedup
from circuitbench.report import paper
from circuitbench.report.common import PAPER_STYLE, save_figure, save_table

log = logging.getLogger(__name__)

TASK_ORDER = ["ioi", "greater_than", "gendered_pronouns", "induction", "docstring"]
SHORT_LABELS = {
    "ioi": "IOI",
    "greater_than": "GT",
    "gendered_pronouns": "GP",
    "induction": "Induction",
    "docstring": "Docstring",
}
TASK_LABELS = {
    "ioi": "IOI",
    "greater_than": "GreaterThan",
    "gendered_pronouns": "GenderedPronouns",
    "induction": "Induction",
    "docstring": "Docstring",
}
METHOD_ORDER = ["pp", "flap", "cflap", "merged", "app"]
METHOD_LABELS = {
    "pp": "Path Patching",
    "flap": "FLAP",
    "cflap": "C-FLAP",
    "merged": "Merged",
    "app": "APP",
}
DEFAULT_PAPER_MODEL = "GPT-2 small"
TEXT_COLUMNS = {"heads": str, "roles": str, "config": str, "search_space": str, "cliff_rules": str}


def parse_heads(text: object) -> list[tuple[int, int]]:
    """``"0.1 2.3"`` -> ``[(0, 1), (2, 3)]`` (empty or NaN -> ``[]``)."""
    if not isinstance(text, str) or not text.strip():
        return []
    pairs = [name.split(".") for name in text.split()]
    return [(int(layer), int(head)) for layer, head in pairs]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=TEXT_COLUMNS)


def _scoring_seconds(directory: Path) -> float:
    """Seconds the path-patching scorer spent on measurements (the search itself; the grid's
    wall time also holds the caches and the evaluation of all 16 circuits)."""
    grid = json.loads((directory / "grid.json").read_text(encoding="utf-8"))
    return float(grid["scorer_cost"]["wall_seconds"])


def collect(runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Our circuits (one row per model x task x method, overlap with PP included), the speed-up rows
    (one per model x task) and the sweep points, from ``results/<model>/<task>`` directories."""
    circuits, costs, sweeps = [], [], []
    for run in runs:
        pp_row = _read(run / "pp" / "summary.csv").iloc[0].to_dict()
        pruning = _read(run / "pruning" / "summary.csv")
        app_row = _read(run / "app" / "summary.csv").iloc[0].to_dict()
        sweeps.append(_read(run / "pruning" / "sweep.csv"))
        n_heads = int(pruning["n_heads"].iloc[0])
        reference = parse_heads(pp_row["heads"])
        choices = {k: v for k, v in pruning.iloc[0].items() if str(k).startswith("flap.")}
        base = {
            "model": pp_row["model"],
            "task": pp_row["task"],
            "n_heads": n_heads,
            "reference": "dense path patching (pp/circuit.json)",
            "reference_size": len(reference),
        }
        rows = [
            {
                **base,
                "method": "pp",
                "split": "test",
                "n_test": pruning["n_test"].iloc[0],
                "heads": pp_row["heads"] if isinstance(pp_row["heads"], str) else "",
                "size": int(pp_row["size"]),
                "validation_performance": pp_row["validation_performance"],
                "test_performance": pp_row["test_performance"],
                "test_faithfulness": pp_row["test_faithfulness"],
                "selection": "performance >= 73, size <= N/4 (APP's PP rule)",
                "grid_config": pp_row["config"],
                "seed": pp_row["seed"],
                "corruption": pp_row["corruption"],
                "n_discovery": pp_row["n_discovery"],
                "package_version": pp_row["package_version"],
            }
        ]
        for _, row in pruning.iterrows():
            rows.append(
                {
                    **base,
                    "method": row["method"],
                    "split": row["split"],
                    "n_test": row["n_test"],
                    "heads": row["heads"] if isinstance(row["heads"], str) else "",
                    "size": int(row["size"]),
                    "validation_performance": row["validation_performance"],
                    "test_performance": row["test_performance"],
                    "test_faithfulness": row["test_faithfulness"],
                    "cliff_ratio": row["cliff_ratio"],
                    "cliff_fallback": row["cliff_fallback"],
                    "score_metric": row["metric"],
                    "seed": row["seed"],
                    "corruption": row["corruption"],
                    "n_calibration": row["n_calibration"],
                    "package_version": row["package_version"],
                    **choices,
                }
            )
        rows.append(
            {
                **base,
                "method": "app",
                "split": app_row["split"],
                "n_test": app_row["n_test"],
                "heads": app_row["heads"] if isinstance(app_row["heads"], str) else "",
                "size": int(app_row["size"]),
                "validation_performance": app_row["validation_performance"],
                "test_performance": app_row["test_performance"],
                "test_faithfulness": app_row["test_faithfulness"],
                "selection": (
                    f"performance >= {app_row['min_performance']:g}, "
                    f"size <= {app_row['max_size_fraction']:g} N (APP's rule)"
                ),
                "grid_config": app_row["config"],
                "search_space_size": app_row["search_space_size"],
                "seed": app_row["seed"],
                "corruption": app_row["corruption"],
                "n_discovery": app_row["n_discovery"],
                "threshold_mode": app_row["threshold_mode"],
                "missing_scores": app_row["missing_scores"],
                "package_version": app_row["package_version"],
                **choices,
            }
        )
        for row in rows:
            row["head_sparsity"] = 1 - row["size"] / n_heads
            measures = overlap(parse_heads(row["heads"]), reference, n_heads)
            if row["method"] == "pp":
                measures = dict.fromkeys(measures, math.nan)  # the reference itself
            row.update(measures)
        circuits += rows
        prune_cost = pruning.iloc[0]
        costs.append(
            {
                "model": pp_row["model"],
                "task": pp_row["task"],
                "n_heads": n_heads,
                "merged_size": int(app_row["search_space_size"]),
                "search_space_reduction_pct": 100 * float(app_row["search_space_reduction"]),
                "pp_flops_app": float(pp_row["grid_flops_app"]),
                "app_flops_app": float(app_row["grid_flops_app"]),
                "pruning_flops_app": float(prune_cost["pruning_flops_app"]),
                "pp_flops_actual": float(pp_row["flops_actual"]),
                "app_flops_actual": float(app_row["flops_actual"]),
                "pruning_flops_actual": float(prune_cost["pruning_flops_actual"]),
                "pp_forward_passes_app": int(pp_row["grid_forward_passes_app"]),
                "app_forward_passes_app": int(app_row["grid_forward_passes_app"]),
                "pruning_forward_passes_app": int(prune_cost["pruning_forward_passes_app"]),
                "pp_search_seconds": _scoring_seconds(run / "pp"),
                "app_search_seconds": _scoring_seconds(run / "app"),
                "pruning_search_seconds": float(prune_cost["pruning_wall_seconds"]),
                "pp_wall_seconds": float(pp_row["grid_wall_seconds"]),
                "app_wall_seconds": float(app_row["grid_wall_seconds"]),
                "pruning_wall_seconds": float(prune_cost["pruning_wall_seconds"]),
                "pp_implementation": pp_row["implementation"],
                "app_implementation": app_row["implementation"],
                "device": app_row["device"],
                "package_version": app_row["package_version"],
                **choices,
            }
        )
    return pd.DataFrame(circuits), pd.DataFrame(costs), pd.concat(sweeps, ignore_index=True)


def add_speedups(costs: pd.DataFrame, includes_pruning: bool) -> pd.DataFrame:
    """Ratios PP / APP of FLOPs (APP accounting and actual) and wall seconds, without and with the
    pruning stage; ``speedup`` is the headline one (``app.cost_includes_pruning``)."""
    costs = costs.copy()
    for kind in ("flops_app", "flops_actual", "search_seconds", "wall_seconds"):
        for suffix, extra in (("", 0.0), ("_with_pruning", 1.0)):
            values = [
                speedup(row[f"pp_{kind}"], row[f"app_{kind}"] + extra * row[f"pruning_{kind}"])
                for _, row in costs.iterrows()
            ]
            costs[f"ratio_{kind}{suffix}"] = [v["ratio"] for v in values]
            costs[f"saving_pct_{kind}{suffix}"] = [v["saving_pct"] for v in values]
    costs["app.cost_includes_pruning"] = includes_pruning
    headline = "ratio_flops_app_with_pruning" if includes_pruning else "ratio_flops_app"
    costs["speedup"] = costs[headline]
    return costs


def paper_model_of(model: str, paper_models: dict[str, str]) -> str:
    return paper_models.get(model, DEFAULT_PAPER_MODEL)


# -- Table 2 -----------------------------------------------------------------------------------


def _pct(value: object) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.1f}"
    )


def _ours_cell(row: pd.Series) -> str:
    head = f"{row['test_performance']:.2f} / {int(row['size'])} ({row['head_sparsity']:.2f})"
    if row["method"] == "pp":
        return f"{head} / – / – / –"
    return f"{head} / {_pct(row['tpr'])} / {_pct(row['precision'])} / {_pct(row['iou'])}"


def _paper_cell(row: pd.Series) -> str:
    tpr = "–" if pd.isna(row["tpr"]) else f"{row['tpr']:.2f}"
    mark = "*" if isinstance(row["note"], str) and row["note"] else ""
    return (
        f"{row['performance_pct']:.2f} / {int(row['size_heads'])} ({row['head_sparsity']:.2f}) / "
        f"{tpr}{mark}"
    )


def table2(
    circuits: pd.DataFrame, model: str, paper_model: str, stem: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write APP Table 2 for ``model`` (wide: CSV/Markdown/LaTeX; long: ``<stem>_long.csv``)."""
    ours = circuits[circuits["model"] == model]
    tasks = [t for t in TASK_ORDER if t in set(ours["task"])]
    published = paper.load("app_table2")
    published = published[published["paper_model"] == paper_model]
    wide_rows = []
    for method in METHOD_ORDER:
        for source in ("ours", "paper"):
            row: dict[str, Any] = {"Method": METHOD_LABELS[method], "Source": source}
            if source == "ours":
                row["Source"] = f"ours ({model})"
                cells = ours[ours["method"] == method].set_index("task")
                for task in tasks:
                    cell = cells.loc[task]
                    row[TASK_LABELS[task]] = _ours_cell(cell)
                    for key in (
                        "test_performance",
                        "size",
                        "head_sparsity",
                        "tpr",
                        "precision",
                        "iou",
                    ):
                        row[f"{task}_{key}"] = cell[key]
                row["Mean"] = (
                    f"{cells['test_performance'].mean():.2f} ({cells['head_sparsity'].mean():.2f})"
                )
            else:
                row["Source"] = f"paper ({paper_model})"
                cells = published[published["method"] == method].set_index("task")
                if cells.empty:
                    if method != "app":
                        continue
                    for task in tasks:
                        row[TASK_LABELS[task]] = "not in Table 2"
                    row["Mean"] = "–"
                else:
                    for task in tasks:
                        row[TASK_LABELS[task]] = _paper_cell(cells.loc[task])
                        row[f"{task}_test_performance"] = cells.loc[task, "performance_pct"]
                        row[f"{task}_size"] = cells.loc[task, "size_heads"]
                        row[f"{task}_head_sparsity"] = cells.loc[task, "head_sparsity"]
                        row[f"{task}_tpr"] = cells.loc[task, "tpr"]
                    shown_cells = cells.loc[[t for t in tasks if t in cells.index]]
                    row["Mean"] = (  # over the tasks shown, as our row's
                        f"{shown_cells['performance_pct'].mean():.2f} "
                        f"({shown_cells['head_sparsity'].mean():.2f})"
                    )
            wide_rows.append(row)
    wide = pd.DataFrame(wide_rows)
    shown = ["Method", "Source", *[TASK_LABELS[t] for t in tasks], "Mean"]
    n_heads = int(ours["n_heads"].iloc[0])
    pp_rows = ours[ours["method"] == "pp"]
    empty_pp = [TASK_LABELS[t] for t in pp_rows[pp_rows["size"] == 0]["task"]]
    first = ours[ours["method"] == "flap"].iloc[0]
    caption = (
        f"{model} ({n_heads} heads) beside the paper's {paper_model} rows (APP Table 2). "
        "Our cells: Perf. % / Size (Sparsity) / TPR % / Precision % / IoU %; the paper's: "
        "Perf. % / Size (Sparsity) / TPR %, sparsity recomputed from size, * = a TPR that "
        "we flag as doubtful (the long CSV's note column). Perf.: APP's performance % on the test "
        "split "
        f"({int(first['n_test'])} prompts), heads outside the circuit mean-ablated per template "
        "within batches of 25, MLPs kept. TPR, precision and IoU against our dense PP circuit; "
        "n/a: undefined, because the PP circuit is empty (TPR, IoU) or the circuit is empty "
        "(precision)"
        + (f"; our PP circuit is empty for {', '.join(empty_pp)}" if empty_pp else "")
        + ". FLAP: WIFV on clean prompts; C-FLAP: |S_clean^2 - S_corrupt^2| with WIFN; both "
        f"at the '{first['flap.cliff_rule']}' cliff of a sweep of head sparsity "
        f"[{first['flap.sweep_low']:g}, {first['flap.sweep_high']:g}) step "
        f"{first['flap.sweep_step']:g} (keep rule '{first['flap.keep_rule']}'); Merged: their "
        "union; APP: path patching restricted to Merged, 16 configurations, APP's rule "
        "(performance >= 75, size <= N/2). Mean: Perf. (Sparsity) over the tasks shown, for our "
        "rows and the paper's alike. "
        "Absolute numbers of a toy model and of GPT-2 small are not comparable; orderings and "
        "ratios are."
    )
    save_table(wide, stem, f"APP Table 2, {model}", caption, shown)
    long_rows = ours.assign(source="ours", paper_model="")
    paper_long = published.rename(
        columns={"performance_pct": "test_performance", "size_heads": "size"}
    ).assign(source="paper", model=model)
    long = pd.concat([long_rows, paper_long], ignore_index=True)
    atomic_write_text(Path(f"{stem}_long.csv"), long.to_csv(index=False))
    return wide, long


# -- speed-up ----------------------------------------------------------------------------------


def speedup_table(costs: pd.DataFrame, paper_models: dict[str, str], stem: Path) -> pd.DataFrame:
    published = paper.load("app_speedup")
    rows = []
    for _, row in costs.iterrows():
        paper_model = paper_model_of(row["model"], paper_models)
        match = published[
            (published["paper_model"] == paper_model) & (published["task"] == row["task"])
        ]
        rows.append(
            {
                **row.to_dict(),
                "paper_model": paper_model,
                "paper_ratio": float(match["ratio"].iloc[0]) if len(match) else math.nan,
                "paper_saving_pct": float(match["saving_pct"].iloc[0]) if len(match) else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    table["task_order"] = table["task"].map(TASK_ORDER.index)
    table = table.sort_values(["model", "task_order"]).drop(columns="task_order")
    gflops = 1e9
    display = table.assign(
        Model=table["model"],
        Task=table["task"].map(TASK_LABELS),
        Merged=[f"{m}/{n}" for m, n in zip(table["merged_size"], table["n_heads"], strict=True)],
        **{
            "Reduction %": table["search_space_reduction_pct"],
            "PP GFLOP": table["pp_flops_app"] / gflops,
            "APP GFLOP": table["app_flops_app"] / gflops,
            "Pruning GFLOP": table["pruning_flops_app"] / gflops,
            "x": table["ratio_flops_app"],
            "x incl. pruning": table["ratio_flops_app_with_pruning"],
            "PP s": table["pp_search_seconds"],
            "APP s": table["app_search_seconds"],
            "Pruning s": table["pruning_search_seconds"],
            "x s": table["ratio_search_seconds"],
            "x s incl. pruning": table["ratio_search_seconds_with_pruning"],
            "Paper x": table["paper_ratio"],
        },
    )
    shown = [
        "Model",
        "Task",
        "Merged",
        "Reduction %",
        "PP GFLOP",
        "APP GFLOP",
        "Pruning GFLOP",
        "x",
        "x incl. pruning",
        "PP s",
        "APP s",
        "Pruning s",
        "x s",
        "x s incl. pruning",
        "Paper x",
    ]
    includes = bool(table["app.cost_includes_pruning"].iloc[0])
    caption = (
        "Dense path patching (PP) vs APP, per task, each summed over the 16-configuration grid. "
        "GFLOP: APP's accounting (one pass per evaluated sender up to the receiver layer, plus 2 "
        "caching passes per configuration; a multiply-add counts 2); the CSV also has the FLOPs "
        "actually run and the forward passes. Pruning: the FLAP/C-FLAP stage, charged once "
        "(APP's accounting: 3 statistics streams over the calibration prompts and one full "
        "pass over the evaluation prompts per sweep point and method). x = PP / APP; 'incl. "
        "pruning' adds the pruning stage to APP (app.cost_includes_pruning = "
        f"{str(includes).lower()} makes that the headline 'speedup' column). s: wall seconds "
        "of the path-patching measurements of the grid (PP, APP) and of the whole FLAP/C-FLAP "
        "stage (statistics and sweep evaluations), without model loading, on "
        f"{table['device'].iloc[0]}, measured in jobs that may have shared the machine; the "
        "CSV also has each grid's total wall time (caches and the evaluation of the 16 "
        "circuits included). Merged: "
        "search space |M|/N; Reduction = 1 - |M|/N (paper: 56% in the abstract, 65% in its "
        "Table 2). Paper x: the ratio printed on APP's GFLOPs figure for the matching paper "
        "model (APP's speed-up figure)."
    )
    save_table(display, stem, "APP speed-up over dense path patching", caption, shown)
    return table


# -- figures -----------------------------------------------------------------------------------

COLORS = {"pp": "#7f7f7f", "app": "#1f77b4", "app_pruning": "#9ecae1", "flap": "#ff7f0e"}
METHOD_COLORS = {"flap": "#d95f02", "cflap": "#1b9e77"}
RULE_MARKERS = {"first": "v", "biggest": "^", "fixed": "D"}


def ratio_label(ratio: float) -> str:
    """``×0.91``, ``×12``, and two significant digits below 0.1 (``×0.0012``, never ``×0.00``)."""
    if math.isnan(ratio):
        return "×–"
    if ratio >= 10:
        return f"×{ratio:.0f}"
    if ratio >= 0.1:
        return f"×{ratio:.2f}"
    return f"×{ratio:.2g}"


def speedup_figure(table: pd.DataFrame, model: str, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table["model"] == model]
    labels = [
        f"{SHORT_LABELS[t]}\npaper ×{r:.2f}" if not math.isnan(r) else SHORT_LABELS[t]
        for t, r in zip(rows["task"], rows["paper_ratio"], strict=True)
    ]
    x = np.arange(len(rows))
    width = 0.27
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            1, 3, figsize=(13.5, 3.9), gridspec_kw={"width_ratios": [1.25, 1.25, 0.9]}
        )
        for ax, kind, unit, scale in (
            (axes[0], "flops_app", "GFLOP (APP accounting, 16-config grid)", 1e9),
            (axes[1], "search_seconds", "wall seconds (path-patching measurements)", 1.0),
        ):
            pp_values = rows[f"pp_{kind}"].to_numpy() / scale
            app_values = rows[f"app_{kind}"].to_numpy() / scale
            with_pruning = app_values + rows[f"pruning_{kind}"].to_numpy() / scale
            bars = [
                ("Path patching (dense)", pp_values, COLORS["pp"], None, ""),
                ("APP (search only)", app_values, COLORS["app"], rows[f"ratio_{kind}"], ""),
                (
                    "APP + FLAP/C-FLAP stage",
                    with_pruning,
                    COLORS["app_pruning"],
                    rows[f"ratio_{kind}_with_pruning"],
                    "//",
                ),
            ]
            for i, (label, values, color, ratios, hatch) in enumerate(bars):
                positions = x + (i - 1) * width
                drawn = ax.bar(
                    positions,
                    values,
                    width,
                    label=label,
                    color=color,
                    hatch=hatch,
                    edgecolor="white" if not hatch else "#3182bd",
                    linewidth=0.5,
                )
                if ratios is not None:
                    for bar, ratio in zip(drawn, ratios, strict=True):
                        ax.annotate(
                            ratio_label(ratio),
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            xytext=(0, 2),
                            textcoords="offset points",
                            ha="center",
                            va="bottom",
                            fontsize=7,
                            rotation=90,
                        )
            ax.set_yscale("log")
            ax.set_ylabel(unit)
            ax.set_xticks(x, labels, fontsize=8)
            top = max(pp_values.max(), with_pruning.max())
            values = np.concatenate([pp_values, app_values, with_pruning])
            smallest = values[values > 0].min() if (values > 0).any() else 1.0
            # A log axis that starts at the smallest bar draws it (and an equal one) with no
            # height: start half a decade below it.
            ax.set_ylim(bottom=smallest / 3, top=top * 30)  # room for the rotated labels
        axes[0].set_title("(a) compute: PP vs APP (×: PP / APP)")
        axes[1].set_title("(b) wall time: PP vs APP (×: PP / APP)")
        axes[1].text(
            0.99,
            0.99,
            "timed in separate jobs on a shared CPU",
            transform=axes[1].transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="#555555",
        )
        axes[0].legend(loc="upper left", frameon=False, ncols=1)
        reduction = rows["search_space_reduction_pct"].to_numpy()
        drawn = axes[2].bar(x, reduction, 0.6, color=COLORS["app"])
        for bar in drawn:
            axes[2].annotate(
                f"{bar.get_height():.0f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, -3),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=7.5,
                color="white",
            )
        for value, style, text in (
            (56, "--", "paper, abstract: 56%"),
            (65, ":", "paper, Table 2: 65%"),
        ):
            axes[2].axhline(value, color="black", linestyle=style, linewidth=0.8, label=text)
        axes[2].set_ylim(0, 100)
        axes[2].set_xlabel("task (merged heads |M| / N)", fontsize=8)
        axes[2].set_ylabel("search-space reduction 1 − |M|/N (%)")
        axes[2].set_xticks(
            x,
            [
                f"{SHORT_LABELS[t]}\n{m}/{n}"
                for t, m, n in zip(rows["task"], rows["merged_size"], rows["n_heads"], strict=True)
            ],
            fontsize=8,
        )
        axes[2].set_title("(c) heads removed before path patching")
        axes[2].legend(loc="upper right", frameon=False, fontsize=7)
        figure.suptitle(f"APP speed-up over dense path patching, {model}", fontsize=10)
        figure.tight_layout()
        save_figure(figure, stem)


def sweep_figure(sweeps: pd.DataFrame, circuits: pd.DataFrame, model: str, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    rows = sweeps[sweeps["model"] == model]
    tasks = [t for t in TASK_ORDER if t in set(rows["task"])]
    chosen_rule = str(rows["flap.cliff_rule"].iloc[0])
    n_heads = int(rows["n_heads"].iloc[0])
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            1, len(tasks), figsize=(2.9 * len(tasks), 3.3), sharey=False, squeeze=False
        )
        for ax, task in zip(axes[0], tasks, strict=True):
            task_rows = rows[rows["task"] == task]
            for method in ("flap", "cflap"):
                curve = task_rows[task_rows["method"] == method].sort_values("ratio")
                color = METHOD_COLORS[method]
                ax.plot(
                    100 * curve["ratio"],
                    curve["performance"],
                    color=color,
                    marker=".",
                    markersize=3,
                    linewidth=1.2,
                    label=METHOD_LABELS[method],
                )
                rules = curve["cliff_rules"].fillna("").str.split()
                for rule, marker in RULE_MARKERS.items():
                    hit = curve[[rule in r for r in rules]]
                    ax.scatter(
                        100 * hit["ratio"],
                        hit["performance"],
                        marker=marker,
                        s=30,
                        facecolors="none",
                        edgecolors=color,
                        linewidths=1.0,
                        zorder=3,
                    )
                chosen = curve[curve["chosen"].astype(str) == "True"]
                ax.scatter(
                    100 * chosen["ratio"],
                    chosen["performance"],
                    marker="*",
                    s=110,
                    color=color,
                    edgecolors="black",
                    linewidths=0.5,
                    zorder=4,
                )
            pp_row = circuits[
                (circuits["model"] == model)
                & (circuits["task"] == task)
                & (circuits["method"] == "pp")
            ].iloc[0]
            ax.axhline(100, color="#bbbbbb", linewidth=0.6)
            ax.axhline(75, color="#bbbbbb", linewidth=0.6, linestyle="--")
            ax.axvline(
                100 * pp_row["head_sparsity"], color=COLORS["pp"], linewidth=0.8, linestyle=":"
            )
            ax.set_title(TASK_LABELS[task])
            ax.set_xlabel("head sparsity (%)")
            ax.set_xlim(100 * rows["ratio"].min() - 2, 100)
            top = ax.secondary_xaxis(
                "top",
                functions=(lambda p: n_heads * (1 - p / 100), lambda k: 100 * (1 - k / n_heads)),
            )
            top.set_xlabel("heads kept ≈ N·(1−p)", fontsize=7)
            top.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            top.tick_params(labelsize=7)
        axes[0][0].set_ylabel("performance % (validation)")
        handles = [
            Line2D([], [], color=METHOD_COLORS["flap"], marker=".", label="FLAP (WIFV, clean)"),
            Line2D(
                [], [], color=METHOD_COLORS["cflap"], marker=".", label="C-FLAP (WIFN, contrast)"
            ),
            Line2D(
                [],
                [],
                marker="*",
                color="grey",
                linestyle="",
                markersize=10,
                label=f"chosen cliff ('{chosen_rule}')",
            ),
            *[
                Line2D(
                    [],
                    [],
                    marker=marker,
                    color="grey",
                    markerfacecolor="none",
                    linestyle="",
                    label=f"'{rule}' cliff",
                )
                for rule, marker in RULE_MARKERS.items()
            ],
            Line2D([], [], color=COLORS["pp"], linestyle=":", label="dense PP circuit sparsity"),
            Line2D([], [], color="#bbbbbb", linestyle="--", label="75% (APP's threshold)"),
        ]
        figure.legend(
            handles=handles, loc="lower center", ncols=len(handles), frameon=False, fontsize=7.5
        )
        figure.suptitle(
            f"FLAP and Contrastive-FLAP sparsity sweeps, {model} ({n_heads} heads)", fontsize=10
        )
        figure.tight_layout(rect=(0, 0.08, 1, 1))
        save_figure(figure, stem)


def write_app_report(
    runs: list[Path],
    paper_models: dict[str, str],
    cost_includes_pruning: bool,
    tables: Path,
    figures: Path,
) -> None:
    circuits, costs, sweeps = collect([Path(r) for r in runs])
    costs = add_speedups(costs, cost_includes_pruning)
    speed = speedup_table(costs, paper_models, Path(tables) / "app_speedup")
    for model in dict.fromkeys(circuits["model"]):
        paper_model = paper_model_of(model, paper_models)
        table2(circuits, model, paper_model, Path(tables) / f"app_table2_{model}")
        speedup_figure(speed, model, Path(figures) / f"app_speedup_{model}")
        sweep_figure(sweeps, circuits, model, Path(figures) / f"app_sweep_{model}")
        log.info("APP report for %s (paper side: %s) written", model, paper_model)
