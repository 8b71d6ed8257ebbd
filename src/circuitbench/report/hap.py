"""HAP's and Edge Pruning's tables and figures, paper vs ours.

- ``hap_table1``: EAP / EP / HAP at matched sparsity (EAP and HAP cut to the edge count the
  reference Edge Pruning run achieved): accuracy, logit difference, KL, runtime, speed-up.
- ``hap_table2``: which heads of the dense path-patching circuit each method keeps, by role.
- ``ep_table1``: KL at matched sparsity vs the number of training examples, with runtimes.
- ``hap_k_sweep``: HAP's EAP-subgraph size ``k`` vs runtime and faithfulness.
- figures ``ep_kl_sparsity`` and ``ep_metric_sparsity`` (KL and logit difference vs edge
  sparsity; EAP and EAP-IG curves, EP and HAP points, PP and APP circuits as points) and
  ``hap_k_sweep``.

Paper numbers come from ``report/paper/hap_ep.csv`` (with their source status, shown as a mark).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuitbench.graph import Graph
from circuitbench.report.common import PAPER_STYLE, paper_mark, save_figure, save_table

log = logging.getLogger(__name__)

PAPER_FILE = Path(__file__).parent / "paper" / "hap_ep.csv"
MATCH_TOLERANCE = 0.005  # "matched sparsity": within ±0.5 percentage points
METHOD_STYLE = {
    "EAP": {"color": "#1f77b4", "marker": "o"},
    "EAP-IG": {"color": "#17becf", "marker": "s"},
    "EP": {"color": "#d62728", "marker": "^"},
    "HAP": {"color": "#2ca02c", "marker": "D"},
    "PP": {"color": "#7f7f7f", "marker": "*"},
    "APP": {"color": "#9467bd", "marker": "P"},
}
CONVENTION_NOTE = (
    "Edge counts and sparsity use circuitbench's MIB graph (one `input` node; |E| = 1,519 on the "
    "4x8 toy model, 32,491 on GPT-2 small); edge_sparsity_ep restates them in Edge Pruning's "
    "convention with embedding nodes (input->X counted as tok_embeds->X and pos_embeds->X)."
)


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def load_paper() -> pd.DataFrame:
    return pd.read_csv(PAPER_FILE, dtype={"setting": str, "value": str}, keep_default_na=False)


def _paper_value(paper: pd.DataFrame, table: str, method: str, setting: str, quantity: str) -> str:
    rows = paper[
        (paper.table == table)
        & (paper.method == method)
        & (paper.setting == setting)
        & (paper.quantity == quantity)
    ]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    if row.value == "":
        return f"– [{row.status}]" if row.status not in ("paper", "code") else "–"
    try:
        value: Any = float(row.value)
        if value == int(value):
            value = int(value)
    except ValueError:
        value = row.value
    return paper_mark(value, row.status)


# -- collecting the runs -------------------------------------------------------------------------


def collect(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    frames: dict[str, list[pd.DataFrame]] = {
        "curve": [],
        "matched": [],
        "eap_summary": [],
        "ep": [],
        "hap": [],
    }
    for label, dirs in (("EAP", args.eap), ("EAP-IG", args.eap_ig)):
        for directory in dirs:
            directory = Path(directory)
            curve = _read_csv(directory / "curve.csv").assign(label=label, dir=str(directory))
            frames["curve"].append(curve)
            summary = _read_csv(directory / "summary.csv").assign(label=label, dir=str(directory))
            frames["eap_summary"].append(summary)
            if (directory / "matched.csv").exists():
                matched = _read_csv(directory / "matched.csv").assign(
                    label=label, dir=str(directory)
                )
                frames["matched"].append(matched)
    for directory in args.ep:
        frames["ep"].append(_read_csv(Path(directory) / "summary.csv").assign(dir=str(directory)))
    for directory in args.hap:
        frames["hap"].append(_read_csv(Path(directory) / "summary.csv").assign(dir=str(directory)))
    out = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in frames.items()}
    out["pp"] = _references(args)
    return out


def _references(args: argparse.Namespace) -> pd.DataFrame:
    """The PP and APP circuits evaluated as edge circuits under interchange ablation (the
    workflow's ``evaluate_reference_edges`` rule writes one row each)."""
    rows = []
    for label, paths in (("PP", args.pp_eval), ("APP", getattr(args, "app_eval", []) or [])):
        for path in paths:
            for _, row in _read_csv(path).iterrows():
                rows.append({**row.to_dict(), "label": label})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["logit_diff"] = frame["metric"]
    return frame


# -- tables --------------------------------------------------------------------------------------


def _reference_ep(ep: pd.DataFrame, edge_target: float) -> pd.DataFrame:
    """Per model x task, the Edge Pruning run HAP and EAP are matched to: the configured target,
    every training example."""
    at_target = ep[(ep.target - edge_target).abs() < 1e-9]
    full = at_target.groupby(["model", "task"]).n_train.transform("max")
    return at_target[at_target.n_train == full]


def hap_table1(runs: dict[str, pd.DataFrame], args, paper: pd.DataFrame) -> pd.DataFrame:
    reference = _reference_ep(runs["ep"], args.edge_target)
    rows = []
    for _, ep_row in reference.sort_values(["model", "task"]).iterrows():
        model, task, run = ep_row.model, ep_row.task, ep_row.run
        matched = runs["matched"]
        eap_row = matched[
            (matched.model == model)
            & (matched.task == task)
            & (matched.label == "EAP")
            & (matched.matched_to == run)
            & (matched.n_train == ep_row.n_train)
        ]
        hap = runs["hap"]
        hap_row = hap[
            (hap.model == model)
            & (hap.task == task)
            & ((hap.keep_fraction - args.keep_fraction).abs() < 1e-9)
            & (hap.matched_to == run)
        ]
        for method, frame in (("EAP", eap_row), ("EP", ep_row.to_frame().T), ("HAP", hap_row)):
            if frame.empty:
                continue
            row = frame.iloc[0]
            runtime, cpu = float(row.runtime_seconds), float(row.cpu_seconds)
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "method": method,
                    "source": "ours",
                    "edges": int(row.n_edges),
                    "edge_sparsity": float(row.edge_sparsity),
                    "edge_sparsity_ep": float(row.edge_sparsity_ep),
                    "matched": "yes"
                    if abs(float(row.edge_sparsity) - float(ep_row.edge_sparsity))
                    <= MATCH_TOLERANCE
                    else "no",
                    "accuracy": float(row.accuracy),
                    "logit_diff": float(row.logit_diff),
                    "kl": float(row.kl),
                    "faithfulness": float(row.faithfulness),
                    "runtime_s": runtime,
                    "cpu_s": cpu,
                    "speedup_vs_ep": float(ep_row.runtime_seconds) / runtime,
                    "cpu_speedup_vs_ep": float(ep_row.cpu_seconds) / cpu,
                    "n_train": int(row.n_train),
                    "ep_target": float(ep_row.target),
                    "keep_fraction": args.keep_fraction if method == "HAP" else math.nan,
                    "seed": int(ep_row["edge_pruning.seed"]),
                    "data_seed": ep_row.data_seed,
                    "edge_convention": "mib",
                    "device": row.device,
                }
            )
    for method in ("EAP", "EP", "HAP"):
        setting = "94 ± 0.5% edge sparsity"
        paper_runtime = _paper_value(paper, "hap_table1", method, setting, "runtime_seconds")
        rows.append(
            {
                "model": "gpt2 (paper)",
                "task": "ioi",
                "method": method,
                "source": "HAP paper [secondary]",
                "edges": "",
                "edge_sparsity": "0.94 ± 0.005",
                "matched": "",
                "cpu_s": "",
                "cpu_speedup_vs_ep": "",
                "accuracy": _paper_value(paper, "hap_table1", method, setting, "accuracy"),
                "logit_diff": _paper_value(paper, "hap_table1", method, setting, "logit_diff"),
                "kl": _paper_value(paper, "hap_table1", method, setting, "kl"),
                "runtime_s": paper_runtime,
                "speedup_vs_ep": {"EP": "1.00", "HAP": "1.85 [secondary]"}.get(method, ""),
                "edge_convention": "ep_with_embeddings (32,936 edges)",
                "device": "1x H100",
            }
        )
    return pd.DataFrame(rows)


