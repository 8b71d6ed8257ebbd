"""Dense automated path patching (Wang et al. semantics; APP's breadth-first head search).

One measurement, sender ``s`` -> receiver ``r`` (a head's q, k or v input, or the final residual):

1. frozen pass on the clean prompts: ``s`` takes its corrupted output, every other head its clean
   output, MLPs and LayerNorms recompute; record the receiver's input;
2. patch pass: the clean run with only that receiver input replaced; the metric change is the
   score ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)`` (APP; ``docs/methods.md``).

Two scorers compute the same numbers:

- :class:`BatchedScorer` (the one the pipeline runs). Because every head but the sender is frozen,
  the frozen pass is the cached clean run from the sender's layer on, with one attention output
  shifted and only MLPs reacting. Many senders run as one batch, starting from the cached clean
  residual at the earliest sender's layer and stopping at the receiver's layer; the receiver
  residual it yields is shared by q, k and v and by every receiver in that layer. The patch pass
  starts at the receiver's layer from the cached clean residual, q, k and v variants of all
  senders batched together. Scores are memoised per (receiver, sender), so the 16-configuration
  grid computes each distinct measurement once.
- :class:`OracleScorer`: the plain one-sender-at-a-time hook implementation (APP's way: freeze
  ``hook_z``, record and patch the receiver head's projected q/k/v vector), two full passes per
  measurement. Kept as the test oracle and the benchmark baseline.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm
from transformers import activations

from circuitbench import metrics
from circuitbench.cost import block_flops, unembed_flops
from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.patching import Ablation, MeanScope, PatchedModel
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)

Head = tuple[int, int]
QKV = ("q", "k", "v")
RESID = "resid"  # the final-residual receiver of step 0


@dataclass(frozen=True)
class PathPatchingOptions:
    """Config section ``path_patching``: the search settings every grid configuration shares,
    the selection rule and the evaluation batches (``docs/methods.md``)."""

    n_prompts: int = 100  # discovery prompts: the first of the train split
    threshold_mode: str = "sqrt"  # sqrt | linear sender-selection thresholds
    missing_scores: str = "zero"  # zero | exclude: heads outside the search space
    min_performance: float = 73.0  # selection: smallest circuit with performance >= this ...
    max_size_fraction: float = 0.25  # ... and at most this fraction of all heads
    eval_batch_size: int = 25  # APP's evaluation batches (means per template within a batch)
    implementation: str = "batched"  # batched | oracle | authors (one sender at a time)

    def base(self) -> PathPatchingConfig:
        return PathPatchingConfig(
            threshold_mode=self.threshold_mode, missing_scores=self.missing_scores
        )

    def rule(self) -> SelectionRule:
        return SelectionRule(self.min_performance, self.max_size_fraction)


@dataclass(frozen=True)
class PathPatchingConfig:
    """One configuration of the search (``docs/methods.md``); grid axes: ``scale``,
    ``min_value``."""

    scale: float = 1.0
    min_value: float = 0.01
    threshold_mode: str = "sqrt"  # sqrt | linear
    k: float = 2.0
    alpha: float = 0.1
    resid_scale: float = 2.0
    early_stop_fraction: float = 0.75
    missing_scores: str = "zero"  # zero | exclude

    def __post_init__(self) -> None:
        if self.threshold_mode not in ("sqrt", "linear"):
            raise ValueError(f"threshold_mode must be sqrt|linear, got {self.threshold_mode!r}")
        if self.missing_scores not in ("zero", "exclude"):
            raise ValueError(f"missing_scores must be zero|exclude, got {self.missing_scores!r}")

    @property
    def name(self) -> str:
        return f"scale{self.scale:g}_min{self.min_value:g}"


GRID_SCALES = (1.0, 1.5, 2.0, 2.5)
GRID_MIN_VALUES = (0.01, 0.001, 0.02, 0.002)


def head_name(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


def grid(base: PathPatchingConfig | None = None) -> list[PathPatchingConfig]:
    """APP's 16 configurations (scale x min-value)."""
    base = base or PathPatchingConfig()
    fields = {k: v for k, v in asdict(base).items() if k not in ("scale", "min_value")}
    return [
        PathPatchingConfig(scale=s, min_value=m, **fields)
        for s, m in itertools.product(GRID_SCALES, GRID_MIN_VALUES)
    ]


def select_senders(scores: torch.Tensor, scale: float, config: PathPatchingConfig) -> list[Head]:
    """APP's sender rule on an ``[R, H]`` score matrix (NaN = not evaluated).

    Select ``l.h`` where ``|S[l,h]| - |mean| > theta_l * |std|`` (sample std over the matrix),
    ``theta_l = scale + k / sqrt(n_l)`` (sqrt mode; ``n_l`` scores in rows ``0..l``) or
    ``scale + alpha * (R - (l + 1))`` (linear); nothing when ``max |S| <= min_value``.
    """
    rows, heads = scores.shape
    present = ~scores.isnan()
    values = scores.nan_to_num(0.0) if config.missing_scores == "zero" else scores[present]
    if values.numel() == 0 or values.abs().max().item() <= config.min_value:
        return []
    mean = values.mean().item()
    std = values.std().item() if values.numel() > 1 else 0.0
    chosen = []
    for layer in range(rows):
        if config.threshold_mode == "sqrt":
            if config.missing_scores == "zero":
                n_scores = heads * (layer + 1)
            else:
                n_scores = int(present[: layer + 1].sum())
            theta = scale + config.k / math.sqrt(max(n_scores, 1))
        else:
            theta = scale + config.alpha * (rows - (layer + 1))
        for head in range(heads):
            value = scores[layer, head].item()
            if math.isnan(value) and config.missing_scores == "exclude":
                continue
            value = 0.0 if math.isnan(value) else value
            if abs(value) - abs(mean) > theta * abs(std):
                chosen.append((layer, head))
    return chosen


# -- scorers ------------------------------------------------------------------------------------


