"""Cached activations and the edge-level patched forward: the one place that installs hooks.

In the patched forward every receiver (a head's q/k/v input, an MLP input, the final residual that
feeds the unembedding) reads

    input_r = sum_w  mask[w, r] * current_w + (1 - mask[w, r]) * ablated_w
            = resid_r + sum_w (1 - mask[w, r]) * (ablated_w - current_w)

over its upstream writers ``w`` (``input``, heads, MLPs; see :mod:`circuitbench.graph`), where
``current_w`` is the writer's output in this very pass and ``resid_r`` the unpatched residual at the
receiver. Biases (``b_O``) are part of no writer and stay. All writes are out of place, so masks
may be continuous tensors that require grad (Edge Pruning, EAP).

With every mask 1 the pass is the model; with every mask 0 under interchange ablation each receiver
sees exactly the corrupted run's residual, so the pass is the corrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from circuitbench.graph import GraphShape
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)


class Ablation(StrEnum):
    """What a removed edge carries instead of the writer's output."""

    INTERCHANGE = "interchange"  # the writer's output on the paired corrupted prompt
    MEAN = "mean"  # the writer's mean output over the corrupted set, per position
    ZERO = "zero"


class MeanScope(StrEnum):
    DATASET = "dataset"  # one mean over the whole corrupted set
    TEMPLATE = "template"  # one mean per template group over the whole set (Wang)
    BATCH_TEMPLATE = "batch_template"  # per template group within each batch (APP's evaluation)


@dataclass
class Batch:
    """One batch with its cached activations. ``ablated``: ``[batch, pos, n_writers, d_model]``
    (or broadcastable to it); the logits at the prediction position ``[batch, vocab]`` of the
    clean run (the full model), the corrupted run and the empty circuit (which under interchange
    ablation is the corrupted run)."""

    data: TaskData
    ablated: torch.Tensor
    clean_logits_end: torch.Tensor
    corrupt_logits_end: torch.Tensor
    empty_logits_end: torch.Tensor


