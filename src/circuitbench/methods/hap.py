"""HAP: hybrid attribution and pruning (arXiv 2510.03282), ``docs/methods.md``.

1. EAP scores every edge (2 forward + 1 backward passes per batch; :mod:`.eap`).
2. The top ``k`` edges by ``|score|`` form the "high-potential subgraph"; ``k`` is undisclosed,
   so it is ``keep_fraction * |E|`` and swept.
3. Edge Pruning runs with masks on the subgraph only: every other edge is fixed off (never
   sampled, never trained), and the sparsity in the Lagrangian counts them as pruned
   (``sparsity_denominator: full``).
4. The circuit is discretized to the edge count plain Edge Pruning achieved, so that the methods
   compare at matched sparsity.

HAP's runtime is the EAP stage's seconds plus the Edge Pruning stage's seconds. With
``skip_removed_edges`` (default) the pruning steps run on the subgraph-restricted patched forward
(:class:`circuitbench.patching.SubgraphPatcher`), whose cost scales with the subgraph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import torch

from circuitbench.graph import Graph, GraphShape, Ranking, ranking_key, top_edges
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.methods.eap import EAPConfig, eap_scores
from circuitbench.methods.edge_pruning import (
    EdgePruningConfig,
    EdgePruningResult,
    MaskLayout,
    SparsityDenominator,
    budget_target,
    pruning_meta,
    train_edge_pruning,
    training_prompts,
)
from circuitbench.patching import PatchedModel
from circuitbench.tasks import TaskData


class ScheduleStart(StrEnum):
    # The sparsity schedule starts where the subgraph already is (1 - k/|E| under the full
    # denominator): below it the Lagrangian would push toward edges that cannot come back and
    # wind its lambdas up the wrong way. ``zero`` is EP's literal schedule.
    SUBGRAPH = "subgraph"
    ZERO = "zero"


class RetainedHeadRule(StrEnum):
    # A head is retained if its node sends at least one in-circuit edge after dangling edges are
    # pruned (docs/metrics.md; the paper does not define it).
    OUTGOING_AFTER_PRUNING = "outgoing_after_pruning"


@dataclass(frozen=True)
class HAPConfig:
    keep_fraction: float = 0.2
    eap_ranking: Ranking = Ranking.ABSOLUTE
    sparsity_denominator: SparsityDenominator = SparsityDenominator.FULL
    schedule_start: ScheduleStart = ScheduleStart.SUBGRAPH
    # True: the pruning steps run on the subgraph-restricted patched forward (removed edges cost
    # no mixing and carry no gradient; same logits and subgraph mask gradients as the dense
    # forward). False: the shared dense forward, where a step costs what an EP step costs.
    skip_removed_edges: bool = True
    retained_head_rule: RetainedHeadRule = RetainedHeadRule.OUTGOING_AFTER_PRUNING
    ep_steps: int | None = None  # Edge Pruning steps of the pruning stage (null: EP's steps)
    ep_sparsity_warmup: int | None = None  # its sparsity warm-up (null: EP's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eap_ranking", Ranking(self.eap_ranking))
        object.__setattr__(
            self, "sparsity_denominator", SparsityDenominator(self.sparsity_denominator)
        )
        object.__setattr__(self, "retained_head_rule", RetainedHeadRule(self.retained_head_rule))
        object.__setattr__(self, "schedule_start", ScheduleStart(self.schedule_start))
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")

    def choices(self) -> dict[str, Any]:
        return {
            "hap.keep_fraction": self.keep_fraction,
            "hap.eap_ranking": self.eap_ranking.value,
            "hap.sparsity_denominator": self.sparsity_denominator.value,
            "hap.schedule_start": self.schedule_start.value,
            "hap.skip_removed_edges": self.skip_removed_edges,
            "hap.retained_head_rule": self.retained_head_rule.value,
        }


def subgraph_size(shape: GraphShape, keep_fraction: float) -> int:
    """``k``: the number of edges the EAP filter keeps."""
    return max(1, round(keep_fraction * shape.n_edges))


def high_potential_subgraph(
    shape: GraphShape, eap_scores: torch.Tensor, k: int, ranking: Ranking | str
) -> torch.Tensor:
    """``[n_writers, n_receivers]`` bool: the top ``k`` edges by EAP score (no pruning: the cut
    is meant to be generous; dangling edges go at the end)."""
    return top_edges(shape, ranking_key(eap_scores, shape, ranking), k, prune_dangling=False)


def run_hap(
    model: PatchedModel,
    data: TaskData,
    eap_scores: torch.Tensor,
    config: HAPConfig,
    ep_config: EdgePruningConfig,
    target_edges: int | None,
    corruption: str | None = None,
) -> tuple[EdgePruningResult, torch.Tensor, EdgePruningConfig]:
    """Edge Pruning restricted to the EAP subgraph; returns the result, the subgraph and the
    Edge Pruning settings it ran with.

    ``ep_config.target`` is the sparsity HAP trains toward (the step passes the sparsity plain
    Edge Pruning achieved); with ``schedule_start: subgraph`` the schedule starts at the
    subgraph's own sparsity."""
    k = subgraph_size(model.shape, config.keep_fraction)
    subgraph = high_potential_subgraph(model.shape, eap_scores, k, config.eap_ranking)
    if config.schedule_start is ScheduleStart.SUBGRAPH:
        start = subgraph_start(model, subgraph, config, ep_config)
        ep_config = replace(ep_config, start_sparsity=start)
    result = train_edge_pruning(
        model,
        data,
        ep_config,
        corruption,
        subgraph=subgraph,
        sparsity_denominator=config.sparsity_denominator,
        target_edges=target_edges,
        progress=f"hap k={k}",
        skip_removed_edges=config.skip_removed_edges,
    )
    return result, subgraph, ep_config


