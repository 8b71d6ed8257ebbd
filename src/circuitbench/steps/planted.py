"""Steps of the stage: planted ground-truth circuits and how each method recovers them (issue 8).

- ``planted-build``: build one planted model (hand-set weights, its tokenizer, task data, true
  edge set), load it back through TransformerBridge and verify the truth with the patched
  forward; the step fails if the truth does not hold.
- ``planted-run``: run discovery methods (:data:`METHODS`, one or more, in one process) on one
  planted model, score each circuit against the truth (:func:`circuitbench.recovery.recovery`)
  and evaluate its faithfulness.
- ``planted-report``: the recovery table, the truth table and the figure.

**Circuit size.** Path patching, APP, FLAP and C-FLAP choose their own circuit. EAP, EAP-IG,
Edge Pruning and HAP need a size: ``circuit_edges`` (``planted.circuit_edges``, by default the
number of true edges, an oracle budget). EAP and EAP-IG are cut to the top-n edges whose count
after dangling pruning is closest to it; Edge Pruning trains toward its sparsity and keeps what
its own threshold search keeps; HAP trains toward it inside its EAP subgraph and is cut to it.

**Adding a method**: write ``def _my_method(model, run) -> Graph`` (``model`` a
:class:`~circuitbench.patching.PatchedModel`, ``run`` a :class:`PlantedRun`) that returns the
method's circuit with its scores: ``edge_in_graph`` the circuit, ``edge_scores`` its edge scores
and ``meta["edge_score_universe"]`` (``all``) if it has continuous edge scores, the heads'
``node_scores`` if it scores heads, ``meta["score_ranking"] = "signed"`` if it keeps its highest
signed scores (default: ``|score|``), and ``meta`` with its provenance (``circuit_rule``, and
``circuit_edges`` when it uses ``run.budget``). Add it to :data:`METHODS`; then name it in
``config.yaml`` ``planted.methods`` (and the schema's enum) and map it to its option sections in
``workflow/rules/common.smk`` ``PLANTED_METHOD_OPTIONS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from circuitbench.graph import Graph
from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.steps.core import json_arg, non_negative
from circuitbench.tasks import SPLITS, TaskData

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "planted-build": "build a planted ground-truth model, its data and true edges; verify them",
    "planted-run": "run discovery methods on a planted model and score them against the truth",
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
    # The circuit size, in edges, for the methods that are cut to a size or trained toward one
    # (EAP, EAP-IG, Edge Pruning, HAP): ``planted.circuit_edges``, by default the number of true
    # edges. A method that needs it and gets None fails.
    circuit_edges: int | None = None

    def budget(self, method: str) -> int:
        if self.circuit_edges is None or self.circuit_edges < 1:
            raise ValueError(f"{method} needs a circuit size (circuit_edges >= 1)")
        return self.circuit_edges

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
        "edge_score_kind": "path-patching effect (unmeasured paths 0)",
        "circuit_rule": "APP's selection rule over the 16-configuration grid (node-induced)",
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
        "circuit_rule": f"heads at the sweep's {_flap_config(run.options).cliff_rule.value} cliff"
        " (node-induced)",
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
    graph.meta["circuit_rule"] += f", within FLAP ∪ C-FLAP's {len(merged)} heads"
    return graph


# EAP, EAP-IG, Edge Pruning and HAP read their config sections (``options[section]``, e.g.
# ``options["eap"]``), whose keys are the names of the methods' config dataclass fields.


def _config(cls, section: dict[str, Any] | None, **overrides: Any):
    """``cls`` (a method's config dataclass) from the section keys that name its fields (other
    keys, e.g. ``eap.curve_sparsities``, belong to the pipeline's steps), ``overrides`` last."""
    names = {f.name for f in fields(cls) if f.init}
    return cls(**{**{k: v for k, v in (section or {}).items() if k in names}, **overrides})


def _eap_config(options: dict[str, Any], ig: bool):
    """EAP from section ``eap``; EAP-IG adds section ``eap_ig`` (``steps``: m, default MIB's 5;
    ``riemann``)."""
    from circuitbench.methods.eap import EAPConfig

    extra = {}
    if ig:
        section = options.get("eap_ig") or {}
        extra = {
            "ig_steps": int(section.get("steps", 5)),
            "riemann": section.get("riemann", "left"),
        }
    return _config(EAPConfig, options.get("eap"), **extra)


def _eap_scores(model, run: PlantedRun, ig: bool = False):
    from circuitbench.methods import eap as method

    config = _eap_config(run.options, ig)
    return config, method.eap_scores(model, run.train, config, run.corruption)


def _best_outgoing(graph: Graph, key: torch.Tensor) -> None:
    """Each head's node score: the best ranking key among its outgoing edges (as a head-level
    score for the head ROC)."""
    shape = graph.shape
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            writer = shape.head_writer(layer, head)
            graph.node_scores[writer] = key[writer][shape.valid[writer]].max()


def _attribution(model, run: PlantedRun, ig: bool) -> Graph:
    """EAP (``eap`` options) or EAP-IG (also ``eap_ig``): scores on every training prompt, the
    top-n cut by the configured ranking whose edge count after dangling pruning is closest to
    ``run.circuit_edges`` (:func:`~circuitbench.methods.eap.cut_to_count`). Edge scores over all
    edges; a head's node score is its best outgoing edge's ranking key."""
    from circuitbench.methods import eap as method

    config, result = _eap_scores(model, run, ig)
    shape = model.shape
    budget = run.budget(config.method)
    key = method.ranking_key(result.scores, shape, config.ranking)
    keep = method.cut_to_count(shape, key, budget, config.prune_dangling)
    graph = method.circuit_from_scores(shape, result.scores, keep, model.d_model)
    _best_outgoing(graph, key)
    graph.meta = {
        "method": config.method,
        "level": "edge",
        "edge_score_universe": "all",
        "edge_score_kind": f"{config.method} attribution ({config.score_sign.value} sign)",
        "score_ranking": config.ranking.value,
        "circuit_rule": f"top-n by {config.ranking.value} score, cut to {budget} edges"
        + (" after dangling pruning" if config.prune_dangling else ""),
        "circuit_edges": budget,
        "choices": config.choices(),
        "cost": {
            "wall_seconds": result.wall_seconds,
            "cpu_seconds": result.cpu_seconds,
            "forward_passes": result.forward_passes,
            "backward_passes": result.backward_passes,
        },
        "n_discovery": result.n_examples,
    }
    return graph


def _eap(model, run: PlantedRun) -> Graph:
    return _attribution(model, run, ig=False)


def _eap_ig(model, run: PlantedRun) -> Graph:
    return _attribution(model, run, ig=True)


def _ep_target(model, config, denominator: int | None, budget: int) -> float:
    """The sparsity of a ``budget``-edge circuit in Edge Pruning's Lagrangian convention: kept
    maskable edges over ``denominator`` (default: every maskable edge)."""
    from circuitbench.methods.edge_pruning import MaskLayout

    if denominator is None:
        layout = MaskLayout.build(model.shape, config.with_embedding_nodes, config.node_masks)
        denominator = layout.n_maskable
    return max(0.0, 1 - budget / denominator)


def _pruning_meta(graph: Graph, method: str, result, config, **extra: Any) -> dict[str, Any]:
    last = result.history[-1]
    return {
        "method": method,
        "level": "edge",
        # The deterministic soft masks EP's discretization writes (ties count 1/2 in the ROC).
        "edge_score_universe": "all",
        "edge_score_kind": "deterministic soft mask",
        **extra,
        "edge_sparsity": 1 - graph.n_edges_in_graph / graph.shape.n_edges,
        "final_sampled_sparsity": last["edge_sparsity_sampled"],
        "final_train_kl": last["kl"],
        "choices": config.choices(),
        "discretization": result.discretization,
        "cost": result.cost,
    }


def _edge_pruning(model, run: PlantedRun) -> Graph:
    """Edge Pruning (``edge_pruning`` options) trained toward the sparsity of a
    ``run.circuit_edges``-edge circuit (``1 - n / maskable edges``) on every training prompt; the
    circuit is EP's own threshold search, so it lands where it lands (its achieved sparsity is
    in the row). Edge and node scores: the deterministic soft masks."""
    from circuitbench.methods.edge_pruning import EdgePruningConfig, train_edge_pruning

    budget = run.budget("edge_pruning")
    config = _config(EdgePruningConfig, run.options.get("edge_pruning"))
    config = replace(config, target=_ep_target(model, config, None, budget))
    result = train_edge_pruning(model, run.train, config, run.corruption, progress="ep planted")
    graph = result.graph
    graph.meta = _pruning_meta(
        graph,
        "edge_pruning",
        result,
        config,
        circuit_rule=f"EP threshold search, trained toward sparsity {config.target:.4f}"
        f" ({budget} edges)",
        circuit_edges=budget,
        target=config.target,
    )
    return graph


def _hap(model, run: PlantedRun) -> Graph:
    """HAP: EAP scores (``eap`` options), Edge Pruning (``edge_pruning``, with ``hap.ep_steps``
    and ``hap.ep_sparsity_warmup``) on the top-k subgraph (``hap`` options), trained toward the
    sparsity of a ``run.circuit_edges``-edge circuit in HAP's convention and cut to that many
    edges, as the pipeline cuts HAP to the edge count Edge Pruning achieved."""
    from circuitbench.methods import hap as method
    from circuitbench.methods.edge_pruning import EdgePruningConfig, SparsityDenominator

    budget = run.budget("hap")
    options = run.options
    hap_options = options.get("hap") or {}
    eap_config, scores = _eap_scores(model, run)
    config = _config(method.HAPConfig, hap_options)
    ep_config = _config(EdgePruningConfig, options.get("edge_pruning"))
    ep_config = replace(
        ep_config,
        steps=hap_options.get("ep_steps") or ep_config.steps,
        sparsity_warmup=hap_options.get("ep_sparsity_warmup") or ep_config.sparsity_warmup,
    )
    k = method.subgraph_size(model.shape, config.keep_fraction)
    subgraph_denominator = config.sparsity_denominator is SparsityDenominator.SUBGRAPH
    target = _ep_target(model, ep_config, k if subgraph_denominator else None, budget)
    result, subgraph, ep_config = method.run_hap(
        model,
        run.train,
        scores.scores,
        config,
        replace(ep_config, target=target),
        budget,
        run.corruption,
    )
    graph = result.graph
    graph.meta = _pruning_meta(
        graph,
        "hap",
        result,
        ep_config,
        circuit_rule=f"EP on the top {k} |EAP| edges, trained toward sparsity {target:.4f},"
        f" cut to {budget} edges",
        circuit_edges=budget,
        target=target,
        subgraph_edges=k,
        hap_choices=config.choices(),
        eap_choices=eap_config.choices(),
        eap_cost={"wall_seconds": scores.wall_seconds, "cpu_seconds": scores.cpu_seconds},
    )
    graph.meta["subgraph"] = [
        [int(w), int(r)] for w, r in torch.nonzero(subgraph.cpu() & model.shape.valid)
    ]
    return graph


# A method: (PatchedModel, PlantedRun) -> Graph with its circuit and scores (module doc).
METHODS: dict[str, Callable[[Any, PlantedRun], Graph]] = {
    "path_patching": _path_patching,
    "flap": _flap,
    "cflap": _cflap,
    "app": _app,
    "eap": _eap,
    "eap_ig": _eap_ig,
    "edge_pruning": _edge_pruning,
    "hap": _hap,
}


# -- steps --------------------------------------------------------------------------------------


def _circuit_edges(text: str) -> str | int:
    if text == "truth":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'truth' or >= 1, got {value}")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    from circuitbench.models.planted import SPECS, TruthCriteria

    defaults = TruthCriteria()
    p = sub.add_parser("planted-build", help=STEPS["planted-build"])
    p.add_argument("--name", required=True, choices=sorted(SPECS), help="planted model")
    p.add_argument("--seed", type=int, required=True, help="data and random distractors")
    p.add_argument("--n-train", type=non_negative, required=True)
    p.add_argument("--n-validation", type=non_negative, required=True)
    p.add_argument("--n-test", type=non_negative, required=True)
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
    p.add_argument(
        "--method", required=True, nargs="+", choices=sorted(METHODS), help="one or more methods"
    )
    p.add_argument(
        "--options",
        type=json_arg,
        default={},
        help="JSON {method: its options}; a method not named gets {}",
    )
    p.add_argument(
        "--circuit-edges",
        type=_circuit_edges,
        default="truth",
        help="circuit size for EAP, EAP-IG, Edge Pruning and HAP: 'truth' (the number of true "
        "edges, the default) or a number of edges",
    )
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--out", required=True, nargs="+", type=Path, help="output directory per method, in order"
    )

    p = sub.add_parser("planted-report", help=STEPS["planted-report"])
    p.add_argument("--builds", required=True, nargs="+", type=Path, help="planted-build dirs")
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="planted-run dirs")
    p.add_argument("--table", required=True, type=Path, help="recovery table stem")
    p.add_argument("--truth-table", required=True, type=Path, help="truth table stem")
    p.add_argument("--figure", required=True, type=Path, help="figure stem")


