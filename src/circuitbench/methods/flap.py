"""FLAP and Contrastive-FLAP as head scorers, the sparsity sweep and APP's cliff rules.

``docs/methods.md`` (APP's code: ``Frau-Ke/AcceleratedPathPatching``, ``Pruning/FLAP/lib``):

1. **Statistics.** One forward of the unpruned model per calibration stream, recording each layer's
   input of the attention output projection, ``z`` (``blocks.l.attn.hook_z``, ``[b, pos, H,
   d_head]``, i.e. the ``H * d_head`` input channels ``j`` of ``W_O``). Per channel we accumulate
   token count, ``sum x`` and ``sum x**2`` in float64: sums do not depend on batch order, unlike
   FLAP's running means, so neither do the rankings.
2. **Channel scores** against the raw output projection ``W[j, i]`` (``W_O`` viewed as
   ``[H * d_head, d_model]``, one row per input channel; the bridge loads HF weights unprocessed):
   - ``IFV``: ``F_j = Var(X[:, j])`` over all calibration tokens;
   - ``WIFV`` (vanilla FLAP): ``F_j * sum_i W[j, i]**2``;
   - ``WIFN`` (Wanda-like): ``mean_i |W[j, i]| * sqrt(nu_j)``, ``nu_j = sum of X[:, j]**2 / N_cal``.
3. **Head scores.** FLAP: ``T_j = S_j**2``; C-FLAP: ``T_j = |S_j(clean)**2 - S_j(corrupt)**2|``.
   Standardize per layer (sample std), average the ``d_head`` channels of each head, rank globally.
4. **Keep rule.** ``i* = argmin_i |(i + 1) - (1 - p) * N_heads|``; ``app`` keeps the heads scoring
   strictly above the ``i*``-th largest (``round((1 - p) N) - 1`` heads without ties, as APP's
   code), ``exact`` keeps the top ``i* + 1``.
5. **Sweep and cliff.** Every sparsity ``p`` of the sweep is evaluated with APP's performance %;
   a cliff rule (first, biggest, fixed, their smoothed variants, detect_cliff) picks ``p*``.

Deviation kept on purpose: FLAP's own running variance skips the first sample and aliases its old
and new means; we compute the variance it approximates exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from circuitbench.cost import block_flops, unembed_flops
from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph
from circuitbench.methods.base import MethodData, Options, Result
from circuitbench.patching import Ablation, MeanScope, PatchedModel, PatchingCache
from circuitbench.tasks import TaskData

log = logging.getLogger(__name__)

Head = tuple[int, int]


class Metric(StrEnum):
    IFV = "IFV"
    WIFV = "WIFV"
    WIFN = "WIFN"


class KeepRule(StrEnum):
    APP = "app"  # heads strictly above the i*-th score: one fewer than round((1-p) N)
    EXACT = "exact"  # round((1-p) N)


class CliffRule(StrEnum):
    FIRST = "first"
    BIGGEST = "biggest"
    FIXED = "fixed"
    SMOOTH_FIRST = "smooth_first"
    SMOOTH_BIGGEST = "smooth_biggest"
    DETECT_CLIFF = "detect_cliff"
    SMOOTH_DETECT_CLIFF = "smooth_detect_cliff"


@dataclass(frozen=True)
class Sweep:
    """Head sparsities ``low, low + step, …`` below ``high`` (APP: ``range(60, 99)`` / 100)."""

    low: float = 0.60
    high: float = 0.99
    step: float = 0.01

    def __post_init__(self) -> None:
        if not (0.0 <= self.low < self.high <= 1.0) or self.step <= 0:
            raise ValueError(f"sweep needs 0 <= low < high <= 1 and step > 0, got {self}")
        if len(self.ratios()) < 3:
            raise ValueError(f"sweep {self} has fewer than 3 points")

    def ratios(self) -> list[float]:
        n = math.ceil((self.high - self.low) / self.step - 1e-9)
        return [round(self.low + i * self.step, 10) for i in range(n)]

    @property
    def window(self) -> int:
        """APP's window, 10% of the sweep length (``round((99 - 60) / 10) = 4``), at least 2."""
        return max(2, round(len(self.ratios()) / 10))


