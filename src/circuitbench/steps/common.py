"""What every step shares: its command-line flags (declared once here), start-up, and the
columns every result row carries."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from circuitbench.io import provenance
from circuitbench.methods.base import MethodData
from circuitbench.models.loading import load_patched_model
from circuitbench.options import sections_arg
from circuitbench.patching import PatchedModel
from circuitbench.tasks import SPLITS, TaskData, read_task_data

log = logging.getLogger(__name__)

EVAL_SPLIT = "test"


def add_flags(
    parser: argparse.ArgumentParser,
    *,
    model: bool = True,
    data: bool = True,
    out: bool = True,
    options: str | None = None,
    runtime: bool = True,
) -> None:
    """The flags a step needs, each declared here once: ``--model`` (a prepared model
    directory), ``--data`` (a task data directory), ``--out``, ``--options`` (the config
    sections ``options`` names, as one JSON object), ``--device``, ``--dtype``, ``--threads``."""
    if model:
        parser.add_argument("--model", required=True, type=Path, help="model dir (model.json)")
    if data:
        parser.add_argument("--data", required=True, type=Path, help="task data dir (splits)")
    if options is not None:
        parser.add_argument(
            "--options",
            type=sections_arg,
            default={},
            help=f"config sections as JSON: {options} (absent keys take their defaults)",
        )
    if runtime:
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        parser.add_argument("--dtype", default="float32")
        parser.add_argument("--threads", type=int, default=None, help="torch threads")
    if out:
        parser.add_argument("--out", required=True, type=Path, help="output path")


def setup(args: argparse.Namespace) -> tuple[dict[str, Any], PatchedModel]:
    """Threads, then the model's manifest and patched model."""
    set_threads(args)
    return load_patched_model(args.model, args.device, args.dtype)


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def read_splits(directory: Path) -> dict[str, TaskData]:
    """Every split of a task data directory."""
    return {split: read_task_data(Path(directory) / f"{split}.json") for split in SPLITS}


def method_data(splits: dict[str, TaskData], **given: Any) -> MethodData:
    """What a method gets from a task data directory's splits (the test split stays out)."""
    train = splits["train"]
    corruption = train.meta["task_options"].get("corruption")
    return MethodData(train=train, validation=splits["validation"], corruption=corruption, **given)


def base_row(manifest: dict[str, Any], data: TaskData, method: str, corruption: str) -> dict:
    """The leading columns of an edge-level discovery row."""
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


def tail_row(model: PatchedModel, args: argparse.Namespace) -> dict[str, Any]:
    """The trailing columns of a row: where and with what it ran."""
    meta = provenance()
    return {
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": meta["package_version"],
        "torch_version": meta["torch_version"],
    }
