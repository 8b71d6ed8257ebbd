"""What the benchmarks share: timing, and the models they run on (the trained toy model when
it exists, else a random toy-shaped one; a GPT-2-small-shaped model with random weights)."""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitbench.models.loading import load_text_tokenizer, read_manifest
from circuitbench.tasks import TaskData, encode_prompts, make_splits, make_task, toy_vocabulary
from circuitbench.tokenization import build_word_level_tokenizer, gpt2_tokenizer

log = logging.getLogger(__name__)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gpt2_small_shaped(directory: Path) -> Path:
    """A GPT-2-small-shaped model (12 x 12, d_model 768) with random weights, saved locally."""
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    ).save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory


def random_toy(directory: Path) -> Path:
    """A random 4 x 4 toy-shaped model over the toy vocabulary, saved locally."""
    tokenizer = build_word_level_tokenizer(toy_vocabulary())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=4, n_head=4, n_embd=128, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def toy_source(args: argparse.Namespace, tmp: Path) -> tuple[str, str]:
    """The trained toy model of ``--toy-model`` if it exists, else a random toy-shaped one."""
    toy = args.toy_model
    if (toy / "model.json").exists():
        return read_manifest(toy)["source"], f"toy ({toy})"
    log.warning("%s not found: benchmarking a random 4x4 toy-shaped model", toy)
    return str(random_toy(tmp / "toy")), "toy-shaped (random)"


def ioi_data(source: str, prepend_bos: bool, n: int) -> TaskData:
    """``n`` IOI prompts tokenized for the model at ``source``."""
    tokenizer = load_text_tokenizer(source, prepend_bos)
    task = make_task("ioi")
    prompts = make_splits(task, {"train": n, "validation": 0, "test": 0}, 0, tokenizer)["train"]
    return encode_prompts(task, prompts, tokenizer, "train")