@dataclass(frozen=True)
class FlapConfig:
    """Every open choice of FLAP and C-FLAP (config section ``flap``)."""

    n_calibration: int = 200
    calibration_split: str = "train"  # train | validation (APP: the sweep's evaluation prompts)
    calibration_includes_answer: bool = True
    mask_padding: bool = False
    keep_rule: KeepRule = KeepRule.APP
    vanilla_metric: Metric = Metric.WIFV
    contrastive_metric: Metric = Metric.WIFN
    cliff_rule: CliffRule = CliffRule.FIRST
    sweep: Sweep = field(default_factory=Sweep)
    fixed_sparsity: float = 0.75
    eval_batch_size: int = 25
    batch_size: int = 50  # calibration forward batch (results do not depend on it)

    def __post_init__(self) -> None:
        if self.calibration_split not in ("train", "validation"):
            raise ValueError(f"calibration_split must be train|validation: {self}")
        if not 0.0 <= self.fixed_sparsity < 1.0:
            raise ValueError(f"fixed_sparsity must be in [0, 1): {self.fixed_sparsity}")
        if self.n_calibration < 2 or self.eval_batch_size < 1 or self.batch_size < 1:
            raise ValueError(f"n_calibration >= 2 and batch sizes >= 1 needed: {self}")

    def record(self) -> dict[str, Any]:
        """Flat ``flap.*`` keys for result rows."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "batch_size":
                continue
            if key == "sweep":
                out.update({f"flap.sweep_{k}": v for k, v in value.items()})
            else:
                out[f"flap.{key}"] = str(value) if isinstance(value, StrEnum) else value
        return out


# -- statistics --------------------------------------------------------------------------------


@dataclass
class ChannelStats:
    """Sums over calibration tokens of every attention-output input channel, per layer.

    ``total`` and ``total_sq``: ``[n_layers, n_heads * d_head]`` float64; ``n_tokens`` tokens
    counted, ``n_samples`` prompts."""

    total: torch.Tensor
    total_sq: torch.Tensor
    n_tokens: int
    n_samples: int

    def variance(self) -> torch.Tensor:
        mean = self.total / self.n_tokens
        return (self.total_sq / self.n_tokens - mean**2).clamp(min=0.0)

    def mean_square(self) -> torch.Tensor:
        """``nu_j``: the sum of squares over tokens, averaged over prompts."""
        return self.total_sq / self.n_samples


class _Stop(Exception):
    """Raised by the last layer's hook: nothing after it is needed."""


