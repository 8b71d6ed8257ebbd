"""APP: automated path patching restricted to the merged FLAP / Contrastive-FLAP head set.

``methods.md`` §5: the merged circuit is the per-layer union of the FLAP and C-FLAP head sets;
APP runs the same breadth-first search and 16-configuration grid as dense path patching
(:mod:`circuitbench.methods.path_patching`) with senders outside the merged set skipped (no forward
pass, missing score) and selected senders intersected with it, so ``APP`` is a subset of it.
APP's selection rule differs from PP's only in its thresholds: performance >= 75, size <= N/2.

Also here: the head-level overlap of a circuit with a reference circuit (``metrics.md`` §10.1) and
the PP-vs-APP speed-up (``metrics.md`` §12).
"""

from __future__ import annotations

import math
from typing import Any

from circuitbench.methods import path_patching as pp
from circuitbench.methods.flap import merge_heads
from circuitbench.patching import PatchedModel
from circuitbench.tasks import TaskData

Head = tuple[int, int]

__all__ = ["APP_RULE", "merge_heads", "overlap", "run_app", "speedup"]

APP_RULE = pp.SelectionRule(min_performance=75.0, max_size_fraction=0.5)


def run_app(
    model: PatchedModel,
    discovery: TaskData,
    validation: TaskData,
    corruption: str,
    merged: list[Head],
    base: pp.PathPatchingConfig | None = None,
    rule: pp.SelectionRule = APP_RULE,
    implementation: str = "batched",
    eval_batch_size: int = 25,
    progress: bool = True,
) -> dict[str, Any]:
    """APP's grid: :func:`path_patching.run_grid` with the search space ``merged``."""
    return pp.run_grid(
        model,
        discovery,
        validation,
        corruption,
        allowed={tuple(head) for head in merged},
        base=base,
        rule=rule,
        implementation=implementation,
        eval_batch_size=eval_batch_size,
        progress=progress,
    )


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
