"""Steps of the data and model stage: the toy tokenizer, task splits, training the toy suite,
preparing paper models, and the model table's held-out evaluation."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from circuitbench.io import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    csv_text,
    provenance,
)
from circuitbench.mechanisms import MechanismOptions, probe_sets
from circuitbench.models.checkpoint import held_out_digest, install, write_checkpoint
from circuitbench.models.loading import (
    MANIFEST,
    check_available,
    load_model,
    load_text_tokenizer,
    read_manifest,
)
from circuitbench.models.train import TrainSpec, save_model, train_toy_model
from circuitbench.options import from_options
from circuitbench.steps.common import add_flags, set_threads
from circuitbench.tasks import (
    SPLITS,
    TASKS,
    SplitSizes,
    TaskData,
    encode_prompts,
    extra_metrics,
    make_splits,
    read_task_data,
    toy_vocabulary,
)
from circuitbench.tokenization import TextTokenizer, build_word_level_tokenizer

log = logging.getLogger(__name__)

STEPS = {
    "tokenizer": "build the word-level tokenizer of the self-trained toy suite",
    "data": "generate a task's train/validation/test clean/corrupted prompt pairs for one model",
    "train": "train a toy GPT-2-architecture model on the synthetic task corpus",
    "install-checkpoint": "install a committed checkpoint of our trainer as a toy model (verified)",
    "export-checkpoint": "write a trained toy model as a checkpoint with its SHA256SUMS",
    "prepare-model": "check a hub/local paper model is loadable offline and write its manifest",
    "eval-model": "evaluate a model (through TransformerBridge) on every task's test split",
}

EVAL_BATCH = 128  # eval-model's forward batch (results do not depend on it)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("tokenizer", help=STEPS["tokenizer"])
    add_flags(p, model=False, data=False, runtime=False)

    p = sub.add_parser("data", help=STEPS["data"])
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--tokenizer", required=True, help="tokenizer dir, hub id, or 'gpt2-offline'")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--name", required=True, help="model name (provenance)")
    add_flags(p, model=False, data=False, runtime=False, options="task (tasks.<name>)")

    p = sub.add_parser("train", help=STEPS["train"])
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--tokenizer", required=True, type=Path, help="word-level tokenizer dir")
    p.add_argument("--splits", required=True, nargs="+", type=Path, help="task data dirs")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True)
    add_flags(p, model=False, data=False, options="train (models.<name>.train), mechanisms")

    p = sub.add_parser("install-checkpoint", help=STEPS["install-checkpoint"])
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint directory")
    p.add_argument("--tokenizer", required=True, type=Path, help="word-level tokenizer dir")
    p.add_argument("--splits", required=True, nargs="+", type=Path, help="task data dirs")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True)
    add_flags(p, model=False, data=False, runtime=False, options="mechanisms")

    p = sub.add_parser("export-checkpoint", help=STEPS["export-checkpoint"])
    add_flags(p, data=False, runtime=False)

    p = sub.add_parser("prepare-model", help=STEPS["prepare-model"])
    p.add_argument("--name", required=True)
    p.add_argument("--source", required=True, help="hub id or local save_pretrained directory")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=False)
    add_flags(p, model=False, data=False, runtime=False)

    p = sub.add_parser("eval-model", help=STEPS["eval-model"])
    p.add_argument("--splits", required=True, nargs="+", type=Path, help="test split JSON files")
    add_flags(p, data=False)


def tokenizer(args: argparse.Namespace) -> None:
    hf = build_word_level_tokenizer(toy_vocabulary())
    with atomic_directory(args.out) as tmp:
        hf.save_pretrained(tmp)
    log.info("word-level tokenizer with %d tokens written to %s", len(hf), args.out)


def data(args: argparse.Namespace) -> None:
    values = dict(args.options.get("task") or {})
    sizes = from_options(
        SplitSizes,
        {k: values.pop(k) for k in ("n_train", "n_validation", "n_test") if k in values},
        f"tasks.{args.task}",
    )
    if args.task not in TASKS:
        raise KeyError(f"unknown task {args.task!r}; known tasks: {', '.join(TASKS)}")
    task = from_options(TASKS[args.task], values, f"tasks.{args.task}")
    text_tokenizer = load_text_tokenizer(args.tokenizer, args.prepend_bos)
    splits = make_splits(task, sizes.by_split(), args.seed, text_tokenizer)
    with atomic_directory(args.out) as tmp:
        for split in SPLITS:
            meta = provenance(model=args.name, seed=args.seed, tokenizer_source=args.tokenizer)
            encoded = encode_prompts(task, splits[split], text_tokenizer, split, meta)
            atomic_write_text(tmp / f"{split}.json", encoded.dumps())
            log.info("%s/%s: %d examples", args.task, split, len(encoded))


def held_out(
    splits: list[Path], tokenizer: TextTokenizer, probes: MechanismOptions
) -> tuple[dict[str, TaskData], set[str], dict[str, dict[str, Any]]]:
    """Every prompt a toy model must never train on: each task's train, validation and test
    split, and the mechanism stage's probes. Returns the test splits (the trainer's held-out
    evaluation), the held-out texts, and each task's options."""
    eval_data: dict[str, TaskData] = {}
    exclude: set[str] = set()
    task_options: dict[str, dict[str, Any]] = {}
    for directory in splits:
        for split in SPLITS:
            split_data = read_task_data(directory / f"{split}.json")
            exclude.update(t["clean"] for t in split_data.texts)
            if split == "test":
                eval_data[split_data.task] = split_data
                task_options[split_data.task] = split_data.meta["task_options"]
    for name, test in eval_data.items():
        task = TASKS[name](**task_options[name])
        for prompts in probe_sets(task, tokenizer, probes, test).values():
            exclude.update(p.clean for p in prompts)
    return eval_data, exclude, task_options