def calibration_tokens(
    data: TaskData, corruption: str | None, includes_answer: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (or, with ``corruption``, corrupted) calibration prompts ``[n, pos]``, right-padded
    to the longest prompt of the set (plus one position for the answer token, which APP keeps in
    the prompt), and the mask of real tokens ``[n, pos]``."""
    source = data.clean_tokens if corruption is None else data.corrupt_tokens[corruption]
    n = len(data)
    last = data.end_pos + (1 if includes_answer else 0)  # last real position per prompt
    width = int(last.max()) + 1
    tokens = torch.full((n, width), data.pad_id, dtype=torch.long)
    copy = min(width, source.shape[1])
    tokens[:, :copy] = source[:, :copy]
    if includes_answer:
        tokens[torch.arange(n), data.end_pos + 1] = data.target_ids
    mask = torch.arange(width)[None, :] <= last[:, None]
    return tokens, mask


@torch.no_grad()
def collect_stats(
    model: PatchedModel,
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    batch_size: int = 50,
) -> ChannelStats:
    """One forward per batch, stopped after the last layer's ``hook_z``. ``tokens [n, pos]``;
    ``mask [n, pos]`` (None: every position counts, padding included, as FLAP's code does)."""
    L = model.shape.n_layers
    sums: dict[int, torch.Tensor] = {}
    squares: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor | None] = {"mask": None}

    def record(layer: int):
        def hook(z: torch.Tensor, hook) -> torch.Tensor:  # [b, pos, H, d_head]
            x = z.detach().flatten(2).double()  # [b, pos, H * d_head]
            if current["mask"] is not None:
                x = x * current["mask"][:, :, None]
            sums[layer] = sums.get(layer, 0) + x.sum((0, 1))
            squares[layer] = squares.get(layer, 0) + (x * x).sum((0, 1))
            if layer == L - 1:
                raise _Stop
            return z

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", record(layer)) for layer in range(L)]
    n_tokens = 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(model.device)
        batch_mask = None if mask is None else mask[start : start + batch_size].to(model.device)
        current["mask"] = None if batch_mask is None else batch_mask.double()
        n_tokens += int(batch.numel() if batch_mask is None else batch_mask.sum())
        with model.bridge.hooks(fwd_hooks=hooks), contextlib.suppress(_Stop):
            model.forward_passes += 1
            model.bridge(batch)
    return ChannelStats(
        total=torch.stack([sums[layer] for layer in range(L)]).cpu(),
        total_sq=torch.stack([squares[layer] for layer in range(L)]).cpu(),
        n_tokens=n_tokens,
        n_samples=len(tokens),
    )


def output_weights(model: PatchedModel) -> torch.Tensor:
    """``W_O`` of every layer as ``[n_layers, H * d_head, d_model]``, one row per input channel
    (GPT-2's Conv1D ``c_proj.weight`` is ``[in, out]`` already: this is it, unprocessed)."""
    return (
        torch.stack([block.attn.W_O.detach().flatten(0, 1) for block in model.bridge.blocks])
        .double()
        .cpu()
    )  # beside the statistics, which are kept on the CPU


# -- scores ------------------------------------------------------------------------------------


def channel_scores(stats: ChannelStats, weights: torch.Tensor, metric: Metric) -> torch.Tensor:
    """``S_j`` per layer and channel, ``[n_layers, H * d_head]`` (``weights`` as
    :func:`output_weights`)."""
    metric = Metric(metric)
    if metric is Metric.IFV:
        return stats.variance()
    if metric is Metric.WIFV:
        return stats.variance() * (weights**2).sum(-1)
    return weights.abs().mean(-1) * stats.mean_square().sqrt()


def head_scores(channel_values: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per-layer standardization (sample std) of ``T [n_layers, H * d_head]``, then the mean over
    each head's channels: ``[n_layers, n_heads]``. A constant layer standardizes to 0."""
    mean = channel_values.mean(1, keepdim=True)
    std = channel_values.std(1, keepdim=True)
    centred = channel_values - mean
    standardized = torch.where(std > 0, centred / torch.where(std > 0, std, 1.0), 0.0)
    return standardized.view(channel_values.shape[0], n_heads, -1).mean(-1)


def flap_scores(
    stats: ChannelStats, weights: torch.Tensor, metric: Metric, n_heads: int
) -> torch.Tensor:
    """Vanilla FLAP head scores ``[n_layers, n_heads]`` (``T = S**2``)."""
    return head_scores(channel_scores(stats, weights, metric) ** 2, n_heads)


def contrastive_channel_values(
    clean: ChannelStats, corrupt: ChannelStats, weights: torch.Tensor, metric: Metric
) -> torch.Tensor:
    """C-FLAP's ``T_j = |S_j(clean)**2 - S_j(corrupt)**2|``, ``[n_layers, H * d_head]``."""
    return (
        channel_scores(clean, weights, metric) ** 2 - channel_scores(corrupt, weights, metric) ** 2
    ).abs()


def contrastive_scores(
    clean: ChannelStats,
    corrupt: ChannelStats,
    weights: torch.Tensor,
    metric: Metric,
    n_heads: int,
) -> torch.Tensor:
    """Contrastive-FLAP head scores ``[n_layers, n_heads]``."""
    return head_scores(contrastive_channel_values(clean, corrupt, weights, metric), n_heads)


# -- keeping heads -----------------------------------------------------------------------------


def _index_star(n_heads: int, ratio: float) -> int:
    """APP's ``argmin_i |(i + 1) - (1 - p) * N|`` (first minimiser)."""
    target = n_heads * (1.0 - ratio)
    return min(range(n_heads), key=lambda i: abs((i + 1) - target))


def n_kept(n_heads: int, ratio: float, keep_rule: KeepRule) -> int:
    """Heads kept at sparsity ``ratio`` when no two scores tie."""
    index = _index_star(n_heads, ratio)
    return index if KeepRule(keep_rule) is KeepRule.APP else index + 1


def keep_heads(scores: torch.Tensor, ratio: float, keep_rule: KeepRule) -> list[Head]:
    """The heads kept at head sparsity ``ratio`` from ``scores [n_layers, n_heads]``, sorted."""
    n_layers, n_heads = scores.shape
    flat = scores.flatten()
    index = _index_star(flat.numel(), ratio)
    # Descending, ties broken by head index, so the choice is a function of the scores alone.
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    if KeepRule(keep_rule) is KeepRule.APP:
        threshold = float(flat[order[index]])
        kept = [i for i in range(flat.numel()) if float(flat[i]) > threshold]
    else:
        kept = order[: index + 1]
    return sorted(divmod(i, n_heads) for i in kept)


# -- cliff rules (APP's ``FLAP.py``, ported with guards at the end of the sweep) --------------


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values."""
    return [float(np.mean(values[max(0, i - window + 1) : i + 1])) for i in range(len(values))]


def first_cliff(values: list[float], window: int, drop: float) -> int:
    """First ``i`` whose value exceeds the minimum of the next ``window - 1`` by ``drop``; moved to
    the last point before the steepest step in the window. -1: no such ``i``."""
    n = len(values)
    for i in range(n - window):
        if abs(values[i] - min(values[i + 1 : i + window])) >= drop:
            cliff = i
            if values[i] > max(values[i + 1 :]):  # valley check
                part = values[i : i + window]
                cliff += part.index(max(part))
            neighbours = [
                values[cliff + t] - values[cliff + t + 1]
                for t in range(window)
                if cliff + t + 1 < n
            ]
            step = next((t for t, value in enumerate(neighbours) if value >= drop), 0)
            return cliff + step
    return -1


def biggest_cliff(values: list[float], window: int, drop: float) -> int:
    """The ``i`` with the largest drop over its window, moved forward to one before the first
    window position whose own drop is ``drop`` smaller. -1: APP's fixed fallback."""
    drops = [abs(values[i] - min(values[i + 1 : i + window])) for i in range(len(values) - window)]
    if not drops:
        return -1
    largest = max(drops)
    cliff = drops.index(largest)
    deficits = [largest - d for d in drops[cliff : cliff + window]]
    step = next((t for t, value in enumerate(deficits) if value >= drop), None)
    return cliff if step is None else cliff + step - 1


def detect_cliff(values: list[float], window: int, slope_threshold: float) -> int:
    """The first run of ``window`` smoothed slopes below ``slope_threshold`` if it starts before
    the biggest single drop, else the biggest single drop."""
    array = np.asarray(values, dtype=float)
    slopes = np.convolve(np.diff(array), np.ones(window) / window, mode="valid")
    sustained = next(
        (
            i
            for i in range(len(slopes) - window)
            if (slopes[i : i + window] < slope_threshold).all()
        ),
        None,
    )
    biggest = int(np.argmax(array[:-1] - array[1:]))
    return sustained if sustained is not None and sustained < biggest else biggest


def cliff_index(values: list[float], rule: CliffRule, window: int) -> tuple[int, dict[str, float]]:
    """Index into the sweep chosen by ``rule`` (-1: the fixed sparsity), and the thresholds."""
    rule = CliffRule(rule)
    spread = max(values) - min(values)
    drop = spread / 10
    slope = -10 * (spread / 250 * 0.5 - (10 - window) / 100)
    details = {"window": window, "drop_threshold": drop, "slope_threshold": slope}
    curve = moving_average(values, window) if rule.value.startswith("smooth_") else list(values)
    base = rule.value.removeprefix("smooth_")
    if base == "first":
        return first_cliff(curve, window, drop), details
    if base == "biggest":
        return biggest_cliff(curve, window, drop), details
    if base == "detect_cliff":
        return detect_cliff(curve, window, slope), details
    return -1, details


# -- the sweep ---------------------------------------------------------------------------------


class CircuitEvaluator:
    """APP's performance % of head sets on one cached dataset, each distinct set evaluated once."""

    def __init__(self, model: PatchedModel, cache: PatchingCache) -> None:
        self.model, self.cache = model, cache
        self.memo: dict[tuple[Head, ...], dict[str, Any]] = {}
        self.wall_seconds = 0.0
        self.forward_passes = 0

    def __call__(self, heads: list[Head]) -> dict[str, Any]:
        key = tuple(sorted(heads))
        if key not in self.memo:
            started = time.perf_counter()
            head_dict: dict[int, list[int]] = {}
            for layer, head in key:
                head_dict.setdefault(layer, []).append(head)
            graph = Graph.from_heads(self.model.shape, head_dict)
            row = evaluate_graph(self.model, self.cache, graph)
            self.memo[key] = {
                "performance": row["app_performance"],
                "faithfulness": row["faithfulness"],
                "metric": row["metric"],
            }
            self.forward_passes += row["eval_forward_passes"]
            self.wall_seconds += time.perf_counter() - started
        return self.memo[key]


def sweep(
    scores: torch.Tensor,
    ratios: list[float],
    keep_rule: KeepRule,
    evaluate: CircuitEvaluator,
    progress: bool = False,
    label: str = "sweep",
) -> list[dict[str, Any]]:
    """One point per sparsity: the kept heads and their evaluation."""
    points = []
    for ratio in tqdm(ratios, desc=label, disable=not progress):
        heads = keep_heads(scores, ratio, keep_rule)
        points.append({"ratio": ratio, "size": len(heads), "heads": heads, **evaluate(heads)})
    return points


def choose(
    points: list[dict[str, Any]],
    rule: CliffRule,
    window: int,
    fixed_sparsity: float,
) -> dict[str, Any]:
    """The cliff sparsity of one sweep under ``rule``."""
    index, details = cliff_index([p["performance"] for p in points], rule, window)
    ratio = points[index]["ratio"] if index >= 0 else fixed_sparsity
    return {"rule": str(rule), "index": index, "ratio": ratio, "fallback": index < 0, **details}


def stats_flops(model: PatchedModel, tokens: torch.Tensor) -> float:
    """Forward FLOPs of ``n_layers`` blocks over ``tokens [n, pos]`` (no unembedding)."""
    cfg = model.bridge.cfg
    seq = tokens.shape[1]
    per_token = block_flops(cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, seq) * cfg.n_layers
    return per_token * tokens.numel()


def full_pass_flops(model: PatchedModel, data: TaskData) -> float:
    """One full forward (blocks and unembedding) over ``data``'s clean tokens."""
    cfg = model.bridge.cfg
    tokens = data.clean_tokens
    per_token = block_flops(
        cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, tokens.shape[1]
    ) * cfg.n_layers + unembed_flops(cfg.d_model, cfg.d_vocab)
    return per_token * tokens.numel()


METHODS = ("flap", "cflap")


def merge_heads(*head_sets: list[Head]) -> list[Head]:
    """The merged circuit: the union of head sets (APP's ``merge_circuits``), sorted."""
    return sorted({(int(layer), int(head)) for heads in head_sets for layer, head in heads})


def run_pruning(
    model: PatchedModel,
    calibration: TaskData,
    validation: TaskData,
    corruption: str,
    config: FlapConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """FLAP (vanilla metric, clean stream) and C-FLAP (contrastive metric, clean and corrupted
    streams) rankings, both sweeps evaluated on ``validation`` with APP's protocol, the cliff of
    every rule, and the kept head set of each method under ``config.cliff_rule``.

    Cost: ``*_app`` is APP's accounting (each ranking recomputes its streams: FLAP 1, C-FLAP 2;
    every sweep point is one full pass over the evaluation set); ``*_actual`` is what ran here
    (the clean stream is shared; each distinct head set is evaluated once)."""
    started = time.perf_counter()
    H = model.shape.n_heads
    calibration = calibration.select(slice(0, config.n_calibration))
    passes_before = model.forward_passes
    streams: dict[str, ChannelStats] = {}
    stream_tokens: dict[str, torch.Tensor] = {}
    for stream, variant in (("clean", None), ("corrupt", corruption)):
        tokens, mask = calibration_tokens(calibration, variant, config.calibration_includes_answer)
        stream_tokens[stream] = tokens
        streams[stream] = collect_stats(
            model, tokens, mask if config.mask_padding else None, config.batch_size
        )
    stats_passes = model.forward_passes - passes_before
    stats_seconds = time.perf_counter() - started
    weights = output_weights(model)
    scores = {
        "flap": flap_scores(streams["clean"], weights, config.vanilla_metric, H),
        "cflap": contrastive_scores(
            streams["clean"], streams["corrupt"], weights, config.contrastive_metric, H
        ),
    }
    cache_started = time.perf_counter()
    cache = model.build_cache(
        validation, Ablation.MEAN, corruption, MeanScope.BATCH_TEMPLATE, config.eval_batch_size
    )
    evaluate = CircuitEvaluator(model, cache)
    cache_seconds = time.perf_counter() - cache_started
    ratios = config.sweep.ratios()
    window = config.sweep.window
    methods: dict[str, Any] = {}
    for method in METHODS:
        points = sweep(scores[method], ratios, config.keep_rule, evaluate, progress, method)
        cliffs = {
            str(rule): choose(points, rule, window, config.fixed_sparsity) for rule in CliffRule
        }
        chosen = cliffs[str(config.cliff_rule)]
        heads = keep_heads(scores[method], chosen["ratio"], config.keep_rule)
        methods[method] = {
            "metric": str(config.vanilla_metric if method == "flap" else config.contrastive_metric),
            "scores": scores[method].tolist(),
            "points": points,
            "cliffs": cliffs,
            "chosen": chosen,
            "heads": heads,
            "validation": evaluate(heads),
        }
    merged = merge_heads(methods["flap"]["heads"], methods["cflap"]["heads"])
    eval_tokens_flops = full_pass_flops(model, validation)
    calibration_flops = stats_flops(model, stream_tokens["clean"])
    cost = {
        "statistics_forward_passes_app": 3,  # FLAP: clean; C-FLAP: clean and corrupted
        "statistics_flops_app": 3 * calibration_flops,
        "statistics_forward_passes_actual": stats_passes,
        "statistics_flops_actual": 2 * calibration_flops,
        "statistics_wall_seconds": stats_seconds,
        "sweep_points": len(ratios),
        "sweep_forward_passes_app": 2 * len(ratios),
        "sweep_flops_app": 2 * len(ratios) * eval_tokens_flops,
        "distinct_evaluations": len(evaluate.memo),
        "sweep_forward_passes_actual": evaluate.forward_passes + cache.forward_passes,
        "sweep_flops_actual": (len(evaluate.memo) + cache.forward_passes / len(cache))
        * eval_tokens_flops,
        "sweep_wall_seconds": evaluate.wall_seconds + cache_seconds,
    }
    cost["flops_app"] = cost["statistics_flops_app"] + cost["sweep_flops_app"]
    cost["flops_actual"] = cost["statistics_flops_actual"] + cost["sweep_flops_actual"]
    cost["forward_passes_app"] = (
        cost["statistics_forward_passes_app"] + cost["sweep_forward_passes_app"]
    )
    cost["wall_seconds"] = time.perf_counter() - started
    return {
        "n_calibration": len(calibration),
        "n_validation": len(validation),
        "corruption": corruption,
        "ratios": ratios,
        "window": window,
        "methods": methods,
        "merged": {"heads": merged, "validation": evaluate(merged)},
        "cost": cost,
        "n_tokens": {k: s.n_tokens for k, s in streams.items()},
    }


# -- the registry's entries ---------------------------------------------------------------------


def pruning_record(model: PatchedModel, data: MethodData, config: FlapConfig) -> dict[str, Any]:
    """:func:`run_pruning` on the configured calibration split (train or validation)."""
    calibration = data.train if config.calibration_split == "train" else data.validation
    return run_pruning(model, calibration, data.validation, data.corruption, config, data.progress)


def _pruned_heads(model: PatchedModel, data: MethodData, options: Options, method: str) -> Result:
    """FLAP (``flap``) or Contrastive-FLAP (``cflap``): the head set at the method's cliff, with
    its standardized head scores as node scores (no edge scores). Both rankings share one
    statistics pass, so ``record`` (:func:`run_pruning`) holds both, and their union."""
    config: FlapConfig = options["flap"]
    record = pruning_record(model, data, config)
    chosen = record["methods"][method]
    heads: dict[int, list[int]] = {}
    for layer, head in chosen["heads"]:
        heads.setdefault(int(layer), []).append(int(head))
    shape = model.shape
    graph = Graph.from_heads(shape, heads)
    for layer, row in enumerate(chosen["scores"]):
        for head, value in enumerate(row):
            graph.node_scores[shape.head_writer(layer, head)] = float(value)
    graph.meta = {
        "method": method,
        "level": "head",
        "score_ranking": "signed",  # FLAP keeps the highest standardized head scores
        "circuit_rule": f"heads at the sweep's {config.cliff_rule.value} cliff (node-induced)",
        "heads": {str(k): v for k, v in heads.items()},
        "cliff": chosen["chosen"],
        "flap_config": config.record(),
    }
    cost = {"flops": record["cost"]["flops_actual"]}
    return Result(graph, record, cost)


def discover_flap(model: PatchedModel, data: MethodData, options: Options) -> Result:
    return _pruned_heads(model, data, options, "flap")


def discover_cflap(model: PatchedModel, data: MethodData, options: Options) -> Result:
    return _pruned_heads(model, data, options, "cflap")
