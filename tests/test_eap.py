"""EAP and EAP-IG: the efficient scores equal gradients of the shared patched forward; selection
cuts are the best-ranked, dangling-free and as close to the asked edge count as possible."""

from __future__ import annotations

import pytest
import torch
from conftest import task_data

from circuitbench.graph import Graph, GraphShape, cut_to_count, ranking_key, top_edges
from circuitbench.methods import eap


def mask_gradient(model, tokens, ablated, data) -> torch.Tensor:
    """d sum_b metric_b / d edge_mask at edge_mask = 1, through the patched forward."""
    ones = Graph.full(model.shape).edge_mask(model.dtype).requires_grad_(True)
    logits = model.patched_forward(tokens, ones, ablated)
    (gradient,) = torch.autograd.grad(data.metric(data.logits_at_end(logits)).sum(), ones)
    return gradient.double()


@pytest.mark.parametrize(("name", "corruption"), [("ioi", "abc"), ("docstring", "random_random")])
def test_eap_scores_equal_the_mask_gradient_of_the_patched_forward(
    model64, toy_tokenizer, name, corruption
):
    data = task_data(toy_tokenizer, name, n=9)
    with torch.no_grad():
        corrupt, _ = model64.record_writers(data.corrupt_tokens[corruption])
    expected = mask_gradient(model64, data.clean_tokens, corrupt, data) / len(data)
    # Several batches (4 + 4 + 1), each cut to its own width: the mean must still match.
    config = eap.EAPConfig(batch_size=4)
    result = eap.eap_scores(model64, data, config, corruption)
    assert expected.abs().max() > 1e-6  # the comparison is not vacuous
    assert (result.scores - expected).abs().max().item() <= 1e-10
    flipped = eap.eap_scores(model64, data, eap.EAPConfig(batch_size=4, score_sign="metric"))
    assert torch.allclose(flipped.scores, -result.scores, atol=1e-12)
    assert (result.scores[~model64.shape.valid] == 0).all()


def test_eap_ig_with_one_right_step_is_eap(model64, toy_tokenizer):
    data = task_data(toy_tokenizer, n=6)
    with torch.no_grad():
        corrupt, _ = model64.record_writers(data.corrupt_tokens["abc"])
    metric, end = eap.task_metric(data), data.end_pos
    plain = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end)
    one_step = eap.attribute_batch(
        model64, data.clean_tokens, corrupt, metric, end, ig_steps=1, riemann="right"
    )
    assert (one_step - plain).abs().max().item() <= 1e-10


def test_eap_ig_left_step_takes_the_gradient_at_the_corrupted_input(model64, toy_tokenizer):
    """The reference code's first point is alpha = 0: the whole pass is the corrupted run, so the
    score is the mask gradient of a patched forward on the corrupted prompt whose removed edges
    carry the clean outputs (with the opposite delta)."""
    data = task_data(toy_tokenizer, n=6)
    with torch.no_grad():
        corrupt, _ = model64.record_writers(data.corrupt_tokens["abc"])
        clean, _ = model64.record_writers(data.clean_tokens)
    metric, end = eap.task_metric(data), data.end_pos
    left = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end, 1, "left")
    at_corrupted = mask_gradient(model64, data.corrupt_tokens["abc"], clean, data)
    assert (left - at_corrupted).abs().max().item() <= 1e-10
    plain = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end)
    assert (left - plain).abs().max().item() > 1e-6  # the two points really differ


def test_eap_ig_averages_its_points(model64, toy_tokenizer):
    data = task_data(toy_tokenizer, n=5)
    with torch.no_grad():
        corrupt, _ = model64.record_writers(data.corrupt_tokens["abc"])
    metric, end = eap.task_metric(data), data.end_pos
    two_left = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end, 2, "left")
    two_right = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end, 2, "right")
    one_left = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end, 1, "left")
    one_right = eap.attribute_batch(model64, data.clean_tokens, corrupt, metric, end, 1, "right")
    # left {0, 1/2} and right {1/2, 1} share the midpoint: their difference is (f(0) - f(1)) / 2.
    assert torch.allclose(two_left - two_right, (one_left - one_right) / 2, atol=1e-10)