def _heads_of(path: Path) -> dict[int, list[int]]:
    return Graph.load(path).heads()


def _head_names(heads: dict[int, list[int]]) -> list[str]:
    return [f"{layer}.{h}" for layer in sorted(heads) for h in heads[layer]]


def _head_classes(paths: list[Path]) -> dict[str, dict[str, str]]:
    """model -> head -> its IOI classes, from the mechanism stage's heads.csv files (heads with
    none left out)."""
    out: dict[str, dict[str, str]] = {}
    for path in paths:
        frame = pd.read_csv(path, dtype={"head": str, "ioi_classes": str}).fillna("")
        for _, row in frame.iterrows():
            if row["ioi_classes"]:
                classes = row["ioi_classes"].replace(" ", ", ")
                out.setdefault(row["model"], {})[row["head"]] = classes
    return out


def hap_table2(runs: dict[str, pd.DataFrame], args, paper: pd.DataFrame) -> pd.DataFrame:
    reference = _reference_ep(runs["ep"], args.edge_target)
    head_classes = _head_classes(getattr(args, "heads", []) or [])
    pp_files = {(p.parts[-4], p.parts[-3]): p for p in map(Path, args.pp)}
    rows = []
    for _, ep_row in reference.sort_values(["model", "task"]).iterrows():
        model, task, run = ep_row.model, ep_row.task, ep_row.run
        circuits: dict[str, Path] = {"EP": Path(ep_row.dir) / "circuit.json"}
        for label in ("EAP", "EAP-IG"):
            matched = runs["matched"]
            hit = matched[
                (matched.model == model)
                & (matched.task == task)
                & (matched.label == label)
                & (matched.matched_to == run)
                & (matched.n_train == ep_row.n_train)
            ]
            if not hit.empty:
                circuits[label] = Path(hit.iloc[0].dir) / f"matched-{run}.json"
        hap = runs["hap"]
        hit = hap[
            (hap.model == model)
            & (hap.task == task)
            & ((hap.keep_fraction - args.keep_fraction).abs() < 1e-9)
        ]
        if not hit.empty:
            circuits["HAP"] = Path(hit.iloc[0].dir) / "circuit.json"
        kept = {label: set(_head_names(_heads_of(path))) for label, path in circuits.items()}
        roles: dict[str, str] = {}
        if (model, task) in pp_files:
            meta = Graph.load(pp_files[(model, task)]).meta
            for layer, heads in (meta.get("heads") or {}).items():
                for h in heads:
                    name = f"{layer}.{h}"
                    roles[name] = ", ".join(meta.get("roles", {}).get(name, [])) or "early stop"
        methods = [m for m in ("EAP", "EAP-IG", "EP", "HAP") if m in kept]
        classes = head_classes.get(model, {}) if task == "ioi" else {}
        if not roles:
            rows.append(
                {"model": model, "task": task, "head": "—", "pp_role": "PP circuit is empty"}
            )
        # The PP circuit's heads, then (IOI) every other head the mechanism stage classifies.
        listed = {**roles, **{h: "not in the PP circuit" for h in classes if h not in roles}}
        for head, role in sorted(listed.items(), key=lambda kv: _head_key(kv[0])):
            row = {"model": model, "task": task, "head": head, "pp_role": role}
            row["ioi_classes"] = classes.get(head, "")
            row.update({m: "✓" if head in kept[m] else "✗" for m in methods})
            rows.append(row)
        summary = {"model": model, "task": task, "head": "all kept", "pp_role": ""}
        summary.update({m: " ".join(sorted(kept[m], key=_head_key)) or "none" for m in methods})
        rows.append(summary)
    for head in ("7.3", "7.9", "8.6", "8.10"):
        row = {"model": "gpt2 (paper)", "task": "ioi", "head": head, "pp_role": "S-inhibition"}
        row["ioi_classes"] = "s_inhibition"
        for method in ("EAP", "HAP"):
            value = _paper_value(paper, "hap_table2", method, head, "retained")
            row[method] = value.replace("yes", "✓").replace("no", "✗")
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.fillna("")