def _heads_text(heads: dict[int, list[int]]) -> str:
    return " ".join(f"a{layer}.h{h}" for layer in sorted(heads) for h in heads[layer])


def planted_build(args: argparse.Namespace) -> None:
    from circuitbench.models.planted import TruthCriteria, verify_truth, write_planted
    from circuitbench.steps.core import csv_text, load_patched_model, read_task_data

    if args.threads:
        torch.set_num_threads(args.threads)
    criteria = TruthCriteria(
        args.min_faithfulness, args.min_degradation, args.max_other_effect, args.min_accuracy
    )
    sizes = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    with atomic_directory(args.out) as tmp:
        card = write_planted(args.name, tmp, sizes, args.seed)
        _, model = load_patched_model(tmp / "model", args.device, args.dtype)
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
    """Each ``--method`` on one planted model, in one process (the model, the data and the test
    cache are loaded once; a job per method would spend most of its time importing)."""
    from circuitbench.patching import Ablation
    from circuitbench.steps.core import load_patched_model, read_task_data

    if len(args.method) != len(args.out) or len(set(args.method)) != len(args.method):
        raise SystemExit("planted-run: give distinct methods and one --out per method, in order")
    unknown = sorted(set(args.options) - set(args.method))
    if unknown:
        raise SystemExit(f"planted-run: --options names methods not run: {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    card = json.loads((args.build / "card.json").read_text(encoding="utf-8"))
    truth = Graph.load(args.build / "truth.json")
    splits = {s: read_task_data(args.build / "data" / f"{s}.json") for s in SPLITS}
    manifest, model = load_patched_model(args.build / "model", args.device, args.dtype)
    corruption = splits["test"].meta["task_options"]["corruption"]
    circuit_edges = truth.n_edges_in_graph if args.circuit_edges == "truth" else args.circuit_edges
    cache = model.build_cache(
        splits["test"], Ablation.INTERCHANGE, corruption, batch_size=args.eval_batch_size
    )
    for method, out in zip(args.method, args.out, strict=True):
        run = PlantedRun(
            planted=card["name"],
            splits=splits,
            corruption=corruption,
            seed=int(card["seed"]),
            options=dict(args.options.get(method) or {}),
            circuit_edges=circuit_edges,
        )
        _run_one(model, manifest, card, truth, run, method, cache, args, out)


def _run_one(model, manifest, card, truth: Graph, run: PlantedRun, method, cache, args, out):
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.recovery import recovery, roc_curves
    from circuitbench.steps.core import csv_text

    torch.manual_seed(0)
    passes, started = model.forward_passes, time.perf_counter()
    cpu_started = time.process_time()
    graph = METHODS[method](model, run)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    method_passes = model.forward_passes - passes
    evaluation = evaluate_graph(model, cache, graph)
    graph.meta = provenance(
        model=manifest["name"],
        planted=run.planted,
        task="planted",
        seed=run.seed,
        corruption=run.corruption,
        options=run.options,
        **{"method": method, **graph.meta},
    )
    scores = recovery(graph, truth)
    found_heads = graph.heads()
    meta = graph.meta
    subgraph_true = ""
    if "subgraph" in meta:  # HAP: how many true edges its EAP filter let through
        subgraph_true = sum(bool(truth.edge_in_graph[w, r]) for w, r in meta["subgraph"])
    row = {
        "planted": run.planted,
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
        "method_wall_seconds": wall,
        "method_cpu_seconds": cpu,
        "method_forward_passes": method_passes,
        "n_train": len(run.train),
        "n_validation": len(run.validation),
        "n_test": len(run.test),
        "corruption": run.corruption,
        "seed": run.seed,
        "options": json.dumps(run.options, sort_keys=True),
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": meta["package_version"],
    }
    with atomic_directory(out) as tmp:
        graph.save(tmp / "circuit.json")
        atomic_write_text(tmp / "recovery.csv", csv_text([row]))
        atomic_write_json(
            tmp / "roc.json",
            provenance(planted=run.planted, method=method, curves=roc_curves(graph, truth)),
        )
    log.info(
        "planted %s, %s: %d edges, P %.2f R %.2f IoU %.2f; heads P %.2f R %.2f IoU %.2f; "
        "edge AUC %s, head AUC %s; circuit faithfulness %.3f (%.1f s, %.1f s CPU)",
        run.planted,
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
        wall,
        cpu,
    )


def planted_report(args: argparse.Namespace) -> None:
    from circuitbench.report.planted import write_report

    write_report(args.builds, args.runs, args.table, args.truth_table, args.figure)