@dataclass
class PatchingCache:
    """Per-batch ablated writer outputs and reference logits for one dataset and ablation."""

    ablation: Ablation
    corruption: str
    mean_scope: MeanScope | None
    batches: list[Batch] = field(default_factory=list)
    forward_passes: int = 0  # what building the cache cost

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PatchedModel:
    """A TransformerBridge with hooks for recording writers and running the patched forward.

    ``forward_passes`` counts every forward this object runs (plain, recording or patched).
    """

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        cfg = bridge.cfg
        kv_heads = getattr(cfg, "n_key_value_heads", None)
        if kv_heads and kv_heads != cfg.n_heads:
            raise NotImplementedError(
                f"grouped-query attention ({cfg.n_heads} query heads, {kv_heads} key/value heads, "
                "as in Qwen2.5) is not supported by the edge graph yet: its k and v receivers "
                "would be per key/value head"
            )
        self.shape = GraphShape(cfg.n_layers, cfg.n_heads)
        self.d_model = cfg.d_model
        # Per-head results and per-head q/k/v inputs, and an MLP-input hook: what edges need.
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
        self.forward_passes = 0

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    # -- plain and recording passes ----------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Plain forward. ``tokens [batch, pos]`` -> ``logits [batch, pos, vocab]``."""
        self.forward_passes += 1
        return self.bridge(tokens.to(self.device))

    def record_writers(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward recording every writer's output.

        Returns ``writers [batch, pos, n_writers, d_model]`` and ``logits [batch, pos, vocab]``.
        """
        outputs: list[torch.Tensor] = []

        def keep(tensor: torch.Tensor, hook) -> torch.Tensor:
            outputs.append(tensor if tensor.dim() == 4 else tensor.unsqueeze(2))
            return tensor

        hooks = [("blocks.0.hook_resid_pre", keep)]
        for layer in range(self.shape.n_layers):
            hooks += [
                (f"blocks.{layer}.attn.hook_result", keep),
                (f"blocks.{layer}.hook_mlp_out", keep),
            ]
        with self.bridge.hooks(fwd_hooks=hooks):
            logits = self.forward(tokens)
        return torch.cat(outputs, dim=2), logits

    # -- the patched forward -----------------------------------------------------------------

    def patched_forward(
        self, tokens: torch.Tensor, edge_mask: torch.Tensor, ablated: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the circuit ``edge_mask`` (``[n_writers, n_receivers]``, values in [0, 1],
        entries outside the graph ignored) with removed edges carrying ``ablated``.

        ``tokens [batch, pos]``, ``ablated`` broadcastable to ``[batch, pos, n_writers, d_model]``.
        Writer deltas (``ablated - current``) are kept as ``[batch, pos, d_model, writers]`` so
        each layer's receivers cost one GEMM over the writer prefix: q, k, v of every head and
        the MLP's share together; the MLP adds its own layer's heads with a second, small GEMM.
        """
        shape = self.shape
        self._check_mask(edge_mask)
        removed = (1 - edge_mask.to(self.device, self.dtype)) * shape.valid.to(self.device)
        ablated = ablated.to(self.device, self.dtype)
        # Without gradients the deltas go into one preallocated buffer; with gradients they are
        # concatenated, as autograd forbids writing into a tensor already read.
        store = _DeltaStore(shape.n_writers, in_place=not torch.is_grad_enabled())
        H = shape.n_heads
        per_layer: dict[int, torch.Tensor] = {}

        def record(tensor: torch.Tensor, hook) -> torch.Tensor:
            block = tensor if tensor.dim() == 4 else tensor.unsqueeze(2)  # [b, p, k, d]
            start = store.n
            delta = ablated[:, :, start : start + block.shape[2]] - block
            store.append(delta.transpose(2, 3))  # [b, p, d, k]
            return tensor

        def layer_terms(layer: int) -> torch.Tensor:
            """``[b, p, d, 3H + 1]``: the prefix's removed-edge terms for layer ``layer``'s
            q/k/v ports and its MLP (receivers of a layer are contiguous)."""
            if layer not in per_layer:
                n_up, first = 1 + layer * (H + 1), shape.qkv_receiver(layer, 0, "q")
                per_layer[layer] = store.prefix(n_up) @ removed[:n_up, first : first + 3 * H + 1]
            return per_layer[layer]

        def qkv_hook(layer: int, which: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, d]
                terms = layer_terms(layer)[..., which * H : (which + 1) * H]
                return tensor + terms.transpose(2, 3)

            return hook

        def mlp_hook(layer: int):
            n_up, receiver = 1 + layer * (H + 1), shape.mlp_receiver(layer)

            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [b, p, d]
                own_heads = store.prefix(n_up + H)[..., n_up:] @ removed[n_up : n_up + H, receiver]
                return tensor + layer_terms(layer)[..., 3 * H] + own_heads

            return hook

        def logits_hook(tensor: torch.Tensor, hook) -> torch.Tensor:
            return tensor + store.prefix(shape.n_writers) @ removed[:, shape.logits_receiver]

        hooks = [("blocks.0.hook_resid_pre", record)]
        for layer in range(shape.n_layers):
            hooks += [
                (f"blocks.{layer}.hook_{w}_input", qkv_hook(layer, i)) for i, w in enumerate("qkv")
            ]
            hooks += [
                (f"blocks.{layer}.attn.hook_result", record),
                (f"blocks.{layer}.hook_mlp_in", mlp_hook(layer)),
                (f"blocks.{layer}.hook_mlp_out", record),
            ]
        hooks.append((f"blocks.{shape.n_layers - 1}.hook_resid_post", logits_hook))
        with self.bridge.hooks(fwd_hooks=hooks):
            return self.forward(tokens)

    def _check_mask(self, edge_mask: torch.Tensor) -> None:
        expected = (self.shape.n_writers, self.shape.n_receivers)
        if tuple(edge_mask.shape) != expected:
            raise ValueError(
                f"edge mask has shape {tuple(edge_mask.shape)}, the model's graph needs {expected}"
            )

    def patched_forward_reference(
        self, tokens: torch.Tensor, edge_mask: torch.Tensor, ablated: torch.Tensor
    ) -> torch.Tensor:
        """The same quantity as :meth:`patched_forward`, computed the plain way (the whole writer
        prefix rebuilt at every receiver): slow, kept as the test oracle."""
        shape = self.shape
        self._check_mask(edge_mask)
        removed = (1 - edge_mask.to(self.device, self.dtype)) * shape.valid.to(self.device)
        ablated = ablated.to(self.device, self.dtype)
        current: list[torch.Tensor] = []  # writer outputs of this pass, in writer order
        H = shape.n_heads

        def prefix_delta(n_writers: int) -> torch.Tensor:
            """``ablated - current`` for the first ``n_writers`` writers: ``[b, p, n, d]``."""
            return ablated[:, :, :n_writers] - torch.cat(current, dim=2)[:, :, :n_writers]

        def record(tensor: torch.Tensor, hook) -> torch.Tensor:
            current.append(tensor if tensor.dim() == 4 else tensor.unsqueeze(2))
            return tensor

        def qkv_hook(layer: int, which: str):
            first = shape.qkv_receiver(layer, 0, which)
            n_up = shape.n_upstream(first)

            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, d]
                weights = removed[:n_up, first : first + H]  # [n_up, h]
                return tensor + torch.einsum("bpwd,wh->bphd", prefix_delta(n_up), weights)

            return hook

        def single_hook(receiver: int):
            n_up = shape.n_upstream(receiver)

            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [b, p, d]
                weights = removed[:n_up, receiver]
                return tensor + torch.einsum("bpwd,w->bpd", prefix_delta(n_up), weights)

            return hook

        hooks = [("blocks.0.hook_resid_pre", record)]
        for layer in range(shape.n_layers):
            hooks += [(f"blocks.{layer}.hook_{w}_input", qkv_hook(layer, w)) for w in "qkv"]
            hooks += [
                (f"blocks.{layer}.attn.hook_result", record),
                (f"blocks.{layer}.hook_mlp_in", single_hook(shape.mlp_receiver(layer))),
                (f"blocks.{layer}.hook_mlp_out", record),
            ]
        last = shape.n_layers - 1
        hooks.append((f"blocks.{last}.hook_resid_post", single_hook(shape.logits_receiver)))
        with self.bridge.hooks(fwd_hooks=hooks):
            return self.forward(tokens)

    # -- caches ------------------------------------------------------------------------------

    @torch.no_grad()
    def build_cache(
        self,
        data: TaskData,
        ablation: Ablation | str,
        corruption: str | None = None,
        mean_scope: MeanScope | str = MeanScope.TEMPLATE,
        batch_size: int = 64,
    ) -> PatchingCache:
        """Clean, corrupted and empty-circuit logits and the ablated writer outputs per batch.

        Costs one clean and one corrupted forward per batch (mean ablation: the corrupted
        forwards of the whole set first, to take the means), plus one patched pass per batch for
        the empty circuit unless the ablation is interchange.
        """
        ablation = Ablation(ablation)
        corruption = corruption or next(iter(data.corrupt_tokens))
        if corruption not in data.corrupt_tokens:
            raise KeyError(
                f"{data.task} has no corruption {corruption!r}: {list(data.corrupt_tokens)}"
            )
        scope = MeanScope(mean_scope) if ablation is Ablation.MEAN else None
        start_passes = self.forward_passes
        chunks = [data.select(slice(i, i + batch_size)) for i in range(0, len(data), batch_size)]
        corrupt_runs = [self.record_writers(chunk.corrupt_tokens[corruption]) for chunk in chunks]
        means = None
        if scope in (MeanScope.DATASET, MeanScope.TEMPLATE):
            means = _writer_means(chunks, [w for w, _ in corrupt_runs], scope)
        cache = PatchingCache(ablation, corruption, scope)
        for chunk, (corrupt_writers, corrupt_logits) in zip(chunks, corrupt_runs, strict=True):
            if scope is MeanScope.BATCH_TEMPLATE:
                means = _writer_means([chunk], [corrupt_writers], MeanScope.TEMPLATE)
            clean_logits = self.forward(chunk.clean_tokens)
            if ablation is Ablation.INTERCHANGE:
                ablated = corrupt_writers
            elif ablation is Ablation.ZERO:
                ablated = torch.zeros(1, 1, self.shape.n_writers, self.d_model, device=self.device)
            else:
                assert means is not None
                ablated = means(chunk)
            corrupt_end = chunk.logits_at_end(corrupt_logits)
            if ablation is Ablation.INTERCHANGE:
                empty_end = corrupt_end
            else:
                nothing = torch.zeros(self.shape.n_writers, self.shape.n_receivers)
                empty_end = chunk.logits_at_end(
                    self.patched_forward(chunk.clean_tokens, nothing, ablated)
                )
            cache.batches.append(
                Batch(
                    data=chunk,
                    ablated=ablated,
                    clean_logits_end=chunk.logits_at_end(clean_logits),
                    corrupt_logits_end=corrupt_end,
                    empty_logits_end=empty_end,
                )
            )
        cache.forward_passes = self.forward_passes - start_passes
        return cache


