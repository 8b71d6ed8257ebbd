"""``circuitbench bench gpu``: every method's cost at one model shape, in one run, as one CSV.

Meant for a GPU at GPT-2-small shape (12 x 12, d_model 768, random weights, IOI prompts), where
it finishes in minutes; ``--shape tiny`` runs the same code on a 2 x 4 model on CPU, so that the
script is exercised by the test suite. Rows (one per measurement):

- ``path_patching``: one dense search (default configuration), at most ``--pp-receivers``
  receivers visited;
- ``eap``, ``eap_ig``: scores of every edge over the prompts (EAP-IG with 5 steps);
- ``edge_pruning``, ``hap``: ``--steps`` pruning steps (HAP on its EAP top-20% subgraph), and
  the time of the paper's 3000 steps extrapolated from the measured seconds per step;
- ``evaluate``: one patched evaluation of the Edge Pruning circuit over the prompts.

Every row has wall and CPU seconds, the peak resident set size while it ran and, on CUDA, the
allocator's peak.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitbench.bench.common import gpt2_small_shaped, ioi_data
from circuitbench.cost import track_usage
from circuitbench.evaluate import evaluate_graph
from circuitbench.methods.eap import EAPConfig, eap_scores
from circuitbench.methods.edge_pruning import EdgePruningConfig, train_edge_pruning
from circuitbench.methods.hap import HAPConfig, run_hap
from circuitbench.methods.path_patching import BatchedScorer, PathPatchingConfig, search
from circuitbench.models.loading import load_model
from circuitbench.patching import Ablation, MeanScope, PatchedModel
from circuitbench.tokenization import gpt2_tokenizer

log = logging.getLogger(__name__)

PAPER_STEPS = 3000
COLUMNS = [
    "measurement",
    "shape",
    "device",
    "prompts",
    "steps",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "cuda_peak_mb",
    "seconds_per_step",
    f"extrapolated_{PAPER_STEPS}_steps_s",
    "detail",
]


def tiny_gpt2(directory: Path) -> Path:
    """A 2 x 4 GPT-2 (d_model 64) with random weights and the GPT-2 tokenizer, saved locally."""
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128)).save_pretrained(
        directory
    )
    gpt2_tokenizer().save_pretrained(directory)
    return directory


def run_gpu(args: argparse.Namespace) -> None:
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    tiny = args.shape == "tiny"
    steps = args.steps if args.steps is not None else (3 if tiny else 200)
    prompts = args.gpu_prompts if args.gpu_prompts is not None else (16 if tiny else 200)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        build = tiny_gpt2 if tiny else gpt2_small_shaped
        source = str(build(Path(tmp) / args.shape))
        data = ioi_data(source, False, prompts)
        model = PatchedModel(load_model(source, device=device))
        batch = min(args.batch_size, prompts)

        def measure(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            log.info("bench gpu: %s ...", name)
            with track_usage(model.device) as usage:
                extra = fn()
            row = {
                "measurement": name,
                "shape": f"{model.shape.n_layers}x{model.shape.n_heads}, d {model.d_model}",
                "device": str(model.device),
                "prompts": prompts,
                "wall_s": usage.wall_seconds,
                "cpu_s": usage.cpu_seconds,
                "peak_rss_mb": usage.peak_rss_mb,
                "cuda_peak_mb": usage.cuda_peak_mb,
                **extra,
            }
            log.info("bench gpu: %s: %.1f s", name, usage.wall_seconds)
            rows.append(row)
            return row

        def path_patching() -> dict[str, Any]:
            scorer = BatchedScorer(model, data.select(slice(0, min(prompts, 100))), "abc")
            found = search(scorer, PathPatchingConfig(), max_receivers=args.pp_receivers)
            scope = "capped" if found.truncated else "complete"
            return {
                "detail": f"{len(found.visited)} receivers visited ({scope}),"
                f" {scorer.cost.measurements} measurements, {len(found.heads)} heads"
            }

        measure("path_patching", path_patching)
        eap_config = EAPConfig(batch_size=batch)
        scores: dict[str, Any] = {}

        def eap(ig_steps: int) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                result = eap_scores(model, data, replace(eap_config, ig_steps=ig_steps), "abc")
                scores[str(ig_steps)] = result.scores
                return {"detail": f"{model.shape.n_edges} edges scored"}

            return run

        measure("eap", eap(0))
        measure("eap_ig", eap(5))
        ep_config = EdgePruningConfig(
            steps=steps, sparsity_warmup=steps, lr_warmup=1, batch_size=batch, log_every=10**9
        )
        circuit: dict[str, Any] = {}

        def pruning(kind: str) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                if kind == "edge_pruning":
                    result = train_edge_pruning(model, data, ep_config, "abc", progress="bench gpu")
                    circuit["graph"] = result.graph
                else:
                    result, _, _ = run_hap(
                        model, data, scores["0"], HAPConfig(), ep_config, None, "abc"
                    )
                per_step = result.cost["seconds_per_step"]
                return {
                    "steps": steps,
                    "seconds_per_step": per_step,
                    f"extrapolated_{PAPER_STEPS}_steps_s": result.cost["cache_seconds"]
                    + PAPER_STEPS * per_step,
                    "detail": f"batch {batch}, {result.cost['masked_forward']} masked forward"
                    f" ({result.cost['masked_forward_edges']} edges)",
                }

            return run

        measure("edge_pruning", pruning("edge_pruning"))
        measure("hap", pruning("hap"))

        def evaluation() -> dict[str, Any]:
            cache = model.build_cache(data, Ablation.INTERCHANGE, "abc", MeanScope.TEMPLATE, batch)
            metrics = evaluate_graph(model, cache, circuit["graph"])
            return {
                "detail": f"KL {max(metrics['kl'], 0.0):.4f} (cache and one patched pass per batch)"
            }

        measure("evaluate", evaluation)
    args.gpu_csv.parent.mkdir(parents=True, exist_ok=True)
    with args.gpu_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    total = sum(r["wall_s"] for r in rows)
    print(f"bench gpu: {args.shape} on {device}, {total:.0f} s in all; wrote {args.gpu_csv}")
    for r in rows:
        cuda = r["cuda_peak_mb"]
        extra = r.get(f"extrapolated_{PAPER_STEPS}_steps_s")
        print(
            f"  {r['measurement']:<14} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU"
            f"  peak RSS {r['peak_rss_mb']:7.0f} MB"
            + (f"  CUDA peak {cuda:7.0f} MB" if cuda is not None else "")
            + (f"  {PAPER_STEPS} steps ~ {extra:.0f} s" if extra is not None else "")
            + f"  ({r['detail']})"
        )
