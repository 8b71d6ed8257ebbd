"""Benchmarks of the edge-level discovery stage (``circuitbench bench eap | ep | hap``).

``bench eap``: the time of EAP on one batch (the corrupted forward that records the writers, the
clean forward with gradients and the backward that fills the score matrix) as a ratio of one plain
forward of the same model and batch. Target: <= 4. EAP-IG (5 steps) is timed beside it.

``bench ep``: seconds per Edge Pruning step (one masked forward and backward on cached
corrupted writers, the optimizer step) on the toy model and on a GPT-2-small-shaped model with
random weights, IOI prompts, and the step time extrapolated to the paper's 3000 steps. With
``--ep-steps 3000`` on a GPU it is the measured time of 3000 steps.

``bench hap``: seconds per pruning step of Edge Pruning and of HAP at ``--keep-fraction`` (the
top-k EAP subgraph of the same prompts), HAP on the subgraph-restricted patched forward (the
default) and on the dense one, same two models and prompts as ``bench ep``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitbench.bench.common import (
    edge_mixing_flops,
    forward_flops,
    gpt2_small_shaped,
    ioi_data,
    measured,
    toy_source,
    usage_line,
)
from circuitbench.cost import track_usage
from circuitbench.io import atomic_write_json, provenance
from circuitbench.methods.eap import EAPConfig, attribute_batch, eap_scores
from circuitbench.methods.edge_pruning import EdgePruningConfig, train_edge_pruning
from circuitbench.methods.hap import HAPConfig, run_hap, subgraph_size
from circuitbench.models.loading import load_model
from circuitbench.patching import PatchedModel

log = logging.getLogger(__name__)

PAPER_STEPS = 3000


def eap_ratio(source: str, batch_size: int, seq_len: int, repeats: int, device: str) -> dict:
    """Plain forward vs EAP (and EAP-IG) on one batch of random tokens."""

    bridge = load_model(source, device=device)
    generator = torch.Generator().manual_seed(0)
    vocab = bridge.cfg.d_vocab
    shape = (batch_size, seq_len)
    clean = torch.randint(0, vocab, shape, generator=generator).to(bridge.cfg.device)
    corrupt = torch.randint(0, vocab, shape, generator=generator).to(bridge.cfg.device)
    answer, distractor = torch.randint(0, vocab, (2,), generator=generator).tolist()

    def metric(logits_end: torch.Tensor) -> torch.Tensor:
        return logits_end[:, answer] - logits_end[:, distractor]

    end_pos = torch.full((batch_size,), seq_len - 1)

    with torch.no_grad():
        plain_usage = measured(lambda: bridge(clean), repeats)  # before the patching flags
    model = PatchedModel(bridge)

    def run(ig_steps: int) -> torch.Tensor:
        with torch.no_grad():
            writers, _ = model.record_writers(corrupt, logits=False)
        return attribute_batch(model, clean, writers, metric, end_pos, ig_steps)

    eap_usage = measured(lambda: run(0), repeats)
    ig_usage = measured(lambda: run(5), max(1, repeats // 5))
    plain, eap_seconds, ig_seconds = (u.wall_seconds for u in (plain_usage, eap_usage, ig_usage))
    tokens = batch_size * seq_len
    forward = forward_flops(model, tokens)
    # EAP: a corrupted forward, a clean patched forward and its backward (about 2 forwards);
    # EAP-IG(5): the corrupted forward and 5 interpolated forward + backward passes.
    mixing = edge_mixing_flops(model, tokens)
    return {
        "usage": {"plain forward": plain_usage, "EAP": eap_usage, "EAP-IG(5)": ig_usage},
        "flops": {
            "plain forward": forward,
            "EAP": forward + 3 * (forward + mixing),
            "EAP-IG(5)": forward + 5 * 3 * (forward + mixing),
        },
        "layers_x_heads": f"{model.shape.n_layers}x{model.shape.n_heads}",
        "edges": model.shape.n_edges,
        "batch": f"{batch_size}x{seq_len}",
        "plain_forward_s": plain,
        "eap_s": eap_seconds,
        "eap_ig5_s": ig_seconds,
        "ratio": eap_seconds / plain,
        "ig5_ratio": ig_seconds / plain,
    }


def print_usage(result: dict[str, Any]) -> None:
    """Print each side's usage line and keep it in ``result`` as plain numbers (for JSON)."""
    usages = result.pop("usage")
    flops = result.get("flops", {})
    for side, usage in usages.items():
        print(usage_line(side, usage, flops.get(side)))
    result["usage"] = {side: usage.as_dict() for side, usage in usages.items()}


