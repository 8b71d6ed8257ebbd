"""Steps of the stage: planted ground-truth circuits and how each method recovers them (issue 8).

- ``planted-build``: build one planted model (hand-set weights, its tokenizer, task data, true
  edge set), load it back through TransformerBridge and verify the truth with the patched
  forward; the step fails if the truth does not hold.
- ``planted-run``: run one discovery method on one planted model (:data:`METHODS`), score its
  circuit against the truth (:func:`circuitbench.recovery.recovery`) and evaluate its
  faithfulness.
- ``planted-report``: the recovery table, the truth table and the figure.

**Adding a method**: write ``def _my_method(model, run) -> Graph`` (``model`` a
:class:`~circuitbench.patching.PatchedModel`, ``run`` a :class:`PlantedRun`) that returns the
method's circuit with its scores: ``edge_in_graph`` the circuit, ``edge_scores`` its edge scores
and ``meta["edge_score_universe"]`` (``all``) if it has continuous edge scores, the heads'
``node_scores`` if it scores heads, and ``meta`` with its provenance. Add it to :data:`METHODS`;
then name it in ``config.yaml`` ``planted.methods`` and map it to its option section in
``workflow/rules/planted.smk`` ``PLANTED_METHOD_OPTIONS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitbench.graph import Graph
from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.tasks import SPLITS, TaskData

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "planted-build": "build a planted ground-truth model, its data and true edges; verify them",
    "planted-run": "run one discovery method on a planted model and score it against the truth",
    "planted-report": "planted recovery table (CSV, Markdown, LaTeX) and figure (PNG, PDF)",
}


@dataclass(frozen=True)
class PlantedRun:
    """What a method gets besides the model: the planted model's splits and the method's options
    (``config.yaml``'s section for that method, as JSON)."""

    planted: str
    splits: dict[str, TaskData]
    corruption: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> TaskData:
        return self.splits["train"]

    @property
    def validation(self) -> TaskData:
        return self.splits["validation"]

    @property
    def test(self) -> TaskData:
        return self.splits["test"]


# -- methods ------------------------------------------------------------------------------------


def _path_patching(model, run: PlantedRun) -> Graph:
    """Dense automated path patching: APP's 16-configuration grid and selection give the circuit
    (node-induced edges of the chosen heads). Its scores are every measurement the grid's
    searches made (step 0: each head into the logits; each visited receiver: each earlier head
    into its q, k and v), as edge scores over the ``head_paths`` universe (a path no search
    measured scores 0), and each head's largest ``|score|`` as its node score."""
    from circuitbench.methods import path_patching as pp

    options = run.options
    discovery = run.train.select(slice(0, int(options.get("n_prompts", 100))))
    base = pp.PathPatchingConfig(
        threshold_mode=options.get("threshold_mode", "sqrt"),
        missing_scores=options.get("missing_scores", "zero"),
    )
    rule = pp.SelectionRule(
        float(options.get("min_performance", 73.0)),
        float(options.get("max_size_fraction", 0.25)),
    )
    record = pp.run_grid(
        model,
        discovery,
        run.validation,
        run.corruption,
        None,
        base,
        rule,
        "batched",
        int(options.get("eval_batch_size", 25)),
        progress=False,
    )
    return _graph_from_grid(model, record, "path_patching", len(discovery))


def _graph_from_grid(model, record: dict[str, Any], method: str, n_discovery: int) -> Graph:
    """The chosen circuit of a path-patching grid (dense or APP's) with every measured path's
    score as its edge score and each head's largest ``|score|`` as its node score."""
    from circuitbench.methods import path_patching as pp

    chosen = record["runs"][record["chosen"]]
    heads = {int(layer): hs for layer, hs in chosen["heads"].items()}
    shape = model.shape
    graph = Graph.from_heads(shape, heads)
    graph.edge_scores = torch.zeros_like(graph.edge_scores)
    receivers = {pp.RESID: shape.logits_receiver}
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            for rho in pp.QKV:
                receivers[f"a{layer}.h{h}<{rho}>"] = shape.qkv_receiver(layer, h, rho)
    measured = torch.zeros_like(graph.edge_in_graph)
    for search in record["runs"]:
        for step in search["steps"]:
            port = receivers[step["receiver"]]
            for layer, row in enumerate(step["scores"]):
                for h, value in enumerate(row):
                    if not math.isnan(value):
                        writer = shape.head_writer(layer, h)
                        graph.edge_scores[writer, port] = value
                        measured[writer, port] = True
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            writer = shape.head_writer(layer, h)
            graph.node_scores[writer] = graph.edge_scores[writer].abs().max()
    graph.meta = {
        "method": method,
        "level": "head",
        "edge_score_universe": "head_paths",
        "n_measured_paths": int(measured.sum()),
        "config": chosen["config"],
        "selection": record["selection"],
        "heads": {str(k): v for k, v in heads.items()},
        "roles": chosen["roles"],
        "validation_performance": chosen["performance"],
        "n_discovery": n_discovery,
        "grid_sizes": [r["size"] for r in record["runs"]],
        "scorer_cost": record["scorer_cost"],
    }
    return graph


def _flap_config(options: dict[str, Any]):
    from circuitbench.methods import flap

    defaults = flap.FlapConfig()
    sweep = {**vars(defaults.sweep), **(options.get("sweep") or {})}
    return flap.FlapConfig(
        n_calibration=int(options.get("n_calibration", defaults.n_calibration)),
        calibration_split=options.get("calibration_split", defaults.calibration_split),
        calibration_includes_answer=bool(
            options.get("calibration_includes_answer", defaults.calibration_includes_answer)
        ),
        mask_padding=bool(options.get("mask_padding", defaults.mask_padding)),
        keep_rule=flap.KeepRule(options.get("keep_rule", defaults.keep_rule)),
        vanilla_metric=flap.Metric(options.get("vanilla_metric", defaults.vanilla_metric)),
        contrastive_metric=flap.Metric(
            options.get("contrastive_metric", defaults.contrastive_metric)
        ),
        cliff_rule=flap.CliffRule(options.get("cliff_rule", defaults.cliff_rule)),
        sweep=flap.Sweep(float(sweep["low"]), float(sweep["high"]), float(sweep["step"])),
        fixed_sparsity=float(options.get("fixed_sparsity", defaults.fixed_sparsity)),
        eval_batch_size=int(options.get("eval_batch_size", defaults.eval_batch_size)),
    )


def _pruning(model, run: PlantedRun) -> dict[str, Any]:
    from circuitbench.methods import flap

    config = _flap_config(run.options)
    calibration = run.splits[config.calibration_split]
    return flap.run_pruning(model, calibration, run.validation, run.corruption, config, False)


def _pruned_heads(model, run: PlantedRun, method: str) -> Graph:
    """FLAP (``flap``) or Contrastive-FLAP (``cflap``): the head set at the method's cliff, with
    its standardized head scores as node scores (head ROC; no edge scores)."""
    record = _pruning(model, run)
    chosen = record["methods"][method]
    heads: dict[int, list[int]] = {}
    for layer, head in chosen["heads"]:
        heads.setdefault(int(layer), []).append(int(head))
    shape = model.shape
    graph = Graph.from_heads(shape, heads)
    for layer, row in enumerate(chosen["scores"]):
        for head, value in enumerate(row):
            graph.node_scores[shape.head_writer(layer, head)] = float(value)
    graph.meta = {
        "method": method,
        "level": "head",
        "score_ranking": "signed",  # FLAP keeps the highest standardized head scores
        "heads": {str(k): v for k, v in heads.items()},
        "cliff": chosen["chosen"],
        "flap_config": _flap_config(run.options).record(),
    }
    return graph


def _flap(model, run: PlantedRun) -> Graph:
    return _pruned_heads(model, run, "flap")


def _cflap(model, run: PlantedRun) -> Graph:
    return _pruned_heads(model, run, "cflap")


def _app(model, run: PlantedRun) -> Graph:
    """APP: FLAP and C-FLAP (config section ``flap``, under the options' ``flap`` key), then the
    path-patching grid restricted to their union with APP's selection rule (the options' ``app``
    and ``path_patching`` keys). Scores are the grid's measurements, as for path patching."""
    from circuitbench.methods import path_patching as pp
    from circuitbench.methods.app import run_app

    options = run.options
    pruning = _pruning(model, PlantedRun(**{**vars(run), "options": options.get("flap", {})}))
    merged = [tuple(head) for head in pruning["merged"]["heads"]]
    search = options.get("path_patching", {})
    app = options.get("app", {})
    discovery = run.train.select(slice(0, int(search.get("n_prompts", 100))))
    record = run_app(
        model,
        discovery,
        run.validation,
        run.corruption,
        merged,
        pp.PathPatchingConfig(
            threshold_mode=search.get("threshold_mode", "sqrt"),
            missing_scores=search.get("missing_scores", "zero"),
        ),
        pp.SelectionRule(
            float(app.get("min_performance", 75.0)), float(app.get("max_size_fraction", 0.5))
        ),
        eval_batch_size=int(search.get("eval_batch_size", 25)),
        progress=False,
    )
    graph = _graph_from_grid(model, record, "app", len(discovery))
    graph.meta["merged"] = [list(head) for head in merged]
    return graph


# A method: (PatchedModel, PlantedRun) -> Graph with its circuit and scores (module doc).
METHODS: dict[str, Callable[[Any, PlantedRun], Graph]] = {
    "path_patching": _path_patching,
    "flap": _flap,
    "cflap": _cflap,
    "app": _app,
}


# -- steps --------------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    from circuitbench.models.planted import SPECS, TruthCriteria

    defaults = TruthCriteria()
    p = sub.add_parser("planted-build", help=STEPS["planted-build"])
    p.add_argument("--name", required=True, choices=sorted(SPECS), help="planted model")
    p.add_argument("--seed", type=int, required=True, help="data and random distractors")
    p.add_argument("--n-train", type=_non_negative, required=True)
    p.add_argument("--n-validation", type=_non_negative, required=True)
    p.add_argument("--n-test", type=_non_negative, required=True)
    p.add_argument("--min-faithfulness", type=float, default=defaults.min_faithfulness)
    p.add_argument("--min-degradation", type=float, default=defaults.min_degradation)
    p.add_argument("--max-other-effect", type=float, default=defaults.max_other_effect)
    p.add_argument("--min-accuracy", type=float, default=defaults.min_accuracy)
    p.add_argument(
        "--other-edges",
        default="receiver",
        choices=["receiver", "edge"],
        help="edges outside the truth: removed per receiver (default) or one at a time",
    )
    p.add_argument("--other-examples", type=int, default=32, help="examples for that check")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")

    p = sub.add_parser("planted-run", help=STEPS["planted-run"])
    p.add_argument("--build", required=True, type=Path, help="a planted-build directory")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--options", type=_json_arg, default={}, help="method options as JSON")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")

    p = sub.add_parser("planted-report", help=STEPS["planted-report"])
    p.add_argument("--builds", required=True, nargs="+", type=Path, help="planted-build dirs")
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="planted-run dirs")
    p.add_argument("--table", required=True, type=Path, help="recovery table stem")
    p.add_argument("--truth-table", required=True, type=Path, help="truth table stem")
    p.add_argument("--figure", required=True, type=Path, help="figure stem")


