"""The mechanism stage: what a trained model does inside, per model (all tasks in one job).

``mechanisms`` writes, under ``--out``:

- ``probes.csv``: accuracy on each task's test split and shortcut probes;
- ``ablations.csv``: the logit difference lost by mean-ablating each layer, every layer >= 1,
  the heads' edges into MLPs, and the heads' direct edges into the logits;
- ``heads.csv``: per head, the previous-token / induction / duplicate-token scores, the copy
  scores, the attention on IOI's named positions and the IOI classes;
- ``circuits.csv``: per task, the dense path-patching circuit's layers, the heads it selected
  through another head's q/k/v, its heads' IOI classes, and every previous-token -> induction
  composition with whether path patching selected it through the induction head's key.

``mechanisms-report`` collects them into ``results/tables/mechanisms.{csv,md}``,
``results/tables/mechanism_heads.{csv,md}`` and ``figures/mechanisms_<model>.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from circuitbench import mechanisms as mech
from circuitbench.graph import Graph
from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
)
from circuitbench.models.loading import load_text_tokenizer
from circuitbench.options import from_options, record
from circuitbench.report.mechanisms import write_report
from circuitbench.steps.common import add_flags, setup
from circuitbench.tasks import TASKS, make_task, read_task_data
from circuitbench.tasks.words import NAMES

log = logging.getLogger(__name__)

STEPS = {
    "mechanisms": "shortcut probes, layer ablations, head scores and IOI classes of a model",
    "mechanisms-report": "the mechanism tables and figures of every model",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("mechanisms", help=STEPS["mechanisms"])
    p.add_argument("--splits", required=True, nargs="+", type=Path, help="task data dirs")
    p.add_argument("--pp", nargs="*", type=Path, default=[], help="path-patching dirs (per task)")
    add_flags(p, data=False, options="mechanisms")

    p = sub.add_parser("mechanisms-report", help=STEPS["mechanisms-report"])
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="mechanisms dirs")
    p.add_argument("--tables", required=True, type=Path, help="output directory for tables")
    p.add_argument("--figures", required=True, type=Path, help="output directory for figures")


def _name(head: mech.Head) -> str:
    return f"{head[0]}.{head[1]}"


def mechanisms(args: argparse.Namespace) -> None:
    options = from_options(mech.MechanismOptions, args.options.get("mechanisms"), "mechanisms")
    manifest, model = setup(args)
    name = manifest["name"]
    tokenizer = load_text_tokenizer(manifest["source"], manifest.get("prepend_bos", True))
    # results/<model>/<task>/pp: the task is the parent directory's name.
    pp_dirs = {Path(directory).parent.name: Path(directory) for directory in args.pp}
    probe_rows, ablation_rows, circuit_rows = [], [], []
    scores = mech.random_block_scores(model, tokenizer, options)
    name_ids = [ids[0] for ids in (tokenizer.ids(" " + n) for n in NAMES) if len(ids) == 1]
    copy = mech.copy_scores(model, name_ids)
    classes: dict[mech.Head, list[str]] = {}
    attention = None
    for directory in args.splits:
        test = read_task_data(Path(directory) / "test.json")
        task_name = test.task
        base = {"model": name, "task": task_name}
        probe_rows.append(
            {**base, "probe": "test", **mech.accuracy_row(model, test, options.batch_size)}
        )
        if task_name in TASKS:
            task = make_task(task_name, **test.meta["task_options"])
            for probe, data in mech.probe_data(task, tokenizer, options, test).items():
                row = mech.accuracy_row(model, data, options.batch_size)
                probe_rows.append({**base, "probe": probe, **row})
        for row in mech.ablation_rows(model, test, options.batch_size):
            ablation_rows.append({**base, **row})
        if task_name == "ioi":
            attention = mech.ioi_attention(model, test, options.batch_size)
            classes = mech.ioi_classes(attention, copy, scores, options)
        log.info("%s %s: probes and ablations done", name, task_name)
    for task_name, directory in pp_dirs.items():
        circuit = Graph.load(directory / "circuit.json")
        pp = mech.pp_structure(circuit)
        composition = mech.compositions(scores, pp, options.head_threshold)
        # IOI's classes on IOI; on other tasks only the task-independent attention classes.
        general = ("induction", "duplicate_token", "previous_token")
        head_classes = {
            _name(h): [c for c in classes.get(h, []) if task_name == "ioi" or c in general]
            for h in pp["heads"]
        }
        circuit_rows.append(
            {
                "model": name,
                "task": task_name,
                "pp_heads": " ".join(_name(h) for h in pp["heads"]),
                "pp_n_heads": len(pp["heads"]),
                "pp_layers": " ".join(map(str, pp["layers"])),
                "pp_layer_span": pp["layer_span"],
                "pp_via_qkv": "; ".join(f"{h} -> {', '.join(r)}" for h, r in pp["via_qkv"].items()),
                "pp_n_via_qkv": len(pp["via_qkv"]),
                "pp_classes": json.dumps(head_classes, sort_keys=True),
                "pp_n_classes": len({c for cs in head_classes.values() for c in cs}),
                "compositions": json.dumps(composition),
                "pp_selects_composition": any(c["selected_by_pp_through_k"] for c in composition),
            }
        )
    head_rows = []
    for layer in range(model.shape.n_layers):
        for h in range(model.shape.n_heads):
            head: dict[str, Any] = {"model": name, "head": f"{layer}.{h}", "layer": layer}
            head.update({k: float(v[layer, h]) for k, v in scores.items()})
            head.update({k: float(v[layer, h]) for k, v in copy.items()})
            if attention is not None:
                head.update({k: float(v[layer, h]) for k, v in attention.items()})
            head["ioi_classes"] = " ".join(classes.get((layer, h), []))
            head_rows.append(head)
    meta = provenance(model=name, options=record(options))
    with atomic_directory(args.out) as tmp:
        atomic_write_text(tmp / "probes.csv", csv_text(probe_rows))
        atomic_write_text(tmp / "ablations.csv", csv_text(ablation_rows))
        atomic_write_text(tmp / "heads.csv", csv_text(head_rows))
        atomic_write_text(tmp / "circuits.csv", csv_text(circuit_rows))
        atomic_write_json(tmp / "meta.json", meta)
    log.info("%s: mechanisms of %d tasks written to %s", name, len(args.splits), args.out)


def mechanisms_report(args: argparse.Namespace) -> None:
    write_report(args.runs, args.tables, args.figures)
