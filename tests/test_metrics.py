"""Metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from circuitbench import metrics


def test_logit_difference_mean_and_max():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    answers, distractors = torch.tensor([[4, -1]]), torch.tensor([[1, 2]])
    assert metrics.logit_diff(logits, answers, distractors).item() == 4.0 - 1.5
    assert metrics.logit_diff(logits, answers, distractors, reduce="max").item() == 4.0 - 2.0
    with pytest.raises(ValueError):
        metrics.logit_diff(logits, answers, distractors, reduce="median")


def test_accuracy_is_argmax_in_answer_set():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0]])
    answers = torch.tensor([[1, 2], [1, -1]])
    assert metrics.top1_in_set(logits, answers).tolist() == [1.0, 0.0]


def test_kl_and_exact_match():
    full = torch.tensor([[2.0, 0.0, -1.0]])
    assert metrics.kl_divergence(full, full).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[0.0, 2.0, -1.0]])
    p, q = full.softmax(-1), other.softmax(-1)
    expected = (p * (p.log() - q.log())).sum().item()
    assert metrics.kl_divergence(full, other).item() == pytest.approx(expected, rel=1e-6)
    assert metrics.exact_match(full, other).item() == 0.0


def test_greater_than_probability_differences():
    year_ids = torch.arange(100)
    logits = torch.full((1, 100), -1e9)
    logits[0, 60], logits[0, 40], logits[0, 50] = 0.0, 0.0, 0.0  # three equally likely years
    yy = torch.tensor([50])
    # Full softmax: later {60} minus not-later {40, 50}.
    assert metrics.prob_diff_full_softmax(logits, year_ids, yy).item() == pytest.approx(-1 / 3)
    # Restricted, YY excluded: {60} minus {40}.
    assert metrics.prob_diff_restricted(logits, year_ids, yy).item() == pytest.approx(0.0)


def test_faithfulness_and_app_performance():
    assert metrics.normalized_faithfulness(3.0, 1.0, 5.0) == 0.5
    assert math.isnan(metrics.normalized_faithfulness(1.0, 2.0, 2.0))
    assert metrics.app_performance(2.0, 1.5) == 75.0
    # APP's published branch for LD_model <= 0: 0 for a perfect circuit (kept as published).
    assert metrics.app_performance(-2.0, -2.0) == 0.0
    assert metrics.app_performance(-2.0, -1.0) == 50.0
