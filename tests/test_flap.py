"""FLAP and Contrastive-FLAP: statistics on the raw output projection, order-independent rankings,
the keep rule, the cliff rules and the merged head set."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import task_data

from circuitbench.methods import flap


def stream(model, data, variant, batch_size=50, mask_padding=False):
    tokens, mask = flap.calibration_tokens(data, variant, includes_answer=True)
    return flap.collect_stats(model, tokens, mask if mask_padding else None, batch_size)


def test_output_weights_are_the_raw_hf_projection(model, toy_tokenizer):
    """W_O rows are input channels of GPT-2's Conv1D c_proj (``[in, out]``), unprocessed, and
    ``z @ W_O + b_O`` is the attention output: z and W_O are the pair FLAP scores."""
    weights = flap.output_weights(model)
    hf = model.bridge.original_model.state_dict()
    for layer in range(model.shape.n_layers):
        key = next(k for k in hf if k.endswith(f"h.{layer}.attn._original_component.c_proj.weight"))
        assert torch.equal(weights[layer].float(), hf[key])
    data = task_data(toy_tokenizer, n=3)
    store = {}

    def keep(name):
        def hook(tensor, hook):
            store[name] = tensor.detach()
            return tensor

        return hook

    with model.bridge.hooks(
        fwd_hooks=[("blocks.1.attn.hook_z", keep("z")), ("blocks.1.hook_attn_out", keep("out"))]
    ):
        model.bridge(data.clean_tokens)
    bias = model.bridge.blocks[1].attn.b_O
    rebuilt = store["z"].flatten(2).double() @ weights[1] + bias.double()
    assert torch.allclose(rebuilt.float(), store["out"], atol=1e-5)


def test_statistics_equal_a_direct_computation(model, toy_tokenizer):
    data = task_data(toy_tokenizer, n=9)
    tokens, mask = flap.calibration_tokens(data, None, includes_answer=True)
    # The answer token sits right after the prompt; padding fills the rest.
    assert torch.equal(tokens[torch.arange(len(data)), data.end_pos + 1], data.target_ids)
    assert int(mask.sum()) == int((data.end_pos + 2).sum())
    zs = {}

    def keep(layer):
        def hook(tensor, hook):
            zs[layer] = tensor.detach().flatten(2).double()
            return tensor

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", keep(layer)) for layer in range(model.shape.n_layers)]
    with model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(tokens)
    for mask_padding in (False, True):
        stats = flap.collect_stats(model, tokens, mask if mask_padding else None, batch_size=4)
        for layer in range(model.shape.n_layers):
            z = zs[layer]
            x = z[mask] if mask_padding else z.flatten(0, 1)  # [tokens, channels]
            assert stats.n_tokens == x.shape[0]
            torch.testing.assert_close(stats.variance()[layer], x.var(0, unbiased=False))
            torch.testing.assert_close(
                stats.mean_square()[layer], (x**2).sum(0) / len(data), rtol=1e-9, atol=0
            )


def test_contrastive_scores_are_zero_when_clean_equals_corrupted(model, toy_tokenizer):
    data = task_data(toy_tokenizer)
    data.corrupt_tokens["same"] = data.clean_tokens.clone()
    weights = flap.output_weights(model)
    clean = stream(model, data, None)
    same = stream(model, data, "same")
    H = model.shape.n_heads
    for metric in flap.Metric:
        values = flap.contrastive_channel_values(clean, same, weights, metric)
        assert torch.equal(values, torch.zeros_like(values))
        assert torch.equal(
            flap.contrastive_scores(clean, same, weights, metric, H), torch.zeros(3, H)
        )
    # Not vacuous: a real corruption gives a contrast, and vanilla FLAP scores are not zero.
    corrupt = stream(model, data, "abc")
    assert flap.contrastive_channel_values(clean, corrupt, weights, "WIFN").abs().max() > 0
    assert flap.flap_scores(clean, weights, "WIFV", H).abs().max() > 0.1


@pytest.mark.parametrize("mask_padding", [False, True])
def test_rankings_do_not_depend_on_batch_order(model, toy_tokenizer, mask_padding):
    data = task_data(toy_tokenizer, n=16)
    permutation = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    shuffled = data.select(permutation)
    weights = flap.output_weights(model)
    H = model.shape.n_heads
    scores = []
    for subset, batch_size in ((data, 16), (shuffled, 3)):
        clean = stream(model, subset, None, batch_size, mask_padding)
        corrupt = stream(model, subset, "abc", batch_size, mask_padding)
        scores.append(
            (
                flap.flap_scores(clean, weights, "WIFV", H),
                flap.contrastive_scores(clean, corrupt, weights, "WIFN", H),
            )
        )
    for first, second in zip(scores[0], scores[1], strict=True):
        torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)
        assert first.std() > 0.1  # the ranking has something to rank
        for ratio in flap.Sweep(0.0, 1.0, 0.05).ratios():
            assert flap.keep_heads(first, ratio, "app") == flap.keep_heads(second, ratio, "app")


def test_standardization_is_per_layer_and_affine_invariant():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(3, 8 * 4, generator=generator, dtype=torch.float64)
    scores = flap.head_scores(values, n_heads=4)
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores.mean(1), torch.zeros(3, dtype=torch.float64))
    scale = torch.tensor([[2.0], [0.5], [7.0]], dtype=torch.float64)
    torch.testing.assert_close(flap.head_scores(values * scale + 3.0, 4), scores)
    # A constant layer carries no ranking information: 0, not NaN.
    values[1] = 5.0
    assert torch.equal(flap.head_scores(values, 4)[1], torch.zeros(4, dtype=torch.float64))


def test_keep_rule_counts_and_keeps_the_top_heads():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(12, 12, generator=generator)
    # APP Table 2: 65% sparsity on 144 heads gives 49 heads under APP's rule.
    assert flap.n_kept(144, 0.65, "app") == 49
    assert flap.n_kept(144, 0.65, "exact") == 50
    for ratio in flap.Sweep(0.60, 0.99, 0.01).ratios():
        for rule in flap.KeepRule:
            kept = flap.keep_heads(scores, ratio, rule)
            assert len(kept) == flap.n_kept(144, ratio, rule)
            dropped = {(lh // 12, lh % 12) for lh in range(144)} - set(kept)
            if kept and dropped:
                assert min(scores[h] for h in kept) > max(scores[h] for h in dropped)
        app_count = flap.n_kept(144, ratio, "app")
        assert app_count == max(round((1 - ratio) * 144) - 1, 0)


def test_sweep_ratios():
    assert len(flap.Sweep().ratios()) == 39  # APP's range(60, 99)
    assert flap.Sweep().ratios()[0] == 0.6 and flap.Sweep().ratios()[-1] == 0.98
    assert flap.Sweep().window == 4  # round((99 - 60) / 10)
    assert flap.Sweep(0.0, 1.0, 0.0625).ratios()[-1] == 0.9375
    with pytest.raises(ValueError):
        flap.Sweep(0.9, 0.5, 0.01)


def test_cliff_rules_find_the_last_point_before_a_drop():
    curve = [100.0] * 8 + [20.0] * 8
    for rule in ("first", "biggest", "smooth_first"):
        index, details = flap.cliff_index(curve, rule, window=2)
        assert details["drop_threshold"] == pytest.approx(8.0)
        assert curve[index] == 100.0 and curve[index + 1] < 100.0, rule
    # detect_cliff smooths the slopes over the window ('valid' convolution), so the sustained run
    # of steep slopes starts one point before the drop (index 6), earlier than the biggest single
    # drop (index 7): APP's rule returns the sustained start.
    assert flap.cliff_index(curve, "detect_cliff", window=2)[0] == 6
    assert flap.cliff_index(curve, "detect_cliff", window=2)[1]["slope_threshold"] == (
        pytest.approx(-10 * (80 / 250 * 0.5 - 8 / 100))
    )
    assert flap.cliff_index(curve, "fixed", window=2)[0] == -1
    # Two drops: 'first' takes the first one that clears the threshold, 'biggest' the largest.
    two = [100.0] * 5 + [80.0] * 5 + [10.0] * 6
    assert flap.cliff_index(two, "first", window=2)[0] == 4
    assert flap.cliff_index(two, "biggest", window=2)[0] == 9
    # No cliff found -> the fixed sparsity.
    points = [{"ratio": r, "performance": 50.0} for r in (0.1, 0.2, 0.3)]
    assert flap.choose(points, "fixed", 2, 0.75)["ratio"] == 0.75


def test_pruning_run_and_merged_set_contains_both(model, toy_tokenizer):
    calibration = task_data(toy_tokenizer, n=12)
    validation = task_data(toy_tokenizer, n=10, split="validation")
    config = flap.FlapConfig(n_calibration=12, sweep=flap.Sweep(0.0, 1.0, 1 / 12))
    record = flap.run_pruning(model, calibration, validation, "abc", config, progress=False)
    merged = {tuple(h) for h in record["merged"]["heads"]}
    for method in flap.METHODS:
        result = record["methods"][method]
        heads = {tuple(h) for h in result["heads"]}
        assert heads <= merged
        assert len(result["points"]) == 12
        assert [p["size"] for p in result["points"]] == list(range(11, -1, -1))
        assert set(result["cliffs"]) == {r.value for r in flap.CliffRule}
        assert result["chosen"] == result["cliffs"][config.cliff_rule]
        chosen_point = result["points"][result["chosen"]["index"]]
        assert heads == {tuple(h) for h in chosen_point["heads"]}
    flap_heads = {tuple(h) for h in record["methods"]["flap"]["heads"]}
    cflap_heads = {tuple(h) for h in record["methods"]["cflap"]["heads"]}
    assert merged == flap_heads | cflap_heads
    assert flap.merge_heads([(0, 1)], [(2, 3), (0, 1)]) == [(0, 1), (2, 3)]
    cost = record["cost"]
    assert cost["sweep_forward_passes_app"] == 2 * 12
    assert cost["distinct_evaluations"] <= 2 * 12 + 1
    assert not math.isnan(cost["flops_app"]) and cost["flops_app"] > cost["statistics_flops_app"]