def _head_key(name: str) -> tuple[int, int]:
    layer, head = name.split(".")
    return int(layer), int(head)


def ep_table1(runs: dict[str, pd.DataFrame], args, paper: pd.DataFrame) -> pd.DataFrame:
    ep = runs["ep"]
    at_target = ep[(ep.target - args.edge_target).abs() < 1e-9]
    sizes = at_target.groupby(["model", "task"]).n_train.nunique()
    rows = []
    for (model, task), n_sizes in sizes.items():
        if n_sizes < 2:
            continue
        for _, ep_row in (
            at_target[(at_target.model == model) & (at_target.task == task)]
            .sort_values("n_train")
            .iterrows()
        ):
            matched = runs["matched"]
            eap_row = matched[
                (matched.model == model)
                & (matched.task == task)
                & (matched.label == "EAP")
                & (matched.matched_to == ep_row.run)
            ]
            eap = eap_row.iloc[0] if not eap_row.empty else None
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "n_train": int(ep_row.n_train),
                    "source": "ours",
                    "ep_edges": int(ep_row.n_edges),
                    "ep_edge_sparsity": float(ep_row.edge_sparsity),
                    "eap_edge_sparsity": float(eap.edge_sparsity) if eap is not None else math.nan,
                    "acdc_kl": "not run",
                    "eap_kl": float(eap.kl) if eap is not None else math.nan,
                    "ep_kl": float(ep_row.kl),
                    "eap_runtime_s": float(eap.runtime_seconds) if eap is not None else math.nan,
                    "ep_runtime_s": float(ep_row.runtime_seconds),
                    "acdc_runtime_s": "",
                    "eap_cpu_s": float(eap.cpu_seconds) if eap is not None else math.nan,
                    "ep_cpu_s": float(ep_row.cpu_seconds),
                    "ep_steps": int(ep_row.steps),
                    "edge_convention": "mib",
                }
            )
    for n in ("200", "400", "100000"):
        rows.append(
            {
                "model": "gpt2 (paper)",
                "task": "ioi",
                "n_train": int(n),
                "source": "EP paper, 96.6 ± 0.1%",
                "ep_edges": "",
                "ep_edge_sparsity": "0.966 ± 0.001",
                "eap_edge_sparsity": "0.966 ± 0.001",
                "acdc_kl": _paper_value(paper, "ep_table1", "ACDC", n, "kl"),
                "eap_kl": _paper_value(paper, "ep_table1", "EAP", n, "kl"),
                "ep_kl": _paper_value(paper, "ep_table1", "EP", n, "kl"),
                "eap_runtime_s": _paper_value(paper, "ep_table1", "EAP", n, "runtime_seconds"),
                "ep_runtime_s": _paper_value(paper, "ep_table1", "EP", n, "runtime_seconds"),
                "acdc_runtime_s": _paper_value(paper, "ep_table1", "ACDC", n, "runtime_seconds"),
                "ep_steps": 3000,
                "edge_convention": "ep_with_embeddings (32,936 edges)",
            }
        )
    return pd.DataFrame(rows)


