"""The ``bench`` step: benchmarks of the methods' speed (:mod:`circuitbench.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitbench.bench import BENCHMARKS
from circuitbench.steps.common import add_flags, set_threads

STEPS = {
    "bench": "benchmarks: `bench evaluate` (patched pass vs plain forward), `bench pp`,"
    " `bench eap`, `bench ep`, `bench hap`, `bench gpu` (every method at GPT-2-small shape)",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
    p = sub.add_parser("bench", help=STEPS["bench"])
    p.add_argument("which", choices=sorted(BENCHMARKS), help="what to benchmark")
    p.add_argument(
        "--toy-model",
        type=Path,
        default=Path("results/models/toy-4l8h"),
        help="trained toy model directory (a random 4x4 model if absent)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--n-prompts", type=int, default=100, help="pp: toy-model discovery prompts")
    p.add_argument("--gpt2-prompts", type=int, default=8, help="pp: GPT-2-shaped prompts")
    p.add_argument(
        "--gpt2-receiver-layers",
        default="1,3,5,7,9,11",
        help="pp: on the GPT-2 shape, one receiver head in each of these layers",
    )
    p.add_argument(
        "--baseline-senders",
        type=int,
        default=4,
        help="pp: senders per receiver input the GPT-2-shaped baselines run (scaled to all)",
    )
    p.add_argument("--ep-steps", type=int, default=10, help="ep, hap: steps timed per model")
    p.add_argument("--gpt2-steps", type=int, default=3, help="hap: steps on the GPT-2 shape")
    p.add_argument("--keep-fraction", type=float, default=0.2, help="hap: the EAP subgraph's k")
    p.add_argument(
        "--shape", choices=["gpt2-small", "tiny"], default="gpt2-small", help="gpu: model shape"
    )
    p.add_argument("--steps", type=int, help="gpu: EP and HAP steps (200; tiny: 3)")
    p.add_argument("--gpu-prompts", type=int, help="gpu: IOI prompts (200; tiny: 16)")
    p.add_argument("--pp-receivers", type=int, default=12, help="gpu: path-patching receivers")
    p.add_argument(
        "--gpu-csv", type=Path, default=Path("results/bench/gpu.csv"), help="gpu: the CSV written"
    )
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    add_flags(p, model=False, data=False, out=False)


def bench(args: argparse.Namespace) -> None:
    set_threads(args)
    BENCHMARKS[args.which](args)