def train(args: argparse.Namespace) -> None:
    text_tokenizer = load_text_tokenizer(str(args.tokenizer), args.prepend_bos)
    spec_fields = dict(args.options.get("train") or {})
    probes = from_options(MechanismOptions, args.options.get("mechanisms"), "mechanisms")
    eval_data, exclude, task_options = held_out(args.splits, text_tokenizer, probes)
    spec_fields.setdefault("tasks", list(eval_data))
    spec_fields.setdefault("task_options", task_options)
    spec = from_options(TrainSpec, spec_fields, "train")
    model, report = train_toy_model(spec, text_tokenizer, eval_data, exclude, args.threads)
    report["held_out"] = (
        "each task's train, validation and test split and the mechanism stage's probes; no "
        "held-out prompt was trained on; accuracy is measured on the test splits"
    )
    report["held_out_prompts"] = len(exclude)
    report["held_out_sha256"] = held_out_digest(exclude)
    with atomic_directory(args.out) as tmp:
        save_model(model, text_tokenizer, tmp / "hf")
        atomic_write_json(tmp / "training_report.json", report)
        atomic_write_json(
            tmp / MANIFEST,
            provenance(
                name=args.name,
                kind="local",
                source="hf",
                prepend_bos=args.prepend_bos,
                trained=True,
            ),
        )
    worst = min(v["accuracy"] for v in report["tasks"].values())
    log.info(
        "trained %s in %.0f s; lowest held-out accuracy %.3f",
        args.name,
        report["train_seconds"],
        worst,
    )


def install_checkpoint(args: argparse.Namespace) -> None:
    text_tokenizer = load_text_tokenizer(str(args.tokenizer), args.prepend_bos)
    probes = from_options(MechanismOptions, args.options.get("mechanisms"), "mechanisms")
    _, exclude, _ = held_out(args.splits, text_tokenizer, probes)
    report = install(
        args.checkpoint, args.tokenizer, exclude, args.name, args.out, args.prepend_bos
    )
    log.info(
        "installed %s from %s (trained %d steps in %.0f s); lowest held-out accuracy %.3f",
        args.name,
        args.checkpoint,
        report["steps"],
        report["train_seconds"],
        min(v["accuracy"] for v in report["tasks"].values()),
    )


def export_checkpoint(args: argparse.Namespace) -> None:
    sums = write_checkpoint(args.model, args.out)
    log.info("checkpoint of %s written to %s (%d files)", args.model, args.out, len(sums))


def prepare_model(args: argparse.Namespace) -> None:
    check_available(args.source)
    local = Path(args.source).exists()
    source = str(Path(args.source).resolve()) if local else args.source
    atomic_write_json(
        Path(args.out) / MANIFEST,
        provenance(
            name=args.name, kind="hub", source=source, prepend_bos=args.prepend_bos, trained=False
        ),
    )


def eval_model(args: argparse.Namespace) -> None:
    set_threads(args)
    manifest = read_manifest(args.model)
    bridge = load_model(manifest["source"], args.device, args.dtype)
    device = next(bridge.parameters()).device
    rows = []
    for path in args.splits:
        task_data = read_task_data(path)
        columns: dict[str, list[torch.Tensor]] = {}
        for start in tqdm(range(0, len(task_data), EVAL_BATCH), desc=task_data.task):
            batch = task_data.select(slice(start, start + EVAL_BATCH))
            with torch.no_grad():
                logits = bridge(batch.clean_tokens.to(device))
            end = batch.logits_at_end(logits).float()
            values = {
                "accuracy": batch.accuracy(end),
                "logit_diff": batch.metric(end),
                "answer_beats_distractor": (batch.metric(end) > 0).float(),
                **extra_metrics(batch, end),
            }
            for key, value in values.items():
                columns.setdefault(key, []).append(value.cpu())
        row = {
            "model": manifest["name"],
            "task": task_data.task,
            "split": task_data.split,
            "n": len(task_data),
            **{key: torch.cat(v).mean().item() for key, v in columns.items()},
            "seed": task_data.meta.get("seed"),
            "tokenizer": task_data.meta.get("tokenizer"),
            "task_options": json.dumps(task_data.meta["task_options"], sort_keys=True),
            "device": str(device),
            "dtype": args.dtype,
            "package_version": provenance()["package_version"],
        }
        rows.append(row)
        log.info(
            "%s %s: accuracy %.3f logit diff %.3f",
            row["model"],
            row["task"],
            row["accuracy"],
            row["logit_diff"],
        )
    atomic_write_text(args.out, csv_text(rows))