@dataclass
class ScorerCost:
    """What the scorer actually ran: forward passes (a batched pass over many senders counts as
    one per sender copy, truncated passes at their real depth in ``flops_actual``), distinct
    measurements and wall seconds."""

    forward_passes_actual: int = 0
    flops_actual: float = 0.0
    measurements: int = 0
    wall_seconds: float = 0.0


class _Scorer:
    """Shared state: caches of the clean and corrupted runs and the score formula."""

    implementation = "abstract"
    # The metric of the clean and the corrupted run, set by ``_cache_runs``.
    ld_clean: torch.Tensor
    ld_corrupt: torch.Tensor

    def __init__(self, model: PatchedModel, data: TaskData, corruption: str) -> None:
        self.model = model
        self.data = data
        self.shape = model.shape
        self.cost = ScorerCost()
        self.memo: dict[tuple[str, Head], float] = {}  # (receiver key, sender) -> score
        cfg = model.bridge.cfg
        n_tokens = int(data.clean_tokens.numel())
        seq = data.clean_tokens.shape[1]
        self.layer_flops = [
            block_flops(cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, seq) * n_tokens
        ] * cfg.n_layers
        self.unembed_flops = unembed_flops(cfg.d_model, cfg.d_vocab) * n_tokens
        self.mlp_flops = 2 * 2 * cfg.d_model * cfg.d_mlp * n_tokens  # one layer's MLP
        self.full_flops = sum(self.layer_flops) + self.unembed_flops
        self.clean_tokens = data.clean_tokens
        self.corrupt_tokens = data.corrupt_tokens[corruption]
        self._cache_runs()

    def _charge_actual(self, passes: int, first_layer: int, last_layer: int, unembed: bool) -> None:
        self.cost.forward_passes_actual += passes
        flops = sum(self.layer_flops[first_layer:last_layer]) + (
            self.unembed_flops if unembed else 0
        )
        self.cost.flops_actual += passes * flops

    def _cache_runs(self) -> None:
        raise NotImplementedError

    def metric_mean(self, logits: torch.Tensor, copies: int) -> torch.Tensor:
        """Mean task metric per copy: ``logits [copies * n, pos, vocab]`` -> ``[copies]``."""
        n = len(self.data)
        return self.end_metric_mean(
            logits[torch.arange(copies * n), self.data.end_pos.repeat(copies)], copies
        )

    def end_metric_mean(self, logits_end: torch.Tensor, copies: int) -> torch.Tensor:
        """Mean task metric per copy from prediction-position logits ``[copies * n, vocab]``."""
        values = metrics.logit_diff(
            logits_end,
            self.data.answer_ids.repeat(copies, 1).to(logits_end.device),
            self.data.distractor_ids.repeat(copies, 1).to(logits_end.device),
            reduce=self.data.metric_reduce,
        )
        return values.view(copies, len(self.data)).mean(1)

    def score(self, patched_metric: torch.Tensor) -> torch.Tensor:
        """APP's ``(LD_patched - LD_clean) / (LD_clean - LD_corrupt)``; NaN (undefined) when the
        corruption does not move the metric at all."""
        gap = self.ld_clean - self.ld_corrupt
        if gap == 0:
            return torch.full_like(patched_metric, math.nan)
        return (patched_metric - self.ld_clean) / gap

    # -- public API, memoised -----------------------------------------------------------------

    def resid_scores(self, senders: list[Head]) -> dict[Head, float]:
        return self._memoised(RESID, None, senders)

    def receiver_scores(self, receiver: Head, senders: list[Head]) -> dict[str, dict[Head, float]]:
        """Scores of ``senders`` into ``receiver``'s q, k and v inputs."""
        out = {}
        for rho in QKV:
            out[rho] = self._memoised(
                f"{receiver[0]}.{receiver[1]}<{rho}>", (receiver, rho), senders
            )
        return out

    def _memoised(self, key: str, receiver: tuple[Head, str] | None, senders: list[Head]) -> dict:
        missing = [s for s in senders if (key, s) not in self.memo]
        if missing:
            started = time.perf_counter()
            if receiver is None:
                computed = self._compute_resid(missing)
            else:
                computed = self._compute_receiver(receiver, missing)
            self.cost.wall_seconds += time.perf_counter() - started
            for sender, value in computed.items():
                self.memo[(key, sender)] = value
            self.cost.measurements = len(self.memo)
        return {s: self.memo[(key, s)] for s in senders}

    def _compute_resid(self, senders: list[Head]) -> dict[Head, float]:
        raise NotImplementedError

    def _compute_receiver(
        self, receiver: tuple[Head, str], senders: list[Head]
    ) -> dict[Head, float]:
        raise NotImplementedError


def _fused_tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


@contextlib.contextmanager
def fused_activations(module: torch.nn.Module):
    """While the block runs, GPT-2's tanh-GELU, which transformers computes in Python from five
    elementwise ops, runs as torch's fused kernel of the same function (equal to ~2e-7; about
    4x faster, a quarter of a GPT-2 MLP on CPU)."""
    kinds = tuple(
        getattr(activations, name)
        for name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh")
        if hasattr(activations, name)
    )
    swapped = [sub for sub in module.modules() if kinds and isinstance(sub, kinds)]
    for sub in swapped:
        sub.forward = _fused_tanh_gelu  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for sub in swapped:
            del sub.forward


class _StopForward(Exception):
    """Raised by a hook to end a forward once the final residual is captured."""


