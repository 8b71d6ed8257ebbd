"""ACDC: the greedy sweep equals a plain re-implementation on the slow reference forward; an
identical clean and corrupted run leaves nothing to keep. (Recovery of the planted truths:
tests/test_planted.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import task_data

from circuitbench import metrics
from circuitbench.graph import Graph
from circuitbench.methods import acdc
from circuitbench.methods.base import MethodData
from circuitbench.methods.registry import METHODS, method_options


def greedy_oracle(model, data, corruption, threshold):
    """ACDC as its paper states it, on ``patched_forward_reference``: receivers from the logits
    down (per layer the MLP, then heads from the last, v, k, q), each incoming edge from the
    latest writer back removed if KL(full || circuit) rises by less than ``threshold``."""
    shape = model.shape
    with torch.no_grad():
        ablated, _ = model.record_writers(data.corrupt_tokens[corruption])
        full = data.logits_at_end(model.forward(data.clean_tokens)).double()

        def kl(mask):
            logits = model.patched_forward_reference(data.clean_tokens, mask.double(), ablated)
            circuit = data.logits_at_end(logits).double().log_softmax(-1)
            p = full.log_softmax(-1)
            return (p.exp() * (p - circuit)).sum(-1).mean().item()

        receivers = [shape.logits_receiver]
        for layer in reversed(range(shape.n_layers)):
            receivers.append(shape.mlp_receiver(layer))
            for head in reversed(range(shape.n_heads)):
                receivers += [shape.qkv_receiver(layer, head, w) for w in ("v", "k", "q")]
        keep = shape.valid.clone()
        current = kl(keep)
        for receiver in receivers:
            for writer in reversed(range(shape.n_writers)):
                if not keep[writer, receiver]:
                    continue
                keep[writer, receiver] = False
                value = kl(keep)
                if value - current < threshold:
                    current = value
                else:
                    keep[writer, receiver] = True
    graph = Graph(shape)
    graph.edge_in_graph = keep
    return graph.prune_dangling().edge_in_graph


def run(model, data, corruption, **keys):
    options = method_options("acdc", {"acdc": keys})
    method_data = MethodData(data, data, corruption, progress=False)
    return METHODS["acdc"](model, method_data, options)


def test_acdc_equals_the_greedy_sweep_on_the_reference_forward(model64, toy_tokenizer):
    data = task_data(toy_tokenizer, "ioi", n=8)
    with torch.no_grad():
        ablated, _ = model64.record_writers(data.corrupt_tokens["abc"])
        empty = torch.zeros_like(model64.shape.valid, dtype=torch.float64)
        end = data.logits_at_end(model64.patched_forward(data.clean_tokens, empty, ablated))
        full = data.logits_at_end(model64.forward(data.clean_tokens))
    empty_kl = metrics.kl_divergence(full, end).mean().item()
    threshold = empty_kl / 40  # a circuit between empty and full
    result = run(model64, data, "abc", threshold=threshold)
    expected = greedy_oracle(model64, data, "abc", threshold)
    kept = result.graph.edge_in_graph
    assert 0 < int(kept.sum()) < int(model64.shape.valid.sum())  # not vacuous
    assert torch.equal(kept, expected)
    assert result.record["criterion_start"] == pytest.approx(0.0, abs=1e-6)  # full circuit = model
    assert 0 < result.record["criterion_end"] < empty_kl
    # A tested edge stayed exactly when its removal raised the criterion by tau or more.
    delta = result.record["delta"]
    tested = ~delta.isnan()
    removed_at_test = tested & (delta < threshold)
    assert not (removed_at_test & kept).any()


def test_identical_clean_and_corrupted_runs_keep_nothing(model64, toy_tokenizer):
    data = task_data(toy_tokenizer, "ioi", n=8)
    same = dataclasses.replace(data, corrupt_tokens={"abc": data.clean_tokens})
    result = run(model64, same, "abc", threshold=1e-9)
    assert result.graph.n_edges_in_graph == 0
    assert abs(result.record["criterion_end"]) < 1e-6


def test_options_are_checked():
    with pytest.raises(ValueError, match="metric"):
        acdc.ACDCOptions(metric="accuracy")
    with pytest.raises(ValueError, match="interchange"):
        acdc.ACDCOptions(ablation="mean")
    with pytest.raises(ValueError, match="threshold"):
        acdc.ACDCOptions(threshold=-1.0)
