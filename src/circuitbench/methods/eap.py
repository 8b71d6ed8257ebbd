"""Edge attribution patching (EAP; Syed et al.) and EAP-IG (Hanna et al.), ``docs/methods.md``.

The score of edge ``w -> r`` is the first-order estimate of what replacing only that edge's
contribution by its ablated value does to the loss:

    s(w, r) = (1/N) sum_b sum_t < a_w(ablated) - a_w(clean) , d loss / d in_r >

With ``loss = -metric`` (``score_sign: loss``, MIB's convention) a positive score means ablating the
edge lowers the task metric. Under the patched forward of :mod:`circuitbench.patching` this is
exactly ``d metric / d edge_mask[w, r]`` at ``edge_mask = 1`` (what the tests check).

Cost per batch: one corrupted forward (the ablated writer outputs), one clean forward with
gradients and one backward. The clean pass keeps ``delta = ablated - clean`` as a
``[n_writers, batch*pos*d_model]`` matrix; a gradient hook on each layer's receiver ports turns
the port gradients into that layer's columns of the score matrix with one GEMM (the EAP-IG
library's construction). EAP-IG (inputs) replaces the clean pass by ``m`` passes whose input
embedding is interpolated from the ablated to the clean one (``alpha = k/m``), averaging the port
gradients.

Selection keeps the ``n`` best edges by ``|s|`` (or signed ``s``) and prunes dangling edges;
:func:`cut_to_count` finds the cut whose *pruned* edge count is closest to a target, which is how
EAP is matched to the sparsity Edge Pruning achieved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import torch
from tqdm import tqdm

from circuitbench.graph import Graph, GraphShape, Ranking, cut_to_count, ranking_key
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.patching import Ablation, MeanScope, PatchedModel
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)

MetricFn = Callable[
    [torch.Tensor], torch.Tensor
]  # logits at the prediction [batch, vocab] -> [batch]


class ScoreSign(StrEnum):
    LOSS = "loss"  # loss = -metric (MIB): positive = ablating the edge lowers the metric
    METRIC = "metric"  # the metric itself (Syed et al.'s formula)


class Riemann(StrEnum):
    LEFT = "left"  # alpha = k/m, k = 0..m-1 (the EAP-IG reference code; never evaluates alpha = 1)
    RIGHT = "right"  # alpha = k/m, k = 1..m (one step is plain EAP)


@dataclass(frozen=True)
class EAPConfig:
    """Every choice of an EAP / EAP-IG run (config section ``eap``; the EAP-IG entry sets
    ``ig_steps`` and ``riemann`` from section ``eap_ig``). ``ig_steps = 0`` is plain EAP."""

    score_sign: ScoreSign = ScoreSign.LOSS
    ranking: Ranking = Ranking.ABSOLUTE
    prune_dangling: bool = True
    ig_steps: int = field(default=0, metadata={"config": False})  # from section eap_ig
    riemann: Riemann = field(default=Riemann.LEFT, metadata={"config": False})  # eap_ig
    ablation: Ablation = Ablation.INTERCHANGE
    mean_scope: MeanScope = MeanScope.TEMPLATE
    batch_size: int = 32
    # The top-n cuts the pipeline evaluates for its sparsity curves.
    curve_sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.94, 0.96, 0.98, 0.99)
    n_prompts: int | None = None  # scored training prompts: the first n (null: all)

    def __post_init__(self) -> None:
        for name, kind in (
            ("score_sign", ScoreSign),
            ("ranking", Ranking),
            ("riemann", Riemann),
            ("ablation", Ablation),
            ("mean_scope", MeanScope),
        ):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.ig_steps < 0 or self.batch_size < 1:
            raise ValueError(f"ig_steps must be >= 0 and batch_size >= 1, got {self}")

    @property
    def method(self) -> str:
        return "eap_ig" if self.ig_steps else "eap"

    def choices(self) -> dict[str, Any]:
        """The choices this run made (written into every row)."""
        out: dict[str, Any] = {
            "eap.score_sign": self.score_sign.value,
            "eap.ranking": self.ranking.value,
            "eap.prune_dangling": self.prune_dangling,
            "eap.ablation": self.ablation.value,
            "eap.batch_size": self.batch_size,
        }
        if self.ig_steps:
            out.update({"eap_ig.steps": self.ig_steps, "eap_ig.riemann": self.riemann.value})
        return out


@dataclass(frozen=True)
class EAPIGOptions:
    """Config section ``eap_ig``: EAP-IG-inputs' interpolation (MIB: 5 steps)."""

    steps: int = 5
    riemann: Riemann = Riemann.LEFT


