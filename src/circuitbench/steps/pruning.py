"""Steps of the stage: FLAP / Contrastive-FLAP pruning sweeps, cliff selection, merged head sets and
APP (issue 5).

- ``prune``: FLAP and C-FLAP rankings, both sparsity sweeps, the cliff of every rule, the kept head
  set of each method and their union, each evaluated on the test split;
- ``app``: path patching restricted to the merged head set (APP's grid and selection);
- ``report-app``: APP's Table 2 per model, the speed-up table and figure, the sweep figure.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.steps.core import csv_text, load_patched_model, read_task_data

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "prune": "FLAP and Contrastive-FLAP head rankings, sparsity sweeps, cliffs, merged head set",
    "app": "APP: path patching restricted to the merged FLAP/C-FLAP heads (16-config grid)",
    "report-app": "APP's Table 2 (paper vs ours), speed-up table and figure, sweep figure",
}

METHOD_NAMES = {"flap": "FLAP", "cflap": "C-FLAP", "merged": "Merged"}


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, text: str) -> None:
    parser.add_argument(
        f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=text
    )


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--data", required=True, type=Path, help="task data directory (the splits)")
    p.add_argument("--corruption", help="corruption variant (default: the task's configured one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    from circuitbench.methods.flap import CliffRule, KeepRule, Metric

    p = sub.add_parser("prune", help=STEPS["prune"])
    _model_arguments(p)
    p.add_argument("--n-calibration", type=int, default=200)
    p.add_argument("--calibration-split", default="train", choices=["train", "validation"])
    _bool_flag(p, "calibration-includes-answer", True, "append the answer token (APP)")
    _bool_flag(p, "mask-padding", False, "leave padded positions out of the statistics")
    p.add_argument("--keep-rule", default="app", choices=[r.value for r in KeepRule])
    p.add_argument("--vanilla-metric", default="WIFV", choices=[m.value for m in Metric])
    p.add_argument("--contrastive-metric", default="WIFN", choices=[m.value for m in Metric])
    p.add_argument("--cliff-rule", default="first", choices=[r.value for r in CliffRule])
    p.add_argument("--sweep-low", type=float, default=0.60)
    p.add_argument("--sweep-high", type=float, default=0.99, help="exclusive")
    p.add_argument("--sweep-step", type=float, default=0.01)
    p.add_argument("--fixed-sparsity", type=float, default=0.75)
    p.add_argument("--eval-batch-size", type=int, default=25)

    p = sub.add_parser("app", help=STEPS["app"])
    _model_arguments(p)
    p.add_argument("--pruning", required=True, type=Path, help="the prune step's directory")
    p.add_argument("--n-prompts", type=int, default=100, help="discovery prompts (train split)")
    p.add_argument("--threshold-mode", default="sqrt", choices=["sqrt", "linear"])
    p.add_argument("--missing-scores", default="zero", choices=["zero", "exclude"])
    p.add_argument("--min-performance", type=float, default=75.0)
    p.add_argument("--max-size-fraction", type=float, default=0.5)
    p.add_argument("--eval-batch-size", type=int, default=25)
    p.add_argument("--implementation", default="batched", choices=["batched", "oracle"])

    p = sub.add_parser("report-app", help=STEPS["report-app"])
    p.add_argument(
        "--runs", required=True, nargs="+", type=Path, help="results/<model>/<task> directories"
    )
    p.add_argument(
        "--paper-models",
        type=json.loads,
        default={},
        help='JSON {model: paper model}, e.g. {"toy-4l8h": "GPT-2 small"} (default GPT-2 small)',
    )
    _bool_flag(p, "cost-includes-pruning", True, "headline speed-up counts the pruning stage")
    p.add_argument("--tables", type=Path, default=Path("results/tables"), help="table directory")
    p.add_argument("--figures", type=Path, default=Path("figures"), help="figure directory")


# -- shared -------------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    """Threads, then the model's manifest and patched model."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_patched_model(args.model, args.device, args.dtype)


def head_names(heads: list) -> str:
    return " ".join(f"{layer}.{head}" for layer, head in sorted(tuple(h) for h in heads))


def head_dict(heads: list) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in sorted(tuple(h) for h in heads):
        out.setdefault(int(layer), []).append(int(head))
    return out


