"""The dense path-patching step: APP's 16-configuration grid and selection give the reference
circuit every APP result is measured against; it is reported on the test split."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph
from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
)
from circuitbench.methods.registry import METHODS, method_options
from circuitbench.patching import Ablation, MeanScope, PatchedModel
from circuitbench.steps.common import add_flags, method_data, read_splits, setup
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)

STEPS = {
    "path-patching": "dense automated path patching: APP's 16-configuration grid and selection",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("path-patching", help=STEPS["path-patching"])
    add_flags(p, options="path_patching")


def head_names(heads: dict[int, list[int]]) -> str:
    return " ".join(f"{layer}.{h}" for layer in sorted(heads) for h in heads[layer])


def roles_text(roles: dict[str, list[str]]) -> str:
    return "; ".join(f"{h}: {', '.join(r) or 'early stop'}" for h, r in roles.items())


def app_protocol(model: PatchedModel, test: TaskData, corruption: str, batch_size: int):
    """APP's evaluation on the test split: mean ablation of what is outside the circuit, means
    per template within batches of ``batch_size``. Returns ``heads -> metrics row``; each
    distinct head set is evaluated once."""
    cache = model.build_cache(test, Ablation.MEAN, corruption, MeanScope.BATCH_TEMPLATE, batch_size)
    memo: dict[tuple, dict[str, Any]] = {}

    def evaluate(heads: dict[int, list[int]]) -> dict[str, Any]:
        key = tuple((layer, h) for layer in sorted(heads) for h in sorted(heads[layer]))
        if key not in memo:
            memo[key] = evaluate_graph(model, cache, Graph.from_heads(model.shape, heads))
        return memo[key]

    return evaluate


def grid_cost(record: dict[str, Any]) -> dict[str, Any]:
    """The cost columns of a path-patching grid (APP's accounting and what ran here)."""
    return {
        "grid_forward_passes_app": sum(r["forward_passes_app"] for r in record["runs"]),
        "grid_flops_app": sum(r["flops_app"] for r in record["runs"]),
        "forward_passes_actual": record["scorer_cost"]["forward_passes_actual"],
        "flops_actual": record["scorer_cost"]["flops_actual"],
        "measurements": record["scorer_cost"]["measurements"],
        "grid_wall_seconds": record["wall_seconds"],
        "implementation": record["implementation"],
    }


def path_patching(args: argparse.Namespace) -> None:
    options = method_options("path_patching", args.options)
    splits = read_splits(args.data)
    manifest, model = setup(args)
    data = method_data(splits)
    result = METHODS["path_patching"](model, data, options)
    record = result.record
    section = options["path_patching"]
    chosen = record["runs"][record["chosen"]]
    heads = {int(layer): hs for layer, hs in chosen["heads"].items()}
    evaluate_test = app_protocol(model, splits["test"], data.corruption, section.eval_batch_size)
    test_eval = evaluate_test(heads)
    discovery = data.train
    meta = provenance(
        model=manifest["name"],
        task=discovery.task,
        method="path_patching",
        config=chosen["config"],
        selection=record["selection"],
        heads={str(k): v for k, v in heads.items()},
        roles=chosen["roles"],
        seed=discovery.meta.get("seed"),
        corruption=data.corruption,
        n_discovery=record["n_discovery"],
    )
    graph = Graph.from_heads(model.shape, heads, meta=meta)
    summary = {
        "model": manifest["name"],
        "task": discovery.task,
        "method": "path_patching",
        "config": chosen["name"],
        "size": chosen["size"],
        "head_sparsity": 1 - chosen["size"] / (model.shape.n_layers * model.shape.n_heads),
        "heads": head_names(heads),
        "roles": roles_text(chosen["roles"]),
        "validation_performance": chosen["performance"],
        "test_performance": test_eval["app_performance"],
        "test_faithfulness": test_eval["faithfulness"],
        "early_stopped": chosen["early_stopped"],
        **grid_cost(record),
        "n_discovery": record["n_discovery"],
        "corruption": data.corruption,
        "seed": discovery.meta.get("seed"),
        "package_version": meta["package_version"],
    }
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "grid.json", record)
        graph.save(tmp / "circuit.json")
        atomic_write_text(tmp / "summary.csv", csv_text([summary]))
    log.info(
        "%s %s: path-patching circuit of %d heads (%s), test performance %.1f%%",
        summary["model"],
        summary["task"],
        summary["size"],
        summary["heads"],
        summary["test_performance"],
    )
