"""Benchmarks (``circuitbench bench …``): speed targets live here, never in timed tests.

``bench evaluate``: the time of one edge-level patched pass (random circuit, interchange ablation)
as a ratio of one plain forward of the same model and batch, on the default toy model and on a
GPT-2-small-shaped model with random weights built locally (12 layers x 12 heads, d_model 768,
GPT-2 vocabulary). Target: <= 3x.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from circuitbench.bench.common import (
    edge_mixing_flops,
    forward_flops,
    gpt2_small_shaped,
    ioi_data,
    measured,
    median_seconds,
    random_toy,
    toy_source,
    usage_line,
)
from circuitbench.cost import track_usage
from circuitbench.graph import GraphShape
from circuitbench.io import atomic_write_json, provenance
from circuitbench.methods.path_patching import SCORERS, app_measurement_flops, head_name
from circuitbench.models.loading import load_model, read_manifest
from circuitbench.patching import PatchedModel
from circuitbench.tasks import read_task_data

log = logging.getLogger(__name__)


def evaluate_ratio(source: str, batch_size: int, seq_len: int, repeats: int, device: str) -> dict:
    """Plain forward vs patched forward of one model on random tokens."""

    bridge = load_model(source, device=device)
    generator = torch.Generator().manual_seed(0)
    vocab = bridge.cfg.d_vocab
    clean = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(
        bridge.cfg.device
    )
    corrupt = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(
        bridge.cfg.device
    )
    with torch.no_grad():
        plain_usage = measured(lambda: bridge(clean), repeats)  # before the patching flags
        model = PatchedModel(bridge)
        shape: GraphShape = model.shape
        writers, _ = model.record_writers(corrupt)
        mask = (torch.rand(shape.n_writers, shape.n_receivers, generator=generator) < 0.5).float()
        patched_usage = measured(lambda: model.patched_forward(clean, mask, writers), repeats)
        hooks_only = median_seconds(lambda: model.forward(clean), repeats)
    plain, patched = plain_usage.wall_seconds, patched_usage.wall_seconds
    tokens = batch_size * seq_len
    return {
        "usage": {"plain forward": plain_usage, "patched pass": patched_usage},
        "flops": {
            "plain forward": forward_flops(model, tokens),
            "patched pass": forward_flops(model, tokens) + edge_mixing_flops(model, tokens),
        },
        "model": source,
        "layers_x_heads": f"{shape.n_layers}x{shape.n_heads}",
        "edges": shape.n_edges,
        "batch": f"{batch_size}x{seq_len}",
        "plain_forward_s": plain,
        "forward_with_patching_flags_s": hooks_only,
        "patched_forward_s": patched,
        "ratio": patched / plain,
    }


def spaced(items: list, count: int | None) -> list:
    """``count`` items spread evenly over ``items`` (all of them when ``count`` is None)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def pp_workload(
    implementation: str,
    model: PatchedModel,
    data,
    receivers: list[tuple[int, int]],
    sample: int | None,
    reference: dict | None = None,
) -> dict[str, Any]:
    """Step 0 over every head and each receiver's q, k and v from every head below it, scored
    by one scorer. With ``sample``, only that many senders per receiver input (and at step 0)
    run and the time and FLOPs of each part are scaled to all its senders: every sender of a
    one-sender-at-a-time scorer costs the same passes. ``reference`` (the batched scores) is
    compared with what this scorer computed."""
    device = model.device
    L, H = model.shape.n_layers, model.shape.n_heads
    every = [(layer, head) for layer in range(L) for head in range(H)]
    with track_usage(device) as setup:
        scorer = SCORERS[implementation](model, data, "abc")
    setup_flops = scorer.cost.flops_actual
    app_flops = 2 * scorer.full_flops
    parts: list[dict[str, Any]] = []
    peak = setup.peak_rss_mb
    cuda_peak = setup.cuda_peak_mb
    for receiver in [None, *receivers]:
        below = every if receiver is None else [s for s in every if s[0] < receiver[0]]
        run = spaced(below, sample)
        flops = scorer.cost.flops_actual
        with track_usage(device) as usage:
            if receiver is None:
                scorer.resid_scores(run)
            else:
                scorer.receiver_scores(receiver, run)
        scale = len(below) / len(run)
        inputs = 1 if receiver is None else 3
        # APP's accounting: one pass per measurement up to the receiver's layer, unembedded.
        rows = L if receiver is None else receiver[0]
        app_flops += inputs * len(below) * app_measurement_flops(scorer, rows)
        parts.append(
            {
                "receiver": "logits" if receiver is None else head_name(receiver),
                "measurements": inputs * len(below),
                "measured": inputs * len(run),
                "wall_s": usage.wall_seconds * scale,
                "cpu_s": usage.cpu_seconds * scale,
                "flops": (scorer.cost.flops_actual - flops) * scale,
            }
        )
        peak = max(peak, usage.peak_rss_mb)
        if usage.cuda_peak_mb is not None:
            cuda_peak = max(cuda_peak or 0.0, usage.cuda_peak_mb)
    difference = None
    if reference is not None:
        shared = set(scorer.memo) & set(reference)
        difference = max(abs(scorer.memo[k] - reference[k]) for k in shared)
    return {
        "implementation": implementation,
        "sampled": sample is not None,
        "setup_wall_s": setup.wall_seconds,
        "setup_cpu_s": setup.cpu_seconds,
        "setup_flops": setup_flops,
        "wall_s": setup.wall_seconds + sum(p["wall_s"] for p in parts),
        "cpu_s": setup.cpu_seconds + sum(p["cpu_s"] for p in parts),
        "flops": setup_flops + sum(p["flops"] for p in parts),
        "app_accounting_flops": app_flops,
        "peak_rss_mb": peak,
        "cuda_peak_mb": cuda_peak,
        "max_score_difference": difference,
        "ld_gap": float(scorer.ld_clean - scorer.ld_corrupt),
        "parts": parts,
        "memo": scorer.memo,
    }