def run_eap(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        toy_model, toy_name = toy_source(args, Path(tmp))
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        seq_len = min(args.seq_len, 64)
        for name, source in ((toy_name, toy_model), ("GPT-2-small-shaped (random)", gpt2)):
            result = eap_ratio(source, args.batch_size, seq_len, args.repeats, args.device)
            results.append({"model": name, **result})
    threads = torch.get_num_threads()
    print(f"bench eap: EAP on one batch / one plain forward (target <= 4), {threads} threads")
    for r in results:
        print(
            f"  {r['model']:<32} {r['layers_x_heads']:>6} {r['edges']:>6} edges"
            f"  batch {r['batch']}:  plain {1000 * r['plain_forward_s']:8.1f} ms"
            f"  EAP {1000 * r['eap_s']:8.1f} ms (ratio {r['ratio']:.2f}x)"
            f"  EAP-IG(5) {1000 * r['eap_ig5_s']:8.1f} ms (ratio {r['ig5_ratio']:.2f}x)"
        )
        print_usage(r)
    print("    (GFLOP estimated: a backward pass as 2 forwards)")
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="eap", results=results))
    print(json.dumps({r["model"]: round(r["ratio"], 2) for r in results}))


def ep_step_time(source: str, prepend_bos: bool, args: argparse.Namespace, steps: int) -> dict:
    """Seconds per Edge Pruning step on IOI prompts (the paper's setting for everything but
    the number of steps)."""

    data = ioi_data(source, prepend_bos, max(args.batch_size * 2, 16))
    model = PatchedModel(load_model(source, device=args.device))
    config = EdgePruningConfig(
        steps=steps, sparsity_warmup=steps, lr_warmup=1, batch_size=args.batch_size, log_every=10**9
    )
    started = time.perf_counter()
    with track_usage(model.device) as usage:
        result = train_edge_pruning(model, data, config, "abc", progress="bench ep")
    tokens = args.batch_size * data.clean_tokens.shape[1]
    step_flops = 3 * (forward_flops(model, tokens) + edge_mixing_flops(model, tokens))
    return {
        "usage": {f"{steps} EP steps (+ cache)": usage},
        "flops": {f"{steps} EP steps (+ cache)": steps * step_flops},
        "layers_x_heads": f"{model.shape.n_layers}x{model.shape.n_heads}",
        "edges": model.shape.n_edges,
        "batch": args.batch_size,
        "prompt_tokens": int(data.end_pos.max()) + 1,
        "device": str(model.device),
        "steps": steps,
        "seconds_per_step": result.cost["seconds_per_step"],
        "cache_seconds": result.cost["cache_seconds"],
        "measured_seconds": time.perf_counter() - started,
        f"extrapolated_{PAPER_STEPS}_steps_s": PAPER_STEPS * result.cost["seconds_per_step"],
    }


def run_ep(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        toy_model, toy_name = toy_source(args, Path(tmp))
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        for name, source, bos in (
            (toy_name, toy_model, True),
            ("GPT-2-small-shaped", gpt2, False),
        ):
            result = ep_step_time(source, bos, args, args.ep_steps)
            results.append({"model": name, **result})
    threads = torch.get_num_threads()
    print(f"bench ep: one Edge Pruning step (masked forward + backward + AdamW), {threads} threads")
    for r in results:
        print(
            f"  {r['model']:<32} {r['layers_x_heads']:>6} {r['edges']:>6} edges"
            f"  batch {r['batch']} x {r['prompt_tokens']} tokens on {r['device']}:"
            f"  {r['seconds_per_step']:.3f} s/step over {r['steps']} steps;"
            f" {PAPER_STEPS} steps = {r[f'extrapolated_{PAPER_STEPS}_steps_s']:.0f} s"
            + (" (measured)" if r["steps"] >= PAPER_STEPS else " (extrapolated)")
        )
        print_usage(r)
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="ep", results=results))
    print(json.dumps({r["model"]: round(r["seconds_per_step"], 4) for r in results}))