def subgraph_start(
    model: PatchedModel, subgraph: torch.Tensor, config: HAPConfig, ep_config: EdgePruningConfig
) -> float:
    """The Lagrangian's sparsity when every subgraph mask is open (0 under ``subgraph``)."""
    if config.sparsity_denominator is SparsityDenominator.SUBGRAPH:
        return 0.0
    layout = MaskLayout.build(
        model.shape, ep_config.with_embedding_nodes, ep_config.node_masks, subgraph
    )
    return 1 - len(layout.edge_index) / layout.n_maskable


def achieved_target(
    ep_circuit: Graph, config: HAPConfig, ep_config: EdgePruningConfig, k: int
) -> float:
    """The sparsity a plain Edge Pruning circuit achieved, in HAP's Lagrangian convention (its
    kept maskable edges over all maskable edges, or over the ``k`` subgraph edges)."""
    layout = MaskLayout.build(
        ep_circuit.shape, ep_config.with_embedding_nodes, ep_config.node_masks
    )
    maskable = ep_circuit.shape.valid & ~layout.fixed_open
    kept = int((ep_circuit.edge_in_graph & maskable).sum())
    if config.sparsity_denominator is SparsityDenominator.SUBGRAPH:
        return 1 - kept / k
    return 1 - kept / layout.n_maskable


def retained_heads(graph: Graph) -> dict[int, list[int]]:
    """Heads the circuit keeps under ``outgoing_after_pruning`` (:meth:`Graph.heads`)."""
    return graph.heads()


def pruning_config(config: HAPConfig, ep_config: EdgePruningConfig) -> EdgePruningConfig:
    """Edge Pruning's settings with HAP's own schedule length, where it sets one."""
    return replace(
        ep_config,
        steps=ep_config.steps if config.ep_steps is None else config.ep_steps,
        sparsity_warmup=(
            ep_config.sparsity_warmup
            if config.ep_sparsity_warmup is None
            else config.ep_sparsity_warmup
        ),
    )


# -- the registry's entry -----------------------------------------------------------------------


def discover(model: PatchedModel, data: MethodData, options: Options) -> Result:
    """HAP: EAP scores (``data.eap_scores``, else computed here with section ``eap`` on the
    training prompts), Edge Pruning (section ``edge_pruning``, with ``hap.ep_steps`` and
    ``hap.ep_sparsity_warmup``) on the top-k subgraph (section ``hap``).

    Size: with ``data.reference`` (a plain Edge Pruning circuit), HAP trains toward the sparsity
    the reference achieved, in HAP's convention, and is cut to its edge count; else toward the
    sparsity of a ``data.circuit_edges``-edge circuit, cut to that count."""
    config: HAPConfig = options["hap"]
    ep_config = pruning_config(config, options["edge_pruning"])
    train = training_prompts(data.train, ep_config.n_train)
    scores, eap_cost = data.eap_scores, {}
    eap_config: EAPConfig = options["eap"]
    if scores is None:
        eap = eap_scores(model, data.train, eap_config, data.corruption)
        scores = eap.scores
        eap_cost = {"wall_seconds": eap.wall_seconds, "cpu_seconds": eap.cpu_seconds}
    k = subgraph_size(model.shape, config.keep_fraction)
    if data.reference is not None:
        target = achieved_target(data.reference, config, ep_config, k)
        target_edges = data.reference.n_edges_in_graph
    else:
        target_edges = data.budget("hap")
        subgraph_denominator = config.sparsity_denominator is SparsityDenominator.SUBGRAPH
        target = budget_target(model, ep_config, target_edges, k if subgraph_denominator else None)
    result, subgraph, ep_config = run_hap(
        model,
        train,
        scores,
        config,
        replace(ep_config, target=target),
        target_edges,
        data.corruption,
    )
    graph = result.graph
    graph.meta = pruning_meta(
        graph,
        "hap",
        result,
        ep_config,
        circuit_rule=f"EP on the top {k} |EAP| edges, trained toward sparsity {target:.4f},"
        f" cut to {target_edges} edges",
        circuit_edges=target_edges,
        target=target,
        subgraph_edges=k,
        hap_choices=config.choices(),
        eap_choices=eap_config.choices(),
        eap_cost=eap_cost,
    )
    graph.meta["subgraph"] = [
        [int(w), int(r)] for w, r in torch.nonzero(subgraph.cpu() & model.shape.valid)
    ]
    record = {"result": result, "subgraph": subgraph, "config": ep_config, "target": target}
    return Result(graph, record, dict(result.cost))