def pp_compare(
    source: str, data, layers: list[int] | None, sample: int | None, device: str
) -> dict[str, Any]:
    """The batched scorer on the whole workload (one receiver head in each of ``layers``, all
    layers >= 1 by default); the authors-style baseline and the oracle on ``sample`` senders per
    receiver input, scaled (see :func:`pp_workload`)."""
    model = PatchedModel(load_model(source, device=device))
    L, H = model.shape.n_layers, model.shape.n_heads
    receivers = [(layer, layer % H) for layer in (layers or range(1, L))]
    batched = pp_workload("batched", model, data, receivers, None)
    sides = {"batched": batched}
    for name in ("authors", "oracle"):
        sides[name] = pp_workload(name, model, data, receivers, sample, batched["memo"])
    for side in sides.values():
        del side["memo"]
    authors = sides["authors"]
    by_receiver = [
        {
            "receiver": b["receiver"],
            "measurements": b["measurements"],
            "batched_s": b["wall_s"],
            "authors_s": a["wall_s"],
            "ratio": a["wall_s"] / b["wall_s"],
            "flops_ratio": a["flops"] / b["flops"],
        }
        for b, a in zip(batched["parts"], authors["parts"], strict=True)
    ]
    return {
        "layers_x_heads": f"{model.shape.n_layers}x{model.shape.n_heads}",
        "prompts": len(data),
        "prompt_tokens": int(data.clean_tokens.shape[1]),
        "receivers": [head_name(r) for r in receivers],
        "baseline_senders_per_input": sample,
        "sides": sides,
        "by_receiver": by_receiver,
        "ratio": authors["wall_s"] / batched["wall_s"],
        "cpu_ratio": authors["cpu_s"] / batched["cpu_s"],
        "flops_ratio": authors["flops"] / batched["flops"],
        "oracle_ratio": sides["oracle"]["wall_s"] / batched["wall_s"],
    }


