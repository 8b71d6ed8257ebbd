"""Faithfulness of any circuit: one exact patched pass per batch, every metric from its logits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from circuitbench import metrics
from circuitbench.cost import measure
from circuitbench.graph import Graph
from circuitbench.patching import Ablation, MeanScope, PatchedModel, PatchingCache
from circuitbench.tasks import TaskData, extra_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationOptions:
    """Config section ``evaluation``: how a circuit file is evaluated (``docs/metrics.md``)."""

    ablation: Ablation = Ablation.INTERCHANGE  # what a removed edge carries
    mean_scope: MeanScope = MeanScope.TEMPLATE  # with mean ablation: over what the mean is taken
    batch_size: int = 64

    def cache(self, model: PatchedModel, data: TaskData) -> PatchingCache:
        """The cached clean, corrupted / mean and empty-circuit runs of ``data``, under the
        task's configured corruption."""
        corruption = data.meta["task_options"].get("corruption")
        return model.build_cache(data, self.ablation, corruption, self.mean_scope, self.batch_size)


@torch.no_grad()
def evaluate_graph(
    model: PatchedModel,
    cache: PatchingCache,
    graph: Graph,
) -> dict[str, Any]:
    """Metrics of ``graph`` on the cached dataset: task metric (logit difference), accuracy,
    KL(full || circuit), exact match, normalized faithfulness, APP performance %, plus the task's
    extra metrics. Costs exactly one patched forward per batch: everything else (full model,
    empty circuit) comes from the cache."""
    graph.check_shape(model.shape.n_layers, model.shape.n_heads)
    mask = graph.edge_mask()
    columns: dict[str, list[torch.Tensor]] = {}
    batch_performance = []
    with measure(model) as cost:
        for batch in cache:
            logits = model.patched_forward(batch.data.clean_tokens, mask, batch.ablated)
            circuit_end = batch.data.logits_at_end(logits).float()
            full_end = batch.clean_logits_end.float()
            circuit_metric = batch.data.metric(circuit_end)
            full_metric = batch.data.metric(full_end)
            values = {
                "metric": circuit_metric,
                "full_metric": full_metric,
                "empty_metric": batch.data.metric(batch.empty_logits_end.float()),
                "accuracy": batch.data.accuracy(circuit_end),
                "full_accuracy": batch.data.accuracy(full_end),
                "kl": metrics.kl_divergence(full_end, circuit_end),
                "exact_match": metrics.exact_match(full_end, circuit_end),
                **extra_metrics(batch.data, circuit_end),
            }
            for key, value in values.items():
                columns.setdefault(key, []).append(value.cpu())
            batch_performance.append(
                metrics.app_performance(full_metric.mean().item(), circuit_metric.mean().item())
            )
    row = {key: torch.cat(values).mean().item() for key, values in columns.items()}
    row["faithfulness"] = metrics.normalized_faithfulness(
        row["metric"], row["empty_metric"], row["full_metric"]
    )
    row["app_performance"] = float(torch.tensor(batch_performance).mean())
    row["n_edges"] = graph.n_edges_in_graph
    row["edge_sparsity"] = 1 - graph.n_edges_in_graph / model.shape.n_edges
    row["n_examples"] = sum(len(b.data) for b in cache)
    row.update(cost.as_dict("eval_"))
    return row