class BatchedScorer(_Scorer):
    """Many senders per pass, truncated passes, shared frozen residuals (see module doc).

    - Frozen passes run no attention at all: every attention output is known (the clean one,
      plus the sender's corrupted-minus-clean write in its layer), so the residual is carried
      through LayerNorm and MLP modules only, from the sender's layer (senders are chunked by
      layer) to the receiver's.
    - Patch passes start at the receiver's layer from the cached clean residual and stop at the
      final residual; only the prediction positions are unembedded.
    """

    implementation = "batched"

    def __init__(
        self,
        model: PatchedModel,
        data: TaskData,
        corruption: str,
        max_sequences: int = 1024,
        frozen_cache_layers: int = 2,
    ) -> None:
        self.max_sequences = max_sequences
        self.frozen_cache_layers = frozen_cache_layers
        self._frozen: dict[int, dict[Head, torch.Tensor]] = {}
        super().__init__(model, data, corruption)

    @torch.no_grad()
    def _cache_runs(self) -> None:
        model, L = self.model, self.shape.n_layers
        resid: dict[int, torch.Tensor] = {}
        mid: dict[int, torch.Tensor] = {}
        clean_result: dict[int, torch.Tensor] = {}
        corrupt_result: dict[int, torch.Tensor] = {}

        def keep(store: dict, layer: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                store[layer] = tensor.detach()
                return tensor

            return hook

        hooks = [("ln_final.hook_in", keep(resid, L))]
        for layer in range(L):
            hooks += [
                (f"blocks.{layer}.hook_resid_pre", keep(resid, layer)),
                (f"blocks.{layer}.hook_resid_mid", keep(mid, layer)),
                (f"blocks.{layer}.attn.hook_result", keep(clean_result, layer)),
            ]
        with model.bridge.hooks(fwd_hooks=hooks):
            clean_logits = model.forward(self.clean_tokens)
        self.standalone_blocks = self._blocks_reproduce(resid)
        self.minimal_patch = self.standalone_blocks and self._minimal_patch_reproduces(
            resid, clean_result
        )
        hooks = [
            (f"blocks.{layer}.attn.hook_result", keep(corrupt_result, layer)) for layer in range(L)
        ]
        with model.bridge.hooks(fwd_hooks=hooks):
            corrupt_logits = model.forward(self.corrupt_tokens)
        self._charge_actual(2, 0, L, True)
        self.resid, self.mid = resid, mid
        # Clean attention output per layer, and per head the corrupted-minus-clean write.
        self.attn_out = {layer: mid[layer] - resid[layer] for layer in range(L)}
        self.sender_delta = {
            layer: corrupt_result[layer] - clean_result[layer] for layer in range(L)
        }
        self.ld_clean = self.data.metric(self.data.logits_at_end(clean_logits)).mean()
        self.ld_corrupt = self.data.metric(self.data.logits_at_end(corrupt_logits)).mean()

    def _run_blocks(self, residual: torch.Tensor, first: int) -> torch.Tensor:
        """The final residual of ``residual [N, pos, d_model]`` entering block ``first``,
        running only blocks ``first..L-1``. (The bridge's ``start_at_layer`` runs the blocks
        below ``first`` too and discards their output.)"""
        for block in self.model.bridge.blocks[first:]:
            out = block(residual)
            residual = out[0] if isinstance(out, tuple) else out
        return residual

    def _blocks_reproduce(self, resid: dict[int, torch.Tensor]) -> bool:
        """Whether blocks called one by one reproduce the model's own pass (they do for
        GPT-2; a family whose blocks need arguments from the model, such as rotary position
        embeddings, falls back to full-depth passes)."""
        first = max(self.shape.n_layers - 2, 0)
        try:
            with self.model.plain_attention():
                final = self._run_blocks(resid[first], first)
        except (TypeError, ValueError, RuntimeError) as error:
            log.info("patch passes run every block: a block called alone fails (%s)", error)
            return False
        self._charge_actual(1, first, self.shape.n_layers, False)
        scale = resid[self.shape.n_layers].abs().max().clamp_min(1.0)
        same = bool(((final - resid[self.shape.n_layers]).abs().max() <= 1e-4 * scale).item())
        if not same:
            log.info("patch passes run every block: blocks called alone differ from the model")
        return same

    # -- the minimal patch pass ------------------------------------------------------------
    #
    # A receiver's patch pass changes one head's q, k or v: in the receiver's layer only that
    # head's output moves (the others keep their clean outputs, cached), and in the last layer
    # only the prediction positions reach the metric. So the pass computes the receiver head's
    # attention alone, adds its change to the cached clean residual, runs the MLP, the middle
    # blocks in full, and the last block for the prediction positions only. It is used where it
    # reproduces the model's own computation (checked once, on the clean run: GPT-2's attention);
    # elsewhere the full blocks run.

    def _head_z(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One head's causal attention: ``q, k, v [N, pos, d_head]`` -> ``z [N, pos, d_head]``."""
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        pos = q.shape[1]
        future = torch.ones(pos, pos, dtype=torch.bool, device=q.device).triu(1)
        pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
        return pattern @ v

    def _last_block_at_end(self, residual: torch.Tensor, copies: int) -> torch.Tensor:
        """The final residual at the prediction positions, ``[copies*n, d_model]``, of a
        residual ``[copies*n, pos, d_model]`` entering the last block: keys and values from
        every position, queries and the MLP at the prediction position only."""
        block = self.model.bridge.blocks[self.shape.n_layers - 1]
        attn = block.attn
        rows = torch.arange(residual.shape[0], device=residual.device)
        end = self.data.end_pos.repeat(copies).to(residual.device)
        normed = block.ln1(residual)
        keys = torch.einsum("npd,hde->nhpe", normed, attn.W_K) + attn.b_K[None, :, None]
        values = torch.einsum("npd,hde->nhpe", normed, attn.W_V) + attn.b_V[None, :, None]
        query = torch.einsum("nd,hde->nhe", normed[rows, end], attn.W_Q) + attn.b_Q
        scores = torch.einsum("nhe,nhpe->nhp", query, keys) / query.shape[-1] ** 0.5
        positions = torch.arange(residual.shape[1], device=residual.device)
        future = positions[None, :] > end[:, None]  # [N, pos]
        pattern = scores.masked_fill(future[:, None], float("-inf")).softmax(-1)
        z = torch.einsum("nhp,nhpe->nhe", pattern, values)
        mid = residual[rows, end] + torch.einsum("nhe,hed->nd", z, attn.W_O) + attn.b_O
        return mid + block.mlp(block.ln2(mid[:, None]))[:, 0]

    def _minimal_patch_reproduces(
        self, resid: dict[int, torch.Tensor], clean_result: dict[int, torch.Tensor]
    ) -> bool:
        L = self.shape.n_layers
        last = L - 1
        attn = self.model.bridge.blocks[last].attn
        q, k, v = (self._project(last, 0, which, resid[last]) for which in QKV)
        head_out = self._head_z(q, k, v) @ attn.W_O[0]
        final_end = self._last_block_at_end(resid[last], 1)
        rows = torch.arange(len(self.data))
        want_final = resid[L][rows, self.data.end_pos]
        ok = True
        for got, want in ((head_out, clean_result[last][:, :, 0]), (final_end, want_final)):
            scale = want.abs().max().clamp_min(1.0)
            ok = ok and bool(((got - want).abs().max() <= 1e-4 * scale).item())
        if not ok:
            log.info("patch passes run whole blocks: the per-head attention differs from the model")
        return ok

    def _minimal_patch(
        self,
        layer: int,
        head: int,
        chunk: list[tuple[Head, str]],
        projected: dict[tuple[Head, str], torch.Tensor],
        clean_qkv: dict[str, torch.Tensor],
        z_clean: torch.Tensor,
    ) -> torch.Tensor:
        """Prediction-position final residuals ``[copies*n, d_model]`` of the patch passes of
        ``chunk`` (sender, q|k|v) into receiver ``layer.head``."""
        L, copies = self.shape.n_layers, len(chunk)
        block = self.model.bridge.blocks[layer]
        qkv = {
            which: torch.cat(
                [projected[job] if job[1] == which else clean_qkv[which] for job in chunk]
            )
            for which in QKV
        }
        z = self._head_z(qkv["q"], qkv["k"], qkv["v"])
        shift = (z - z_clean.repeat(copies, 1, 1)) @ block.attn.W_O[head]
        residual = self.mid[layer].repeat(copies, 1, 1) + shift
        self.model.forward_passes += 1
        self.cost.forward_passes_actual += copies
        cfg = self.model.bridge.cfg
        n_tokens, seq = int(self.clean_tokens.numel()), self.clean_tokens.shape[1]
        head_flops = 2 * 2 * seq * cfg.d_head + 2 * cfg.d_head * cfg.d_model  # per token
        flops = head_flops * n_tokens
        if layer == L - 1:  # the MLP at the prediction positions only
            rows = torch.arange(residual.shape[0])
            end = residual[rows, self.data.end_pos.repeat(copies)][:, None]
            self.cost.flops_actual += copies * (flops + self.mlp_flops / seq)
            return (end + block.mlp(block.ln2(end)))[:, 0]
        residual = residual + block.mlp(block.ln2(residual))
        for middle in self.model.bridge.blocks[layer + 1 : L - 1]:
            out = middle(residual)
            residual = out[0] if isinstance(out, tuple) else out
        kv_flops = 2 * 2 * cfg.d_model * cfg.n_heads * cfg.d_head * n_tokens
        last = kv_flops + (self.layer_flops[L - 1] - kv_flops) / seq
        flops += self.mlp_flops + sum(self.layer_flops[layer + 1 : L - 1]) + last
        self.cost.flops_actual += copies * flops
        return self._last_block_at_end(residual, copies)

    def _chunks(self, items: list, per_item: int = 1) -> list[list]:
        per = max(1, self.max_sequences // (len(self.data) * per_item))
        return [items[i : i + per] for i in range(0, len(items), per)]

    def _by_layer(self, senders: list[Head]) -> list[list[Head]]:
        """Chunks of senders that share a layer (a frozen run starts at its senders' layer)."""
        chunks = []
        for layer in sorted({s[0] for s in senders}):
            chunks += self._chunks([s for s in senders if s[0] == layer])
        return chunks

    def _frozen_run(
        self, senders: list[Head], stop_layer: int, end_only: bool = False
    ) -> torch.Tensor:
        """Frozen passes of same-layer ``senders``: the residual entering ``stop_layer`` (the
        final residual when it is ``n_layers``), ``[len(senders) * n, pos, d_model]``.

        With every attention output fixed, positions no longer interact: each position's
        residual is its own chain of MLPs. ``end_only`` therefore computes only the prediction
        position (``[len(senders) * n, 1, d_model]``), all step 0 needs."""
        layer0 = senders[0][0]
        n, copies = len(self.data), len(senders)
        blocks = self.model.bridge.blocks
        if end_only:
            rows, end = torch.arange(n), self.data.end_pos

            def at(tensor: torch.Tensor) -> torch.Tensor:  # [n, p, ...] -> [n, 1, ...]
                return tensor[rows, end][:, None]
        else:

            def at(tensor: torch.Tensor) -> torch.Tensor:
                return tensor

        shift = torch.stack([at(self.sender_delta[layer0][:, :, h]) for _, h in senders])
        residual = (at(self.mid[layer0])[None] + shift).flatten(0, 1)  # mid-layer, [c*n, p, d]
        for layer in range(layer0, stop_layer):
            if layer > layer0:
                residual = residual + at(self.attn_out[layer]).repeat(copies, 1, 1)
            residual = residual + blocks[layer].mlp(blocks[layer].ln2(residual))
        self.model.forward_passes += 1
        self.cost.forward_passes_actual += copies
        share = residual.shape[1] / self.clean_tokens.shape[1]
        self.cost.flops_actual += copies * self.mlp_flops * share * (stop_layer - layer0)
        return residual

    def _logits_at_end(self, final_residual: torch.Tensor, copies: int) -> torch.Tensor:
        """Unembed only the prediction positions: ``[copies*n, pos, d]`` -> ``[copies*n, V]``."""
        rows = torch.arange(final_residual.shape[0])
        return self._unembed(final_residual[rows, self.data.end_pos.repeat(copies)])

    def _unembed(self, end: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding of prediction-position residuals ``[rows, d]``."""
        bridge = self.model.bridge
        self.cost.flops_actual += end.shape[0] * self.unembed_flops / int(self.clean_tokens.numel())
        return bridge.unembed(bridge.ln_final(end[:, None]))[:, 0]

    def _project(self, layer: int, head: int, which: str, residual: torch.Tensor) -> torch.Tensor:
        """Head ``layer.head``'s projected q, k or v vector of a residual ``[N, pos, d_model]``
        entering its block: ``ln1(residual) @ W[head] + b[head]``, ``[N, pos, d_head]`` (what
        ``attn.hook_q/k/v`` carries for that head)."""
        block = self.model.bridge.blocks[layer]
        attn = block.attn
        weight = {"q": attn.W_Q, "k": attn.W_K, "v": attn.W_V}[which][head]
        bias = {"q": attn.b_Q, "k": attn.b_K, "v": attn.b_V}[which][head]
        return block.ln1(residual) @ weight + bias

    @torch.no_grad()
    def _compute_resid(self, senders: list[Head]) -> dict[Head, float]:
        with fused_activations(self.model.bridge):
            return self._compute_resid_fused(senders)

    def _compute_resid_fused(self, senders: list[Head]) -> dict[Head, float]:
        scores: dict[Head, float] = {}
        for chunk in self._by_layer(senders):
            final = self._frozen_run(chunk, self.shape.n_layers, end_only=True)  # [c*n, 1, d]
            logits_end = self._unembed(final[:, 0])
            values = self.score(self.end_metric_mean(logits_end, len(chunk)))
            scores.update(zip(chunk, values.tolist(), strict=True))
        return scores

    def _frozen_resid(self, layer: int, senders: list[Head]) -> dict[Head, torch.Tensor]:
        """Receiver-layer residual of each sender's frozen pass, cached per layer."""
        cached = self._frozen.setdefault(layer, {})
        missing = [s for s in senders if s not in cached]
        n = len(self.data)
        for chunk in self._by_layer(missing):
            out = self._frozen_run(chunk, layer)
            for i, sender in enumerate(chunk):
                cached[sender] = out[i * n : (i + 1) * n]
        while len(self._frozen) > self.frozen_cache_layers:
            oldest = next(iter(self._frozen))
            if oldest == layer:
                break
            del self._frozen[oldest]
        return {s: cached[s] for s in senders}

    @torch.no_grad()
    def _compute_receiver(
        self, receiver: tuple[Head, str], senders: list[Head]
    ) -> dict[Head, float]:
        with fused_activations(self.model.bridge):
            return self._compute_receiver_fused(receiver, senders)

    def _compute_receiver_fused(
        self, receiver: tuple[Head, str], senders: list[Head]
    ) -> dict[Head, float]:
        (layer, head), rho = receiver
        # q, k and v share the frozen residual: all three are computed and memoised together.
        frozen = self._frozen_resid(layer, senders)
        n, L = len(self.data), self.shape.n_layers
        jobs = [(s, r) for s in senders for r in QKV]
        results: dict[tuple[Head, str], float] = {}
        captured: dict[str, torch.Tensor] = {}

        def stop(tensor: torch.Tensor, hook) -> torch.Tensor:
            captured["final"] = tensor
            raise _StopForward

        # The receiver's projected q/k/v of each sender's frozen residual (APP patches these,
        # hook_q/k/v; equivalent to patching the head's private input port).
        projected = {(s, r): self._project(layer, head, r, frozen[s]) for s in senders for r in QKV}
        if self.minimal_patch:
            clean_qkv = {r: self._project(layer, head, r, self.resid[layer]) for r in QKV}
            z_clean = self._head_z(clean_qkv["q"], clean_qkv["k"], clean_qkv["v"])
            for chunk in self._chunks(jobs):
                with self.model.plain_attention():  # the middle blocks without port copies
                    end = self._minimal_patch(layer, head, chunk, projected, clean_qkv, z_clean)
                values = self.score(self.end_metric_mean(self._unembed(end), len(chunk)))
                results.update(zip(chunk, values.tolist(), strict=True))
            jobs = []
        for chunk in self._chunks(jobs):
            copies = len(chunk)
            by_rho = {r: [i for i, (_, rr) in enumerate(chunk) if rr == r] for r in QKV}

            def patch(which: str, chunk=chunk, by_rho=by_rho):
                def hook(tensor: torch.Tensor, hook) -> torch.Tensor:  # [copies*n, pos, H, d]
                    out = tensor.clone()
                    for i in by_rho[which]:
                        out[i * n : (i + 1) * n, :, head] = projected[chunk[i]]
                    return out

                return hook

            hooks = [(f"blocks.{layer}.attn.hook_{r}", patch(r)) for r in QKV if by_rho[r]]
            if not self.standalone_blocks:
                hooks.append(("ln_final.hook_in", stop))
            start_resid = self.resid[layer].repeat(copies, 1, 1)
            # Only projected vectors are patched: the block's own attention runs, without the
            # per-head port copies and results the edge-level passes need.
            with self.model.plain_attention(), self.model.bridge.hooks(fwd_hooks=hooks):
                self.model.forward_passes += 1
                if self.standalone_blocks:
                    captured["final"] = self._run_blocks(start_resid, layer)
                    self._charge_actual(copies, layer, L, False)
                else:
                    with contextlib.suppress(_StopForward):
                        self.model.bridge(start_resid, start_at_layer=layer)
                    self._charge_actual(copies, 0, L, False)  # start_at_layer runs every block
            logits_end = self._logits_at_end(captured.pop("final"), copies)
            values = self.score(self.end_metric_mean(logits_end, copies))
            results.update(zip(chunk, values.tolist(), strict=True))
        for (sender, r), value in results.items():
            self.memo[(f"{layer}.{head}<{r}>", sender)] = value
        return {s: results[(s, rho)] for s in senders}


class OracleScorer(_Scorer):
    """One sender per pass, full passes, APP's hook points (``hook_z`` freezing, receiver head's
    projected q/k/v). The test oracle and benchmark baseline."""

    implementation = "oracle"

    @torch.no_grad()
    def _cache_runs(self) -> None:
        model, L = self.model, self.shape.n_layers
        clean_z: dict[int, torch.Tensor] = {}
        corrupt_z: dict[int, torch.Tensor] = {}

        def keep(store: dict, layer: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                store[layer] = tensor.detach().clone()
                return tensor

            return hook

        with model.bridge.hooks(
            fwd_hooks=[(f"blocks.{i}.attn.hook_z", keep(clean_z, i)) for i in range(L)]
        ):
            clean_logits = model.forward(self.clean_tokens)
        with model.bridge.hooks(
            fwd_hooks=[(f"blocks.{i}.attn.hook_z", keep(corrupt_z, i)) for i in range(L)]
        ):
            corrupt_logits = model.forward(self.corrupt_tokens)
        self._charge_actual(2, 0, L, True)
        self.clean_z, self.corrupt_z = clean_z, corrupt_z
        self.ld_clean = self.data.metric(self.data.logits_at_end(clean_logits)).mean()
        self.ld_corrupt = self.data.metric(self.data.logits_at_end(corrupt_logits)).mean()

    def _freeze_hooks(self, sender: Head, extra: list | None = None) -> list:
        def freeze(layer: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                out = self.clean_z[layer].clone()
                if layer == sender[0]:
                    out[:, :, sender[1]] = self.corrupt_z[layer][:, :, sender[1]]
                return out

            return hook

        return [(f"blocks.{i}.attn.hook_z", freeze(i)) for i in range(self.shape.n_layers)] + (
            extra or []
        )

    def _compute_resid(self, senders: list[Head]) -> dict[Head, float]:
        scores = {}
        for sender in senders:
            with self.model.bridge.hooks(fwd_hooks=self._freeze_hooks(sender)):
                logits = self.model.forward(self.clean_tokens)
            self._charge_actual(1, 0, self.shape.n_layers, True)
            scores[sender] = self.score(self.metric_mean(logits, 1)).item()
        return scores

    @torch.no_grad()
    def _compute_receiver(
        self, receiver: tuple[Head, str], senders: list[Head]
    ) -> dict[Head, float]:
        (layer, head), rho = receiver
        name = f"blocks.{layer}.attn.hook_{rho}"
        scores = {}
        recorded: dict[str, torch.Tensor] = {}  # the receiver's value in the current frozen pass

        def record(tensor: torch.Tensor, hook) -> torch.Tensor:
            recorded["value"] = tensor[:, :, head].clone()
            return tensor

        def patch(tensor: torch.Tensor, hook) -> torch.Tensor:
            out = tensor.clone()
            out[:, :, head] = recorded["value"]
            return out

        for sender in senders:
            with self.model.bridge.hooks(fwd_hooks=self._freeze_hooks(sender, [(name, record)])):
                self.model.forward(self.clean_tokens)
            with self.model.bridge.hooks(fwd_hooks=[(name, patch)]):
                logits = self.model.forward(self.clean_tokens)
            self._charge_actual(2, 0, self.shape.n_layers, True)
            scores[sender] = self.score(self.metric_mean(logits, 1)).item()
        return scores


class AuthorsStyleScorer(_Scorer):
    """What APP's released implementation runs, pass for pass: the speed baseline of
    ``circuitbench bench pp`` (the scores equal the oracle's).

    - Caches: the clean and the corrupted run, every head's ``z``.
    - Step 0, per sender: one frozen pass through every block (every ``z`` overwritten in
      place, the sender's from the corrupted cache), then the final norm and the unembedding of
      every position.
    - Head receivers, per q/k/v input and per sender: one frozen pass through every block
      that records the receiver layer's ``hook_q/k/v`` (no unembedding), then one plain pass with
      that head's vector patched in, unembedded at every position.

    Passes run the model's own attention (no per-head port copies), as a plain hooked forward
    does."""

    implementation = "authors"

    @torch.no_grad()
    def _cache_runs(self) -> None:
        model, L = self.model, self.shape.n_layers
        self.clean_z: dict[int, torch.Tensor] = {}
        self.corrupt_z: dict[int, torch.Tensor] = {}

        def keep(store: dict, layer: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                store[layer] = tensor.detach().clone()
                return tensor

            return hook

        logits = {}
        for name, tokens, store in (
            ("clean", self.clean_tokens, self.clean_z),
            ("corrupt", self.corrupt_tokens, self.corrupt_z),
        ):
            hooks = [(f"blocks.{i}.attn.hook_z", keep(store, i)) for i in range(L)]
            with model.plain_attention(), model.bridge.hooks(fwd_hooks=hooks):
                logits[name] = model.forward(tokens)
        self._charge_actual(2, 0, L, True)
        self.ld_clean = self.data.metric(self.data.logits_at_end(logits["clean"])).mean()
        self.ld_corrupt = self.data.metric(self.data.logits_at_end(logits["corrupt"])).mean()

    def _freeze_hooks(self, sender: Head) -> list:
        def freeze(layer: int):
            def hook(tensor: torch.Tensor, hook) -> torch.Tensor:
                tensor[...] = self.clean_z[layer]
                if layer == sender[0]:
                    tensor[:, :, sender[1]] = self.corrupt_z[layer][:, :, sender[1]]
                return tensor

            return hook

        return [(f"blocks.{i}.attn.hook_z", freeze(i)) for i in range(self.shape.n_layers)]

    @torch.no_grad()
    def _compute_resid(self, senders: list[Head]) -> dict[Head, float]:
        scores = {}
        L = self.shape.n_layers
        for sender in senders:
            with self.model.plain_attention():
                final = self.model.final_residual(self.clean_tokens, self._freeze_hooks(sender))
            bridge = self.model.bridge
            logits = bridge.unembed(bridge.ln_final(final))  # every position, as APP's code
            self._charge_actual(1, 0, L, True)
            scores[sender] = self.score(self.metric_mean(logits, 1)).item()
        return scores

    @torch.no_grad()
    def _compute_receiver(
        self, receiver: tuple[Head, str], senders: list[Head]
    ) -> dict[Head, float]:
        (layer, head), rho = receiver
        name = f"blocks.{layer}.attn.hook_{rho}"
        L = self.shape.n_layers
        scores = {}
        recorded: dict[str, torch.Tensor] = {}

        def record(tensor: torch.Tensor, hook) -> torch.Tensor:
            recorded["value"] = tensor.detach().clone()  # the layer's q/k/v, every head
            return tensor

        def patch(tensor: torch.Tensor, hook) -> torch.Tensor:
            tensor[:, :, head] = recorded["value"][:, :, head]
            return tensor

        for sender in senders:
            with self.model.plain_attention():
                hooks = [*self._freeze_hooks(sender), (name, record)]
                self.model.final_residual(self.clean_tokens, hooks)
                with self.model.bridge.hooks(fwd_hooks=[(name, patch)]):
                    logits = self.model.forward(self.clean_tokens)
            self._charge_actual(1, 0, L, False)
            self._charge_actual(1, 0, L, True)
            scores[sender] = self.score(self.metric_mean(logits, 1)).item()
        return scores


SCORERS: dict[str, type[_Scorer]] = {
    "batched": BatchedScorer,
    "oracle": OracleScorer,
    "authors": AuthorsStyleScorer,
}


# -- the search ---------------------------------------------------------------------------------


@dataclass
class SearchResult:
    config: PathPatchingConfig
    heads: list[Head]
    roles: dict[Head, list[str]]  # how each head entered: "logits" or "a{l}.h{h}<q|k|v>"
    steps: list[dict[str, Any]] = field(default_factory=list)
    early_stopped: bool = False
    truncated: bool = False  # stopped by max_receivers (benchmarks), not by the search
    visited: list[Head] = field(default_factory=list)
    n_measurements_app: int = 0  # sender evaluations this configuration charges on its own

    def head_dict(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, head in sorted(self.heads):
            out.setdefault(layer, []).append(head)
        return out


def search(
    scorer: _Scorer,
    config: PathPatchingConfig,
    allowed: set[Head] | None = None,
    progress: bool = False,
    max_receivers: int | None = None,
) -> SearchResult:
    """APP's breadth-first head-level search, restricted to ``allowed`` senders (APP) or all heads
    (dense path patching). ``max_receivers`` truncates the loop (benchmarks only)."""
    L, H = scorer.shape.n_layers, scorer.shape.n_heads
    every = {(layer, head) for layer in range(L) for head in range(H)}
    allowed = every if allowed is None else set(allowed)
    unknown = allowed - every
    if unknown:
        raise ValueError(f"heads {sorted(unknown)} are outside a {L}x{H} model")
    result = SearchResult(config=config, heads=[], roles={})

    def matrix(rows: int, values: dict[Head, float]) -> torch.Tensor:
        scores = torch.full((rows, H), float("nan"))
        for (layer, head), value in values.items():
            scores[layer, head] = value
        return scores

    senders = sorted(allowed)
    resid = scorer.resid_scores(senders)
    result.n_measurements_app += len(senders)
    scores0 = matrix(L, resid)
    chosen0 = [s for s in select_senders(scores0, config.resid_scale, config) if s in allowed]
    result.steps.append({"receiver": RESID, "scores": scores0.tolist(), "selected": chosen0})
    queue: deque[Head] = deque(chosen0)
    for head in chosen0:
        result.roles.setdefault(head, []).append("logits")
    circuit: set[Head] = set()
    visited: set[Head] = set()
    bar = tqdm(desc=f"path patching {config.name}", disable=not progress, unit="receiver")
    while queue:
        if len(queue) + len(visited) > config.early_stop_fraction * L * H:
            circuit |= set(queue)
            result.early_stopped = True
            break
        if max_receivers is not None and len(visited) >= max_receivers:
            circuit |= set(queue)
            result.truncated = True
            break
        receiver = queue.popleft()
        circuit.add(receiver)
        if receiver in visited or receiver[0] == 0:
            continue
        visited.add(receiver)
        bar.update(1)
        candidates = [s for s in senders if s[0] < receiver[0]]
        per_rho = scorer.receiver_scores(receiver, candidates)
        for rho in QKV:
            result.n_measurements_app += len(candidates)
            scores = matrix(receiver[0], per_rho[rho])
            chosen = [s for s in select_senders(scores, config.scale, config) if s in allowed]
            name = f"a{receiver[0]}.h{receiver[1]}<{rho}>"
            result.steps.append({"receiver": name, "scores": scores.tolist(), "selected": chosen})
            for sender in chosen:
                result.roles.setdefault(sender, []).append(name)
                if sender not in visited and sender not in queue:
                    queue.append(sender)
    bar.close()
    result.heads = sorted(circuit)
    result.visited = sorted(visited)
    result.roles = {head: result.roles.get(head, []) for head in result.heads}
    return result


def app_charged_flops(scorer: _Scorer, result: SearchResult) -> tuple[int, float]:
    """Forward passes and FLOPs APP would charge for ``result`` run on its own (its accounting,
    ``docs/metrics.md``): 2 caching passes, step 0 senders to the unembedding, and per visited
    receiver and q/k/v one pass per evaluated sender up to the receiver layer."""
    passes = 2
    flops = 2 * scorer.full_flops
    for step in result.steps:
        rows = len(step["scores"])
        n_senders = sum(1 for row in step["scores"] for value in row if not math.isnan(value))
        passes += n_senders
        flops += n_senders * app_measurement_flops(scorer, rows)
    return passes, flops


def app_measurement_flops(scorer: _Scorer, sender_layers: int) -> float:
    """What APP charges for one measurement into a receiver with ``sender_layers`` layers
    below it (``n_layers`` for the logits): one pass up to that layer, plus the unembedding."""
    return sum(scorer.layer_flops[:sender_layers]) + scorer.unembed_flops


def choose_circuit(
    performances: list[float],
    sizes: list[int],
    min_performance: float,
    max_size: float,
) -> int:
    """APP's selection: the smallest circuit with performance >= ``min_performance``; if there is
    none, or it is larger than ``max_size``, the smallest whose performance is >= the mean of all.
    Ties in size go to the higher performance. Returns the index."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -performances[i]))
    good = [i for i in order if performances[i] >= min_performance]
    if good and sizes[good[0]] <= max_size:
        return good[0]
    mean = sum(performances) / len(performances)
    fallback = [i for i in order if performances[i] >= mean]
    return fallback[0] if fallback else order[-1]


# -- the grid, selection and evaluation (what the pipeline step runs) --------------------------


@dataclass(frozen=True)
class SelectionRule:
    """APP's choice of one circuit out of the grid (PP: 73 and N/4; APP: 75 and N/2)."""

    min_performance: float = 73.0
    max_size_fraction: float = 0.25


def run_grid(
    model: PatchedModel,
    discovery: TaskData,
    validation: TaskData,
    corruption: str,
    allowed: set[Head] | None = None,
    base: PathPatchingConfig | None = None,
    rule: SelectionRule | None = None,
    implementation: str = "batched",
    eval_batch_size: int = 25,
    progress: bool = True,
) -> dict[str, Any]:
    """Search with all 16 configurations, evaluate each circuit with APP's protocol (mean
    ablation of the heads outside it, per template within batches of ``eval_batch_size``) on
    ``validation``, and choose one. Scores are shared across configurations (memoised)."""
    rule = rule or SelectionRule()
    if implementation not in SCORERS:
        raise ValueError(f"implementation must be one of {sorted(SCORERS)}")
    started = time.perf_counter()
    scorer = SCORERS[implementation](model, discovery, corruption)
    cache = model.build_cache(
        validation, Ablation.MEAN, corruption, MeanScope.BATCH_TEMPLATE, eval_batch_size
    )
    runs = []
    evaluations: dict[frozenset[Head], dict[str, Any]] = {}
    configs = grid(base)
    for config in tqdm(configs, desc="grid", disable=not progress):
        wall_before = scorer.cost.wall_seconds
        result = search(scorer, config, allowed)
        # Configurations often agree on the circuit: each distinct head set is evaluated once.
        key = frozenset(result.heads)
        if key not in evaluations:
            graph = Graph.from_heads(model.shape, result.head_dict())
            evaluations[key] = evaluate_graph(model, cache, graph)
        evaluation = evaluations[key]
        passes, flops = app_charged_flops(scorer, result)
        runs.append(
            {
                "config": asdict(config),
                "name": config.name,
                "heads": result.head_dict(),
                "roles": {head_name(head): roles for head, roles in result.roles.items()},
                "size": len(result.heads),
                "performance": evaluation["app_performance"],
                "faithfulness": evaluation["faithfulness"],
                "early_stopped": result.early_stopped,
                "visited": [head_name(head) for head in result.visited],
                "forward_passes_app": passes,
                "flops_app": flops,
                "new_scoring_seconds": scorer.cost.wall_seconds - wall_before,
                "steps": result.steps,
            }
        )
    n_heads = model.shape.n_layers * model.shape.n_heads
    chosen = choose_circuit(
        [r["performance"] for r in runs],
        [r["size"] for r in runs],
        rule.min_performance,
        rule.max_size_fraction * n_heads,
    )
    return {
        "implementation": implementation,
        "n_discovery": len(discovery),
        "n_validation": len(validation),
        "corruption": corruption,
        "allowed": None if allowed is None else [head_name(head) for head in sorted(allowed)],
        "selection": asdict(rule),
        "chosen": chosen,
        "runs": runs,
        "scorer_cost": asdict(scorer.cost),
        "cache_forward_passes": cache.forward_passes,
        "distinct_circuits_evaluated": len(evaluations),
        "wall_seconds": time.perf_counter() - started,
        "ld_clean": scorer.ld_clean.item(),
        "ld_corrupt": scorer.ld_corrupt.item(),
    }


# -- the registry's entry -----------------------------------------------------------------------


def discover(model: PatchedModel, data: MethodData, options: Options) -> Result:
    """Dense automated path patching: APP's 16-configuration grid and selection give the circuit
    (node-induced edges of the chosen heads). ``record`` is the grid."""
    section: PathPatchingOptions = options["path_patching"]
    discovery = data.train.select(slice(0, section.n_prompts))
    record = run_grid(
        model,
        discovery,
        data.validation,
        data.corruption,
        None,
        section.base(),
        section.rule(),
        section.implementation,
        section.eval_batch_size,
        progress=data.progress,
    )
    graph = graph_from_grid(model, record, "path_patching", len(discovery))
    return Result(graph, record, {"flops": record["scorer_cost"]["flops_actual"]})


def graph_from_grid(model: PatchedModel, record: dict[str, Any], method: str, n: int) -> Graph:
    """The chosen circuit of a path-patching grid (dense or APP's) with every measured path's
    score as its edge score and each head's largest ``|score|`` as its node score. Scores are
    over the ``head_paths`` universe: step 0 scores each head into the logits, each visited
    receiver each earlier head into its q, k and v; a path no search measured scores 0."""
    chosen = record["runs"][record["chosen"]]
    heads = {int(layer): hs for layer, hs in chosen["heads"].items()}
    shape = model.shape
    graph = Graph.from_heads(shape, heads)
    graph.edge_scores = torch.zeros_like(graph.edge_scores)
    receivers = {RESID: shape.logits_receiver}
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            for rho in QKV:
                receivers[f"a{layer}.h{h}<{rho}>"] = shape.qkv_receiver(layer, h, rho)
    measured = torch.zeros_like(graph.edge_in_graph)
    for run in record["runs"]:
        for step in run["steps"]:
            port = receivers[step["receiver"]]
            for layer, row in enumerate(step["scores"]):
                for h, value in enumerate(row):
                    if not math.isnan(value):
                        writer = shape.head_writer(layer, h)
                        graph.edge_scores[writer, port] = value
                        measured[writer, port] = True
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            writer = shape.head_writer(layer, h)
            graph.node_scores[writer] = graph.edge_scores[writer].abs().max()
    graph.meta = {
        "method": method,
        "level": "head",
        "edge_score_universe": "head_paths",
        "edge_score_kind": "path-patching effect (unmeasured paths 0)",
        "circuit_rule": "APP's selection rule over the 16-configuration grid (node-induced)",
        "n_measured_paths": int(measured.sum()),
        "config": chosen["config"],
        "selection": record["selection"],
        "heads": {str(k): v for k, v in heads.items()},
        "roles": chosen["roles"],
        "validation_performance": chosen["performance"],
        "n_discovery": n,
        "grid_sizes": [r["size"] for r in record["runs"]],
        "scorer_cost": record["scorer_cost"],
    }
    return graph