def _writer_means(chunks: list[TaskData], writers: list[torch.Tensor], scope: MeanScope):
    """Per-position means of writer outputs over the corrupted set (per template group if the
    scope says so), counting only non-padding positions. Returns ``chunk -> ablated``."""
    width = max(w.shape[1] for w in writers)
    n_writers, d_model = writers[0].shape[2:]
    device = writers[0].device
    groups = (
        sorted({int(t) for chunk in chunks for t in chunk.template})
        if scope is MeanScope.TEMPLATE
        else [0]
    )
    group_of = {g: i for i, g in enumerate(groups)}
    sums = torch.zeros(len(groups), width, n_writers, d_model, device=device)
    counts = torch.zeros(len(groups), width, device=device)
    for chunk, chunk_writers in zip(chunks, writers, strict=True):
        pos = torch.arange(chunk_writers.shape[1], device=device)
        present = (pos[None, :] <= chunk.end_pos.to(device)[:, None]).float()  # [b, p]
        index = (
            torch.tensor([group_of[int(t)] for t in chunk.template], device=device)
            if scope is MeanScope.TEMPLATE
            else torch.zeros(len(chunk), dtype=torch.long, device=device)
        )
        p = chunk_writers.shape[1]
        sums[:, :p].index_add_(0, index, chunk_writers * present[:, :, None, None])
        counts[:, :p].index_add_(0, index, present)
    means = sums / counts.clamp(min=1)[:, :, None, None]

    def ablated_for(chunk: TaskData) -> torch.Tensor:
        index = (
            torch.tensor([group_of[int(t)] for t in chunk.template], device=device)
            if scope is MeanScope.TEMPLATE
            else torch.zeros(len(chunk), dtype=torch.long, device=device)
        )
        return means[index][:, : chunk.clean_tokens.shape[1]]

    return ablated_for


class _DeltaStore:
    """Writer deltas in writer order, as ``[batch, pos, d_model, n]`` prefixes."""

    def __init__(self, n_writers: int, in_place: bool) -> None:
        self.n_writers, self.in_place = n_writers, in_place
        self.n = 0
        self.blocks: list[torch.Tensor] = []
        self.buffer: torch.Tensor | None = None
        self._cat: torch.Tensor | None = None

    def append(self, block: torch.Tensor) -> None:  # [b, p, d, k]
        k = block.shape[-1]
        if self.in_place:
            if self.buffer is None:
                *lead, d_model, _ = block.shape
                self.buffer = block.new_empty(*lead, d_model, self.n_writers)
            self.buffer[..., self.n : self.n + k] = block
        else:
            self.blocks.append(block)
            self._cat = None
        self.n += k

    def prefix(self, n: int) -> torch.Tensor:
        if n > self.n:
            raise RuntimeError(f"writer {n - 1} read before it was written (hook order changed?)")
        if self.in_place:
            assert self.buffer is not None
            return self.buffer[..., :n]
        if self._cat is None or self._cat.shape[-1] != self.n:
            self._cat = torch.cat(self.blocks, dim=-1)
        return self._cat[..., :n]
