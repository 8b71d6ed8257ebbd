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
import time
from pathlib import Path
from typing import Any

import torch

from circuitbench.bench.common import (
    gpt2_small_shaped,
    ioi_data,
    median_seconds,
    random_toy,
    toy_source,
)
from circuitbench.graph import GraphShape
from circuitbench.io import atomic_write_json, provenance
from circuitbench.methods.path_patching import (
    BatchedScorer,
    OracleScorer,
    PathPatchingConfig,
    search,
)
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
        plain = median_seconds(lambda: bridge(clean), repeats)  # before the patching flags
        model = PatchedModel(bridge)
        shape: GraphShape = model.shape
        writers, _ = model.record_writers(corrupt)
        mask = (torch.rand(shape.n_writers, shape.n_receivers, generator=generator) < 0.5).float()
        patched = median_seconds(lambda: model.patched_forward(clean, mask, writers), repeats)
        hooks_only = median_seconds(lambda: model.forward(clean), repeats)
    return {
        "model": source,
        "layers_x_heads": f"{shape.n_layers}x{shape.n_heads}",
        "edges": shape.n_edges,
        "batch": f"{batch_size}x{seq_len}",
        "plain_forward_s": plain,
        "forward_with_patching_flags_s": hooks_only,
        "patched_forward_s": patched,
        "ratio": patched / plain,
    }


def pp_ratio(
    source: str, data, corruption: str, max_receivers: int | None, device: str
) -> dict[str, Any]:
    """One search (default configuration) with the batched scorer and with the oracle."""
    model = PatchedModel(load_model(source, device=device))
    config = PathPatchingConfig()
    timings, results, scorers = {}, {}, {}
    for name, cls in (("batched", BatchedScorer), ("oracle", OracleScorer)):
        started = time.perf_counter()
        scorers[name] = cls(model, data, corruption)
        results[name] = search(scorers[name], config, max_receivers=max_receivers)
        timings[name] = time.perf_counter() - started
    shared = set(scorers["batched"].memo) & set(scorers["oracle"].memo)
    max_diff = max(abs(scorers["batched"].memo[k] - scorers["oracle"].memo[k]) for k in shared)
    batched = results["batched"]
    return {
        "layers_x_heads": f"{model.shape.n_layers}x{model.shape.n_heads}",
        "prompts": len(data),
        "receivers_visited": len(batched.visited),
        "truncated": batched.truncated,
        "measurements": len(shared),
        "same_circuit": batched.heads == results["oracle"].heads,
        "max_score_difference": max_diff,
        "batched_s": timings["batched"],
        "oracle_s": timings["oracle"],
        "ratio": timings["oracle"] / timings["batched"],
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
        result = pp_ratio(toy_model, data, "abc", None, args.device)
        results.append({"model": toy_name, **result})
        gpt2 = str(gpt2_small_shaped(Path(tmp) / "gpt2-small-shaped"))
        data = ioi_data(gpt2, False, args.gpt2_prompts)
        result = pp_ratio(gpt2, data, "abc", args.max_receivers, args.device)
        results.append({"model": "GPT-2-small-shaped (random)", **result})
    threads = torch.get_num_threads()
    print(f"bench pp: one search, oracle / batched wall time (target >= 10x), {threads} threads")
    for r in results:
        scope = f"step 0 + {r['receivers_visited']} receivers"
        scope += " (capped)" if r["truncated"] else " (full search)"
        print(
            f"  {r['model']:<32} {r['layers_x_heads']:>6}  {r['prompts']} IOI prompts, {scope}:"
            f"  {r['measurements']} measurements, max |score diff| {r['max_score_difference']:.1e},"
            f"  oracle {r['oracle_s']:.1f} s, batched {r['batched_s']:.1f} s,"
            f" ratio {r['ratio']:.1f}x"
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
    if args.out:
        atomic_write_json(args.out, provenance(benchmark="evaluate", results=results))
    print(json.dumps({r["model"]: round(r["ratio"], 3) for r in results}))
