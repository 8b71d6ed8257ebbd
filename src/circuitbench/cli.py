"""``circuitbench <step> …``: the only entry point the workflow's rules call.

Each step reads files and writes files (atomically); options that change a result are explicit
arguments, recorded in the artifact's provenance.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from circuitbench import __version__
from circuitbench.bench import BENCHMARKS

log = logging.getLogger("circuitbench")

STEPS = {
    "tokenizer": "build the word-level tokenizer of the self-trained toy suite",
    "data": "generate a task's train/validation/test clean/corrupted prompt pairs for one model",
    "train": "train a toy GPT-2-architecture model on the synthetic task corpus",
    "prepare-model": "check a hub/local paper model is loadable offline and write its manifest",
    "eval-model": "evaluate a model (through TransformerBridge) on every task's test split",
    "make-circuit": "write the full, the empty or a head-set circuit of a model as MIB JSON",
    "evaluate": "evaluate a circuit file with one patched pass per batch; write a metrics row",
    "table": "collect result rows into a CSV and a captioned Markdown table",
    "path-patching": "dense automated path patching: APP's 16-configuration grid and selection",
    "bench": "benchmarks: `bench evaluate` (patched pass vs plain forward), `bench pp`,"
    " `bench eap`, `bench ep`, `bench hap`",
}


def build_parser() -> argparse.ArgumentParser:
    from circuitbench.steps import STAGES
    from circuitbench.steps.core import json_arg, non_negative

    every_step = {**STEPS, **{k: v for stage in STAGES for k, v in stage.STEPS.items()}}
    parser = argparse.ArgumentParser(
        prog="circuitbench",
        description="Automated circuit discovery pipeline (APP, HAP, Edge Pruning). Steps:\n"
        + "\n".join(f"  {name:<14} {text}" for name, text in every_step.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"circuitbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = sub.add_parser("tokenizer", help=STEPS["tokenizer"])
    p.add_argument("--out", required=True, type=Path, help="output directory")

    p = sub.add_parser("data", help=STEPS["data"])
    p.add_argument("--task", required=True)
    p.add_argument("--options", type=json_arg, default={}, help="task options as JSON")
    p.add_argument("--tokenizer", required=True, help="tokenizer dir, hub id, or 'gpt2-offline'")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--n-train", type=non_negative, required=True)
    p.add_argument("--n-validation", type=non_negative, required=True)
    p.add_argument("--n-test", type=non_negative, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--model", required=True, help="model name (provenance)")
    p.add_argument("--out", required=True, type=Path, help="output directory")

    p = sub.add_parser("train", help=STEPS["train"])
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--tokenizer", required=True, type=Path, help="word-level tokenizer dir")
    p.add_argument("--data", required=True, nargs="+", type=Path, help="task data dirs")
    p.add_argument("--spec", type=json_arg, default={}, help="TrainSpec fields as JSON")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output model directory")

    p = sub.add_parser("prepare-model", help=STEPS["prepare-model"])
    p.add_argument("--name", required=True)
    p.add_argument("--source", required=True, help="hub id or local save_pretrained directory")
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--out", required=True, type=Path, help="output model directory")

    p = sub.add_parser("eval-model", help=STEPS["eval-model"])
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--data", required=True, nargs="+", type=Path, help="test split JSON files")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output CSV")

    p = sub.add_parser("make-circuit", help=STEPS["make-circuit"])
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--kind", required=True, choices=["full", "empty", "heads"])
    p.add_argument("--heads", type=json_arg, help='with --kind heads: {"layer": [heads]}')
    p.add_argument("--out", required=True, type=Path)

    p = sub.add_parser("evaluate", help=STEPS["evaluate"])
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--data", required=True, type=Path, help="a split JSON file")
    p.add_argument("--circuit", required=True, type=Path, help="MIB circuit JSON")
    p.add_argument("--name", help="circuit name in the row (default: the file's stem)")
    p.add_argument("--ablation", default="interchange", choices=["interchange", "mean", "zero"])
    p.add_argument("--corruption", help="corruption variant (default: the task's configured one)")
    p.add_argument(
        "--mean-scope", default="template", choices=["template", "batch_template", "dataset"]
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output CSV (one row)")

    p = sub.add_parser("path-patching", help=STEPS["path-patching"])
    p.add_argument("--model", required=True, type=Path, help="model directory (with model.json)")
    p.add_argument("--data", required=True, type=Path, help="task data directory (the splits)")
    p.add_argument("--n-prompts", type=int, default=100, help="discovery prompts (train split)")
    p.add_argument("--corruption", help="corruption variant (default: the task's configured one)")
    p.add_argument("--threshold-mode", default="sqrt", choices=["sqrt", "linear"])
    p.add_argument("--missing-scores", default="zero", choices=["zero", "exclude"])
    p.add_argument("--min-performance", type=float, default=73.0)
    p.add_argument("--max-size-fraction", type=float, default=0.25)
    p.add_argument("--eval-batch-size", type=int, default=25)
    p.add_argument("--implementation", default="batched", choices=["batched", "oracle"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")

    p = sub.add_parser("table", help=STEPS["table"])
    p.add_argument("--kind", required=True, help="which table (models, baselines, …)")
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="result-row CSVs")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-md", required=True, type=Path)

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
        "--max-receivers", type=int, default=2, help="pp: receivers visited on the GPT-2 shape"
    )
    p.add_argument("--ep-steps", type=int, default=10, help="ep, hap: steps timed per model")
    p.add_argument("--gpt2-steps", type=int, default=3, help="hap: steps on the GPT-2 shape")
    p.add_argument("--keep-fraction", type=float, default=0.2, help="hap: the EAP subgraph's k")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="also write the results as JSON")

    from circuitbench.steps import STAGES

    for stage in STAGES:
        stage.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from circuitbench import steps

    try:
        steps.handler(args.step)(args)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        log.error("%s failed: %s", args.step, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
