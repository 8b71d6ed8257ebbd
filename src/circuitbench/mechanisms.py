"""What a trained model does inside: shortcut probes, layer ablations, head scores and classes.

All definitions and thresholds are in ``docs/mechanisms.md``. In short:

- **probes**: accuracy on prompts a shortcut cannot solve (:mod:`circuitbench.tasks.probes`);
- **layer ablations**: the share of the test split's logit difference lost when every writer of a
  layer (its heads and MLP), or of every layer >= 1, is mean-ablated (means per template);
- **head scores** on a repeated random block (:mod:`circuitbench.head_scores`): previous-token,
  induction, duplicate-token;
- **copy scores**: the share of names that a head's OV circuit, applied to the name's residual
  after MLP0, puts among the top (positive) or bottom (negative) 5 logits;
- **IOI classes** (Wang et al.): name mover, negative name mover, S-inhibition, induction,
  duplicate-token and previous-token heads, from attention on the IOI test prompts, the copy
  scores and the head scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from circuitbench import head_scores
from circuitbench.graph import Graph
from circuitbench.patching import Ablation, MeanScope, PatchedModel
from circuitbench.tasks import Prompt, Task, TaskData, encode_prompts
from circuitbench.tasks.probes import probe_prompts, probes_of
from circuitbench.tokenization import TextTokenizer

Head = tuple[int, int]
CLASSES = (
    "name_mover",
    "negative_name_mover",
    "s_inhibition",
    "induction",
    "duplicate_token",
    "previous_token",
)


@dataclass(frozen=True)
class MechanismOptions:
    """Config section ``mechanisms``."""

    n_probe: int = 200  # prompts per probe
    n_random: int = 64  # repeated random blocks for the head scores
    random_length: int = 20  # tokens per block (each sequence is BOS + the block twice)
    head_threshold: float = 0.5  # a previous-token / induction / duplicate-token head
    attention_threshold: float = 0.3  # IOI classes: mean attention to the named position
    copy_threshold: float = 0.5  # name movers: share of names copied into the top 5
    batch_size: int = 64
    seed: int = 0


# -- probes ------------------------------------------------------------------------------------


def probe_sets(
    task: Task, tokenizer: TextTokenizer, options: MechanismOptions, test: TaskData
) -> dict[str, list[Prompt]]:
    """Every probe of ``task``, from the templates of its ``test`` split."""
    templates = sorted({int(t) for t in test.template.tolist()})
    return {
        probe: probe_prompts(task, probe, options.n_probe, options.seed, tokenizer, templates)
        for probe in probes_of(task)
    }


def probe_data(
    task: Task, tokenizer: TextTokenizer, options: MechanismOptions, test: TaskData
) -> dict[str, TaskData]:
    """Every probe of ``task`` as a tokenized split."""
    return {
        probe: encode_prompts(task, prompts, tokenizer, f"probe/{probe}")
        for probe, prompts in probe_sets(task, tokenizer, options, test).items()
    }


@torch.no_grad()
def accuracy_row(model: PatchedModel, data: TaskData, batch_size: int) -> dict[str, float]:
    """Accuracy and mean metric of the model on ``data``; with the distractors of an
    ``absent_query`` probe, how often the argmax is one of them (a context surname)."""
    accuracy, metric, distracted = [], [], []
    for start in range(0, len(data), batch_size):
        batch = data.select(slice(start, start + batch_size))
        end = model.logits_at_end(batch.clean_tokens, batch.end_pos).float()
        accuracy.append(batch.accuracy(end))
        metric.append(batch.metric(end))
        ids = batch.distractor_ids.to(end.device)
        top = end.argmax(-1, keepdim=True)
        distracted.append(((ids == top) & (ids >= 0)).any(-1).float())
    return {
        "n": len(data),
        "accuracy": torch.cat(accuracy).mean().item(),
        "metric": torch.cat(metric).mean().item(),
        "distractor_rate": torch.cat(distracted).mean().item(),
    }


# -- ablations ---------------------------------------------------------------------------------


def writers_of_layer(model: PatchedModel, layer: int) -> list[int]:
    shape = model.shape
    return [shape.head_writer(layer, h) for h in range(shape.n_heads)] + [shape.mlp_writer(layer)]


@torch.no_grad()
def ablation_rows(model: PatchedModel, data: TaskData, batch_size: int) -> list[dict[str, Any]]:
    """The share of the logit difference lost when writers are mean-ablated (means per template
    over ``data``): each layer alone, every layer >= 1, and two edge groups: every head's edges
    into MLPs, and every head's direct edges into the logits."""
    shape = model.shape
    corruption = data.meta["task_options"].get("corruption")
    cache = model.build_cache(data, Ablation.MEAN, corruption, MeanScope.TEMPLATE, batch_size)
    full = torch.cat([b.data.metric(b.clean_logits_end.float()) for b in cache]).mean().item()
    groups: dict[str, torch.Tensor] = {}
    for layer in range(shape.n_layers):
        removed = torch.zeros_like(shape.valid)
        removed[writers_of_layer(model, layer)] = True
        groups[f"layer {layer}"] = removed
    removed = torch.zeros_like(shape.valid)
    for layer in range(1, shape.n_layers):
        removed[writers_of_layer(model, layer)] = True
    groups["layers >= 1"] = removed
    heads = [
        shape.head_writer(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)
    ]
    into_mlps = torch.zeros_like(shape.valid)
    direct = torch.zeros_like(shape.valid)
    for layer in range(shape.n_layers):
        into_mlps[heads, shape.mlp_receiver(layer)] = True
    direct[heads, shape.logits_receiver] = True
    groups["heads -> MLPs"] = into_mlps & shape.valid
    groups["heads -> logits"] = direct & shape.valid
    rows = []
    for name, removed in groups.items():
        mask = (shape.valid & ~removed).to(model.dtype)
        metrics = []
        for batch in cache:
            logits = model.patched_forward(batch.data.clean_tokens, mask, batch.ablated)
            metrics.append(batch.data.metric(batch.data.logits_at_end(logits).float()))
        ablated = torch.cat(metrics).mean().item()
        rows.append(
            {
                "ablated": name,
                "metric_full": full,
                "metric_ablated": ablated,
                "cost": 1 - ablated / full if full else float("nan"),
            }
        )
    return rows


