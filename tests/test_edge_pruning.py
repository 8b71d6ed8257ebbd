"""Edge Pruning: the hard-concrete masks behave as specified, target 0 keeps the model, runs are
deterministic by seed, sparsity pressure prunes, and a circuit read back from disk evaluates to
the numbers its run reported."""

from __future__ import annotations

import pytest
import torch
from conftest import task_data

from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph, GraphShape, top_edges
from circuitbench.methods import edge_pruning as ep


def quick(**overrides) -> ep.EdgePruningConfig:
    values = {"steps": 6, "sparsity_warmup": 4, "lr_warmup": 1, "batch_size": 4, "target": 0.5}
    return ep.EdgePruningConfig(**{**values, **overrides})


# -- hard-concrete masks --------------------------------------------------------------------------


def test_closed_probability_matches_sampling():
    generator = torch.Generator().manual_seed(0)
    log_alpha = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]).repeat_interleave(20000).view(5, -1)
    z = ep.sample_mask(log_alpha, generator)
    assert z.min() >= 0 and z.max() <= 1
    empirical = (z == 0).float().mean(1)
    predicted = ep.prob_closed(log_alpha[:, 0])
    assert torch.allclose(empirical, predicted, atol=0.01)


def test_initial_masks_are_open_and_deterministic_masks_zero_the_expected_count():
    generator = torch.Generator().manual_seed(0)
    start = torch.normal(ep.INIT_MEAN, ep.INIT_STD, (1000,), generator=generator)
    assert (ep.sample_mask(start, generator) == 1).float().mean() > 0.99
    log_alpha = torch.linspace(-4, 4, 101)
    mask = ep.deterministic_mask(log_alpha)
    n_zeros = round(float(ep.prob_closed(log_alpha).sum()))
    assert int((mask == 0).sum()) == n_zeros
    # The zeros are the smallest soft masks; the rest keep sigmoid(0.8 log_alpha / beta).
    soft = torch.sigmoid(ep.SOFT_FACTOR * log_alpha / ep.TEMPERATURE)
    assert torch.equal(mask[n_zeros:], soft[n_zeros:]) and (mask[:n_zeros] == 0).all()


def test_target_schedules():
    for kind in ("linear", "logarithmic"):
        assert ep.target_schedule(0, 0.9, 10, kind) == 0
        assert ep.target_schedule(10, 0.9, 10, kind) == 0.9
        assert 0 < ep.target_schedule(5, 0.9, 10, kind) < 0.9
    assert ep.target_schedule(5, 0.9, 10, "linear") == pytest.approx(0.45)
    assert ep.target_schedule(5, 0.99, 10, "logarithmic") == pytest.approx(0.9)


def test_threshold_search_lands_on_the_target():
    values = torch.rand(200, generator=torch.Generator().manual_seed(2))
    for target in (0.1, 0.5, 0.93):
        tau = ep.threshold_for_sparsity(values, 200, target)
        assert abs(1 - int((values > tau).sum()) / 200 - target) <= 1 / 200


def test_layout_groups_and_conventions():
    shape = GraphShape(3, 4)
    layout = ep.MaskLayout.build(shape, with_embedding_nodes=True, node_masks=True)
    assert len(layout.edge_index) == shape.n_edges == layout.n_maskable
    assert sorted(torch.cat(layout.edge_groups).tolist()) == list(range(shape.n_edges))
    assert len(layout.edge_groups) == 4 * shape.n_layers + 1
    assert len(layout.node_index) == shape.n_writers
    without = ep.MaskLayout.build(shape, with_embedding_nodes=False, node_masks=False)
    assert without.n_maskable == shape.n_edges - shape.n_receivers
    assert int(without.fixed_open.sum()) == shape.n_receivers and len(without.node_index) == 0
    full = Graph.full(shape)
    kept, total = ep.ep_edge_count(full, True)
    assert kept == total == shape.n_edges + shape.n_receivers  # docs/metrics.md: one more each
    kept, total = ep.ep_edge_count(full, False)
    assert kept == total == shape.n_edges - shape.n_receivers


# -- training -------------------------------------------------------------------------------------


