"""Task metrics on the logits at the prediction position.

All functions take ``logits_end`` of shape ``[batch, vocab]`` and return one value per example
(``[batch]``) unless stated; id sets are ``[batch, k]`` tensors padded with ``-1``.
"""

from __future__ import annotations

import math

import torch

PAD_ID = -1


def _masked_gather(
    logits_end: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    mask = ids != PAD_ID
    values = logits_end.gather(1, ids.clamp(min=0))
    return values, mask


def set_mean(logits_end: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean logit over each example's id set. ``[batch]``"""
    values, mask = _masked_gather(logits_end, ids)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


def set_max(logits_end: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Max logit over each example's id set. ``[batch]``"""
    values, mask = _masked_gather(logits_end, ids)
    return values.masked_fill(~mask, float("-inf")).max(1).values


def logit_diff(
    logits_end: torch.Tensor,
    answer_ids: torch.Tensor,
    distractor_ids: torch.Tensor,
    reduce: str = "mean",
) -> torch.Tensor:
    """Logit difference: mean answer logit minus the mean (or max) distractor logit.

    With one answer and one distractor this is ``logit(correct) - logit(distractor)`` (IOI, GP,
    induction); with sets it is APP's Greater-Than ``LD_GT``; ``reduce="max"`` is Docstring's
    ``logit(correct) - max_wrong logit(wrong)``.
    """
    if reduce == "mean":
        wrong = set_mean(logits_end, distractor_ids)
    elif reduce == "max":
        wrong = set_max(logits_end, distractor_ids)
    else:
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return set_mean(logits_end, answer_ids) - wrong


def top1_in_set(logits_end: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Accuracy per example: the full-vocabulary argmax is one of the answer ids. ``[batch]``"""
    top = logits_end.argmax(-1, keepdim=True)
    return ((answer_ids == top) & (answer_ids != PAD_ID)).any(1).float()


def prob_diff_full_softmax(
    logits_end: torch.Tensor, year_ids: torch.Tensor, yy: torch.Tensor
) -> torch.Tensor:
    """Greater-Than probability difference, Hanna et al.'s full-softmax variant.

    ``year_ids``: ``[100]`` token ids of "00".."99"; ``yy``: ``[batch]`` start-year suffix.
    ``PD = sum_{y > YY} p(y) - sum_{y <= YY} p(y)`` with ``p`` the full-vocabulary softmax.
    """
    probs = logits_end.float().softmax(-1)[:, year_ids]  # [batch, 100]
    later = torch.arange(100, device=yy.device)[None, :] > yy[:, None]
    return (probs * later).sum(1) - (probs * ~later).sum(1)


def prob_diff_restricted(
    logits_end: torch.Tensor, year_ids: torch.Tensor, yy: torch.Tensor
) -> torch.Tensor:
    """Greater-Than probability difference, Edge Pruning's variant: softmax restricted to the 100
    two-digit tokens, ``YY`` itself excluded from both sums."""
    probs = logits_end[:, year_ids].float().softmax(-1)
    years = torch.arange(100, device=yy.device)[None, :]
    later, earlier = years > yy[:, None], years < yy[:, None]
    return (probs * later).sum(1) - (probs * earlier).sum(1)


def kl_divergence(
    full_logits_end: torch.Tensor,
    circuit_logits_end: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``KL(P_full || P_circuit)`` over the full vocabulary, per example, computed in ``dtype``.
    ``[batch]``"""
    full = full_logits_end.to(dtype).log_softmax(-1)
    circuit = circuit_logits_end.to(dtype).log_softmax(-1)
    return (full.exp() * (full - circuit)).sum(-1)


def exact_match(full_logits_end: torch.Tensor, circuit_logits_end: torch.Tensor) -> torch.Tensor:
    """1 where the circuit's argmax equals the full model's. ``[batch]``"""
    return (full_logits_end.argmax(-1) == circuit_logits_end.argmax(-1)).float()


def normalized_faithfulness(circuit: float, empty: float, full: float) -> float:
    """``(m(C) - m(empty)) / (m(M) - m(empty))``: 1 for the full model, 0 for the empty circuit
    (NaN when the model does not separate clean from corrupted at all)."""
    gap = full - empty
    return (circuit - empty) / gap if gap != 0 else float("nan")


def app_performance(model_metric: float, circuit_metric: float) -> float:
    """APP's performance % of one batch: ``100 * LD_C / LD_model`` when ``LD_model > 0``, else
    APP's ``|LD_model - LD_C| / |LD_model| * 100`` branch (kept as published)."""
    if model_metric > 0:
        return 100.0 * circuit_metric / model_metric
    if model_metric == 0:
        return float("nan")
    return 100.0 * abs(model_metric - circuit_metric) / abs(model_metric)


# -- circuit comparisons (head level) and cost ratios ------------------------------------------

Head = tuple[int, int]


def overlap(found: list[Head], reference: list[Head], n_heads: int) -> dict[str, float]:
    """Head-level agreement with a reference circuit, in %: TPR (recall), precision, IoU, FDR and
    the true FPR. A ratio with an empty denominator (an empty reference, an empty circuit) is
    undefined: NaN, never 0 or 100."""
    found_set, reference_set = {tuple(h) for h in found}, {tuple(h) for h in reference}
    hits = len(found_set & reference_set)

    def pct(numerator: float, denominator: float) -> float:
        return 100.0 * numerator / denominator if denominator else math.nan

    precision = pct(hits, len(found_set))
    return {
        "tpr": pct(hits, len(reference_set)),
        "precision": precision,
        "iou": pct(hits, len(found_set | reference_set)),
        "fdr": 100.0 - precision if not math.isnan(precision) else math.nan,
        "true_fpr": pct(len(found_set - reference_set), n_heads - len(reference_set)),
    }


def speedup(baseline_cost: float, method_cost: float) -> dict[str, float]:
    """``ratio = baseline / method`` and ``saving_pct = 100 (1 - 1 / ratio)``."""
    if method_cost <= 0:
        return {"ratio": math.nan, "saving_pct": math.nan}
    ratio = baseline_cost / method_cost
    return {"ratio": ratio, "saving_pct": 100.0 * (1.0 - 1.0 / ratio) if ratio else math.nan}
