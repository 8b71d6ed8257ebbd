"""Steps of the edge-level discovery stage: EAP, EAP-IG, Edge Pruning and HAP.

- ``eap``: EAP (or EAP-IG with ``--ig-steps``) scores on the training prompts; the
  KL / metric-vs-sparsity curve of top-n cuts on the test split; optionally the cut matched to
  the edge count of Edge Pruning runs (``--match``).
- ``edge-pruning``: one Edge Pruning run (one target, one training-set size), its circuit, mask
  parameters, training log and test-split metrics.
- ``hap``: HAP on top of an ``eap`` run, discretized to the edge count a plain Edge Pruning run
  achieved.
- ``hap-report``: HAP Tables 1-2, Edge Pruning Table 1, the sparsity figures and the k sweep.
- ``mib``: MIB's CPR and CMD of a task's EAP, EAP-IG, Edge Pruning and HAP scores (both edge
  rankings), from the faithfulness of ten top-n cuts on the test split; ``mib-report`` their table.

Every row carries its provenance (model, task, split, seed, method, every Choice key, the
edge-count convention, package version) and its cost.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from circuitbench.evaluate import EvaluationOptions, evaluate_graph
from circuitbench.graph import Graph, cut_to_count
from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
    read_csv_rows,
)
from circuitbench.methods.eap import circuit_from_scores
from circuitbench.methods.edge_pruning import sparsity_columns, training_prompts
from circuitbench.methods.hap import HAPConfig, retained_heads, subgraph_size
from circuitbench.methods.registry import METHODS, method_options
from circuitbench.mib import MIB_FRACTIONS, curve_summary, faithfulness_curves
from circuitbench.options import from_options
from circuitbench.report.hap import write_all
from circuitbench.report.mib import write_mib_table
from circuitbench.steps.common import (
    EVAL_SPLIT,
    add_flags,
    base_row,
    method_data,
    read_splits,
    setup,
    tail_row,
)

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "eap": "EAP / EAP-IG edge scores, the sparsity curve, cuts matched to Edge Pruning runs",
    "edge-pruning": "Edge Pruning: hard-concrete edge masks trained to a sparsity target",
    "hap": "HAP: Edge Pruning restricted to the top-k EAP edges, at Edge Pruning's sparsity",
    "hap-report": "HAP Tables 1-2, Edge Pruning Table 1, sparsity figures and the HAP k sweep",
    "mib": "MIB's CPR and CMD of edge-scoring runs: faithfulness of ten top-n cuts (test split)",
    "mib-report": "the CPR / CMD table of every task's edge-scoring runs",
}

# -- shared helpers ---------------------------------------------------------------------------


def _eval_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Test-split metrics of an :func:`evaluate_graph` row, renamed for the result tables."""
    keep = (
        "metric",
        "full_metric",
        "empty_metric",
        "accuracy",
        "full_accuracy",
        "kl",
        "exact_match",
        "faithfulness",
        "app_performance",
        "n_examples",
        "eval_wall_seconds",
        "eval_forward_passes",
    )
    out = {key: row[key] for key in keep if key in row}
    out["logit_diff"] = out.pop("metric")
    for key, value in row.items():
        if key.startswith("prob_diff"):
            out[key] = value
    return out


def _masks_payload(result) -> dict[str, Any]:
    """Mask parameters keyed by MIB edge / node names (no pickles)."""
    shape = result.layout.shape
    flat_name = {w * shape.n_receivers + r: name for name, (w, r) in shape.edge_index.items()}
    return {
        "edge_log_alpha": {
            flat_name[int(i)]: float(v)
            for i, v in zip(result.layout.edge_index, result.edge_log_alpha, strict=True)
        },
        "node_log_alpha": {
            shape.writer_names[int(w)]: float(v)
            for w, v in zip(result.layout.node_index, result.node_log_alpha, strict=True)
        },
        "discretization": result.discretization,
    }


# -- eap --------------------------------------------------------------------------------------