def hap_k_table(runs: dict[str, pd.DataFrame], args) -> pd.DataFrame:
    hap = runs["hap"]
    counts = hap.groupby(["model", "task"]).keep_fraction.nunique()
    reference = _reference_ep(runs["ep"], args.edge_target)
    rows = []
    for (model, task), n in counts.items():
        if n < 2:
            continue
        ep_row = reference[(reference.model == model) & (reference.task == task)].iloc[0]
        rows.append(
            {
                "model": model,
                "task": task,
                "method": "EP",
                "keep_fraction": 1.0,
                "subgraph_edges": int(ep_row.n_edges_total),
                "edges": int(ep_row.n_edges),
                "edge_sparsity": float(ep_row.edge_sparsity),
                "accuracy": float(ep_row.accuracy),
                "logit_diff": float(ep_row.logit_diff),
                "kl": float(ep_row.kl),
                "eap_s": 0.0,
                "ep_stage_s": float(ep_row.runtime_seconds),
                "runtime_s": float(ep_row.runtime_seconds),
                "eap_cpu_s": 0.0,
                "ep_stage_cpu_s": float(ep_row.cpu_seconds),
                "cpu_s": float(ep_row.cpu_seconds),
            }
        )
        for _, row in (
            hap[(hap.model == model) & (hap.task == task)].sort_values("keep_fraction").iterrows()
        ):
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "method": "HAP",
                    "keep_fraction": float(row.keep_fraction),
                    "subgraph_edges": int(row.subgraph_edges),
                    "edges": int(row.n_edges),
                    "edge_sparsity": float(row.edge_sparsity),
                    "accuracy": float(row.accuracy),
                    "logit_diff": float(row.logit_diff),
                    "kl": float(row.kl),
                    "eap_s": float(row.eap_seconds),
                    "ep_stage_s": float(row.ep_stage_seconds),
                    "runtime_s": float(row.runtime_seconds),
                    "eap_cpu_s": float(row.eap_cpu_seconds),
                    "ep_stage_cpu_s": float(row.ep_stage_cpu_seconds),
                    "cpu_s": float(row.cpu_seconds),
                }
            )
    return pd.DataFrame(rows)