# -- head scores, copy scores, IOI attention ---------------------------------------------------


@torch.no_grad()
def random_block_scores(
    model: PatchedModel, tokenizer: TextTokenizer, options: MechanismOptions
) -> dict[str, torch.Tensor]:
    """Previous-token, induction and duplicate-token scores ``[layer, head]``."""
    specials = set(tokenizer.hf.all_special_ids)
    words = [i for i in range(len(tokenizer.hf)) if i not in specials]
    bos = tokenizer.bos_id if tokenizer.prepend_bos else None
    tokens = head_scores.repeated_random_tokens(
        words, bos, options.n_random, options.random_length, options.seed
    )
    patterns = model.attention_patterns(tokens)
    return head_scores.attention_scores(patterns, options.random_length, int(bos is not None))


@torch.no_grad()
def copy_scores(model: PatchedModel, token_ids: list[int], top: int = 5) -> dict[str, torch.Tensor]:
    """For every head, the share of ``token_ids`` whose residual after MLP0 (embedding plus MLP0's
    output, no attention), passed through the head's OV circuit and the unembedding, ranks the
    token itself among the ``top`` highest (``copy``) or lowest (``negative_copy``) logits."""
    bridge = model.bridge
    ids = torch.tensor(token_ids, device=model.device)
    residual = bridge.W_E[ids][:, None]  # [n, 1, d_model]
    block0 = bridge.blocks[0]
    residual = residual + block0.mlp(block0.ln2(residual))
    shape = model.shape
    positive = torch.zeros(shape.n_layers, shape.n_heads)
    negative = torch.zeros(shape.n_layers, shape.n_heads)
    for layer in range(shape.n_layers):
        block = bridge.blocks[layer]
        normed = block.ln1(residual)[:, 0]  # [n, d_model]
        for head in range(shape.n_heads):
            value = normed @ block.attn.W_V[head] + block.attn.b_V[head]
            out = (value @ block.attn.W_O[head])[:, None]
            logits = bridge.unembed(bridge.ln_final(out))[:, 0].float()  # [n, vocab]
            own = logits.gather(1, ids[:, None])
            rank_high = (logits > own).sum(1)
            rank_low = (logits < own).sum(1)
            positive[layer, head] = (rank_high < top).float().mean().item()
            negative[layer, head] = (rank_low < top).float().mean().item()
    return {"copy": positive, "negative_copy": negative}