def eap(args: argparse.Namespace) -> None:
    sections = dict(args.options)
    evaluation = from_options(EvaluationOptions, sections.pop("evaluation", None), "evaluation")
    options = method_options(args.method, sections)
    config = options["eap"]
    splits = read_splits(args.data)
    manifest, model = setup(args)
    result = METHODS[args.method](model, method_data(splits), options)
    record = result.record
    scores, config = record["scores"], record["config"]
    data = splits["train"]
    if config.n_prompts is not None:
        data = data.select(slice(0, config.n_prompts))
    corruption = splits["train"].meta["task_options"].get("corruption")
    shape = model.shape
    key = record["key"]
    choices = config.choices()
    base = base_row(manifest, data, config.method, corruption)
    cost = {
        "wall_seconds": scores.wall_seconds,
        "cpu_seconds": scores.cpu_seconds,
        "forward_passes_actual": scores.forward_passes,
        "backward_passes": scores.backward_passes,
        "batch_size": config.batch_size,
    }
    meta = provenance(**base, choices=choices, cost=cost, scores_only=True)
    scores_graph = circuit_from_scores(
        shape, scores.scores, torch.zeros_like(shape.valid), model.d_model, meta
    )
    cache = evaluation.cache(model, splits[EVAL_SPLIT])
    curve = []
    for sparsity in config.curve_sparsities:
        target = round((1 - sparsity) * shape.n_edges)
        graph = scores_graph.cut_to_count(target, config.ranking, config.prune_dangling)
        row = evaluate_graph(model, cache, graph)
        curve.append(
            {
                **base,
                "nominal_sparsity": sparsity,
                **sparsity_columns(graph, True),
                **_eval_columns(row),
                **cost,
                **choices,
                **tail_row(model, args),
            }
        )
        log.info(
            "%s %s n=%d: kl %.4f faithfulness %.3f",
            config.method,
            data.task,
            graph.n_edges_in_graph,
            row["kl"],
            row["faithfulness"],
        )
    matched = []
    match_graphs = {}
    for ep_dir in args.match or []:
        ep_row = read_csv_rows(Path(ep_dir) / "summary.csv")[0]
        target = int(ep_row["n_edges"])
        keep = cut_to_count(shape, key, target, config.prune_dangling)
        graph = circuit_from_scores(
            shape,
            scores.scores,
            keep,
            model.d_model,
            provenance(**base, choices=choices, matched_to=str(ep_dir), target_edges=target),
        )
        row = evaluate_graph(model, cache, graph)
        matched.append(
            {
                **base,
                "matched_to": Path(ep_dir).name,
                "matched_n_edges": target,
                "matched_edge_sparsity": float(ep_row["edge_sparsity"]),
                **sparsity_columns(graph, True),
                **_eval_columns(row),
                "runtime_seconds": scores.wall_seconds,
                **cost,
                **choices,
                **tail_row(model, args),
            }
        )
        match_graphs[Path(ep_dir).name] = graph
    summary = {
        **base,
        "n_edges_total": shape.n_edges,
        **cost,
        "runtime_seconds": scores.wall_seconds,
        "max_abs_score": float(scores.scores.abs().max()),
        **choices,
        **tail_row(model, args),
    }
    with atomic_directory(args.out) as tmp:
        scores_graph.save(tmp / "scores.json")
        atomic_write_text(tmp / "curve.csv", csv_text(curve))
        atomic_write_text(tmp / "summary.csv", csv_text([summary]))
        if matched:
            atomic_write_text(tmp / "matched.csv", csv_text(matched))
            for name, graph in match_graphs.items():
                graph.save(tmp / f"matched-{name}.json")
    log.info("%s %s: scored %d edges in %.2f s", config.method, data.task, shape.n_edges,
             scores.wall_seconds)  # fmt: skip


# -- edge pruning and HAP -----------------------------------------------------------------------


def _write_pruning_run(
    out: Path,
    result,
    row: dict[str, Any],
    with_embedding_nodes: bool,
    extra_graphs: dict[str, Any] | None = None,
) -> None:
    with atomic_directory(out) as tmp:
        result.graph.save(tmp / "circuit.json")
        atomic_write_json(tmp / "edges.json", result.graph.to_edge_pruning(with_embedding_nodes))
        atomic_write_json(tmp / "masks.json", _masks_payload(result))
        atomic_write_text(tmp / "training.csv", csv_text(result.history))
        atomic_write_text(tmp / "summary.csv", csv_text([row]))
        for name, graph in (extra_graphs or {}).items():
            graph.save(tmp / name)


def _split_options(args: argparse.Namespace, method: str):
    sections = dict(args.options)
    evaluation = from_options(EvaluationOptions, sections.pop("evaluation", None), "evaluation")
    return method_options(method, sections), evaluation


def edge_pruning(args: argparse.Namespace) -> None:
    options, evaluation = _split_options(args, "edge_pruning")
    splits = read_splits(args.data)
    manifest, model = setup(args)
    method_result = METHODS["edge_pruning"](model, method_data(splits), options)
    result, config = method_result.record["result"], method_result.record["config"]
    data = training_prompts(splits["train"], config.n_train)
    corruption = splits["train"].meta["task_options"].get("corruption")
    choices = config.choices()
    base = base_row(manifest, data, "ep", corruption)
    result.graph.meta = provenance(
        **base, choices=choices, cost=result.cost, discretization=result.discretization
    )
    cache = evaluation.cache(model, splits[EVAL_SPLIT])
    row = {
        **base,
        "run": Path(args.out).name,
        "target": config.target,
        **sparsity_columns(result.graph, config.with_embedding_nodes),
        **_eval_columns(evaluate_graph(model, cache, result.graph)),
        "runtime_seconds": result.cost["wall_seconds"],
        **result.cost,
        "final_sampled_sparsity": result.history[-1]["edge_sparsity_sampled"],
        "final_train_kl": result.history[-1]["kl"],
        **result.discretization,
        **choices,
        **tail_row(model, args),
    }
    _write_pruning_run(Path(args.out), result, row, config.with_embedding_nodes)
    log.info(
        "ep %s target %.3f: %d edges (sparsity %.4f), test kl %.4f, %.1f s",
        data.task,
        config.target,
        row["n_edges"],
        row["edge_sparsity"],
        row["kl"],
        row["runtime_seconds"],
    )


