"""What a computation cost: forward passes, wall seconds, peak memory (and FLOPs where counted)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Cost:
    forward_passes: int = 0
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    flops: float | None = None

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory of this process on CUDA, else peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measure(counter: Any) -> Iterator[Cost]:
    """Fill a :class:`Cost` with the forward passes ``counter.forward_passes`` gained and the wall
    time spent inside the block."""
    cost = Cost()
    passes, started = counter.forward_passes, time.perf_counter()
    try:
        yield cost
    finally:
        cost.forward_passes = counter.forward_passes - passes
        cost.wall_seconds = time.perf_counter() - started
        cost.peak_memory_mb = peak_memory_mb(getattr(counter, "device", None))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 16 << 20


@functools.cache
def return_freed_memory() -> bool:
    """Have glibc serve every allocation of 16 MiB or more with its own mapping, returned to the
    system when freed. By default glibc raises that threshold after the first large frees (up to
    32 MiB), and freed tensors then stay in the process's heap: an Edge Pruning run at
    GPT-2-small shape, batch 32, peaked at 8.1 GB resident instead of 5.2 GB. (A 1 MiB
    threshold slowed the toy model's steps 1.7x; 16 MiB leaves them as they were.)
    A ``MALLOC_MMAP_THRESHOLD_`` set by the user wins. Returns whether the setting was made."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc
        return False


def resident_mb() -> float:
    """This process's resident set size now (Linux ``/proc``; else the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Usage:
    """What one block of work used: wall and CPU seconds (all threads of the process), the peak
    resident set size while it ran and its rise over the size at the start, and the CUDA memory
    it allocated at most (None on CPU)."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    rss_increase_mb: float = 0.0
    cuda_peak_mb: float | None = None

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@contextmanager
def track_usage(
    device: torch.device | str | None = None, interval: float = 0.002
) -> Iterator[Usage]:
    """Measure the block into a :class:`Usage`. The resident set size is sampled every
    ``interval`` seconds by a thread (a peak shorter than that can be missed); on CUDA the
    allocator's own peak is reset at the start and read at the end."""
    usage = Usage()
    device = torch.device(device) if device is not None else None
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start_rss = resident_mb()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], resident_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield usage
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            usage.cuda_peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        usage.wall_seconds = time.perf_counter() - wall
        usage.cpu_seconds = time.process_time() - cpu
        done.set()
        sampler.join()
        peak[0] = max(peak[0], resident_mb())
        usage.peak_rss_mb = peak[0]
        usage.rss_increase_mb = peak[0] - start_rss


def block_flops(d_model: int, d_mlp: int, n_heads: int, d_head: int, seq_len: int) -> float:
    """Forward FLOPs of one transformer block per token (a multiply-add counts 2): q/k/v and
    output projections, attention scores and mixing over ``seq_len`` keys, the MLP. LayerNorm,
    softmax and activation functions are left out. (fvcore, which APP used, counts a
    multiply-add as 1: ratios are unaffected.)"""
    projections = 2 * d_model * 4 * n_heads * d_head
    attention = 2 * 2 * seq_len * n_heads * d_head
    mlp = 2 * 2 * d_model * d_mlp
    return float(projections + attention + mlp)


def unembed_flops(d_model: int, d_vocab: int) -> float:
    """Forward FLOPs of the unembedding per token."""
    return float(2 * d_model * d_vocab)