def test_target_zero_keeps_every_edge_and_reproduces_the_model(model, toy_tokenizer):
    data = task_data(toy_tokenizer)
    result = ep.train_edge_pruning(model, data, quick(target=0.0))
    assert torch.equal(result.graph.edge_in_graph, model.shape.valid)
    test = task_data(toy_tokenizer, split="test", n=10)
    cache = model.build_cache(test, "interchange")
    row = evaluate_graph(model, cache, result.graph)
    assert row["kl"] == pytest.approx(0, abs=1e-6) and row["edge_sparsity"] == 0
    assert row["exact_match"] == 1 and row["faithfulness"] == pytest.approx(1, abs=1e-4)


def test_runs_are_deterministic_by_seed(model, toy_tokenizer):
    data = task_data(toy_tokenizer)
    first = ep.train_edge_pruning(model, data, quick(seed=3))
    again = ep.train_edge_pruning(model, data, quick(seed=3))
    other = ep.train_edge_pruning(model, data, quick(seed=4))
    assert torch.equal(first.edge_log_alpha, again.edge_log_alpha)
    assert torch.equal(first.graph.edge_in_graph, again.graph.edge_in_graph)
    assert first.history == again.history
    assert not torch.equal(first.edge_log_alpha, other.edge_log_alpha)


def test_sparsity_pressure_prunes(model, toy_tokenizer):
    data = task_data(toy_tokenizer, n=16)
    # Larger learning rates than the paper's so that the masks leave their open start (log
    # alpha = 10) within a hundred steps.
    config = quick(steps=100, sparsity_warmup=40, lr_warmup=2, target=0.5, edge_lr=3.0,
                   edge_lambda_lr=3.0, node_lr=3.0)  # fmt: skip
    result = ep.train_edge_pruning(model, data, config)
    assert result.history[0]["edge_sparsity_sampled"] < 0.01
    assert result.history[-1]["edge_sparsity_sampled"] > 0.25
    assert result.graph.n_edges_in_graph < model.shape.n_edges
    assert result.cost["steps"] == 100 and result.cost["backward_passes"] == 100
    # The cache costs one corrupted and one clean pass per batch, then nothing per step.
    assert result.cost["forward_passes_actual"] == 2 * 4 + 100


def test_discretization_removes_edges_of_pruned_writers_and_dangling_edges():
    shape = GraphShape(3, 4)
    layout = ep.MaskLayout.build(shape, with_embedding_nodes=True, node_masks=True)
    generator = torch.Generator().manual_seed(5)
    edge_log_alpha = torch.randn(len(layout.edge_index), generator=generator) * 3 + 1
    node_log_alpha = torch.full((len(layout.node_index),), 8.0)
    closed = [shape.head_writer(0, 1), shape.head_writer(1, 2), shape.mlp_writer(0)]
    node_log_alpha[closed] = -8.0  # node_index is every writer, in writer order
    graph, info = ep.discretize(layout, edge_log_alpha, node_log_alpha, shape.n_edges)
    assert 0 < graph.n_edges_in_graph < shape.n_edges
    assert not graph.edge_in_graph[closed].any()
    assert torch.equal(graph.prune_dangling().edge_in_graph, graph.edge_in_graph)
    assert info["n_nodes_kept"] == shape.n_writers - len(closed)
    # Scores are the deterministic soft masks; the kept edges are the highest of them.
    kept = graph.edge_scores[graph.edge_in_graph]
    assert kept.min() > 0
    key = graph.edge_scores.masked_fill(graph.edge_scores <= 0, float("-inf"))
    key[closed] = float("-inf")
    counts = [int(top_edges(shape, key, n).sum()) for n in range(int(torch.isfinite(key).sum()))]
    for target in (5, 20, 60):
        cut, _ = ep.discretize(layout, edge_log_alpha, node_log_alpha, shape.n_edges, target)
        assert abs(cut.n_edges_in_graph - target) == min(abs(c - target) for c in counts)
        assert not cut.edge_in_graph[closed].any()


def test_uncached_reference_passes_give_the_same_run(model, toy_tokenizer):
    data = task_data(toy_tokenizer, n=8)
    cached = ep.train_edge_pruning(model, data, quick())
    fresh = ep.train_edge_pruning(model, data, quick(cache_corrupted=False))
    assert torch.allclose(cached.edge_log_alpha, fresh.edge_log_alpha, atol=1e-5)
    assert fresh.cost["forward_passes_actual"] == 6 * 3  # EP's 2 no-grad + 1 masked per step