# -- figures -------------------------------------------------------------------------------------


def _tasks(runs: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    return sorted({(r.model, r.task) for _, r in runs["ep"].iterrows()})


def sparsity_figure(runs: dict[str, pd.DataFrame], args, quantity: str):
    """One panel per model x task: ``quantity`` (kl | logit_diff) vs edge sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _tasks(runs)
    n = len(pairs)
    columns = min(n, 3)
    rows = math.ceil(n / columns)
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False
        )
        floor = 1e-4
        for ax, (model, task) in zip(axes.flat, pairs, strict=False):
            curve = runs["curve"]
            for label in ("EAP", "EAP-IG"):
                part = curve[(curve.model == model) & (curve.task == task) & (curve.label == label)]
                part = part[part.n_train == part.n_train.max()].sort_values("edge_sparsity")
                if part.empty:
                    continue
                y = part[quantity].clip(lower=floor) if quantity == "kl" else part[quantity]
                ax.plot(part.edge_sparsity, y, label=label, lw=1.2, ms=3.5, **METHOD_STYLE[label])
            ep = runs["ep"]
            part = ep[(ep.model == model) & (ep.task == task)]
            part = part[part.n_train == part.n_train.max()].sort_values("edge_sparsity")
            y = part[quantity].clip(lower=floor) if quantity == "kl" else part[quantity]
            ax.plot(part.edge_sparsity, y, ls="--", lw=1, ms=6, label="EP", **METHOD_STYLE["EP"])
            hap = runs["hap"]
            part = hap[(hap.model == model) & (hap.task == task)]
            if not part.empty:
                y = part[quantity].clip(lower=floor) if quantity == "kl" else part[quantity]
                ax.scatter(
                    part.edge_sparsity,
                    y,
                    s=28,
                    label="HAP",
                    zorder=5,
                    color=METHOD_STYLE["HAP"]["color"],
                    marker=METHOD_STYLE["HAP"]["marker"],
                )
            references = runs["pp"]
            if not references.empty:
                for label in ("PP", "APP"):
                    part = references[
                        (references.model == model)
                        & (references.task == task)
                        & (references.label == label)
                    ]
                    if part.empty:
                        continue
                    y = part[quantity].clip(lower=floor) if quantity == "kl" else part[quantity]
                    # PP open and larger, APP filled on top: an APP circuit equal to the PP
                    # one (a common case) leaves both visible.
                    pp = label == "PP"
                    ax.scatter(
                        part.edge_sparsity,
                        y,
                        s=130 if pp else 40,
                        label=f"{label} circuit",
                        zorder=6 if pp else 7,
                        facecolor="none" if pp else METHOD_STYLE[label]["color"],
                        edgecolor=METHOD_STYLE[label]["color"] if pp else "black",
                        marker=METHOD_STYLE[label]["marker"],
                        linewidth=1.4 if pp else 0.5,
                    )
            if quantity == "kl":
                ax.set_yscale("log")
                ax.set_ylabel("KL(full ‖ circuit)")
            else:
                full = curve[(curve.model == model) & (curve.task == task)].full_metric
                empty = curve[(curve.model == model) & (curve.task == task)].empty_metric
                if not full.empty:
                    ax.axhline(full.iloc[0], color="black", lw=0.8, ls=":", label="full model")
                    ax.axhline(empty.iloc[0], color="grey", lw=0.8, ls="-.", label="ablated")
                ax.set_ylabel("logit difference")
            ax.set_xscale("logit")  # spreads the sparse end (0.9, 0.99) where methods differ
            # The right end follows the sparsest point drawn, so no point falls off the axis.
            drawn = [
                x
                for line in ax.lines
                for x in np.asarray(line.get_xdata(), dtype=float)
                if 0 < x < 1
            ]
            drawn += [x for c in ax.collections for x in c.get_offsets()[:, 0] if 0 < x < 1]
            sparsest = max(drawn, default=0.99)
            right = min(0.99995, 1 - (1 - max(sparsest, 0.99)) / 2.5)
            ax.set_xlim(0.45, right)
            ticks = [t for t in (0.5, 0.9, 0.99, 0.999, 0.9999) if t < right]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("edge sparsity (logit scale)")
            ax.set_title(f"{task.replace('_', ' ')} ({model})")
            ax.grid(alpha=0.3, lw=0.5)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        handles, labels = {}, []
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in handles:
                    handles[label] = handle
                    labels.append(label)
        figure.legend(
            [handles[label] for label in labels],
            labels,
            loc="lower center",
            ncol=min(len(labels), 8),
            frameon=False,
            bbox_to_anchor=(0.5, -0.02),
        )
        what = "KL divergence to the full model" if quantity == "kl" else "Logit difference"
        note = "; KL below 1e-4 drawn at 1e-4" if quantity == "kl" else ""
        figure.suptitle(f"{what} vs edge sparsity (test split, interchange ablation{note})")
        figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def k_sweep_figure(table: pd.DataFrame, matched: pd.DataFrame):
    """Per sweep task: CPU seconds of HAP's two stages vs k beside Edge Pruning's, and the
    circuit's KL vs k beside Edge Pruning's and EAP's at the same edge count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r.model, r.task) for _, r in table.iterrows()})
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(len(pairs), 2, figsize=(7.4, 2.9 * len(pairs)), squeeze=False)
        for (left, right), (model, task) in zip(axes, pairs, strict=True):
            part = table[(table.model == model) & (table.task == task)]
            hap = part[part.method == "HAP"].sort_values("subgraph_edges")
            ep = part[part.method == "EP"].iloc[0]
            labels = [
                f"{int(k)}\n({f:.0%})"
                for k, f in zip(hap.subgraph_edges, hap.keep_fraction, strict=True)
            ]
            left.bar(
                labels, hap.eap_cpu_s, color=METHOD_STYLE["EAP"]["color"], label="HAP: EAP stage"
            )
            left.bar(
                labels,
                hap.ep_stage_cpu_s,
                bottom=hap.eap_cpu_s,
                color=METHOD_STYLE["HAP"]["color"],
                label="HAP: pruning stage",
            )
            left.axhline(ep.cpu_s, color=METHOD_STYLE["EP"]["color"], ls="--", label="Edge Pruning")
            left.set_xlabel("k = EAP subgraph edges (fraction of |E|)")
            left.set_ylabel("CPU seconds (1 thread)")
            left.set_title(f"runtime vs k: {task} ({model})")
            left.set_ylim(0, 1.3 * max(ep.cpu_s, hap.cpu_s.max()))
            left.legend(frameon=False, loc="upper left", ncol=2, fontsize=7)
            right.plot(hap.subgraph_edges, hap.kl, label="HAP", **METHOD_STYLE["HAP"])
            right.axhline(ep.kl, color=METHOD_STYLE["EP"]["color"], ls="--", label="Edge Pruning")
            eap = matched[
                (matched.model == model)
                & (matched.task == task)
                & (matched.label == "EAP")
                & (matched.n_train == matched.n_train.max())
                & (matched.matched_n_edges == int(ep.edges))
            ]
            if not eap.empty:
                right.axhline(
                    eap.kl.iloc[0], color=METHOD_STYLE["EAP"]["color"], ls=":", label="EAP"
                )
            right.set_ylim(bottom=0)
            right.set_xticks(list(hap.subgraph_edges))
            right.set_xlabel("k = EAP subgraph edges")
            right.set_ylabel("KL(full ‖ circuit)")
            right.set_title(f"faithfulness at {int(ep.edges)} edges (Edge Pruning's count)")
            for ax in (left, right):
                ax.grid(alpha=0.3, lw=0.5, axis="y")
            right.legend(frameon=False, fontsize=7)
        figure.tight_layout()
    return figure


# -- entry point ---------------------------------------------------------------------------------


def write_all(args: argparse.Namespace) -> None:
    runs = collect(args)
    paper = load_paper()
    tables, figures = Path(args.tables), Path(args.figures)

    table1 = hap_table1(runs, args, paper)
    ours = table1[table1.source == "ours"]
    speedups = ours[ours.method == "HAP"].speedup_vs_ep
    cpu_speedups = ours[ours.method == "HAP"].cpu_speedup_vs_ep
    save_table(
        table1,
        tables / "hap_table1",
        "HAP Table 1: EAP, Edge Pruning and HAP at matched edge sparsity",
        "EAP and HAP are cut to the edge count the reference Edge Pruning run achieved "
        f"(target {args.edge_target}); HAP keeps the top {args.keep_fraction:.0%} EAP edges. "
        "Test split, interchange ablation with the task's corruption; accuracy = argmax is the "
        "answer; KL(full || circuit) at the prediction position over the full vocabulary. "
        "runtime_s: discovery seconds on this machine excluding model loading and evaluation "
        "(EAP: scoring; EP: caching + training; HAP: EAP + its pruning stage); cpu_s: the same "
        "stages in process CPU seconds (1 thread), robust to other jobs on a shared machine. "
        "matched: within "
        "±0.5 points of EP's sparsity. " + CONVENTION_NOTE + " Paper rows: GPT-2 small, IOI, "
        "one H100 [secondary]. "
        + (
            f"Mean HAP speed-up over EP here: {speedups.mean():.2f}x wall-clock, "
            f"{cpu_speedups.mean():.2f}x CPU."
            if not speedups.empty
            else ""
        ),
        [
            "model",
            "task",
            "method",
            "source",
            "edges",
            "edge_sparsity",
            "matched",
            "accuracy",
            "logit_diff",
            "kl",
            "runtime_s",
            "speedup_vs_ep",
            "cpu_s",
            "cpu_speedup_vs_ep",
        ],
    )
    table2 = hap_table2(runs, args, paper)
    shown = ["model", "task", "head", "pp_role", "ioi_classes", "EAP", "EAP-IG", "EP", "HAP"]
    shown = [c for c in shown if c in table2.columns]
    save_table(
        table2,
        tables / "hap_table2",
        "HAP Table 2: heads of the dense path-patching circuit each method keeps",
        "Heads of the PP reference circuit (results/<model>/<task>/pp) with the role they were "
        "selected for ('logits': direct effect; a{l}.h{h}<q|k|v>: the receiver input), and "
        "whether each edge circuit at matched sparsity retains them (a head is retained if it "
        "sends an in-circuit edge after dangling edges are pruned: hap.retained_head_rule). "
        "'all kept' lists every head the circuit keeps. On IOI the table also lists every head "
        "the mechanism stage assigns an IOI class (docs/mechanisms.md), in the PP circuit or "
        "not. Paper rows: GPT-2 small's S-inhibition heads [secondary].",
        shown,
    )
    table_ep = ep_table1(runs, args, paper)
    save_table(
        table_ep,
        tables / "ep_table1",
        "Edge Pruning Table 1: KL at matched sparsity vs the number of training examples",
        "Ours: Edge Pruning at the reference target trained on the first n training prompts, and "
        "EAP scored on the same prompts cut to EP's edge count; KL on the test split; runtimes "
        "exclude model loading. The paper's rows are GPT-2 small on multi-template IOI at "
        "96.6 ± 0.1% sparsity, one H100 (runtimes at 200 examples only). ACDC is not run here. "
        + CONVENTION_NOTE,
        [
            "model",
            "task",
            "n_train",
            "source",
            "ep_edge_sparsity",
            "acdc_kl",
            "eap_kl",
            "ep_kl",
            "eap_runtime_s",
            "ep_runtime_s",
            "acdc_runtime_s",
        ],
    )
    k_table = hap_k_table(runs, args)
    if not k_table.empty:
        save_table(
            k_table,
            tables / "hap_k_sweep",
            "HAP: sensitivity to the EAP subgraph size k",
            "HAP with the top-k EAP edges (k = keep_fraction x |E|), discretized to the "
            "reference Edge Pruning run's edge count; EP's row for comparison. Test split.",
        )
        save_figure(k_sweep_figure(k_table, runs["matched"]), figures / "hap_k_sweep")
    save_figure(sparsity_figure(runs, args, "kl"), figures / "ep_kl_sparsity")
    save_figure(sparsity_figure(runs, args, "logit_diff"), figures / "ep_metric_sparsity")
    log.info("wrote HAP / Edge Pruning tables to %s and figures to %s", tables, figures)
