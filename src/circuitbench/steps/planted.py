"""Steps of the planted stage: ground-truth circuits and how each method recovers them.

- ``planted-build``: build one planted model (hand-set weights, its tokenizer, task data, true
  edge set), load it back through TransformerBridge and verify the truth with the patched
  forward; the step fails if the truth does not hold.
- ``planted-run``: run discovery methods (from the registry, one or more, in one process) on one
  planted model, score each circuit against the truth (:func:`circuitbench.recovery.recovery`)
  and evaluate its faithfulness.
- ``planted-report``: the recovery table, the truth table and the figure.

**Circuit size.** Path patching, APP, FLAP and C-FLAP choose their own circuit. EAP, EAP-IG,
Edge Pruning and HAP need a size: ``planted.circuit_edges``, by default the number of true
edges (an oracle budget). EAP and EAP-IG are cut to the top-n edges whose count after dangling
pruning is closest to it; Edge Pruning trains toward its sparsity and keeps what its own
threshold search keeps; HAP trains toward it inside its EAP subgraph and is cut to it.

A method's options reach ``planted-run`` as its config sections (``{section: keys}``, the
planted models' overrides applied); the recovery row records them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitbench.evaluate import EvaluationOptions, evaluate_graph
from circuitbench.graph import Graph
from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
)
from circuitbench.methods.base import MethodData
from circuitbench.methods.registry import METHODS, method_options
from circuitbench.models.loading import load_patched_model
from circuitbench.models.planted import SPECS, PlantedOptions, verify_truth, write_planted
from circuitbench.options import from_options
from circuitbench.patching import Ablation
from circuitbench.plan import PLAN_KEYS
from circuitbench.recovery import recovery, roc_curves
from circuitbench.report.planted import write_report
from circuitbench.steps.common import add_flags, set_threads
from circuitbench.tasks import SPLITS, read_task_data

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "planted-build": "build a planted ground-truth model, its data and true edges; verify them",
    "planted-run": "run discovery methods on a planted model and score them against the truth",
    "planted-report": "planted recovery table (CSV, Markdown, LaTeX) and figure (PNG, PDF)",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("planted-build", help=STEPS["planted-build"])
    p.add_argument("--name", required=True, choices=sorted(SPECS), help="planted model")
    p.add_argument("--seed", type=int, required=True, help="data and random distractors")
    add_flags(p, model=False, data=False, options="planted")

    p = sub.add_parser("planted-run", help=STEPS["planted-run"])
    p.add_argument("--build", required=True, type=Path, help="a planted-build directory")
    p.add_argument(
        "--method", required=True, nargs="+", choices=sorted(METHODS), help="one or more methods"
    )
    p.add_argument(
        "--out", required=True, nargs="+", type=Path, help="output directory per method, in order"
    )
    add_flags(
        p, model=False, data=False, out=False, options='planted, and "methods": {method: options}'
    )

    p = sub.add_parser("planted-report", help=STEPS["planted-report"])
    p.add_argument("--builds", required=True, nargs="+", type=Path, help="planted-build dirs")
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="planted-run dirs")
    p.add_argument("--table", required=True, type=Path, help="recovery table stem")
    p.add_argument("--truth-table", required=True, type=Path, help="truth table stem")
    p.add_argument("--figure", required=True, type=Path, help="figure stem")


def _planted_options(args: argparse.Namespace) -> PlantedOptions:
    section = dict(args.options.get("planted") or {})
    for key in PLAN_KEYS["planted"]:
        section.pop(key, None)
    return from_options(PlantedOptions, section, "planted")


def _heads_text(heads: dict[int, list[int]]) -> str:
    return " ".join(f"a{layer}.h{h}" for layer in sorted(heads) for h in heads[layer])


def planted_build(args: argparse.Namespace) -> None:
    options = _planted_options(args)
    set_threads(args)
    truth_options = options.truth
    with atomic_directory(args.out) as tmp:
        card = write_planted(args.name, tmp, options.sizes(), args.seed)
        _, model = load_patched_model(tmp / "model", args.device, args.dtype)
        truth = Graph.load(tmp / "truth.json")
        test = read_task_data(tmp / "data" / "test.json")
        started = time.perf_counter()
        check = verify_truth(
            model,
            test,
            truth,
            truth_options.criteria(),
            truth_options.other_edges,
            truth_options.other_examples,
        )
        check["wall_seconds"] = time.perf_counter() - started
        atomic_write_json(tmp / "verification.json", provenance(planted=args.name, **check))
        weakest = min(check["edges"], key=lambda e: min(e["drop_from_truth"], e["drop_from_full"]))
        row = {
            "planted": args.name,
            "structure": card["structure"],
            "n_layers": card["architecture"]["n_layers"],
            "n_heads": card["architecture"]["n_heads"],
            "d_model": card["architecture"]["d_model"],
            "n_edges": check["n_edges"],
            "n_true_edges": check["n_true_edges"],
            "true_heads": _heads_text(truth.heads()),
            "true_edges": " ".join(card["truth_edges"]),
            "n_test": check["n_examples"],
            "accuracy": check["accuracy"],
            "full_metric": check["full_metric"],
            "corrupt_metric": check["corrupt_metric"],
            "truth_faithfulness": check["truth_faithfulness"],
            "min_degradation": check["min_degradation"],
            "weakest_true_edge": weakest["edge"],
            "max_other_effect": check["max_other_effect"],
            "max_other_item": check["max_other_item"],
            "other_edges": check["other_edges"],
            "other_examples": check["other_examples"],
            "passed": check["passed"],
            "criteria": json.dumps(check["criteria"], sort_keys=True),
            "ablation": "interchange",
            "corruption": "resample",
            "seed": args.seed,
            "device": str(model.device),
            "dtype": args.dtype,
            "package_version": provenance()["package_version"],
        }
        atomic_write_text(tmp / "truth.csv", csv_text([row]))
        if not check["passed"]:
            failed = [name for name, ok in check["checks"].items() if not ok]
            raise RuntimeError(
                f"planted model {args.name}: the truth does not verify ({', '.join(failed)}): "
                f"{json.dumps({k: check[k] for k in failed}, default=str)}"
            )
    log.info(
        "planted %s: %d true edges, truth faithfulness %.4f, min degradation %.3f, largest "
        "effect outside the truth %.2e (%s)",
        args.name,
        row["n_true_edges"],
        row["truth_faithfulness"],
        row["min_degradation"],
        row["max_other_effect"],
        row["max_other_item"],
    )


def planted_run(args: argparse.Namespace) -> None:
    """Each ``--method`` on one planted model, in one process (the model, the data and the test
    cache are loaded once; a job per method would spend most of its time importing)."""
    if len(args.method) != len(args.out) or len(set(args.method)) != len(args.method):
        raise SystemExit("planted-run: give distinct methods and one --out per method, in order")
    given = args.options.get("methods") or {}
    unknown = sorted(set(given) - set(args.method))
    if unknown:
        raise SystemExit(f"planted-run: --options names methods not run: {', '.join(unknown)}")
    planted = _planted_options(args)
    # Every method's options parse before any model loads.
    options = {m: method_options(m, given.get(m) or {}) for m in args.method}
    evaluation = from_options(EvaluationOptions, args.options.get("evaluation"), "evaluation")
    set_threads(args)
    card = json.loads((args.build / "card.json").read_text(encoding="utf-8"))
    truth = Graph.load(args.build / "truth.json")
    splits = {s: read_task_data(args.build / "data" / f"{s}.json") for s in SPLITS}
    manifest, model = load_patched_model(args.build / "model", args.device, args.dtype)
    corruption = splits["test"].meta["task_options"]["corruption"]
    circuit_edges = (
        truth.n_edges_in_graph if planted.circuit_edges == "truth" else int(planted.circuit_edges)
    )
    cache = model.build_cache(
        splits["test"], Ablation.INTERCHANGE, corruption, batch_size=evaluation.batch_size
    )
    data = MethodData(
        train=splits["train"],
        validation=splits["validation"],
        corruption=corruption,
        circuit_edges=circuit_edges,
        progress=False,
    )
    for name, out in zip(args.method, args.out, strict=True):
        run = PlantedRun(card, splits, data, dict(given.get(name) or {}))
        _run_one(model, manifest, truth, run, name, options[name], cache, args, out)


@dataclass(frozen=True)
class PlantedRun:
    """One method's run on a planted model: the model card, the splits, what the method gets,
    and its options as given (recorded in the row)."""

    card: dict[str, Any]
    splits: dict[str, Any]
    data: MethodData
    given: dict[str, Any]


def _run_one(model, manifest, truth: Graph, run: PlantedRun, method, options, cache, args, out):
    torch.manual_seed(0)
    result = METHODS[method](model, run.data, options)
    graph, cost = result.graph, result.cost
    evaluation = evaluate_graph(model, cache, graph)
    card = run.card
    planted, seed, corruption = card["name"], int(card["seed"]), run.data.corruption
    graph.meta = provenance(
        model=manifest["name"],
        planted=planted,
        task="planted",
        seed=seed,
        corruption=corruption,
        options=run.given,
        **{"method": method, **graph.meta},
    )
    scores = recovery(graph, truth)
    found_heads = graph.heads()
    meta = graph.meta
    subgraph_true: int | str = ""
    if "subgraph" in meta:  # HAP: how many true edges its EAP filter let through
        subgraph_true = sum(bool(truth.edge_in_graph[w, r]) for w, r in meta["subgraph"])
    row = {
        "planted": planted,
        "structure": card["structure"],
        "method": method,
        "level": meta.get("level", "edge"),
        "n_edges": model.shape.n_edges,
        **scores,
        "edge_sparsity": 1 - scores["edges_found"] / model.shape.n_edges,
        "circuit_rule": meta.get("circuit_rule", ""),
        "circuit_edges": meta.get("circuit_edges", ""),
        "ep_target": meta.get("target", ""),
        "final_sampled_sparsity": meta.get("final_sampled_sparsity", ""),
        "subgraph_edges": meta.get("subgraph_edges", ""),
        "subgraph_true_edges": subgraph_true,
        "found_heads": _heads_text(found_heads),
        "true_heads": _heads_text(truth.heads()),
        "circuit_faithfulness": evaluation["faithfulness"],
        "circuit_kl": evaluation["kl"],
        "circuit_accuracy": evaluation["accuracy"],
        "ablation": "interchange",
        "edge_convention": "mib (dangling edges pruned)",
        "ranking": meta.get("score_ranking", "absolute"),
        "edge_score_kind": meta.get("edge_score_kind", ""),
        "method_wall_seconds": cost["wall_seconds"],
        "method_cpu_seconds": cost["cpu_seconds"],
        "method_forward_passes": cost["forward_passes"],
        "method_peak_memory_mb": cost["peak_memory_mb"],
        "n_train": len(run.splits["train"]),
        "n_validation": len(run.splits["validation"]),
        "n_test": len(run.splits["test"]),
        "corruption": corruption,
        "seed": seed,
        "options": json.dumps(run.given, sort_keys=True),
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": meta["package_version"],
    }
    with atomic_directory(out) as tmp:
        graph.save(tmp / "circuit.json")
        atomic_write_text(tmp / "recovery.csv", csv_text([row]))
        atomic_write_json(
            tmp / "roc.json",
            provenance(planted=planted, method=method, curves=roc_curves(graph, truth)),
        )
    log.info(
        "planted %s, %s: %d edges, P %.2f R %.2f IoU %.2f; heads P %.2f R %.2f IoU %.2f; "
        "edge AUC %s, head AUC %s; circuit faithfulness %.3f (%.1f s, %.1f s CPU)",
        planted,
        method,
        row["edges_found"],
        row["edges_precision"],
        row["edges_recall"],
        row["edges_iou"],
        row["heads_precision"],
        row["heads_recall"],
        row["heads_iou"],
        "n/a" if math.isnan(row["edge_auc"]) else f"{row['edge_auc']:.3f}",
        "n/a" if math.isnan(row["head_auc"]) else f"{row['head_auc']:.3f}",
        row["circuit_faithfulness"],
        cost["wall_seconds"],
        cost["cpu_seconds"],
    )


def planted_report(args: argparse.Namespace) -> None:
    write_report(args.builds, args.runs, args.table, args.truth_table, args.figure)
