"""Dense path patching: the batched and the authors-style scorers equal the one-sender-at-a-time
oracle; the sender rule, the search and the selection behave as specified."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import task_data

from circuitbench.methods.path_patching import (
    AuthorsStyleScorer,
    BatchedScorer,
    OracleScorer,
    PathPatchingConfig,
    app_charged_flops,
    choose_circuit,
    grid,
    search,
    select_senders,
)

train_data = functools.partial(task_data, n=10)


@pytest.mark.parametrize(
    ("name", "corruption", "dtype"),
    # Docstring barely separates clean from corrupted on a random model (LD gap ~1e-4), so its
    # check runs in float64 where the comparison stays meaningful.
    [("ioi", "abc", "float32"), ("docstring", "random_random", "float64")],
)
def test_batched_and_authors_style_scores_equal_the_oracle(
    request, toy_tokenizer, name, corruption, dtype
):
    model = request.getfixturevalue("model" if dtype == "float32" else "model64")
    data = train_data(toy_tokenizer, name, n=5)
    batched = BatchedScorer(model, data, corruption, max_sequences=12)  # forces several chunks
    oracle = OracleScorer(model, data, corruption)
    authors = AuthorsStyleScorer(model, data, corruption)
    # Patch passes compute only the receiver head in its layer, the blocks above it, and the
    # last block at the prediction positions. The fallbacks (whole blocks from the receiver's
    # layer on; every block) are for families where that does not reproduce the model, and must
    # give the same scores.
    assert batched.minimal_patch and batched.standalone_blocks
    whole_blocks = BatchedScorer(model, data, corruption)
    whole_blocks.minimal_patch = False
    full_depth = BatchedScorer(model, data, corruption)
    full_depth.minimal_patch = full_depth.standalone_blocks = False
    # Scores are (LD_patched - LD_clean) / (LD_clean - LD_corrupt); on a random model the
    # denominator can be small, so fp32 agreement is checked on the metric scale (1e-4), which
    # is the score itself wherever the denominator is at least 1.
    gap = abs((oracle.ld_clean - oracle.ld_corrupt).item())
    tolerance = (1e-4 if dtype == "float32" else 1e-9) / min(gap, 1.0)
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    resid_b, resid_o = batched.resid_scores(heads), oracle.resid_scores(heads)
    resid_a = authors.resid_scores(heads)
    assert max(abs(resid_b[h] - resid_o[h]) for h in heads) <= tolerance
    assert max(abs(resid_a[h] - resid_o[h]) for h in heads) <= tolerance
    largest = max(abs(v) for v in resid_o.values())
    for receiver in [(2, 1), (1, 3)]:
        senders = [h for h in heads if h[0] < receiver[0]]
        got, want = (
            batched.receiver_scores(receiver, senders),
            oracle.receiver_scores(receiver, senders),
        )
        baseline = authors.receiver_scores(receiver, senders)
        fallbacks = [whole_blocks.receiver_scores(receiver, senders)]
        fallbacks.append(full_depth.receiver_scores(receiver, senders))
        for rho in "qkv":
            for fallback in fallbacks:
                assert max(abs(fallback[rho][s] - got[rho][s]) for s in senders) <= tolerance
            assert max(abs(got[rho][s] - want[rho][s]) for s in senders) <= tolerance, rho
            assert max(abs(baseline[rho][s] - want[rho][s]) for s in senders) <= tolerance, rho
            largest = max(largest, *(abs(v) for v in want[rho].values()))
    assert largest > 10 * tolerance  # the comparison is not vacuous


def test_identical_clean_and_corrupted_prompts_score_zero(model, toy_tokenizer):
    data = train_data(toy_tokenizer)
    data.corrupt_tokens["same"] = data.clean_tokens.clone()
    scorer = BatchedScorer(model, data, "same")
    # The score's denominator LD_clean - LD_corrupt is 0: undefined, never a number.
    scores = scorer.receiver_scores((2, 0), [(0, 1), (1, 2)])
    assert all(math.isnan(v) for r in scores.values() for v in r.values())
    # With a real corruption, senders whose corrupted output equals their clean one score 0:
    # the frozen and patch passes add nothing of their own.
    scorer = BatchedScorer(model, data, "abc")
    for layer in scorer.sender_delta:
        scorer.sender_delta[layer].zero_()
    heads = [(0, 1), (1, 2)]
    scores = scorer.receiver_scores((2, 0), heads)
    resid = scorer.resid_scores([(0, 0), (1, 3), (2, 2)])
    values = [v for r in scores.values() for v in r.values()] + list(resid.values())
    assert max(abs(v) for v in values) <= 1e-4 / min(abs(scorer.ld_clean - scorer.ld_corrupt), 1)


def test_searches_agree_and_cost_is_recorded(model64, toy_tokenizer):
    model = model64  # a random model's scores are ~1e-5: float64 keeps the zero thresholds crisp
    data = train_data(toy_tokenizer, n=5)
    # Permissive thresholds and no early stop: the breadth-first loop visits many receivers.
    config = PathPatchingConfig(
        scale=0.0, resid_scale=0.0, min_value=0.0, k=0.0, early_stop_fraction=2.0
    )
    allowed = {(0, 0), (0, 3), (1, 1), (1, 2), (2, 0), (2, 3)}
    batched = search(BatchedScorer(model, data, "abc"), config, allowed)
    oracle = search(OracleScorer(model, data, "abc"), config, allowed)
    assert batched.heads == oracle.heads
    assert batched.roles == oracle.roles
    assert len(batched.steps) > 1  # receivers were visited
    passes, flops = app_charged_flops(BatchedScorer(model, data, "abc"), batched)
    evaluated = sum(
        1 for step in batched.steps for row in step["scores"] for v in row if not math.isnan(v)
    )
    assert passes == 2 + evaluated
    assert flops > 0


def test_search_restricted_to_a_head_subset(model, toy_tokenizer):
    data = train_data(toy_tokenizer)
    scorer = BatchedScorer(model, data, "abc")
    config = PathPatchingConfig(scale=0.0, resid_scale=0.0, min_value=0.0, k=0.0)
    allowed = {(0, 1), (1, 2), (2, 3)}
    result = search(scorer, config, allowed)
    assert set(result.heads) <= allowed
    for step in result.steps:
        for layer, row in enumerate(step["scores"]):
            for head, value in enumerate(row):
                assert math.isnan(value) == ((layer, head) not in allowed)
    with pytest.raises(ValueError, match="outside"):
        search(scorer, config, {(9, 9)})


def test_sender_rule_by_hand():
    config = PathPatchingConfig(min_value=0.01)
    scores = torch.zeros(2, 4)
    scores[1, 2] = -1.0  # one strong negative head
    # mean -0.125, sample std 0.3536; layer 1: theta = 1 + 2/sqrt(8) = 1.707
    # |-1| - 0.125 = 0.875 > 1.707 * 0.3536 = 0.604 -> selected (negative effects count too)
    assert select_senders(scores, 1.0, config) == [(1, 2)]
    assert select_senders(scores, 2.5, config) == []  # 2.5 + 0.707 = 3.2 -> 1.13 > 0.875
    assert select_senders(scores * 0.001, 1.0, config) == []  # below the minimum value
    linear = PathPatchingConfig(min_value=0.01, threshold_mode="linear")
    # linear: theta_1 = 1 + 0.1 * (2 - 2) = 1.0 -> 0.875 > 0.354
    assert select_senders(scores, 1.0, linear) == [(1, 2)]


def test_missing_scores_zero_versus_exclude():
    scores = torch.tensor([[float("nan"), float("nan"), 0.5, 0.4], [0.45, float("nan"), 0.0, 3.0]])
    zero = PathPatchingConfig(missing_scores="zero")
    exclude = PathPatchingConfig(missing_scores="exclude")
    assert select_senders(scores, 0.5, zero) == [(1, 3)]
    assert (0, 0) not in select_senders(scores, -10.0, exclude)  # NaN never selected


def test_grid_is_apps_sixteen_configurations():
    configs = grid()
    assert len(configs) == 16
    assert {c.scale for c in configs} == {1.0, 1.5, 2.0, 2.5}
    assert {c.min_value for c in configs} == {0.01, 0.001, 0.02, 0.002}
    assert len({c.name for c in configs}) == 16


def test_selection_rule():
    # Smallest circuit with performance >= 73 within the size cap.
    assert choose_circuit([80, 74, 90], [10, 5, 3], 73, 20) == 2
    # The best qualifying one is too big: fall back to the smallest above the mean (70).
    assert choose_circuit([50, 75, 85], [2, 30, 40], 73, 20) == 1
    # None qualifies: smallest at or above the mean performance.
    assert choose_circuit([60, 40, 70], [3, 1, 9], 73, 20) == 0
    # Same size: higher performance wins.
    assert choose_circuit([74, 90], [4, 4], 73, 20) == 1
