"""Steps of the stage: Edge-level discovery: EAP, EAP-IG, Edge Pruning and HAP (issue 6).

- ``eap``: EAP (or EAP-IG with ``--ig-steps``) scores on the training prompts; the
  KL / metric-vs-sparsity curve of top-n cuts on the test split; optionally the cut matched to
  the edge count of Edge Pruning runs (``--match``).
- ``edge-pruning``: one Edge Pruning run (one target, one training-set size), its circuit, mask
  parameters, training log and test-split metrics.
- ``hap``: HAP on top of an ``eap`` run, discretized to the edge count a plain Edge Pruning run
  achieved.
- ``hap-report``: HAP Tables 1-2, Edge Pruning Table 1, the sparsity figures and the k sweep.

Every row carries its provenance (model, task, split, seed, method, every Choice key, the
edge-count convention, package version) and its cost.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance

log = logging.getLogger(__name__)

STEPS: dict[str, str] = {
    "eap": "EAP / EAP-IG edge scores, the sparsity curve, cuts matched to Edge Pruning runs",
    "edge-pruning": "Edge Pruning: hard-concrete edge masks trained to a sparsity target",
    "hap": "HAP: Edge Pruning restricted to the top-k EAP edges, at Edge Pruning's sparsity",
    "hap-report": "HAP Tables 1-2, Edge Pruning Table 1, sparsity figures and the HAP k sweep",
}

EVAL_SPLIT = "test"


# -- shared helpers ---------------------------------------------------------------------------


def _setup(args: argparse.Namespace):
    """Threads, then the model's manifest and patched model."""
    from circuitbench.steps.core import load_patched_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_patched_model(args.model, args.device, args.dtype)


def _split(directory: Path, split: str, n: int | None = None):
    from circuitbench.steps import read_task_data

    data = read_task_data(Path(directory) / f"{split}.json")
    if n is not None:
        if n > len(data):
            raise ValueError(f"{directory}/{split} has {len(data)} examples, {n} were asked for")
        data = data.select(slice(0, n))
    return data


def _corruption(args: argparse.Namespace, data) -> str:
    return args.corruption or data.meta["task_options"].get("corruption")


def _test_cache(model, args: argparse.Namespace, corruption: str):
    test = _split(args.data, EVAL_SPLIT)
    return model.build_cache(test, "interchange", corruption, "template", args.eval_batch_size)


def _base_row(manifest, data, method: str, corruption: str, model) -> dict[str, Any]:
    return {
        "model": manifest["name"],
        "task": data.task,
        "method": method,
        "level": "edge",
        "discovery_split": data.split,
        "n_train": len(data),
        "eval_split": EVAL_SPLIT,
        "ablation": "interchange",
        "corruption": corruption,
        "data_seed": data.meta.get("seed"),
        "task_options": json.dumps(data.meta["task_options"], sort_keys=True),
    }


def _tail(model, args: argparse.Namespace) -> dict[str, Any]:
    meta = provenance()
    return {
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": meta["package_version"],
        "torch_version": meta["torch_version"],
    }


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