def _load(build: Path, device: str, dtype: str):
    from circuitbench.models.loading import load_model
    from circuitbench.patching import PatchedModel
    from circuitbench.steps.core import read_manifest

    manifest = read_manifest(build / "model")
    return PatchedModel(load_model(manifest["source"], device, dtype)), manifest


def _heads_text(heads: dict[int, list[int]]) -> str:
    return " ".join(f"a{layer}.h{h}" for layer in sorted(heads) for h in heads[layer])


def planted_build(args: argparse.Namespace) -> None:
    from circuitbench.models.planted import TruthCriteria, verify_truth, write_planted
    from circuitbench.steps.core import csv_text, read_task_data

    if args.threads:
        torch.set_num_threads(args.threads)
    criteria = TruthCriteria(
        args.min_faithfulness, args.min_degradation, args.max_other_effect, args.min_accuracy
    )
    sizes = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    with atomic_directory(args.out) as tmp:
        card = write_planted(args.name, tmp, sizes, args.seed)
        model, _ = _load(tmp, args.device, args.dtype)
        truth = Graph.load(tmp / "truth.json")
        test = read_task_data(tmp / "data" / "test.json")
        started = time.perf_counter()
        check = verify_truth(model, test, truth, criteria, args.other_edges, args.other_examples)
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
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.patching import Ablation
    from circuitbench.recovery import recovery, roc_curves
    from circuitbench.steps.core import csv_text, read_task_data

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    card = json.loads((args.build / "card.json").read_text(encoding="utf-8"))
    truth = Graph.load(args.build / "truth.json")
    splits = {s: read_task_data(args.build / "data" / f"{s}.json") for s in SPLITS}
    model, manifest = _load(args.build, args.device, args.dtype)
    run = PlantedRun(
        planted=card["name"],
        splits=splits,
        corruption=splits["test"].meta["task_options"]["corruption"],
        seed=int(card["seed"]),
        options=dict(args.options),
    )
    passes, started = model.forward_passes, time.perf_counter()
    graph = METHODS[args.method](model, run)
    wall = time.perf_counter() - started
    method_passes = model.forward_passes - passes
    cache = model.build_cache(
        run.test, Ablation.INTERCHANGE, run.corruption, batch_size=args.eval_batch_size
    )
    evaluation = evaluate_graph(model, cache, graph)
    graph.meta = provenance(
        model=manifest["name"],
        planted=run.planted,
        task="planted",
        seed=run.seed,
        corruption=run.corruption,
        options=run.options,
        **{"method": args.method, **graph.meta},
    )
    scores = recovery(graph, truth)
    found_heads = graph.heads()
    row = {
        "planted": run.planted,
        "structure": card["structure"],
        "method": args.method,
        "level": graph.meta.get("level", "edge"),
        "n_edges": model.shape.n_edges,
        **scores,
        "found_heads": _heads_text(found_heads),
        "true_heads": _heads_text(truth.heads()),
        "circuit_faithfulness": evaluation["faithfulness"],
        "circuit_kl": evaluation["kl"],
        "circuit_accuracy": evaluation["accuracy"],
        "ablation": "interchange",
        "edge_convention": "mib (dangling edges pruned)",
        "ranking": "absolute",
        "method_wall_seconds": wall,
        "method_forward_passes": method_passes,
        "n_train": len(run.train),
        "n_validation": len(run.validation),
        "n_test": len(run.test),
        "corruption": run.corruption,
        "seed": run.seed,
        "options": json.dumps(run.options, sort_keys=True),
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": graph.meta["package_version"],
    }
    with atomic_directory(args.out) as tmp:
        graph.save(tmp / "circuit.json")
        atomic_write_text(tmp / "recovery.csv", csv_text([row]))
        atomic_write_json(
            tmp / "roc.json",
            provenance(planted=run.planted, method=args.method, curves=roc_curves(graph, truth)),
        )
    log.info(
        "planted %s, %s: edges P %.2f R %.2f IoU %.2f; heads P %.2f R %.2f IoU %.2f; "
        "head AUC %s; circuit faithfulness %.3f (%.1f s)",
        run.planted,
        args.method,
        row["edges_precision"],
        row["edges_recall"],
        row["edges_iou"],
        row["heads_precision"],
        row["heads_recall"],
        row["heads_iou"],
        "n/a" if math.isnan(row["head_auc"]) else f"{row['head_auc']:.3f}",
        row["circuit_faithfulness"],
        wall,
    )


def planted_report(args: argparse.Namespace) -> None:
    from circuitbench.report.planted import write_report

    write_report(args.builds, args.runs, args.table, args.truth_table, args.figure)