# -- scoring ------------------------------------------------------------------------------------


def _writer_hooks(n_layers: int) -> list[str]:
    """Hook points of the writers, in writer order (``input``, then per layer heads and MLP)."""
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
    return names


def _metric_at_end(
    model: PatchedModel,
    tokens: torch.Tensor,
    hooks: list[tuple[str, Callable]],
    end_pos: torch.Tensor,
    metric_fn: MetricFn,
) -> torch.Tensor:
    """``sum_b metric_b`` of a forward with ``hooks``. Only the prediction positions are
    unembedded (the metric reads nothing else), which saves the full-vocabulary unembedding of
    every position in the forward and in the backward pass."""
    return metric_fn(model.logits_at_end(tokens, end_pos, hooks)).sum()


class _ScoreAccumulator:
    """Gradient hooks that add ``< delta_w , grad_r >`` (summed over batch, positions and
    ``d_model``) into ``scores[w, r]`` for every edge, one GEMM per receiver group."""

    def __init__(self, shape: GraphShape, scores: torch.Tensor) -> None:
        self.shape, self.scores = shape, scores
        self.delta: torch.Tensor | None = None  # [n_writers, batch*pos*d_model]

    def set_delta(self, ablated: torch.Tensor, clean: torch.Tensor) -> None:
        """``ablated``, ``clean``: ``[batch, pos, n_writers, d_model]`` (``ablated`` may
        broadcast)."""
        delta = (ablated - clean).permute(2, 0, 1, 3)
        self.delta = delta.reshape(delta.shape[0], -1).contiguous()

    def _add(self, n_up: int, first: int, grad: torch.Tensor) -> None:
        # grad: [batch, pos, k, d] for k receivers with columns first..first+k-1
        assert self.delta is not None
        k = grad.shape[2]
        per_receiver = grad.permute(2, 0, 1, 3).reshape(k, -1)
        contribution = self.delta[:n_up] @ per_receiver.T  # [n_up, k]
        self.scores[:n_up, first : first + k] += contribution.to(self.scores.dtype)

    def hooks(self) -> list[tuple[str, Callable]]:
        shape, H = self.shape, self.shape.n_heads

        def on_grad(n_up: int, first: int, unsqueeze: bool):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                if not tensor.requires_grad:
                    return tensor
                # A fresh view: the hooked tensor itself may also carry the residual stream on
                # (``hook_mlp_in`` does), whose gradient is not the port's.
                port = tensor.view_as(tensor)
                port.register_hook(
                    lambda grad: self._add(n_up, first, grad.unsqueeze(2) if unsqueeze else grad)
                )
                return port

            return hook

        hooks = []
        for layer in range(shape.n_layers):
            n_up = 1 + layer * (H + 1)
            for which in "qkv":
                first = shape.qkv_receiver(layer, 0, which)
                hooks.append((f"blocks.{layer}.hook_{which}_input", on_grad(n_up, first, False)))
            mlp = shape.mlp_receiver(layer)
            hooks.append((f"blocks.{layer}.hook_mlp_in", on_grad(n_up + H, mlp, True)))
        last = f"blocks.{shape.n_layers - 1}.hook_resid_post"
        hooks.append((last, on_grad(shape.n_writers, shape.logits_receiver, True)))
        return hooks


