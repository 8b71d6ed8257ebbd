"""APP: automated path patching restricted to the merged FLAP / Contrastive-FLAP head set.

``docs/methods.md``: the merged circuit is the per-layer union of the FLAP and C-FLAP head sets;
APP runs the same breadth-first search and 16-configuration grid as dense path patching
(:mod:`circuitbench.methods.path_patching`) with senders outside the merged set skipped (no forward
pass, missing score) and selected senders intersected with it, so ``APP`` is a subset of it.
APP's selection rule differs from PP's only in its thresholds: performance >= 75, size <= N/2.

How APP's circuits compare with dense path patching's (head overlap, speed-up) is in
:mod:`circuitbench.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuitbench.methods import path_patching as pp
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.methods.flap import merge_heads, pruning_record
from circuitbench.patching import PatchedModel
from circuitbench.tasks import TaskData

Head = tuple[int, int]

__all__ = ["APP_RULE", "AppOptions", "discover", "merge_heads", "run_app"]

APP_RULE = pp.SelectionRule(min_performance=75.0, max_size_fraction=0.5)


@dataclass(frozen=True)
class AppOptions:
    """Config section ``app``: APP's selection rule (its search settings and prompts are
    ``path_patching``'s) and how its speed-up is charged."""

    min_performance: float = APP_RULE.min_performance
    max_size_fraction: float = APP_RULE.max_size_fraction
    cost_includes_pruning: bool = True  # the headline speed-up charges APP the FLAP stage

    def rule(self) -> pp.SelectionRule:
        return pp.SelectionRule(self.min_performance, self.max_size_fraction)


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
        allowed={(int(head[0]), int(head[1])) for head in merged},
        base=base,
        rule=rule,
        implementation=implementation,
        eval_batch_size=eval_batch_size,
        progress=progress,
    )


def discover(model: PatchedModel, data: MethodData, options: Options) -> Result:
    """APP: the path-patching grid restricted to FLAP ∪ C-FLAP (``data.search_space`` when an
    earlier stage computed it; else FLAP and C-FLAP run here with the ``flap`` section), with
    APP's selection rule (``app``) and the search settings of ``path_patching``. Scores are the
    grid's measurements, as for path patching."""
    search: pp.PathPatchingOptions = options["path_patching"]
    pruning = None
    merged = data.search_space
    if merged is None:
        pruning = pruning_record(model, data, options["flap"])
        merged = [tuple(head) for head in pruning["merged"]["heads"]]
    discovery = data.train.select(slice(0, search.n_prompts))
    record = run_app(
        model,
        discovery,
        data.validation,
        data.corruption,
        merged,
        search.base(),
        options["app"].rule(),
        search.implementation,
        search.eval_batch_size,
        progress=data.progress,
    )
    graph = pp.graph_from_grid(model, record, "app", len(discovery))
    graph.meta["merged"] = [list(head) for head in merged]
    graph.meta["circuit_rule"] += f", within FLAP ∪ C-FLAP's {len(merged)} heads"
    flops = record["scorer_cost"]["flops_actual"]
    if pruning is not None:
        flops += pruning["cost"]["flops_actual"]
        record = {**record, "pruning": pruning}
    return Result(graph, record, {"flops": flops})
