"""ACDC: automatic circuit discovery by greedy edge removal (Conmy et al., arXiv 2304.14997).

Starting from the full graph, receivers are visited in reverse topological order (the logits,
then each layer's MLP and its heads' q, k and v inputs, from the last layer down). Each incoming
edge of a receiver is tentatively removed (its writer's contribution replaced by the ablated
one, on the shared patched forward); if that raises the criterion ``D`` by less than the
threshold ``tau``, the edge stays removed and ``D`` is updated, else it is restored. ``D`` is
KL(full || circuit) at the prediction position (or, with ``metric: logit_diff``, the logit
difference lost), averaged over the discovery prompts. A receiver whose node no longer sends any
edge is not visited (its incoming edges are dangling) and dangling edges are pruned at the end.

Cost: one patched forward of the discovery prompts per edge tested (``docs/methods.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from circuitbench import metrics
from circuitbench.graph import Graph, GraphShape
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.patching import Ablation, PatchedModel, PatchingCache


@dataclass(frozen=True)
class ACDCOptions:
    """Config section ``acdc``."""

    threshold: float = 0.01  # tau: an edge stays removed if D rises by less
    metric: str = "kl"  # kl | logit_diff: the criterion D
    ablation: Ablation = Ablation.INTERCHANGE  # interchange | zero: what a removed edge carries
    n_prompts: int | None = 100  # discovery prompts: the first of the train split (null: all)
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "ablation", Ablation(self.ablation))
        if self.metric not in ("kl", "logit_diff"):
            raise ValueError(f"acdc.metric must be kl | logit_diff, got {self.metric!r}")
        if self.ablation is Ablation.MEAN:
            raise ValueError("acdc.ablation must be interchange | zero (ACDC's own choices)")
        if self.threshold < 0:
            raise ValueError(f"acdc.threshold must be >= 0, got {self.threshold}")


def receiver_order(shape: GraphShape) -> list[tuple[int, int | None]]:
    """``(receiver, its node's writer or None)`` in reverse topological order: the logits, then
    per layer from the last: the MLP's input, then every head's q, k and v inputs."""
    order: list[tuple[int, int | None]] = [(shape.logits_receiver, None)]
    for layer in reversed(range(shape.n_layers)):
        order.append((shape.mlp_receiver(layer), shape.mlp_writer(layer)))
        for head in reversed(range(shape.n_heads)):
            for which in ("v", "k", "q"):
                order.append(
                    (shape.qkv_receiver(layer, head, which), shape.head_writer(layer, head))
                )
    return order


@dataclass
class Criterion:
    """``D`` of a circuit (an edge mask) over a cached dataset: one patched pass per batch."""

    model: PatchedModel
    cache: PatchingCache
    metric: str
    passes: int = 0
    _full_metric: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        full = [b.data.metric(b.clean_logits_end.float()) for b in self.cache]
        self._full_metric = torch.cat(full).mean().item()

    @torch.no_grad()
    def __call__(self, mask: torch.Tensor) -> float:
        values = []
        for batch in self.cache:
            logits = self.model.patched_forward(batch.data.clean_tokens, mask, batch.ablated)
            end = batch.data.logits_at_end(logits)
            if self.metric == "kl":
                # In float64: the sweep compares differences of KL that can be far below
                # float32's resolution of the KL itself.
                full = batch.clean_logits_end
                values.append(metrics.kl_divergence(full, end, torch.float64))
            else:
                values.append(batch.data.metric(end.float()).double())
            self.passes += 1
        value = torch.cat(values).mean().item()
        return value if self.metric == "kl" else self._full_metric - value


def run_acdc(
    model: PatchedModel, cache: PatchingCache, options: ACDCOptions, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The greedy sweep. Returns the kept edges ``[n_writers, n_receivers]`` (bool), each tested
    edge's increase of ``D`` when it was tested (NaN where not tested), and a record."""
    shape = model.shape
    criterion = Criterion(model, cache, options.metric)
    keep = shape.valid.clone()
    delta = torch.full(keep.shape, float("nan"), dtype=torch.float64)
    current = criterion(keep.to(model.dtype))
    start = current
    tested = skipped = 0
    order = receiver_order(shape)
    for receiver, node in tqdm(order, desc="acdc", disable=not progress, mininterval=5):
        writers = torch.nonzero(keep[:, receiver]).flatten().tolist()
        if node is not None and not keep[node].any():
            # Its node sends nothing any more: every incoming edge dangles.
            keep[:, receiver] = False
            skipped += len(writers)
            continue
        for writer in reversed(writers):  # later writers first
            keep[writer, receiver] = False
            value = criterion(keep.to(model.dtype))
            tested += 1
            delta[writer, receiver] = value - current
            if value - current < options.threshold:
                current = value
            else:
                keep[writer, receiver] = True
    graph = Graph(shape)
    graph.edge_in_graph = keep & shape.valid
    pruned = graph.prune_dangling().edge_in_graph
    record = {
        "criterion_start": start,
        "criterion_end": current,
        "edges_tested": tested,
        "edges_skipped": skipped,
        "patched_passes": criterion.passes,
    }
    return pruned, delta, record


def discover(model: PatchedModel, data: MethodData, options: Options) -> Result:
    """ACDC at ``acdc.threshold`` on the first ``n_prompts`` training prompts. Edge scores: each
    tested edge's increase of ``D`` at its test (untested edges 0)."""
    config: ACDCOptions = options["acdc"]
    train = data.train
    if config.n_prompts is not None:
        train = train.select(slice(0, config.n_prompts))
    cache = model.build_cache(train, config.ablation, data.corruption, batch_size=config.batch_size)
    keep, delta, record = run_acdc(model, cache, config, data.progress)
    shape = model.shape
    graph = Graph(shape, model.d_model)
    graph.edge_in_graph = keep
    graph.node_in_graph = keep.any(1)
    graph.edge_scores = torch.nan_to_num(delta, nan=0.0) * shape.valid
    graph.meta = {
        "method": "acdc",
        "level": "edge",
        "edge_score_universe": "all",
        "edge_score_kind": f"increase of {config.metric} when the edge was tested (untested 0)",
        "circuit_rule": f"greedy removal below tau = {config.threshold:g} ({config.metric})",
        "choices": {f"acdc.{k}": v for k, v in _choices(config).items()},
        **record,
        "n_discovery": len(train),
    }
    cost = {"patched_passes": record["patched_passes"], "edges_tested": record["edges_tested"]}
    return Result(graph, {"delta": delta, **record, "config": config}, cost)


def _choices(config: ACDCOptions) -> dict[str, Any]:
    return {
        "threshold": config.threshold,
        "metric": config.metric,
        "ablation": config.ablation.value,
        "n_prompts": config.n_prompts,
        "batch_size": config.batch_size,
    }
