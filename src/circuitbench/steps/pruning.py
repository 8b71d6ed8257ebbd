"""Steps of the APP stage: FLAP / Contrastive-FLAP pruning sweeps, cliff selection, merged head
sets and APP.

- ``prune``: FLAP and C-FLAP rankings, both sparsity sweeps, the cliff of every rule, the kept head
  set of each method and their union, each evaluated on the test split;
- ``app``: path patching restricted to the merged head set (APP's grid and selection);
- ``app-report``: APP's Table 2 per model, the speed-up table and figure, the sweep figure.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from circuitbench.graph import Graph
from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
)
from circuitbench.methods import flap
from circuitbench.methods.app import AppOptions
from circuitbench.methods.registry import METHODS, method_options
from circuitbench.options import from_options, json_arg
from circuitbench.report.app import write_app_report
from circuitbench.steps.common import add_flags, method_data, read_splits, setup
from circuitbench.steps.path_patching import app_protocol, grid_cost, roles_text

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "prune": "FLAP and Contrastive-FLAP head rankings, sparsity sweeps, cliffs, merged head set",
    "app": "APP: path patching restricted to the merged FLAP/C-FLAP heads (16-config grid)",
    "app-report": "APP's Table 2 (paper vs ours), speed-up table and figure, sweep figure",
}

METHOD_NAMES = {"flap": "FLAP", "cflap": "C-FLAP", "merged": "Merged"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("prune", help=STEPS["prune"])
    add_flags(p, options="flap")

    p = sub.add_parser("app", help=STEPS["app"])
    p.add_argument("--pruning", required=True, type=Path, help="the prune step's directory")
    add_flags(p, options="path_patching, app")

    p = sub.add_parser("app-report", help=STEPS["app-report"])
    p.add_argument(
        "--runs", required=True, nargs="+", type=Path, help="results/<model>/<task> directories"
    )
    p.add_argument(
        "--paper-models",
        type=json_arg,
        default={},
        help='JSON {model: paper model}, e.g. {"toy-4l8h": "GPT-2 small"} (default GPT-2 small)',
    )
    p.add_argument("--tables", type=Path, default=Path("results/tables"), help="table directory")
    p.add_argument("--figures", type=Path, default=Path("figures"), help="figure directory")
    add_flags(p, model=False, data=False, out=False, runtime=False, options="app")


def head_names(heads: list) -> str:
    return " ".join(f"{layer}.{head}" for layer, head in sorted(tuple(h) for h in heads))


def head_dict(heads: list) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in sorted(tuple(h) for h in heads):
        out.setdefault(int(layer), []).append(int(head))
    return out


# -- prune --------------------------------------------------------------------------------------


def prune(args: argparse.Namespace) -> None:
    options = method_options("flap", args.options)
    config: flap.FlapConfig = options["flap"]
    splits = read_splits(args.data)
    validation, test = splits["validation"], splits["test"]
    manifest, model = setup(args)
    data = method_data(splits)
    corruption = data.corruption
    # FLAP and C-FLAP share one statistics pass: the FLAP entry's record holds both rankings,
    # both sweeps and their union.
    record = METHODS["flap"](model, data, options).record
    n_heads = model.shape.n_layers * model.shape.n_heads
    methods = record["methods"]
    heads = {m: [tuple(h) for h in methods[m]["heads"]] for m in flap.METHODS}
    heads["merged"] = [tuple(h) for h in record["merged"]["heads"]]
    evaluate_test = app_protocol(model, test, corruption, config.eval_batch_size)
    common = {
        "model": manifest["name"],
        "task": test.task,
        "corruption": corruption,
        "seed": test.meta.get("seed"),
        "n_heads": n_heads,
        **config.record(),
    }
    meta = provenance(**common, n_calibration=record["n_calibration"])
    summary, circuits = [], {}
    for method, kept in heads.items():
        row = evaluate_test(head_dict(kept))
        chosen = methods[method]["chosen"] if method in methods else None
        validation_row = (methods[method] if method in methods else record["merged"])["validation"]
        summary.append(
            {
                **{k: common[k] for k in ("model", "task")},
                "method": method,
                "split": test.split,
                "n_test": len(test),
                "metric": methods[method]["metric"] if method in methods else "union",
                "cliff_rule": str(config.cliff_rule),
                "cliff_ratio": chosen["ratio"] if chosen else float("nan"),
                "cliff_fallback": chosen["fallback"] if chosen else "",
                "size": len(kept),
                "head_sparsity": 1 - len(kept) / n_heads,
                "heads": head_names(kept),
                "validation_performance": validation_row["performance"],
                "test_performance": row["app_performance"],
                "test_faithfulness": row["faithfulness"],
                "test_metric": row["metric"],
                "test_full_metric": row["full_metric"],
                **{f"pruning_{k}": v for k, v in record["cost"].items()},
                **{k: v for k, v in common.items() if k not in ("model", "task")},
                "n_calibration": record["n_calibration"],
                "n_validation": record["n_validation"],
                "device": str(model.device),
                "dtype": args.dtype,
                "package_version": meta["package_version"],
            }
        )
        graph_meta = {
            **meta,
            "method": method,
            "heads": {str(k): v for k, v in head_dict(kept).items()},
        }
        if chosen:
            graph_meta["cliff"] = chosen
        circuits[method] = Graph.from_heads(model.shape, head_dict(kept), meta=graph_meta)
    sweep_rows = []
    for method in flap.METHODS:
        cliff_at: dict[float, list[str]] = {}  # by sparsity: 'fixed' and fallbacks have no index
        for rule, cliff in methods[method]["cliffs"].items():
            cliff_at.setdefault(round(cliff["ratio"], 10), []).append(rule)
        chosen_ratio = round(methods[method]["chosen"]["ratio"], 10)
        for point in methods[method]["points"]:
            sweep_rows.append(
                {
                    "model": common["model"],
                    "task": common["task"],
                    "method": method,
                    "split": validation.split,
                    "ratio": point["ratio"],
                    "size": point["size"],
                    "heads": head_names(point["heads"]),
                    "performance": point["performance"],
                    "faithfulness": point["faithfulness"],
                    "ld": point["metric"],
                    "cliff_rules": " ".join(cliff_at.get(round(point["ratio"], 10), [])),
                    "chosen": round(point["ratio"], 10) == chosen_ratio,
                    **{k: v for k, v in common.items() if k not in ("model", "task")},
                    "package_version": meta["package_version"],
                }
            )
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "sweep.json", {**meta, **record})
        atomic_write_text(tmp / "sweep.csv", csv_text(sweep_rows))
        atomic_write_text(tmp / "summary.csv", csv_text(summary))
        for method, graph in circuits.items():
            graph.save(tmp / f"{method}.json")
    for row in summary:
        log.info(
            "%s %s %s: %d heads (%s), cliff %.3f, test performance %.1f%%",
            row["model"],
            row["task"],
            METHOD_NAMES[row["method"]],
            row["size"],
            row["heads"] or "none",
            row["cliff_ratio"],
            row["test_performance"],
        )


# -- app ----------------------------------------------------------------------------------------


def app(args: argparse.Namespace) -> None:
    options = method_options("app", args.options)
    search, app_options = options["path_patching"], options["app"]
    merged_graph = Graph.load(args.pruning / "merged.json")
    pruning_meta = merged_graph.meta
    merged = [(int(layer), head) for layer, hs in pruning_meta["heads"].items() for head in hs]
    splits = read_splits(args.data)
    test = splits["test"]
    manifest, model = setup(args)
    data = method_data(splits, search_space=merged)
    corruption = data.corruption
    record = METHODS["app"](model, data, options).record
    rule = app_options.rule()
    base = search.base()
    discovery = data.train.select(slice(0, search.n_prompts))
    chosen = record["runs"][record["chosen"]]
    heads = [(int(layer), h) for layer, hs in chosen["heads"].items() for h in hs]
    row = app_protocol(model, test, corruption, search.eval_batch_size)(head_dict(heads))
    n_heads = model.shape.n_layers * model.shape.n_heads
    flap_keys = {k: v for k, v in pruning_meta.items() if k.startswith("flap.")}
    meta = provenance(
        model=manifest["name"],
        task=discovery.task,
        method="app",
        config=chosen["config"],
        selection=record["selection"],
        search_space=head_names(merged),
        heads={str(k): v for k, v in head_dict(heads).items()},
        roles=chosen["roles"],
        seed=discovery.meta.get("seed"),
        corruption=corruption,
        n_discovery=len(discovery),
        **flap_keys,
    )
    summary = {
        "model": manifest["name"],
        "task": discovery.task,
        "method": "app",
        "split": test.split,
        "n_test": len(test),
        "config": chosen["name"],
        "size": chosen["size"],
        "head_sparsity": 1 - chosen["size"] / n_heads,
        "heads": head_names(heads),
        "roles": roles_text(chosen["roles"]),
        "search_space_size": len(merged),
        "search_space_reduction": 1 - len(merged) / n_heads,
        "search_space": head_names(merged),
        "validation_performance": chosen["performance"],
        "test_performance": row["app_performance"],
        "test_faithfulness": row["faithfulness"],
        "early_stopped": chosen["early_stopped"],
        **grid_cost(record),
        "min_performance": rule.min_performance,
        "max_size_fraction": rule.max_size_fraction,
        "threshold_mode": base.threshold_mode,
        "missing_scores": base.missing_scores,
        "n_discovery": len(discovery),
        "n_heads": n_heads,
        "corruption": corruption,
        "seed": discovery.meta.get("seed"),
        **flap_keys,
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": meta["package_version"],
    }
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "grid.json", {**meta, **record})
        Graph.from_heads(model.shape, head_dict(heads), meta=meta).save(tmp / "circuit.json")
        atomic_write_text(tmp / "summary.csv", csv_text([summary]))
    log.info(
        "%s %s: APP circuit of %d heads (%s) in a search space of %d, test performance %.1f%%",
        summary["model"],
        summary["task"],
        summary["size"],
        summary["heads"] or "none",
        len(merged),
        summary["test_performance"],
    )


# -- report -------------------------------------------------------------------------------------


def app_report(args: argparse.Namespace) -> None:
    options = from_options(AppOptions, args.options.get("app"), "app")
    write_app_report(
        args.runs, args.paper_models, options.cost_includes_pruning, args.tables, args.figures
    )