def _csv(rows: list[dict[str, Any]]) -> str:
    from circuitbench.steps import csv_text

    return csv_text(rows)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


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
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.methods import eap as method
    from circuitbench.methods.edge_pruning import sparsity_columns

    manifest, model = _setup(args)
    data = _split(args.data, "train", args.n_prompts)
    corruption = _corruption(args, data)
    config = method.EAPConfig(
        score_sign=args.score_sign,
        ranking=args.ranking,
        prune_dangling=args.prune_dangling,
        ig_steps=args.ig_steps,
        riemann=args.riemann,
        batch_size=args.batch_size,
    )
    result = method.eap_scores(model, data, config, corruption)
    shape = model.shape
    key = method.ranking_key(result.scores, shape, config.ranking)
    choices = config.choices()
    base = _base_row(manifest, data, config.method, corruption, model)
    cost = {
        "wall_seconds": result.wall_seconds,
        "cpu_seconds": result.cpu_seconds,
        "forward_passes_actual": result.forward_passes,
        "backward_passes": result.backward_passes,
        "batch_size": config.batch_size,
    }
    meta = provenance(**base, choices=choices, cost=cost, scores_only=True)
    scores_graph = method.circuit_from_scores(
        shape, result.scores, torch.zeros_like(shape.valid), model.d_model, meta
    )
    cache = _test_cache(model, args, corruption)
    curve = []
    for sparsity in args.sparsities:
        target = round((1 - sparsity) * shape.n_edges)
        keep = method.cut_to_count(shape, key, target, config.prune_dangling)
        graph = method.circuit_from_scores(shape, result.scores, keep, model.d_model)
        row = evaluate_graph(model, cache, graph)
        curve.append(
            {
                **base,
                "nominal_sparsity": sparsity,
                **sparsity_columns(graph, True),
                **_eval_columns(row),
                **cost,
                **choices,
                **_tail(model, args),
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
        ep_row = _read_rows(Path(ep_dir) / "summary.csv")[0]
        target = int(ep_row["n_edges"])
        keep = method.cut_to_count(shape, key, target, config.prune_dangling)
        graph = method.circuit_from_scores(
            shape,
            result.scores,
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
                "runtime_seconds": result.wall_seconds,
                **cost,
                **choices,
                **_tail(model, args),
            }
        )
        match_graphs[Path(ep_dir).name] = graph
    summary = {
        **base,
        "n_edges_total": shape.n_edges,
        **cost,
        "runtime_seconds": result.wall_seconds,
        "max_abs_score": float(result.scores.abs().max()),
        **choices,
        **_tail(model, args),
    }
    with atomic_directory(args.out) as tmp:
        scores_graph.save(tmp / "scores.json")
        atomic_write_text(tmp / "curve.csv", _csv(curve))
        atomic_write_text(tmp / "summary.csv", _csv([summary]))
        if matched:
            atomic_write_text(tmp / "matched.csv", _csv(matched))
            for name, graph in match_graphs.items():
                graph.save(tmp / f"matched-{name}.json")
    log.info("%s %s: scored %d edges in %.2f s", config.method, data.task, shape.n_edges,
             result.wall_seconds)  # fmt: skip


# -- edge pruning and HAP -----------------------------------------------------------------------


def _ep_config(
    args: argparse.Namespace,
    steps: int | None = None,
    warmup: int | None = None,
    target: float | None = None,
):
    from circuitbench.methods.edge_pruning import EdgePruningConfig

    return EdgePruningConfig(
        target=target if target is not None else args.target,
        node_target=args.node_target,
        steps=steps if steps is not None else args.steps,
        sparsity_warmup=warmup if warmup is not None else args.sparsity_warmup,
        lr_warmup=args.lr_warmup,
        edge_lr=args.edge_lr,
        edge_lambda_lr=args.edge_lambda_lr,
        node_lr=args.node_lr,
        node_lambda_lr=args.node_lambda_lr,
        batch_size=args.batch_size,
        with_embedding_nodes=args.with_embedding_nodes,
        node_masks=args.node_masks,
        node_loss=args.node_loss,
        warmup_type=args.warmup_type,
        cache_corrupted=args.cache_corrupted,
        seed=args.seed,
    )


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
        atomic_write_text(tmp / "training.csv", _csv(result.history))
        atomic_write_text(tmp / "summary.csv", _csv([row]))
        for name, graph in (extra_graphs or {}).items():
            graph.save(tmp / name)


def edge_pruning(args: argparse.Namespace) -> None:
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.methods.edge_pruning import sparsity_columns, train_edge_pruning

    manifest, model = _setup(args)
    data = _split(args.data, "train", args.n_train)
    corruption = _corruption(args, data)
    config = _ep_config(args)
    result = train_edge_pruning(model, data, config, corruption, progress=f"ep {data.task}")
    choices = config.choices()
    base = _base_row(manifest, data, "ep", corruption, model)
    result.graph.meta = provenance(
        **base, choices=choices, cost=result.cost, discretization=result.discretization
    )
    cache = _test_cache(model, args, corruption)
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
        **_tail(model, args),
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
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.graph import Graph
    from circuitbench.methods import hap as method
    from circuitbench.methods.edge_pruning import sparsity_columns

    manifest, model = _setup(args)
    data = _split(args.data, "train", args.n_train)
    corruption = _corruption(args, data)
    eap_dir, ep_dir = Path(args.eap), Path(args.ep)
    scores_graph = Graph.load(eap_dir / "scores.json")
    scores_graph.check_shape(model.shape.n_layers, model.shape.n_heads)
    eap_summary = _read_rows(eap_dir / "summary.csv")[0]
    ep_summary = _read_rows(ep_dir / "summary.csv")[0]
    if eap_summary["n_train"] != str(len(data)):
        log.warning("EAP scores come from %s prompts, HAP trains on %d", eap_summary["n_train"],
                    len(data))  # fmt: skip
    config = method.HAPConfig(
        keep_fraction=args.keep_fraction,
        eap_ranking=args.eap_ranking,
        sparsity_denominator=args.sparsity_denominator,
        skip_removed_edges=args.skip_removed_edges,
        retained_head_rule=args.retained_head_rule,
        schedule_start=args.schedule_start,
    )
    # HAP trains toward the sparsity plain Edge Pruning achieved, not its nominal target.
    target_edges = int(ep_summary["n_edges"])
    k = method.subgraph_size(model.shape, config.keep_fraction)
    ep_config = _ep_config(args, args.ep_steps, args.ep_sparsity_warmup, target=0.0)
    train_target = method.achieved_target(Graph.load(ep_dir / "circuit.json"), config, ep_config, k)
    ep_config = replace(ep_config, target=train_target)
    result, subgraph, ep_config = method.run_hap(
        model, data, scores_graph.edge_scores, config, ep_config, target_edges, corruption
    )
    eap_seconds = float(eap_summary["runtime_seconds"])
    eap_cpu = float(eap_summary["cpu_seconds"])
    choices = {
        **config.choices(),
        "hap.edge_target": float(ep_summary["target"]),
        "hap.train_target": train_target,
        "hap.ep_steps": ep_config.steps,
        "hap.ep_sparsity_warmup": ep_config.sparsity_warmup,
        **ep_config.choices(),
        "eap.score_sign": eap_summary.get("eap.score_sign"),
    }
    base = _base_row(manifest, data, "hap", corruption, model)
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
    cache = _test_cache(model, args, corruption)
    heads = method.retained_heads(result.graph)
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
        **_tail(model, args),
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
    from circuitbench.report import hap as report

    report.write_all(args)


# -- parsers ------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--data", required=True, type=Path, help="task data directory (the splits)")
    p.add_argument("--corruption", help="corruption variant (default: the task's configured one)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="test-split evaluation batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")


def _ep_options(p: argparse.ArgumentParser, hap: bool = False) -> None:
    bool_opt = argparse.BooleanOptionalAction
    p.add_argument("--n-train", type=int, default=None, help="training prompts (default: all)")
    if not hap:  # HAP trains toward the sparsity its Edge Pruning run achieved
        p.add_argument("--target", type=float, required=True, help="edge sparsity target")
    p.add_argument("--node-target", type=float, default=0.72)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--sparsity-warmup", type=int, default=2500)
    p.add_argument("--lr-warmup", type=int, default=200)
    p.add_argument("--edge-lr", type=float, default=0.8)
    p.add_argument("--edge-lambda-lr", type=float, default=0.8)
    p.add_argument("--node-lr", type=float, default=0.8)
    p.add_argument("--node-lambda-lr", type=float, default=0.8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--with-embedding-nodes", action=bool_opt, default=True)
    p.add_argument("--node-masks", action=bool_opt, default=True)
    p.add_argument("--node-loss", action=bool_opt, default=False)
    p.add_argument("--warmup-type", default="linear", choices=["linear", "logarithmic"])
    p.add_argument("--cache-corrupted", action=bool_opt, default=True)
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    bool_opt = argparse.BooleanOptionalAction

    p = sub.add_parser("eap", help=STEPS["eap"])
    _common(p)
    p.add_argument("--n-prompts", type=int, default=None, help="training prompts (default: all)")
    p.add_argument("--ig-steps", type=int, default=0, help="0: EAP; m >= 1: EAP-IG with m steps")
    p.add_argument("--riemann", default="left", choices=["left", "right"])
    p.add_argument("--score-sign", default="loss", choices=["loss", "metric"])
    p.add_argument("--ranking", default="absolute", choices=["absolute", "signed"])
    p.add_argument("--prune-dangling", action=bool_opt, default=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=[0.5, 0.8, 0.9, 0.94, 0.96, 0.98, 0.99],
        help="edge sparsities of the curve's top-n cuts",
    )
    p.add_argument("--match", nargs="*", type=Path, help="Edge Pruning run dirs to match")

    p = sub.add_parser("edge-pruning", help=STEPS["edge-pruning"])
    _common(p)
    _ep_options(p)

    p = sub.add_parser("hap", help=STEPS["hap"])
    _common(p)
    _ep_options(p, hap=True)
    p.add_argument("--eap", required=True, type=Path, help="an `eap` output directory")
    p.add_argument("--ep", required=True, type=Path, help="the Edge Pruning run to match")
    p.add_argument("--keep-fraction", type=float, required=True, help="k as a fraction of |E|")
    p.add_argument("--eap-ranking", default="absolute", choices=["absolute", "signed"])
    p.add_argument("--sparsity-denominator", default="full", choices=["full", "subgraph"])
    p.add_argument("--schedule-start", default="subgraph", choices=["subgraph", "zero"])
    p.add_argument(
        "--skip-removed-edges",
        action=bool_opt,
        default=True,
        help="prune on the subgraph-restricted patched forward (same result, cheaper steps)",
    )
    p.add_argument(
        "--retained-head-rule", default="outgoing_after_pruning", choices=["outgoing_after_pruning"]
    )
    p.add_argument("--ep-steps", type=int, default=None, help="default: --steps")
    p.add_argument(
        "--ep-sparsity-warmup", type=int, default=None, help="default: --sparsity-warmup"
    )

    p = sub.add_parser("hap-report", help=STEPS["hap-report"])
    p.add_argument("--eap", nargs="+", type=Path, required=True, help="`eap` output dirs")
    p.add_argument("--eap-ig", nargs="*", type=Path, default=[], help="EAP-IG output dirs")
    p.add_argument("--ep", nargs="+", type=Path, required=True, help="Edge Pruning run dirs")
    p.add_argument("--hap", nargs="+", type=Path, required=True, help="HAP run dirs")
    p.add_argument("--pp", nargs="*", type=Path, default=[], help="PP circuit.json files")
    p.add_argument("--pp-eval", nargs="*", type=Path, default=[], help="PP interchange eval CSVs")
    p.add_argument("--keep-fraction", type=float, required=True, help="HAP's main k fraction")
    p.add_argument("--edge-target", type=float, required=True, help="EP target HAP matches")
    p.add_argument(
        "--app-root",
        type=Path,
        default=Path("results"),
        help="APP circuits are read from <root>/<model>/<task>/app/circuit.json when present",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tables", required=True, type=Path, help="output directory for tables")
    p.add_argument("--figures", required=True, type=Path, help="output directory for figures")