def hap_step_time(
    source: str, prepend_bos: bool, args: argparse.Namespace, steps: int
) -> dict[str, Any]:
    """Seconds per pruning step: Edge Pruning, HAP on the subgraph forward, HAP on the dense
    forward (IOI prompts, the top ``keep_fraction`` EAP subgraph of the same prompts)."""

    data = ioi_data(source, prepend_bos, max(args.batch_size * 2, 16))
    model = PatchedModel(load_model(source, device=args.device))
    config = EdgePruningConfig(
        steps=steps, sparsity_warmup=steps, lr_warmup=1, batch_size=args.batch_size, log_every=10**9
    )
    scores = eap_scores(model, data, EAPConfig(batch_size=args.batch_size), "abc")
    warm_up = replace(config, steps=2, sparsity_warmup=2)  # the first run would pay for the rest
    train_edge_pruning(model, data, warm_up, "abc", progress="warm-up")
    usages = {}
    with track_usage(model.device) as usages["ep"]:
        runs = {"ep": train_edge_pruning(model, data, config, "abc", progress="bench ep")}
    for name, skip in (("hap_subgraph", True), ("hap_dense", False)):
        hap = HAPConfig(keep_fraction=args.keep_fraction, skip_removed_edges=skip)
        with track_usage(model.device) as usages[name]:
            runs[name], _, _ = run_hap(model, data, scores.scores, hap, config, None, "abc")
    per_step = {name: result.cost["seconds_per_step"] for name, result in runs.items()}
    return {
        "layers_x_heads": f"{model.shape.n_layers}x{model.shape.n_heads}",
        "edges": model.shape.n_edges,
        "subgraph_edges": subgraph_size(model.shape, args.keep_fraction),
        "keep_fraction": args.keep_fraction,
        "batch": args.batch_size,
        "prompt_tokens": int(data.end_pos.max()) + 1,
        "device": str(model.device),
        "steps": steps,
        "eap_seconds": scores.wall_seconds,
        **{f"{name}_s_per_step": value for name, value in per_step.items()},
        "speedup_subgraph": per_step["ep"] / per_step["hap_subgraph"],
        "speedup_dense": per_step["ep"] / per_step["hap_dense"],
        "usage": usages,
    }


def run_hap_bench(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        toy_model, toy_name = toy_source(args, Path(tmp))
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        for name, source, bos, steps in (
            (toy_name, toy_model, True, args.ep_steps),
            ("GPT-2-small-shaped", gpt2, False, args.gpt2_steps),
        ):
            result = hap_step_time(source, bos, args, steps)
            results.append({"model": name, **result})
    log.info(
        "bench hap: one pruning step, Edge Pruning vs HAP (EAP top-k subgraph), %d threads",
        torch.get_num_threads(),
    )
    for r in results:
        log.info(
            "%s %s, %d edges, k = %d (%.0f%%), batch %d x %d tokens on %s, %d steps:"
            " EP %.3f s/step; HAP on the subgraph forward %.3f s/step (%.2fx);"
            " HAP on the dense forward %.3f s/step (%.2fx)",
            r["model"], r["layers_x_heads"], r["edges"], r["subgraph_edges"],
            100 * r["keep_fraction"], r["batch"], r["prompt_tokens"], r["device"], r["steps"],
            r["ep_s_per_step"], r["hap_subgraph_s_per_step"], r["speedup_subgraph"],
            r["hap_dense_s_per_step"], r["speedup_dense"],
        )  # fmt: skip
        print_usage(r)
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="hap", results=results))
    print(json.dumps({r["model"]: round(r["speedup_subgraph"], 3) for r in results}))