@torch.no_grad()
def ioi_attention(model: PatchedModel, data: TaskData, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean attention ``[layer, head]`` on IOI prompts: from END to IO, S1 and S2; from S2 to S1
    and to S1+1; from S1+1 to S1."""
    pairs = {
        "end_to_io": ("END", "IO"),
        "end_to_s1": ("END", "S1"),
        "end_to_s2": ("END", "S2"),
        "s2_to_s1": ("S2", "S1"),
        "s2_to_s1_plus_1": ("S2", "S1+1"),
        "s1_plus_1_to_s1": ("S1+1", "S1"),
    }
    sums = {name: torch.zeros(model.shape.n_layers, model.shape.n_heads) for name in pairs}
    for start in range(0, len(data), batch_size):
        batch = data.select(slice(start, start + batch_size))
        patterns = torch.stack(
            [p.float().cpu() for p in model.attention_patterns(batch.clean_tokens)]
        )
        rows = torch.arange(len(batch))
        where = {**batch.positions, "END": batch.end_pos}
        by_position = patterns.permute(1, 3, 4, 0, 2)  # [batch, query, key, layer, head]
        for name, (query, key) in pairs.items():
            sums[name] += by_position[rows, where[query], where[key]].sum(0)
    return {name: total / len(data) for name, total in sums.items()}


def ioi_classes(
    attention: dict[str, torch.Tensor],
    copy: dict[str, torch.Tensor],
    scores: dict[str, torch.Tensor],
    options: MechanismOptions,
) -> dict[Head, list[str]]:
    """Wang-style classes of every head (a head may have several; docs/mechanisms.md):

    - name mover: END -> IO attention >= attention_threshold and copy >= copy_threshold;
    - negative name mover: the same attention and negative copy >= copy_threshold;
    - S-inhibition: END -> S2 attention >= attention_threshold (not a name mover of either sign);
    - induction: S2 -> S1+1 attention >= attention_threshold, or induction score >=
      head_threshold in a layer >= 1;
    - duplicate-token: S2 -> S1 attention >= attention_threshold, or duplicate-token score >=
      head_threshold;
    - previous-token: S1+1 -> S1 attention >= attention_threshold, or previous-token score >=
      head_threshold.
    """
    a, h = options.attention_threshold, options.head_threshold
    n_layers, n_heads = attention["end_to_io"].shape
    out: dict[Head, list[str]] = {}
    for layer in range(n_layers):
        for head in range(n_heads):
            at = {k: float(v[layer, head]) for k, v in attention.items()}
            sc = {k: float(v[layer, head]) for k, v in scores.items()}
            classes = []
            movers = at["end_to_io"] >= a
            if movers and float(copy["copy"][layer, head]) >= options.copy_threshold:
                classes.append("name_mover")
            if movers and float(copy["negative_copy"][layer, head]) >= options.copy_threshold:
                classes.append("negative_name_mover")
            if at["end_to_s2"] >= a and not classes:
                classes.append("s_inhibition")
            if at["s2_to_s1_plus_1"] >= a or (layer >= 1 and sc["induction"] >= h):
                classes.append("induction")
            if at["s2_to_s1"] >= a or sc["duplicate_token"] >= h:
                classes.append("duplicate_token")
            if at["s1_plus_1_to_s1"] >= a or sc["previous_token"] >= h:
                classes.append("previous_token")
            out[(layer, head)] = classes
    return out


# -- the path-patching circuit -----------------------------------------------------------------


def pp_structure(circuit: Graph) -> dict[str, Any]:
    """The dense path-patching circuit's heads, its layers, and the heads it selected through
    another head's q, k or v (its roles: ``logits`` or ``a{l}.h{h}<q|k|v>``)."""
    meta = circuit.meta
    heads = [(int(layer), h) for layer, hs in (meta.get("heads") or {}).items() for h in hs]
    roles = meta.get("roles") or {}
    via = {
        name: [r for r in receivers if r != "logits"]
        for name, receivers in roles.items()
        if any(r != "logits" for r in receivers)
    }
    layers = sorted({layer for layer, _ in heads})
    return {
        "heads": sorted(heads),
        "layers": layers,
        "layer_span": (layers[-1] - layers[0] + 1) if layers else 0,
        "via_qkv": via,
    }


def compositions(
    scores: dict[str, torch.Tensor], pp: dict[str, Any], threshold: float
) -> list[dict[str, Any]]:
    """Every (previous-token head, later induction head) pair with both scores >= ``threshold``,
    and whether path patching selected the first through the second's key."""
    prev, ind = scores["previous_token"], scores["induction"]
    n_layers, n_heads = prev.shape
    selected = {(name, r) for name, receivers in pp["via_qkv"].items() for r in receivers}
    out = []
    for il in range(1, n_layers):
        for ih in range(n_heads):
            if float(ind[il, ih]) < threshold:
                continue
            for pl in range(il):
                for ph in range(n_heads):
                    if float(prev[pl, ph]) < threshold:
                        continue
                    key = (f"{pl}.{ph}", f"a{il}.h{ih}<k>")
                    out.append(
                        {
                            "previous_token_head": f"{pl}.{ph}",
                            "previous_token_score": float(prev[pl, ph]),
                            "induction_head": f"{il}.{ih}",
                            "induction_score": float(ind[il, ih]),
                            "selected_by_pp_through_k": key in selected,
                        }
                    )
    return out