def _run_pp(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        toy = args.toy_model
        toy_data_file = Path("results/data") / toy.name / "ioi" / "train.json"
        if (toy / "model.json").exists() and toy_data_file.exists():
            toy_model, toy_name = read_manifest(toy)["source"], f"toy ({toy})"
            data = read_task_data(toy_data_file).select(slice(0, args.n_prompts))
        else:
            log.warning("%s not found: benchmarking a random 4x4 toy-shaped model", toy)
            toy_model, toy_name = str(random_toy(Path(tmp) / "toy")), "toy-shaped (random)"
            data = ioi_data(toy_model, True, args.n_prompts)
        result = pp_compare(toy_model, data, None, None, args.device)
        results.append({"model": toy_name, **result})
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        data = ioi_data(gpt2, False, args.gpt2_prompts)
        layers = [int(x) for x in args.gpt2_receiver_layers.split(",")]
        result = pp_compare(gpt2, data, layers, args.baseline_senders, args.device)
        results.append({"model": "GPT-2-small-shaped (random)", **result})
    print(
        "bench pp: step 0 and one receiver head per layer (its q, k and v from every head"
        f" below), {torch.get_num_threads()} threads. Headline: authors-style / batched."
    )
    for r in results:
        sampled = r["baseline_senders_per_input"]
        print(
            f"  {r['model']} {r['layers_x_heads']}, {r['prompts']} IOI prompts x"
            f" {r['prompt_tokens']} tokens, receivers {', '.join(r['receivers'])}"
            + (
                f" (baselines run {sampled} senders per receiver input, scaled to all)"
                if sampled
                else ""
            )
        )
        for name, side in r["sides"].items():
            cuda = side["cuda_peak_mb"]
            print(
                f"    {name:<8} wall {side['wall_s']:8.1f} s  CPU {side['cpu_s']:8.1f} s"
                f"  {side['flops'] / 1e12:8.2f} TFLOP  peak RSS {side['peak_rss_mb']:7.0f} MB"
                + (f"  CUDA peak {cuda:7.0f} MB" if cuda is not None else "")
                + (
                    f"  max |score - batched| {side['max_score_difference']:.1e}"
                    f" (x |LD gap| = {side['max_score_difference'] * abs(side['ld_gap']):.1e})"
                    if side["max_score_difference"] is not None
                    else ""
                )
            )
        per = ", ".join(f"{row['receiver']} {row['ratio']:.1f}x" for row in r["by_receiver"])
        print(f"    per receiver (authors-style / batched, wall): {per}")
        print(
            "    FLOPs in APP's accounting (one pass per measurement up to the receiver's layer):"
            f" {r['sides']['batched']['app_accounting_flops'] / 1e12:.2f} TFLOP; run: authors-style"
            f" {r['sides']['authors']['flops'] / 1e12:.2f}, batched"
            f" {r['sides']['batched']['flops'] / 1e12:.2f}"
        )
        print(
            f"    headline: {r['ratio']:.1f}x wall, {r['cpu_ratio']:.1f}x CPU,"
            f" {r['flops_ratio']:.1f}x FLOPs (oracle / batched: {r['oracle_ratio']:.1f}x)"
        )
    return results


def run_pp(args: argparse.Namespace) -> None:
    results = _run_pp(args)
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="pp", results=results))
    print(json.dumps({r["model"]: round(r["ratio"], 2) for r in results}))


def run_evaluate(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        toy_model, toy_name = toy_source(args, Path(tmp))
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        seq_len = min(args.seq_len, 64)
        for name, source in ((toy_name, toy_model), ("GPT-2-small-shaped (random)", gpt2)):
            result = evaluate_ratio(source, args.batch_size, seq_len, args.repeats, args.device)
            result["model"] = name
            results.append(result)
    threads = torch.get_num_threads()
    print(f"bench evaluate: patched pass / plain forward (target <= 3x), {threads} torch threads")
    for r in results:
        print(
            f"  {r['model']:<32} {r['layers_x_heads']:>6} {r['edges']:>6} edges"
            f"  batch {r['batch']}:  plain {1000 * r['plain_forward_s']:8.1f} ms"
            f"  (with patching flags {1000 * r['forward_with_patching_flags_s']:8.1f} ms)"
            f"  patched {1000 * r['patched_forward_s']:8.1f} ms  ratio {r['ratio']:.2f}x"
        )
        usages = r.pop("usage")
        for side, usage in usages.items():
            print(usage_line(side, usage, r["flops"][side]))
        r["usage"] = {side: usage.as_dict() for side, usage in usages.items()}
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="evaluate", results=results))
    print(json.dumps({r["model"]: round(r["ratio"], 3) for r in results}))
