"""Steps of circuit files and their evaluation: the full / empty / head-set circuits, the
evaluation of any circuit file (one patched pass per batch), and result tables."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from circuitbench.evaluate import EvaluationOptions, evaluate_graph
from circuitbench.graph import Graph, GraphShape
from circuitbench.io import atomic_write_text, csv_text, provenance
from circuitbench.models.loading import model_shape, read_manifest
from circuitbench.options import from_options, json_arg
from circuitbench.report.tables import write_table
from circuitbench.steps.common import add_flags, setup
from circuitbench.tasks import read_task_data

log = logging.getLogger(__name__)

STEPS = {
    "make-circuit": "write the full, the empty or a head-set circuit of a model as MIB JSON",
    "evaluate": "evaluate a circuit file with one patched pass per batch; write a metrics row",
    "table": "collect result rows into a CSV and a captioned Markdown table",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("make-circuit", help=STEPS["make-circuit"])
    p.add_argument("--kind", required=True, choices=["full", "empty", "heads"])
    p.add_argument("--heads", type=json_arg, help='with --kind heads: {"layer": [heads]}')
    add_flags(p, data=False, runtime=False)

    p = sub.add_parser("evaluate", help=STEPS["evaluate"])
    p.add_argument("--split", required=True, type=Path, help="a split JSON file")
    p.add_argument("--circuit", required=True, type=Path, help="MIB circuit JSON")
    p.add_argument("--name", help="circuit name in the row (default: the file's stem)")
    add_flags(p, data=False, options="evaluation")

    p = sub.add_parser("table", help=STEPS["table"])
    p.add_argument("--kind", required=True, help="which table (models, baselines, …)")
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="result-row CSVs")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-md", required=True, type=Path)


def make_circuit(args: argparse.Namespace) -> None:
    shape = GraphShape(*model_shape(args.model))
    meta = provenance(model=read_manifest(args.model)["name"], method=args.kind)
    if args.kind == "full":
        graph = Graph.full(shape, meta=meta)
    elif args.kind == "empty":
        graph = Graph.empty(shape, meta=meta)
    else:
        graph = Graph.from_heads(shape, args.heads or {}, meta=meta)
    graph.save(args.out)


def evaluate(args: argparse.Namespace) -> None:
    options = from_options(EvaluationOptions, args.options.get("evaluation"), "evaluation")
    graph = Graph.load(args.circuit)  # a bad circuit fails before the model is loaded
    task_data = read_task_data(args.split)
    manifest, model = setup(args)
    graph.check_shape(model.shape.n_layers, model.shape.n_heads)
    cache = options.cache(model, task_data)
    row = {
        "model": manifest["name"],
        "task": task_data.task,
        "split": task_data.split,
        "circuit": args.name or Path(args.circuit).stem,
        "circuit_file": str(args.circuit),
        "circuit_method": graph.meta.get("method", ""),
        "ablation": cache.ablation.value,
        "mean_scope": cache.mean_scope.value if cache.mean_scope else "",
        "corruption": cache.corruption,
        **evaluate_graph(model, cache, graph),
        "cache_forward_passes": cache.forward_passes,
        "seed": task_data.meta.get("seed"),
        "task_options": json.dumps(task_data.meta["task_options"], sort_keys=True),
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": provenance()["package_version"],
    }
    atomic_write_text(args.out, csv_text([row]))
    log.info(
        "%s %s %s: faithfulness %.3f, kl %.4f",
        row["model"],
        row["task"],
        row["circuit"],
        row["faithfulness"],
        row["kl"],
    )


def table(args: argparse.Namespace) -> None:
    write_table(args.kind, args.inputs, args.out_csv, args.out_md)