def hap(args: argparse.Namespace) -> None:
    options, evaluation = _split_options(args, "hap")
    config: HAPConfig = options["hap"]
    splits = read_splits(args.data)
    manifest, model = setup(args)
    eap_dir, ep_dir = Path(args.eap), Path(args.ep)
    scores_graph = Graph.load(eap_dir / "scores.json")
    scores_graph.check_shape(model.shape.n_layers, model.shape.n_heads)
    eap_summary = read_csv_rows(eap_dir / "summary.csv")[0]
    ep_summary = read_csv_rows(ep_dir / "summary.csv")[0]
    reference = Graph.load(ep_dir / "circuit.json")
    data = training_prompts(splits["train"], options["edge_pruning"].n_train)
    if eap_summary["n_train"] != str(len(data)):
        log.warning("EAP scores come from %s prompts, HAP trains on %d", eap_summary["n_train"],
                    len(data))  # fmt: skip
    # HAP trains toward the sparsity plain Edge Pruning achieved, not its nominal target.
    given = method_data(splits, eap_scores=scores_graph.edge_scores, reference=reference)
    method_result = METHODS["hap"](model, given, options)
    record = method_result.record
    result, subgraph, ep_config = record["result"], record["subgraph"], record["config"]
    target_edges = reference.n_edges_in_graph
    k = subgraph_size(model.shape, config.keep_fraction)
    corruption = given.corruption
    eap_seconds = float(eap_summary["runtime_seconds"])
    eap_cpu = float(eap_summary["cpu_seconds"])
    choices = {
        **config.choices(),
        "hap.edge_target": float(ep_summary["target"]),
        "hap.train_target": record["target"],
        "hap.ep_steps": ep_config.steps,
        "hap.ep_sparsity_warmup": ep_config.sparsity_warmup,
        **ep_config.choices(),
        "eap.score_sign": eap_summary.get("eap.score_sign"),
    }
    base = base_row(manifest, data, "hap", corruption)
    result.graph.meta = provenance(
        **base,
        choices=choices,
        cost=result.cost,
        eap_seconds=eap_seconds,
        matched_to=str(ep_dir),
        subgraph_edges=k,
    )
    subgraph_graph = Graph(model.shape, model.d_model, provenance(**base, choices=choices))
    subgraph_graph.edge_scores = scores_graph.edge_scores.clone()
    subgraph_graph.edge_in_graph = subgraph.cpu()
    subgraph_graph.node_in_graph = subgraph.cpu().any(1)
    cache = evaluation.cache(model, splits[EVAL_SPLIT])
    heads = retained_heads(result.graph)
    row = {
        **base,
        "run": Path(args.out).name,
        "keep_fraction": config.keep_fraction,
        "subgraph_edges": k,
        "matched_to": ep_dir.name,
        "matched_n_edges": target_edges,
        "matched_edge_sparsity": float(ep_summary["edge_sparsity"]),
        "target": ep_config.target,
        **sparsity_columns(result.graph, ep_config.with_embedding_nodes),
        **_eval_columns(evaluate_graph(model, cache, result.graph)),
        "runtime_seconds": eap_seconds + result.cost["wall_seconds"],
        "eap_seconds": eap_seconds,
        "ep_stage_seconds": result.cost["wall_seconds"],
        **result.cost,
        "cpu_seconds": eap_cpu + result.cost["cpu_seconds"],
        "eap_cpu_seconds": eap_cpu,
        "ep_stage_cpu_seconds": result.cost["cpu_seconds"],
        "retained_heads": " ".join(f"{layer}.{h}" for layer in heads for h in heads[layer]),
        "final_sampled_sparsity": result.history[-1]["edge_sparsity_sampled"],
        "final_train_kl": result.history[-1]["kl"],
        **choices,
        **tail_row(model, args),
    }
    _write_pruning_run(
        Path(args.out),
        result,
        row,
        ep_config.with_embedding_nodes,
        {"subgraph.json": subgraph_graph},
    )
    log.info(
        "hap %s k=%d: %d edges (sparsity %.4f, EP %s), test kl %.4f, %.1f s (EAP %.1f s)",
        data.task,
        k,
        row["n_edges"],
        row["edge_sparsity"],
        ep_summary["edge_sparsity"],
        row["kl"],
        row["runtime_seconds"],
        eap_seconds,
    )


