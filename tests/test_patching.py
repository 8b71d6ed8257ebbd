"""The patched forward and circuit evaluation: invariants that must hold exactly."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import task_data
from transformers import GPT2LMHeadModel

from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph
from circuitbench.models.loading import load_model
from circuitbench.patching import Ablation, MeanScope, PatchedModel

split_data = functools.partial(task_data, split="test")


@pytest.mark.parametrize("name", ["ioi", "docstring"])
def test_full_circuit_reproduces_the_model(model, random_model_dir, toy_tokenizer, name):
    data = split_data(toy_tokenizer, name)
    hf = GPT2LMHeadModel.from_pretrained(random_model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        writers, _ = model.record_writers(data.corrupt_tokens[next(iter(data.corrupt_tokens))])
        patched = model.patched_forward(
            data.clean_tokens, Graph.full(model.shape).edge_mask(), writers
        )
        reference = hf(data.clean_tokens).logits
    assert (patched - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["ioi", "greater_than"])
def test_empty_circuit_reproduces_the_corrupted_run(model, toy_tokenizer, name):
    data = split_data(toy_tokenizer, name)
    for variant, corrupt in data.corrupt_tokens.items():
        with torch.no_grad():
            writers, corrupt_logits = model.record_writers(corrupt)
            empty = Graph.empty(model.shape).edge_mask()
            patched = model.patched_forward(data.clean_tokens, empty, writers)
        assert (patched - corrupt_logits).abs().max().item() <= 1e-5, variant


def test_identical_clean_and_corrupted_inputs_make_every_mask_equivalent(model, toy_tokenizer):
    data = split_data(toy_tokenizer)
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(model.shape.n_writers, model.shape.n_receivers, generator=generator)
    with torch.no_grad():
        writers, clean_logits = model.record_writers(data.clean_tokens)
        patched = model.patched_forward(data.clean_tokens, mask, writers)
    assert (patched - clean_logits).abs().max().item() <= 1e-5


def test_mask_gradient_at_one_matches_finite_differences(model64, toy_tokenizer):
    data = split_data(toy_tokenizer, n=6)
    with torch.no_grad():
        writers, _ = model64.record_writers(data.corrupt_tokens["abc"])

    def metric(mask: torch.Tensor) -> torch.Tensor:
        logits = model64.patched_forward(data.clean_tokens, mask, writers)
        return data.metric(data.logits_at_end(logits)).mean()

    ones = Graph.full(model64.shape).edge_mask(torch.float64).requires_grad_(True)
    metric(ones).backward()
    gradient = ones.grad
    shape, eps = model64.shape, 1e-4
    edges = ["input->a0.h1<q>", "a0.h2->a1.h0<k>", "a1.h3->m2", "m0->a2.h1<v>", "a2.h0->logits"]
    for name in edges:
        w, r = shape.edge_index[name]
        bump = torch.zeros_like(ones)
        bump[w, r] = eps
        with torch.no_grad():
            numeric = (metric(ones.detach() + bump) - metric(ones.detach() - bump)) / (2 * eps)
        assert gradient[w, r].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-8), name
    # Entries that are not edges get no gradient.
    assert (gradient[~shape.valid] == 0).all()


def test_mean_ablation_over_identical_prompts_is_interchange(model, toy_tokenizer):
    data = split_data(toy_tokenizer).select(torch.zeros(5, dtype=torch.long))  # one prompt, 5 times
    graph = Graph.from_heads(model.shape, {1: [0, 2]})
    interchange = model.build_cache(data, Ablation.INTERCHANGE)
    mean = model.build_cache(data, Ablation.MEAN, mean_scope=MeanScope.DATASET)
    a = evaluate_graph(model, interchange, graph)
    b = evaluate_graph(model, mean, graph)
    assert a["metric"] == pytest.approx(b["metric"], abs=1e-5)
    assert b["empty_metric"] == pytest.approx(a["empty_metric"], abs=1e-5)


@pytest.mark.parametrize("scope", list(MeanScope))
def test_mean_ablation_keeps_float64(model64, toy_tokenizer, scope):
    data = split_data(toy_tokenizer).select(torch.zeros(5, dtype=torch.long))  # one prompt, 5 times
    mean = model64.build_cache(data, Ablation.MEAN, mean_scope=scope)
    interchange = model64.build_cache(data, Ablation.INTERCHANGE)
    ablated = mean.batches[0].ablated
    assert ablated.dtype == torch.float64
    # The mean of five identical float64 activations is the activation itself to float64
    # precision, which float32 sums would miss by ~1e-7.
    end = int(data.end_pos[0]) + 1
    want = interchange.batches[0].ablated[:, :end]
    assert (ablated[:, :end] - want).abs().max().item() <= 1e-12
    graph = Graph.from_heads(model64.shape, {1: [0, 2]})
    a, b = evaluate_graph(model64, interchange, graph), evaluate_graph(model64, mean, graph)
    assert b["metric"] == pytest.approx(a["metric"], abs=1e-10)


def test_template_means_are_per_group(model, toy_tokenizer):
    data = split_data(toy_tokenizer, n=40)
    templates = data.template.unique()[:2]
    pick = torch.cat([torch.nonzero(data.template == t)[0] for t in templates])
    # Two templates, each prompt repeated: per-template means equal each group's own activation.
    repeated = data.select(pick.repeat_interleave(3))
    per_template = model.build_cache(repeated, Ablation.MEAN, mean_scope=MeanScope.TEMPLATE)
    interchange = model.build_cache(repeated, Ablation.INTERCHANGE)
    width = min(per_template.batches[0].ablated.shape[1], interchange.batches[0].ablated.shape[1])
    for group in range(2):
        rows = slice(3 * group, 3 * group + 3)
        end = int(repeated.end_pos[3 * group]) + 1
        got = per_template.batches[0].ablated[rows, : min(width, end)]
        want = interchange.batches[0].ablated[rows, : min(width, end)]
        assert (got - want).abs().max().item() <= 1e-5
    dataset = model.build_cache(repeated, Ablation.MEAN, mean_scope=MeanScope.DATASET)
    assert not torch.allclose(dataset.batches[0].ablated[0], per_template.batches[0].ablated[0])


def test_zero_ablated_empty_circuit_ignores_the_input(model, toy_tokenizer):
    data = split_data(toy_tokenizer, "gendered_pronouns", n=8)
    cache = model.build_cache(data, Ablation.ZERO)
    empty = cache.batches[0].empty_logits_end
    assert (empty - empty[0]).abs().max().item() <= 1e-5  # only biases reach the logits


def test_evaluating_a_circuit_costs_one_pass_per_batch(model, toy_tokenizer):
    data = split_data(toy_tokenizer, n=20)
    cache = model.build_cache(data, Ablation.INTERCHANGE, batch_size=8)
    assert len(cache) == 3
    before = model.forward_passes
    row = evaluate_graph(model, cache, Graph.from_heads(model.shape, {0: [1]}))
    assert model.forward_passes - before == 3
    assert row["eval_forward_passes"] == 3


def test_full_and_empty_circuit_metrics(model, toy_tokenizer):
    data = split_data(toy_tokenizer, n=16)
    cache = model.build_cache(data, Ablation.INTERCHANGE, batch_size=8)
    full = evaluate_graph(model, cache, Graph.full(model.shape))
    empty = evaluate_graph(model, cache, Graph.empty(model.shape))
    assert full["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert full["kl"] == pytest.approx(0.0, abs=1e-6)
    assert full["exact_match"] == 1.0
    assert empty["faithfulness"] == pytest.approx(0.0, abs=1e-4)
    assert empty["metric"] == pytest.approx(empty["empty_metric"], abs=1e-5)
    assert full["edge_sparsity"] == 0.0 and empty["edge_sparsity"] == 1.0


def test_masks_of_the_wrong_shape_are_rejected(model, toy_tokenizer):
    data = split_data(toy_tokenizer, n=2)
    with pytest.raises(ValueError, match="edge mask has shape"):
        model.patched_forward(data.clean_tokens, torch.ones(3, 3), torch.zeros(1))


@pytest.mark.parametrize("grad", [False, True])
def test_fast_patched_forward_equals_the_reference_oracle(model, toy_tokenizer, grad):
    data = split_data(toy_tokenizer, "docstring", n=6)
    generator = torch.Generator().manual_seed(1)
    mask = torch.rand(model.shape.n_writers, model.shape.n_receivers, generator=generator)
    with torch.no_grad():
        writers, _ = model.record_writers(data.corrupt_tokens["random_random"])
    with torch.set_grad_enabled(grad):
        fast = model.patched_forward(data.clean_tokens, mask.requires_grad_(grad), writers)
        slow = model.patched_forward_reference(data.clean_tokens, mask, writers)
    assert (fast - slow).abs().max().item() <= 1e-5


def test_grouped_query_attention_is_a_clear_error(tmp_path, toy_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(toy_tokenizer.hf),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    toy_tokenizer.hf.save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path), device="cpu")  # the paper-model loading path works ...
    with pytest.raises(NotImplementedError, match="grouped-query attention"):
        PatchedModel(bridge)  # ... but the edge graph refuses it clearly


# -- recording passes and the subgraph-restricted forward ----------------------------------------


def test_recordings_without_logits_stop_early_and_keep_the_same_writers(model, toy_tokenizer):
    data = split_data(toy_tokenizer, n=6)
    corrupt = data.corrupt_tokens["abc"]
    with torch.no_grad():
        writers, logits = model.record_writers(corrupt)
        short, none = model.record_writers(corrupt, logits=False)
        at_end = model.record(corrupt, end_pos=data.end_pos, residuals=True)
        clean_end = model.logits_at_end(data.clean_tokens, data.end_pos)
        clean = model.forward(data.clean_tokens)
    assert none is None and torch.equal(short, writers) and torch.equal(at_end.writers, writers)
    assert (at_end.logits - data.logits_at_end(logits)).abs().max().item() <= 1e-5
    assert (clean_end - data.logits_at_end(clean)).abs().max().item() <= 1e-5
    # Port residuals: each group's input is the sum of its upstream writers plus biases, so the
    # difference between consecutive attention inputs is one layer's heads, b_O and MLP.
    shape, H = model.shape, model.shape.n_heads
    residuals = at_end.residuals
    assert residuals.shape[2] == 2 * shape.n_layers + 1
    assert (residuals[:, :, 0] - writers[:, :, 0]).abs().max().item() <= 1e-6
    layer_1 = writers[:, :, 1 : 1 + 2 * (H + 1)].sum(2)  # layers 0 and 1, less their b_O
    drift = residuals[:, :, 4] - residuals[:, :, 0] - layer_1  # = b_O(0) + b_O(1), constant
    assert (drift - drift[:1, :1]).abs().max().item() <= 1e-5


def random_subgraph(shape, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random subgraph and random masks in [0, 1] that are 0 outside it."""
    generator = torch.Generator().manual_seed(seed)
    subgraph = torch.rand(shape.n_writers, shape.n_receivers, generator=generator) < fraction
    subgraph &= shape.valid
    mask = torch.rand(shape.n_writers, shape.n_receivers, generator=generator, dtype=torch.float64)
    return subgraph, mask * subgraph


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.2, 0.6, 1.0])
@pytest.mark.parametrize("ablation", ["interchange", "mean"])
def test_subgraph_forward_equals_the_dense_forward(model, toy_tokenizer, fraction, ablation):
    data = split_data(toy_tokenizer, "docstring", n=6)
    shape = model.shape
    subgraph, mask = random_subgraph(shape, fraction, seed=int(100 * fraction))
    with torch.no_grad():
        recording = model.record(data.corrupt_tokens["random_random"], False, residuals=True)
        ablated = (
            recording.writers
            if ablation == "interchange"
            else recording.writers.mean(0, keepdim=True)
        )
        base = model.empty_circuit_inputs(recording, None if ablation == "interchange" else ablated)
        patcher = model.subgraph_patcher(subgraph)
        dense = model.patched_forward(data.clean_tokens, mask.float(), ablated)
        restricted = patcher(data.clean_tokens, mask.float(), ablated, base)
        # Compact ablations give the same pass; mask entries off the subgraph are ignored.
        off = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)) * ~subgraph
        noisy = patcher(data.clean_tokens, mask.float() + off, patcher.compact(ablated), base)
    assert (restricted - dense).abs().max().item() <= 1e-5
    assert torch.equal(noisy, restricted)
    if fraction == 0.0 and ablation == "interchange":  # the empty circuit is the corrupted run
        corrupt = model.forward(data.corrupt_tokens["random_random"])
        assert (restricted - corrupt).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_subgraph_forward_mask_gradients_equal_the_dense_ones(model64, toy_tokenizer, fraction):
    data = split_data(toy_tokenizer, n=6)
    shape = model64.shape
    subgraph, mask = random_subgraph(shape, fraction, seed=7)
    # Half the writers also reach the logits directly, so that the metric depends on the masks.
    direct = torch.zeros_like(subgraph)
    direct[::2, shape.logits_receiver] = True
    mask = torch.where(direct & ~subgraph, 0.5, mask)
    subgraph |= direct
    with torch.no_grad():
        recording = model64.record(data.corrupt_tokens["abc"], logits=False, residuals=True)
    patcher = model64.subgraph_patcher(subgraph)
    base = model64.empty_circuit_inputs(recording)

    def metric_and_gradient(forward) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = mask.clone().requires_grad_(True)
        logits = forward(leaf)
        value = data.metric(data.logits_at_end(logits)).mean()
        (gradient,) = torch.autograd.grad(value, leaf)
        return value.detach(), gradient

    dense_value, dense_gradient = metric_and_gradient(
        lambda m: model64.patched_forward(data.clean_tokens, m, recording.writers)
    )
    value, gradient = metric_and_gradient(
        lambda m: patcher(data.clean_tokens, m, recording.writers, base)
    )
    assert value.item() == pytest.approx(dense_value.item(), abs=1e-12)
    scale = dense_gradient[subgraph].abs().max().item()
    assert scale > 0  # the check below is not vacuous
    assert (gradient[subgraph] - dense_gradient[subgraph]).abs().max().item() <= 1e-10 * scale
    assert (gradient[~subgraph] == 0).all()  # removed edges carry no gradient at all
