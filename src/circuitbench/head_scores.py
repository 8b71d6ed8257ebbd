"""Per-head attention scores on repeated random sequences (Olsson et al. 2022).

A batch of ``[bos] x_1..x_T x_1..x_T`` (tokens drawn uniformly from ordinary vocabulary); from
each layer's attention pattern ``[batch, head, query, key]``:

- previous-token score: mean attention from position ``p`` to ``p - 1`` (every ``p >= 2``: the
  first real token's previous position is BOS, which many heads use as a sink);
- induction score: mean attention, over the second block, from ``x_i`` to the position of
  ``x_{i+1}`` in the first block;
- duplicate-token score: mean attention, over the second block, from ``x_i`` to the earlier
  ``x_i``.

Definitions and thresholds: ``docs/mechanisms.md``.
"""

from __future__ import annotations

import torch

SCORES = ("previous_token", "induction", "duplicate_token")


def repeated_random_tokens(
    word_ids: list[int], bos_id: int | None, n: int, length: int, seed: int
) -> torch.Tensor:
    """``[n, 1 + 2 * length]`` (or ``2 * length`` without BOS): a random block twice."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.tensor(word_ids)
    block = pool[torch.randint(len(pool), (n, length), generator=generator)]
    tokens = torch.cat([block, block], dim=1)
    if bos_id is not None:
        tokens = torch.cat([torch.full((n, 1), bos_id), tokens], dim=1)
    return tokens


def attention_scores(
    patterns: list[torch.Tensor], length: int, offset: int
) -> dict[str, torch.Tensor]:
    """Scores ``[layer, head]`` from ``patterns`` (one ``[batch, head, query, key]`` per layer)
    of sequences built by :func:`repeated_random_tokens` (``offset`` 1 with BOS, else 0)."""
    stacked = torch.stack([p.float() for p in patterns])  # [layer, batch, head, q, k]
    n_pos = stacked.shape[-1]
    query = torch.arange(offset + 1, n_pos)
    previous = stacked[..., query, query - 1].mean(dim=(1, 3))
    second = torch.arange(offset + length, offset + 2 * length)
    duplicate = stacked[..., second, second - length].mean(dim=(1, 3))
    # x_i at position offset+length+i; the token after its first occurrence is at offset+i+1.
    induction_query = second[:-1]
    induction = stacked[..., induction_query, induction_query - length + 1].mean(dim=(1, 3))
    return {"previous_token": previous, "induction": induction, "duplicate_token": duplicate}
