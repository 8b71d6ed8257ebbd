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

from circuitbench.cost import Usage, block_flops, track_usage, unembed_flops
from circuitbench.models.loading import load_text_tokenizer, read_manifest
from circuitbench.tasks import TaskData, encode_prompts, make_splits, make_task, toy_vocabulary
from circuitbench.tokenization import build_word_level_tokenizer, gpt2_tokenizer

log = logging.getLogger(__name__)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    return measured(fn, repeats).wall_seconds


def measured(fn: Callable[[], Any], repeats: int, device: Any = None) -> Usage:
    """``fn`` after one warm-up call: median wall seconds of ``repeats`` calls, CPU seconds per
    call, and the peak memory over all of them."""
    fn()  # warm-up
    times = []
    with track_usage(device) as usage:
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    usage.wall_seconds = statistics.median(times)
    usage.cpu_seconds /= repeats
    return usage


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


def forward_flops(model, tokens: int) -> float:
    """FLOPs of one plain forward over ``tokens`` tokens (blocks and unembedding; a
    multiply-add counts 2). A backward pass costs about twice this (an estimate)."""
    cfg = model.bridge.cfg
    seq = min(tokens, cfg.n_ctx)
    per_token = cfg.n_layers * block_flops(cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, seq)
    return tokens * (per_token + unembed_flops(cfg.d_model, cfg.d_vocab))


def edge_mixing_flops(model, tokens: int) -> float:
    """FLOPs the patched forward adds over ``tokens`` tokens: each receiver's input is the mix
    of its writers' deltas (one multiply-add per writer, receiver and residual dimension)."""
    shape, d = model.shape, model.d_model
    H = shape.n_heads
    per_token = sum(2 * (1 + layer * (H + 1)) * (3 * H + 1) * d for layer in range(shape.n_layers))
    per_token += 2 * shape.n_writers * d
    return tokens * per_token


def usage_line(name: str, usage: Usage, flops: float | None = None) -> str:
    """One printed line per benchmarked side: wall and CPU seconds, FLOPs, peak memory."""
    line = f"    {name:<22} wall {usage.wall_seconds:9.3f} s  CPU {usage.cpu_seconds:9.3f} s"
    if flops is not None:
        line += f"  {flops / 1e9:9.1f} GFLOP"
    line += f"  peak RSS {usage.peak_rss_mb:7.0f} MB (+{usage.rss_increase_mb:.0f})"
    if usage.cuda_peak_mb is not None:
        line += f"  CUDA peak {usage.cuda_peak_mb:7.0f} MB"
    return line