def attribute_batch(
    model: PatchedModel,
    clean_tokens: torch.Tensor,
    ablated: torch.Tensor,
    metric_fn: MetricFn,
    end_pos: torch.Tensor,
    ig_steps: int = 0,
    riemann: Riemann | str = Riemann.LEFT,
) -> torch.Tensor:
    """``sum_b < a_w(ablated) - a_w(clean) , d metric_b / d in_r >`` for every edge: a
    ``[n_writers, n_receivers]`` float64 matrix in the *metric* sign, summed (not averaged) over
    the batch. ``ablated``: writer outputs broadcastable to ``[batch, pos, n_writers, d_model]``;
    ``metric_fn`` reads the logits at ``end_pos`` (``[batch]``), ``[batch, vocab] -> [batch]``.

    EAP (``ig_steps = 0``): one clean forward with gradients and one backward. EAP-IG: one clean
    forward without gradients, then ``ig_steps`` forward+backward passes at interpolated input
    embeddings, their port gradients averaged.
    """
    shape = model.shape
    device = model.device
    clean_tokens = clean_tokens.to(device)
    scores = torch.zeros(shape.n_writers, shape.n_receivers, dtype=torch.float64, device=device)
    accumulator = _ScoreAccumulator(shape, scores)
    ablated = ablated.to(device, model.dtype)
    if ig_steps == 0:
        clean: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []

        def record(tensor: torch.Tensor, hook) -> torch.Tensor:
            if not clean:  # the input node: make it the leaf the gradient flows back to
                tensor = tensor.detach().requires_grad_(True)
                inputs.append(tensor)
            block = tensor.detach()
            clean.append(block if block.dim() == 4 else block.unsqueeze(2))
            return tensor

        def delta_ready(tensor: torch.Tensor, hook) -> torch.Tensor:
            # The last writer is recorded: the deltas are complete before any gradient arrives.
            accumulator.set_delta(ablated, torch.cat(clean, dim=2))
            return tensor

        hooks = [(name, record) for name in _writer_hooks(shape.n_layers)]
        hooks.append((f"blocks.{shape.n_layers - 1}.hook_resid_post", delta_ready))
        with torch.enable_grad():
            total = _metric_at_end(
                model, clean_tokens, hooks + accumulator.hooks(), end_pos, metric_fn
            )
            torch.autograd.grad(total, inputs)
        return scores

    with torch.no_grad():
        clean_writers, _ = model.record_writers(clean_tokens, logits=False)
    accumulator.set_delta(ablated, clean_writers)
    clean_input = clean_writers[:, :, 0]
    baseline_input = ablated[:, :, 0].expand_as(clean_input)
    first = 0 if Riemann(riemann) is Riemann.LEFT else 1
    for k in range(first, first + ig_steps):
        alpha = k / ig_steps
        leaf = (baseline_input + alpha * (clean_input - baseline_input)).detach()
        leaf.requires_grad_(True)

        def interpolate(tensor: torch.Tensor, hook, leaf: torch.Tensor = leaf) -> torch.Tensor:
            return leaf

        hooks = [("blocks.0.hook_resid_pre", interpolate), *accumulator.hooks()]
        with torch.enable_grad():
            total = _metric_at_end(model, clean_tokens, hooks, end_pos, metric_fn)
            torch.autograd.grad(total, [leaf])
    return scores / ig_steps


def task_metric(data: TaskData) -> MetricFn:
    """The task's logit difference, from the logits at each example's prediction position."""
    return data.metric


def _batches(data: TaskData, batch_size: int) -> Iterator[TaskData]:
    for start in range(0, len(data), batch_size):
        chunk = data.select(slice(start, start + batch_size))
        width = int(chunk.end_pos.max()) + 1  # nothing after the last prediction matters
        chunk.clean_tokens = chunk.clean_tokens[:, :width]
        chunk.corrupt_tokens = {k: v[:, :width] for k, v in chunk.corrupt_tokens.items()}
        yield chunk


@dataclass
class EAPResult:
    scores: torch.Tensor  # [n_writers, n_receivers] float64, the configured sign, mean over data
    wall_seconds: float
    cpu_seconds: float  # process CPU time: robust to other jobs on a shared machine
    forward_passes: int
    backward_passes: int
    n_examples: int