def test_costs_are_two_forwards_and_one_backward_per_batch(model, toy_tokenizer):
    data = task_data(toy_tokenizer, n=10)
    result = eap.eap_scores(model, data, eap.EAPConfig(batch_size=4))
    assert (result.forward_passes, result.backward_passes) == (6, 3)
    ig = eap.eap_scores(model, data, eap.EAPConfig(batch_size=4, ig_steps=3))
    assert (ig.forward_passes, ig.backward_passes) == (3 * (2 + 3), 9)


def test_mean_ablation_scores_equal_the_mask_gradient(model, toy_tokenizer):
    # float32: the shared mean-cache builder accumulates in float32
    data = task_data(toy_tokenizer, n=8)
    config = eap.EAPConfig(batch_size=8, ablation="mean", mean_scope="dataset")
    result = eap.eap_scores(model, data, config)
    cache = model.build_cache(data, "mean", "abc", "dataset", 8)
    batch = cache.batches[0]
    expected = mask_gradient(model, data.clean_tokens, batch.ablated, data) / len(data)
    assert (result.scores - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


# -- selection ----------------------------------------------------------------------------------


def random_scores(shape: GraphShape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape.n_writers, shape.n_receivers, generator=generator, dtype=torch.float64)


def test_top_edges_keeps_the_best_ranked():
    shape = GraphShape(3, 4)
    scores = random_scores(shape)
    for ranking in ("absolute", "signed"):
        key = ranking_key(scores, shape, ranking)
        keep = top_edges(shape, key, 25, prune_dangling=False)
        assert int(keep.sum()) == 25 and not (keep & ~shape.valid).any()
        assert key[keep].min() >= key[shape.valid & ~keep].max()
    signed = top_edges(shape, ranking_key(scores, shape, "signed"), 25, False)
    assert (scores[signed] > 0).all()


def test_cut_to_count_is_dangling_free_and_closest():
    shape = GraphShape(3, 4)
    key = ranking_key(random_scores(shape, 1), shape, "absolute")
    counts = [int(top_edges(shape, key, n).sum()) for n in range(shape.n_edges + 1)]
    assert counts == sorted(counts)  # pruning is monotone in n: the binary search is valid
    for target in (0, 1, 7, 30, 90, shape.n_edges):
        keep = cut_to_count(shape, key, target)
        graph = Graph(shape)
        graph.edge_in_graph = keep
        assert torch.equal(graph.prune_dangling().edge_in_graph, keep)
        best = min(abs(c - target) for c in counts)
        assert abs(int(keep.sum()) - target) == best


def test_graph_cuts_are_the_selection_functions_on_its_own_scores():
    shape = GraphShape(3, 4)
    scores = random_scores(shape, 2)
    graph = eap.circuit_from_scores(shape, scores, torch.zeros_like(shape.valid))
    for ranking in ("absolute", "signed"):
        key = ranking_key(scores, shape, ranking)
        top = graph.top_n(40, ranking, prune_dangling=False)
        assert torch.equal(top.edge_in_graph, top_edges(shape, key, 40, prune_dangling=False))
        cut = graph.cut_to_count(30, ranking)
        assert torch.equal(cut.edge_in_graph, cut_to_count(shape, key, 30))
        assert torch.equal(cut.edge_scores, graph.edge_scores)  # scores travel with the copy
    assert graph.n_edges_in_graph == 0  # the original is untouched


def test_config_records_every_choice():
    choices = eap.EAPConfig(ig_steps=5).choices()
    for key in ("eap.score_sign", "eap.ranking", "eap.prune_dangling", "eap_ig.steps"):
        assert key in choices
    assert eap.EAPConfig().method == "eap" and eap.EAPConfig(ig_steps=2).method == "eap_ig"
    with pytest.raises(ValueError):
        eap.EAPConfig(score_sign="up")
