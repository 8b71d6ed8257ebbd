"""Edge Pruning (Bhaskar et al., arXiv 2406.16778), ``docs/methods.md``.

Hard-concrete (L0) masks over the edges of the graph (and, optionally, over the writer nodes) are
trained against ``KL(full || circuit)`` at the prediction position, with a Lagrangian that pulls
the sampled edge sparsity toward a target scheduled linearly from 0; the lambdas are trained by
gradient ascent. The model is frozen; only log-alphas and lambdas move.

The masked forward is the shared patched forward: edge ``w -> r`` mixes the writer's current
output and its output on the paired corrupted prompt with weight ``z_wr * z_w`` (a writer mask
``z_w`` on the output equals scaling every outgoing edge mask, so node masks fold into the edge
mask exactly). The corrupted writer outputs and the full model's log-probabilities of the whole
training set are computed once (``cache_corrupted``); a step then costs one masked forward and
one backward (EP's reference recomputes both no-grad passes every step).

Graph convention: circuitbench's MIB graph has one ``input`` node (token + position embeddings);
under interchange ablation the position embeddings cancel, so ``input`` plays EP's ``tok_embeds``
and its edges are masked when ``with_embedding_nodes`` is set (otherwise they are always present
and outside the sparsity count, as in EP without embedding nodes). Sparsities are reported in the
MIB convention (``|E|`` = all graph edges) and in EP's (``input -> X`` = tok and pos edges).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import torch
from tqdm import tqdm

from circuitbench.cost import return_freed_memory
from circuitbench.graph import Graph, GraphShape, cut_to_count
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.patching import PatchedModel, SubgraphPatcher
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)

# Hard-concrete constants (Louizos et al.; EP ``src/modeling/l0.py``).
LIMIT_LEFT = -0.1
LIMIT_RIGHT = 1.1
TEMPERATURE = 2 / 3
EPS = 1e-6
SOFT_FACTOR = 0.8
INIT_MEAN, INIT_STD = 10.0, 0.01  # log-alpha initialisation (inherited from CoFiPruning)
# EP builds ``torch.optim.AdamW`` with its default weight decay and trains through the HF Trainer,
# which clips the global gradient norm at 1.0: both are part of its dynamics.
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
THRESHOLD_TOLERANCE = 1e-5


class WarmupType(StrEnum):
    LINEAR = "linear"
    LOGARITHMIC = "logarithmic"  # linear in log(1 - t)


class SparsityDenominator(StrEnum):
    FULL = "full"  # all maskable edges; edges fixed off count as pruned (HAP default)
    SUBGRAPH = "subgraph"  # only the trainable edges


@dataclass(frozen=True)
class EdgePruningConfig:
    """One Edge Pruning run (the defaults are the paper's GPT-2 values)."""

    # Set per run (the workflow's plan, from ``targets``), not a config key.
    target: float = field(default=0.94, metadata={"config": False})
    # Where the schedule starts (EP: 0; HAP: its subgraph's sparsity).
    start_sparsity: float = field(default=0.0, metadata={"config": False})
    node_target: float = 0.72
    steps: int = 3000
    sparsity_warmup: int = 2500
    lr_warmup: int = 200
    edge_lr: float = 0.8
    edge_lambda_lr: float = 0.8
    node_lr: float = 0.8
    node_lambda_lr: float = 0.8
    batch_size: int = 32
    with_embedding_nodes: bool = True
    node_masks: bool = True
    node_loss: bool = False
    warmup_type: WarmupType = WarmupType.LINEAR
    cache_corrupted: bool = True
    seed: int = 0
    n_train: int | None = None  # training prompts: the first n (null: all)
    log_every: int = 10  # training-history row every n steps (progress only, not in choices)

    def __post_init__(self) -> None:
        object.__setattr__(self, "warmup_type", WarmupType(self.warmup_type))
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1 or null, got {self.n_train}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.steps < 1 or self.batch_size < 1 or self.sparsity_warmup < 0 or self.lr_warmup < 0:
            raise ValueError(f"invalid Edge Pruning schedule: {self}")
        if self.node_loss and not self.node_masks:
            raise ValueError("node_loss needs node_masks")

    def choices(self, prefix: str = "edge_pruning.") -> dict[str, Any]:
        values = asdict(self)
        values["warmup_type"] = self.warmup_type.value
        values.pop("log_every")
        values.pop("n_train")  # rows record the training-set size as n_train
        return {f"{prefix}{key}": value for key, value in values.items()}


# -- hard-concrete masks ------------------------------------------------------------------------


def sample_mask(log_alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A training sample ``z`` in [0, 1] (differentiable in ``log_alpha``)."""
    u = torch.rand(log_alpha.shape, generator=generator, device=generator.device)
    u = (u * (1 - 2 * EPS) + EPS).to(log_alpha.device, log_alpha.dtype)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / TEMPERATURE)
    return (s * (LIMIT_RIGHT - LIMIT_LEFT) + LIMIT_LEFT).clamp(0, 1)


def prob_closed(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z <= 0) = sigmoid(beta * log(-l/r) - log_alpha)``, clamped to ``[eps, 1-eps]``."""
    shift = TEMPERATURE * math.log(-LIMIT_LEFT / LIMIT_RIGHT)
    return torch.sigmoid(shift - log_alpha).clamp(EPS, 1 - EPS)


def deterministic_mask(log_alpha: torch.Tensor) -> torch.Tensor:
    """EP's evaluation mask of one mask tensor: ``sigmoid(0.8 log_alpha / beta)`` with the
    ``round(E[#zeros])`` smallest entries set to 0."""
    soft = torch.sigmoid(SOFT_FACTOR * log_alpha / TEMPERATURE)
    n_zeros = int(torch.round(prob_closed(log_alpha).sum()).item())
    if n_zeros > 0:
        soft = soft.clone()
        soft[torch.topk(soft, k=min(n_zeros, soft.numel()), largest=False).indices] = 0
    return soft


def target_schedule(
    step: int, target: float, warmup: int, kind: WarmupType | str, start: float = 0.0
) -> float:
    """Target sparsity at ``step``: from ``start`` to ``target`` over ``warmup`` steps, then
    constant (EP's ``get_current_edge_target_sparsity``)."""
    if step >= warmup:
        return target
    if WarmupType(kind) is WarmupType.LINEAR:
        return start + (target - start) * step / warmup
    if target >= 1 or start >= 1:
        raise ValueError("a logarithmic schedule needs start and target below 1")
    log_remaining = math.log(1 - start) + (math.log(1 - target) - math.log(1 - start)) * (
        step / warmup
    )
    return 1 - math.exp(log_remaining)


def threshold_for_sparsity(values: torch.Tensor, denominator: int, target: float) -> float:
    """EP's binary search for ``tau`` in [0, 1] so that ``1 - #(values > tau) / denominator`` is
    as close to ``target`` as the search can get (``tau`` moves down while sparsity is above the
    target)."""

    def sparsity(tau: float) -> float:
        return 1 - int((values > tau).sum()) / denominator

    lo, hi = 0.0, 1.0
    while hi - lo > THRESHOLD_TOLERANCE:
        mid = (lo + hi) / 2
        if sparsity(mid) > target:
            hi = mid
        else:
            lo = mid
    return lo if abs(sparsity(lo) - target) <= abs(sparsity(hi) - target) else hi


# -- the mask layout ----------------------------------------------------------------------------


@dataclass
class MaskLayout:
    """Which edges and nodes carry trainable masks, and EP's per-tensor groups.

    ``edge_index``: flat indices into ``[n_writers, n_receivers]`` of the trainable edges, in
    canonical (row-major) order; ``fixed_open``: edges always present (``input`` edges without
    embedding nodes); ``n_maskable``: the edges the sparsity counts; ``edge_groups`` /
    ``node_groups``: index tensors into the trainable vectors, one per EP mask tensor (a layer's
    q, k, v or MLP ports, the final read; ``input``, a layer's heads, a layer's MLP).
    """

    shape: GraphShape
    edge_index: torch.Tensor
    fixed_open: torch.Tensor
    n_maskable: int
    edge_groups: list[torch.Tensor]
    node_index: torch.Tensor
    node_groups: list[torch.Tensor]

    @classmethod
    def build(
        cls,
        shape: GraphShape,
        with_embedding_nodes: bool,
        node_masks: bool,
        subgraph: torch.Tensor | None = None,
    ) -> MaskLayout:
        valid = shape.valid
        maskable = valid.clone()
        if not with_embedding_nodes:
            maskable[0] = False
        trainable = maskable & subgraph.cpu().bool() if subgraph is not None else maskable
        edge_index = torch.nonzero(trainable.flatten()).flatten()
        receivers = edge_index % shape.n_receivers
        group_of = torch.empty(shape.n_receivers, dtype=torch.long)
        H = shape.n_heads
        for layer in range(shape.n_layers):
            for i, which in enumerate("qkv"):
                first = shape.qkv_receiver(layer, 0, which)
                group_of[first : first + H] = 4 * layer + i
            group_of[shape.mlp_receiver(layer)] = 4 * layer + 3
        group_of[shape.logits_receiver] = 4 * shape.n_layers
        edge_groups = [
            torch.nonzero(group_of[receivers] == g).flatten() for g in range(4 * shape.n_layers + 1)
        ]
        edge_groups = [g for g in edge_groups if g.numel()]
        writers: list[int] = [0] if with_embedding_nodes else []
        node_groups_w: list[list[int]] = [[0]] if with_embedding_nodes else []
        for layer in range(shape.n_layers):
            heads = [shape.head_writer(layer, h) for h in range(H)]
            writers += [*heads, shape.mlp_writer(layer)]
            node_groups_w += [heads, [shape.mlp_writer(layer)]]
        if not node_masks:
            writers, node_groups_w = [], []
        position = {w: i for i, w in enumerate(writers)}
        return cls(
            shape=shape,
            edge_index=edge_index,
            fixed_open=valid & ~maskable,
            n_maskable=int(maskable.sum()),
            edge_groups=edge_groups,
            node_index=torch.tensor(writers, dtype=torch.long),
            node_groups=[torch.tensor([position[w] for w in g]) for g in node_groups_w],
        )

    @property
    def support(self) -> torch.Tensor:
        """``[n_writers, n_receivers]`` bool: the edges whose mask can be nonzero (trainable or
        fixed open); every other edge is permanently removed."""
        shape = self.shape
        support = torch.zeros(shape.n_writers * shape.n_receivers, dtype=torch.bool)
        support[self.edge_index] = True
        return support.view(shape.n_writers, shape.n_receivers) | self.fixed_open

    def dense_edges(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Trainable values scattered into ``[n_writers, n_receivers]`` (out of place, so
        gradients flow); fixed-open edges are 1, everything else ``fill``."""
        shape = self.shape
        base = torch.full(
            (shape.n_writers * shape.n_receivers,), fill, dtype=values.dtype, device=values.device
        )
        base = base.masked_fill(self.fixed_open.flatten().to(values.device), 1.0)
        return base.index_put((self.edge_index.to(values.device),), values).view(
            shape.n_writers, shape.n_receivers
        )

    def dense_nodes(self, values: torch.Tensor) -> torch.Tensor:
        """``[n_writers]`` node masks, 1 where a writer has none."""
        ones = torch.ones(self.shape.n_writers, dtype=values.dtype, device=values.device)
        return ones.index_put((self.node_index.to(values.device),), values)

    def per_group(self, log_alpha: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
        """EP's deterministic mask, computed per mask tensor (not globally)."""
        out = torch.zeros_like(log_alpha)
        for group in groups:
            group = group.to(log_alpha.device)
            out[group] = deterministic_mask(log_alpha[group])
        return out


# -- training -----------------------------------------------------------------------------------


@dataclass
class EdgePruningResult:
    graph: Graph
    edge_log_alpha: torch.Tensor  # [n_trainable], in layout.edge_index order
    node_log_alpha: torch.Tensor  # [n_node_masks]
    layout: MaskLayout
    history: list[dict[str, float]]
    cost: dict[str, Any]
    discretization: dict[str, Any] = field(default_factory=dict)


class _TrainingSet:
    """The training prompts with (optionally cached) corrupted writer outputs and the full model's
    log-probabilities at each prediction position. With a ``patcher`` (the subgraph-restricted
    forward) it keeps only the writers that send a subgraph edge, plus the corrupted run's port
    inputs (the ``base`` of :class:`~circuitbench.patching.SubgraphPatcher`)."""

    def __init__(
        self,
        model: PatchedModel,
        data: TaskData,
        corruption: str,
        cache: bool,
        batch_size: int,
        patcher: SubgraphPatcher | None = None,
    ):
        self.model, self.data, self.corruption, self.cache = model, data, corruption, cache
        self.patcher = patcher
        self.writers: torch.Tensor | None = None
        self.base: torch.Tensor | None = None
        self.full_logprobs: torch.Tensor | None = None
        if cache:
            width = int(data.end_pos.max()) + 1
            writers: list[torch.Tensor] = []
            bases: list[torch.Tensor | None] = []
            logprobs: list[torch.Tensor] = []
            with torch.no_grad():
                for start in range(0, len(data), batch_size):
                    chunk = data.select(slice(start, start + batch_size))
                    ablated, base, full = self._reference(chunk, width)
                    writers.append(ablated)
                    bases.append(base)
                    logprobs.append(full)
            self.writers = torch.cat(writers)
            self.base = torch.cat([b for b in bases if b is not None]) if patcher else None
            self.full_logprobs = torch.cat(logprobs)

    def _reference(
        self, chunk: TaskData, width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One corrupted recording (no logits) and one clean pass unembedded at the prediction
        positions only."""
        model = self.model
        recording = model.record(
            chunk.corrupt_tokens[self.corruption][:, :width],
            logits=False,
            residuals=self.patcher is not None,
        )
        full = model.logits_at_end(chunk.clean_tokens[:, :width], chunk.end_pos)
        if self.patcher is None:
            return recording.writers, None, full.float().log_softmax(-1)
        base = model.empty_circuit_inputs(recording)
        return self.patcher.compact(recording.writers), base, full.float().log_softmax(-1)

    def batch(
        self, rows: torch.Tensor
    ) -> tuple[TaskData, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The sub-batch ``rows``: its ``tokens [b, p]``, ``ablated [b, p, n_writers, d]`` (the
        active writers only with a patcher), ``base [b, p, 2 n_layers + 1, d]`` (None without a
        patcher) and the full model's log-probs ``[b, vocab]``, cut after the last prediction
        position."""
        chunk = self.data.select(rows)
        width = int(chunk.end_pos.max()) + 1
        tokens = chunk.clean_tokens[:, :width]
        if self.cache:
            assert self.writers is not None and self.full_logprobs is not None
            index = rows.to(self.writers.device)
            base = self.base[index, :width] if self.base is not None else None
            return chunk, tokens, self.writers[index, :width], base, self.full_logprobs[index]
        with torch.no_grad():  # EP's way: both reference passes every step
            ablated, base, full = self._reference(chunk, width)
        return chunk, tokens, ablated, base, full


def _batch_order(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Reshuffled every epoch, last partial batch kept (the HF Trainer's random sampler)."""
    while True:
        permutation = torch.randperm(n, generator=generator)
        yield from permutation.split(batch_size)


def train_edge_pruning(
    model: PatchedModel,
    data: TaskData,
    config: EdgePruningConfig,
    corruption: str | None = None,
    subgraph: torch.Tensor | None = None,
    sparsity_denominator: SparsityDenominator | str = SparsityDenominator.FULL,
    target_edges: int | None = None,
    progress: str = "edge pruning",
    skip_removed_edges: bool = False,
) -> EdgePruningResult:
    """Train masks on ``data`` and discretize them into a circuit.

    ``subgraph`` (bool ``[n_writers, n_receivers]``): only these edges get masks; every other
    maskable edge is fixed off (HAP). ``target_edges``: discretize to this many edges after
    pruning dangling edges (HAP matching Edge Pruning's achieved count) instead of EP's own
    threshold search. ``skip_removed_edges``: run the steps on the subgraph-restricted patched
    forward (:class:`~circuitbench.patching.SubgraphPatcher`), which gives the same logits and
    mask gradients at a cost that scales with the subgraph; with no edge removed there is
    nothing to skip and the dense forward runs.
    """
    corruption = corruption or data.meta.get("task_options", {}).get("corruption")
    corruption = corruption or next(iter(data.corrupt_tokens))
    shape = model.shape
    device = model.device
    for parameter in model.bridge.parameters():
        parameter.requires_grad_(False)
    # Each step frees the activations of its backward; have glibc give them back to the system
    # rather than keep them in the heap (the process's own setting, from here on).
    return_freed_memory()
    layout = MaskLayout.build(shape, config.with_embedding_nodes, config.node_masks, subgraph)
    denominator = (
        layout.n_maskable
        if SparsityDenominator(sparsity_denominator) is SparsityDenominator.FULL
        else len(layout.edge_index)
    )
    generator = torch.Generator().manual_seed(config.seed)
    edge_log_alpha = torch.nn.Parameter(
        torch.normal(INIT_MEAN, INIT_STD, (len(layout.edge_index),), generator=generator).to(device)
    )
    node_log_alpha = torch.nn.Parameter(
        torch.normal(INIT_MEAN, INIT_STD, (len(layout.node_index),), generator=generator).to(device)
    )
    edge_lambdas = torch.nn.Parameter(torch.zeros(2, device=device))
    node_lambdas = torch.nn.Parameter(torch.zeros(2, device=device))
    groups: list[dict[str, Any]] = [
        {"params": [edge_log_alpha], "lr": config.edge_lr},
        {"params": [edge_lambdas], "lr": config.edge_lambda_lr, "maximize": True},
        {"params": [node_log_alpha], "lr": config.node_lr},
    ]
    if config.node_loss:
        groups.append({"params": [node_lambdas], "lr": config.node_lambda_lr, "maximize": True})
    optimizer = torch.optim.AdamW(groups, lr=config.edge_lr, weight_decay=WEIGHT_DECAY)

    def lr_factor(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if step < config.lr_warmup:
            return step / max(1, config.lr_warmup)
        return max(0.0, (config.steps - step) / max(1, config.steps - config.lr_warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    trainable = [p for group in groups for p in group["params"]]

    patcher = None
    if skip_removed_edges and not torch.equal(layout.support, shape.valid):
        patcher = model.subgraph_patcher(layout.support)

    passes_before = model.forward_passes
    started, cpu_started = time.perf_counter(), time.process_time()
    training_set = _TrainingSet(
        model, data, corruption, config.cache_corrupted, config.batch_size, patcher
    )
    cache_seconds = time.perf_counter() - started
    cache_passes = model.forward_passes - passes_before
    order = _batch_order(len(data), config.batch_size, generator)
    history: list[dict[str, float]] = []
    train_started = time.perf_counter()
    for step in tqdm(range(config.steps), desc=progress, mininterval=10, leave=False):
        rows = next(order)
        chunk, tokens, ablated, base, full_logprobs = training_set.batch(rows)
        edge_z = sample_mask(edge_log_alpha, generator)
        mask = layout.dense_edges(edge_z)
        if config.node_masks:
            node_z = sample_mask(node_log_alpha, generator)
            mask = mask * layout.dense_nodes(node_z)[:, None]
        if patcher is None:
            logits = model.patched_forward(tokens, mask, ablated)
        else:
            assert base is not None
            logits = patcher(tokens, mask, ablated, base)
        circuit_logprobs = chunk.logits_at_end(logits).float().log_softmax(-1)
        kl = (full_logprobs.exp() * (full_logprobs - circuit_logprobs)).sum(-1).mean()
        edge_sparsity = 1 - edge_z.sum() / denominator
        edge_target = target_schedule(
            step, config.target, config.sparsity_warmup, config.warmup_type, config.start_sparsity
        )
        gap = edge_sparsity - edge_target
        loss = kl + edge_lambdas[0] * gap + edge_lambdas[1] * gap**2
        node_sparsity = torch.tensor(float("nan"))
        if config.node_masks:
            node_sparsity = 1 - node_z.sum() / max(1, len(layout.node_index))
            if config.node_loss:
                node_target = target_schedule(
                    step, config.node_target, config.sparsity_warmup, config.warmup_type
                )
                node_gap = node_sparsity - node_target
                loss = loss + node_lambdas[0] * node_gap + node_lambdas[1] * node_gap**2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            history.append(
                {
                    "step": step,
                    "kl": kl.item(),
                    "edge_sparsity_sampled": edge_sparsity.item(),
                    "edge_target": edge_target,
                    "node_sparsity_sampled": node_sparsity.item(),
                    "lambda_1": edge_lambdas[0].item(),
                    "lambda_2": edge_lambdas[1].item(),
                    "lr": float(scheduler.get_last_lr()[0]),
                }
            )
    train_seconds = time.perf_counter() - train_started
    cpu_seconds = time.process_time() - cpu_started
    masked_steps = config.steps
    reference_passes = 0 if config.cache_corrupted else 2 * masked_steps
    graph, discretization = discretize(
        layout, edge_log_alpha.detach(), node_log_alpha.detach(), denominator, target_edges
    )
    graph.d_model = model.d_model
    cost = {
        "wall_seconds": cache_seconds + train_seconds,
        "cpu_seconds": cpu_seconds,
        "train_seconds": train_seconds,
        "cache_seconds": cache_seconds,
        "seconds_per_step": train_seconds / masked_steps,
        "steps": masked_steps,
        "forward_passes_actual": model.forward_passes - passes_before,
        "cache_forward_passes": cache_passes,
        "reference_forward_passes": reference_passes,
        "masked_forward_passes": masked_steps,
        "backward_passes": masked_steps,
        "forward_passes_ep_accounting": 3 * masked_steps,  # EP: 2 no-grad + 1 masked per step
        "n_train": len(data),
        "masked_forward": "dense" if patcher is None else "subgraph",
        "masked_forward_edges": shape.n_edges if patcher is None else patcher.n_edges,
    }
    log.info(
        "edge pruning: %d steps in %.1f s (%.3f s/step); final sampled sparsity %.3f, kl %.4f",
        masked_steps,
        train_seconds,
        cost["seconds_per_step"],
        history[-1]["edge_sparsity_sampled"],
        history[-1]["kl"],
    )
    return EdgePruningResult(
        graph=graph,
        edge_log_alpha=edge_log_alpha.detach().cpu(),
        node_log_alpha=node_log_alpha.detach().cpu(),
        layout=layout,
        history=history,
        cost=cost,
        discretization=discretization,
    )


@torch.no_grad()
def discretize(
    layout: MaskLayout,
    edge_log_alpha: torch.Tensor,
    node_log_alpha: torch.Tensor,
    denominator: int,
    target_edges: int | None = None,
) -> tuple[Graph, dict[str, Any]]:
    """EP's final circuit (``docs/methods.md``): deterministic masks per mask tensor; node masks
    thresholded at their own deterministic sparsity; edge masks thresholded at theirs (or cut to
    ``target_edges``); edges out of pruned writers removed; dangling edges pruned.

    Edge scores in the graph are the deterministic soft edge masks (what EP -> MIB conversion
    writes), node scores the deterministic node masks."""
    shape = layout.shape
    edge_soft = layout.per_group(edge_log_alpha.cpu(), layout.edge_groups)
    node_soft = layout.per_group(node_log_alpha.cpu(), layout.node_groups)
    info: dict[str, Any] = {}
    node_keep = torch.ones(shape.n_writers, dtype=torch.bool)
    if len(layout.node_index):
        node_target = 1 - float(node_soft.mean())
        node_tau = threshold_for_sparsity(node_soft, len(node_soft), node_target)
        node_keep[layout.node_index] = node_soft > node_tau
        info.update(node_threshold=node_tau, node_target_sparsity=node_target)
    dense_soft = layout.dense_edges(edge_soft)  # fixed-open edges read 1
    if target_edges is None:
        edge_target = 1 - float(edge_soft.sum()) / denominator
        edge_tau = threshold_for_sparsity(edge_soft, denominator, edge_target)
        keep = layout.dense_edges((edge_soft > edge_tau).double()).bool()
        keep &= node_keep[:, None]
        graph = Graph(shape)
        graph.edge_in_graph = keep & shape.valid
        graph = graph.prune_dangling()
        info.update(edge_threshold=edge_tau, edge_target_sparsity=edge_target)
    else:
        key = dense_soft.masked_fill(dense_soft <= 0, float("-inf"))
        key = key.masked_fill(~node_keep[:, None] | ~shape.valid, float("-inf"))
        # Always-present edges rank first (soft masks are <= 1).
        key = key.masked_fill(layout.fixed_open & node_keep[:, None], 2.0)
        graph = Graph(shape)
        graph.edge_in_graph = cut_to_count(shape, key, target_edges, prune_dangling=True)
        graph.node_in_graph = graph.edge_in_graph.any(1)
        info.update(target_edges=target_edges)
    graph.edge_scores = (dense_soft * shape.valid).double()
    scores = torch.full((shape.n_writers,), math.nan, dtype=torch.float64)
    scores[layout.node_index] = node_soft.double()
    graph.node_scores = scores
    info["n_nodes_kept"] = int(node_keep.sum())
    return graph, info


def ep_edge_count(graph: Graph, with_embedding_nodes: bool) -> tuple[int, int]:
    """(kept, total) edges in EP's convention: ``input -> X`` is ``tok_embeds -> X`` and
    ``pos_embeds -> X`` with embedding nodes, absent (always present) without."""
    shape = graph.shape
    kept = len(graph.to_edge_pruning(with_embedding_nodes))
    total = shape.n_edges + (1 if with_embedding_nodes else -1) * shape.n_receivers
    return kept, total


def sparsity_columns(graph: Graph, with_embedding_nodes: bool) -> dict[str, Any]:
    """Edge count and sparsity in the MIB convention and in EP's, stated explicitly."""
    kept_ep, total_ep = ep_edge_count(graph, with_embedding_nodes)
    n = graph.n_edges_in_graph
    return {
        "edge_convention": "mib",
        "n_edges": n,
        "n_edges_total": graph.shape.n_edges,
        "edge_sparsity": 1 - n / graph.shape.n_edges,
        "ep_convention": "ep_with_embeddings" if with_embedding_nodes else "ep_without_embeddings",
        "n_edges_ep": kept_ep,
        "n_edges_total_ep": total_ep,
        "edge_sparsity_ep": 1 - kept_ep / total_ep,
    }


# -- the registry's entry -----------------------------------------------------------------------


def training_prompts(data: TaskData, n: int | None) -> TaskData:
    """The first ``n`` prompts (all with ``None``); asking for more than there are is an error."""
    if n is None:
        return data
    if n > len(data):
        raise ValueError(f"{data.task}/{data.split} has {len(data)} examples, {n} were asked for")
    return data.select(slice(0, n))


def budget_target(model: PatchedModel, config: EdgePruningConfig, n: int, denominator=None):
    """The sparsity of an ``n``-edge circuit in Edge Pruning's Lagrangian convention: kept
    maskable edges over ``denominator`` (default: every maskable edge)."""
    if denominator is None:
        layout = MaskLayout.build(model.shape, config.with_embedding_nodes, config.node_masks)
        denominator = layout.n_maskable
    return max(0.0, 1 - n / denominator)


def pruning_meta(graph: Graph, method: str, result, config, **extra: Any) -> dict[str, Any]:
    """What an Edge Pruning (or HAP) circuit records about how it was found."""
    last = result.history[-1]
    return {
        "method": method,
        "level": "edge",
        # The deterministic soft masks EP's discretization writes (ties count 1/2 in the ROC).
        "edge_score_universe": "all",
        "edge_score_kind": "deterministic soft mask",
        **extra,
        "edge_sparsity": 1 - graph.n_edges_in_graph / graph.shape.n_edges,
        "final_sampled_sparsity": last["edge_sparsity_sampled"],
        "final_train_kl": last["kl"],
        "choices": config.choices(),
        "discretization": result.discretization,
        "cost": result.cost,
    }


def discover(model: PatchedModel, data: MethodData, options: Options) -> Result:
    """Edge Pruning on the training prompts (the first ``n_train``), trained toward the
    section's ``target``, or with ``data.circuit_edges`` toward the sparsity of a circuit of that
    many edges (``1 - n / maskable edges``). The circuit is EP's own threshold search, so it
    lands where it lands. Edge and node scores: the deterministic soft masks. ``record``: the
    :class:`EdgePruningResult` and the settings it ran with."""
    config: EdgePruningConfig = options["edge_pruning"]
    if data.circuit_edges is not None:
        config = replace(config, target=budget_target(model, config, data.circuit_edges))
    train = training_prompts(data.train, config.n_train)
    result = train_edge_pruning(model, train, config, data.corruption, progress=f"ep {train.task}")
    rule = f"EP threshold search, trained toward sparsity {config.target:.4f}"
    if data.circuit_edges is not None:
        rule += f" ({data.circuit_edges} edges)"
    result.graph.meta = pruning_meta(
        result.graph,
        "edge_pruning",
        result,
        config,
        circuit_rule=rule,
        circuit_edges=data.circuit_edges,
        target=config.target,
    )
    return Result(result.graph, {"result": result, "config": config}, dict(result.cost))