def eap_scores(
    model: PatchedModel, data: TaskData, config: EAPConfig, corruption: str | None = None
) -> EAPResult:
    """Scores of every edge over ``data`` (``docs/methods.md``), averaged over examples."""
    corruption = corruption or data.meta.get("task_options", {}).get("corruption")
    corruption = corruption or next(iter(data.corrupt_tokens))
    shape = model.shape
    total = torch.zeros(shape.n_writers, shape.n_receivers, dtype=torch.float64)
    passes_before, backward = model.forward_passes, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    if config.ablation is Ablation.INTERCHANGE:
        chunks: list[tuple[TaskData, torch.Tensor | None]] = [
            (chunk, None) for chunk in _batches(data, config.batch_size)
        ]
    else:  # mean / zero: the reference values come from the shared cache builder
        cache = model.build_cache(
            data, config.ablation, corruption, config.mean_scope, config.batch_size
        )
        chunks = [(batch.data, batch.ablated) for batch in cache]
    for chunk, ablated in tqdm(chunks, desc=config.method, mininterval=5, leave=False):
        if ablated is None:
            with torch.no_grad():
                ablated, _ = model.record_writers(chunk.corrupt_tokens[corruption], logits=False)
        width = chunk.clean_tokens.shape[1]
        ablated = ablated[:, :width] if ablated.shape[1] > 1 else ablated
        total += attribute_batch(
            model,
            chunk.clean_tokens[:, :width],
            ablated,
            task_metric(chunk),
            chunk.end_pos,
            config.ig_steps,
            config.riemann,
        ).cpu()
        backward += max(config.ig_steps, 1)
    scores = total / len(data)
    if config.score_sign is ScoreSign.LOSS:
        scores = -scores
    scores = scores * shape.valid
    return EAPResult(
        scores=scores,
        wall_seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        forward_passes=model.forward_passes - passes_before,
        backward_passes=backward,
        n_examples=len(data),
    )


# -- selection ----------------------------------------------------------------------------------


def circuit_from_scores(
    shape: GraphShape,
    scores: torch.Tensor,
    keep: torch.Tensor,
    d_model: int | None = None,
    meta: dict | None = None,
) -> Graph:
    """A :class:`Graph` holding every edge's score and the kept edges."""
    graph = Graph(shape, d_model, meta)
    graph.edge_scores = (scores.double() * shape.valid).cpu()
    graph.edge_in_graph = keep.cpu() & shape.valid
    graph.node_in_graph = graph.edge_in_graph.any(1)
    return graph


# -- the registry's entries ---------------------------------------------------------------------


def _attribution(model: PatchedModel, data: MethodData, config: EAPConfig) -> Result:
    """Scores on the training prompts (the first ``n_prompts``); with ``data.circuit_edges`` the
    circuit is the top-n cut (configured ranking) whose edge count after dangling pruning is
    closest to it (:func:`~circuitbench.graph.cut_to_count`), else empty. Edge scores over all
    edges; a head's node score is its best outgoing edge's ranking key."""
    train = (
        data.train if config.n_prompts is None else data.train.select(slice(0, config.n_prompts))
    )
    result = eap_scores(model, train, config, data.corruption)
    shape = model.shape
    key = ranking_key(result.scores, shape, config.ranking)
    if data.circuit_edges is None:
        keep = torch.zeros_like(shape.valid)
        rule = "scores only (no circuit size given)"
    else:
        keep = cut_to_count(shape, key, data.circuit_edges, config.prune_dangling)
        rule = f"top-n by {config.ranking.value} score, cut to {data.circuit_edges} edges" + (
            " after dangling pruning" if config.prune_dangling else ""
        )
    graph = circuit_from_scores(shape, result.scores, keep, model.d_model)
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            writer = shape.head_writer(layer, head)
            graph.node_scores[writer] = key[writer][shape.valid[writer]].max()
    graph.meta = {
        "method": config.method,
        "level": "edge",
        "edge_score_universe": "all",
        "edge_score_kind": f"{config.method} attribution ({config.score_sign.value} sign)",
        "score_ranking": config.ranking.value,
        "circuit_rule": rule,
        "circuit_edges": data.circuit_edges,
        "choices": config.choices(),
        "cost": {
            "wall_seconds": result.wall_seconds,
            "cpu_seconds": result.cpu_seconds,
            "forward_passes": result.forward_passes,
            "backward_passes": result.backward_passes,
        },
        "n_discovery": result.n_examples,
    }
    cost = {"backward_passes": result.backward_passes}
    return Result(graph, {"scores": result, "config": config, "key": key}, cost)


def discover_eap(model: PatchedModel, data: MethodData, options: Options) -> Result:
    return _attribution(model, data, options["eap"])


def discover_eap_ig(model: PatchedModel, data: MethodData, options: Options) -> Result:
    section: EAPIGOptions = options["eap_ig"]
    config = replace(options["eap"], ig_steps=section.steps, riemann=section.riemann)
    return _attribution(model, data, config)