def _test_evaluation(model, test, corruption: str, batch_size: int):
    """APP's protocol on the test split: ``heads -> metrics row``."""
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.graph import Graph
    from circuitbench.patching import Ablation, MeanScope

    cache = model.build_cache(test, Ablation.MEAN, corruption, MeanScope.BATCH_TEMPLATE, batch_size)

    memo: dict[tuple, dict[str, Any]] = {}

    def evaluate(heads: list) -> dict[str, Any]:
        key = tuple(sorted(tuple(h) for h in heads))
        if key not in memo:
            graph = Graph.from_heads(model.shape, head_dict(heads))
            memo[key] = evaluate_graph(model, cache, graph)
        return memo[key]

    return evaluate


# -- prune --------------------------------------------------------------------------------------


def prune(args: argparse.Namespace) -> None:
    from circuitbench.graph import Graph
    from circuitbench.methods import flap

    config = flap.FlapConfig(
        n_calibration=args.n_calibration,
        calibration_split=args.calibration_split,
        calibration_includes_answer=args.calibration_includes_answer,
        mask_padding=args.mask_padding,
        keep_rule=flap.KeepRule(args.keep_rule),
        vanilla_metric=flap.Metric(args.vanilla_metric),
        contrastive_metric=flap.Metric(args.contrastive_metric),
        cliff_rule=flap.CliffRule(args.cliff_rule),
        sweep=flap.Sweep(args.sweep_low, args.sweep_high, args.sweep_step),
        fixed_sparsity=args.fixed_sparsity,
        eval_batch_size=args.eval_batch_size,
    )
    directory = Path(args.data)
    calibration = read_task_data(directory / f"{config.calibration_split}.json")
    validation = read_task_data(directory / "validation.json")
    test = read_task_data(directory / "test.json")
    manifest, model = _load(args)
    corruption = args.corruption or calibration.meta["task_options"].get("corruption")
    record = flap.run_pruning(model, calibration, validation, corruption, config)
    n_heads = model.shape.n_layers * model.shape.n_heads
    methods = record["methods"]
    heads = {m: [tuple(h) for h in methods[m]["heads"]] for m in flap.METHODS}
    heads["merged"] = [tuple(h) for h in record["merged"]["heads"]]
    evaluate_test = _test_evaluation(model, test, corruption, config.eval_batch_size)
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
        row = evaluate_test(kept)
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
    from circuitbench.graph import Graph
    from circuitbench.methods import app as app_method
    from circuitbench.methods import path_patching as pp

    merged_graph = Graph.load(args.pruning / "merged.json")
    pruning_meta = merged_graph.meta
    merged = [(int(layer), head) for layer, hs in pruning_meta["heads"].items() for head in hs]
    directory = Path(args.data)
    discovery = read_task_data(directory / "train.json").select(slice(0, args.n_prompts))
    validation = read_task_data(directory / "validation.json")
    test = read_task_data(directory / "test.json")
    manifest, model = _load(args)
    corruption = args.corruption or discovery.meta["task_options"].get("corruption")
    base = pp.PathPatchingConfig(
        threshold_mode=args.threshold_mode, missing_scores=args.missing_scores
    )
    rule = pp.SelectionRule(args.min_performance, args.max_size_fraction)
    record = app_method.run_app(
        model,
        discovery,
        validation,
        corruption,
        merged,
        base,
        rule,
        args.implementation,
        args.eval_batch_size,
    )
    chosen = record["runs"][record["chosen"]]
    heads = [(int(layer), h) for layer, hs in chosen["heads"].items() for h in hs]
    row = _test_evaluation(model, test, corruption, args.eval_batch_size)(heads)
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
        "roles": "; ".join(
            f"{h}: {', '.join(r) or 'early stop'}" for h, r in chosen["roles"].items()
        ),
        "search_space_size": len(merged),
        "search_space_reduction": 1 - len(merged) / n_heads,
        "search_space": head_names(merged),
        "validation_performance": chosen["performance"],
        "test_performance": row["app_performance"],
        "test_faithfulness": row["faithfulness"],
        "early_stopped": chosen["early_stopped"],
        "grid_forward_passes_app": sum(r["forward_passes_app"] for r in record["runs"]),
        "grid_flops_app": sum(r["flops_app"] for r in record["runs"]),
        "forward_passes_actual": record["scorer_cost"]["forward_passes_actual"],
        "flops_actual": record["scorer_cost"]["flops_actual"],
        "measurements": record["scorer_cost"]["measurements"],
        "grid_wall_seconds": record["wall_seconds"],
        "implementation": record["implementation"],
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


def report_app(args: argparse.Namespace) -> None:
    from circuitbench.report.app import write_app_report

    write_app_report(
        args.runs, args.paper_models, args.cost_includes_pruning, args.tables, args.figures
    )