# -- report -------------------------------------------------------------------------------------


def hap_report(args: argparse.Namespace) -> None:
    write_all(args)


# -- MIB's CPR / CMD ----------------------------------------------------------------------------


def _scores_file(run: Path) -> Path:
    """An edge-scoring run's scores: EAP's ``scores.json``, else the run's ``circuit.json``
    (Edge Pruning and HAP: the deterministic soft masks)."""
    for name in ("scores.json", "circuit.json"):
        if (run / name).exists():
            return run / name
    raise FileNotFoundError(f"{run}: neither scores.json nor circuit.json")


def mib(args: argparse.Namespace) -> None:
    evaluation = from_options(EvaluationOptions, dict(args.options).get("evaluation"), "evaluation")
    files = {run: _scores_file(run) for run in args.runs}  # every input found before any work
    splits = read_splits(args.data)
    manifest, model = setup(args)
    cache = evaluation.cache(model, splits[EVAL_SPLIT])
    summary, points = [], []
    for run, path in files.items():
        scores = Graph.load(path)
        method = scores.meta.get("method", run.parent.name)
        lead = {
            "model": manifest["name"],
            "task": splits[EVAL_SPLIT].task,
            "method": method,
            "run": run.name,
            "eval_split": EVAL_SPLIT,
            "ablation": evaluation.ablation.value,
            "n_edges_total": model.shape.n_edges,
        }
        for ranking, curve in faithfulness_curves(model, cache, scores).items():
            points += [{**lead, **row} for row in curve]
            row = {**lead, "ranking": ranking, **curve_summary(curve), **tail_row(model, args)}
            summary.append(row)
            log.info("%s %s %s: CPR %.3f CMD %.3f", method, lead["task"], ranking,
                     row["cpr"], row["cmd"])  # fmt: skip
    with atomic_directory(args.out) as tmp:
        atomic_write_text(tmp / "mib.csv", csv_text(summary))
        atomic_write_text(tmp / "points.csv", csv_text(points))


def mib_report(args: argparse.Namespace) -> None:
    write_mib_table([Path(run) / "mib.csv" for run in args.runs], args.tables, MIB_FRACTIONS)


# -- parsers ------------------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("eap", help=STEPS["eap"])
    p.add_argument("--method", default="eap", choices=["eap", "eap_ig"])
    p.add_argument("--match", nargs="*", type=Path, help="Edge Pruning run dirs to match")
    add_flags(p, options="eap (+ eap_ig), evaluation")

    p = sub.add_parser("edge-pruning", help=STEPS["edge-pruning"])
    add_flags(p, options="edge_pruning (with the run's target), evaluation")

    p = sub.add_parser("hap", help=STEPS["hap"])
    p.add_argument("--eap", required=True, type=Path, help="an `eap` output directory")
    p.add_argument("--ep", required=True, type=Path, help="the Edge Pruning run to match")
    add_flags(p, options="edge_pruning, hap (with the run's keep_fraction), evaluation")

    p = sub.add_parser("hap-report", help=STEPS["hap-report"])
    p.add_argument("--eap", nargs="+", type=Path, required=True, help="`eap` output dirs")
    p.add_argument("--eap-ig", nargs="*", type=Path, default=[], help="EAP-IG output dirs")
    p.add_argument("--ep", nargs="+", type=Path, required=True, help="Edge Pruning run dirs")
    p.add_argument("--hap", nargs="+", type=Path, required=True, help="HAP run dirs")
    p.add_argument("--pp", nargs="*", type=Path, default=[], help="PP circuit.json files")
    p.add_argument("--pp-eval", nargs="*", type=Path, default=[], help="PP interchange eval CSVs")
    p.add_argument("--app-eval", nargs="*", type=Path, default=[], help="APP interchange eval CSVs")
    p.add_argument("--heads", nargs="*", type=Path, default=[], help="mechanisms heads.csv files")
    p.add_argument("--keep-fraction", type=float, required=True, help="HAP's main k fraction")
    p.add_argument("--edge-target", type=float, required=True, help="EP target HAP matches")
    p.add_argument("--tables", required=True, type=Path, help="output directory for tables")
    p.add_argument("--figures", required=True, type=Path, help="output directory for figures")

    p = sub.add_parser("mib", help=STEPS["mib"])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="eap / ep / hap run dirs")
    add_flags(p, options="evaluation")

    p = sub.add_parser("mib-report", help=STEPS["mib-report"])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="`mib` output dirs")
    p.add_argument("--tables", required=True, type=Path, help="output directory for tables")
