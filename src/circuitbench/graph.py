"""The computation graph of a decoder-only transformer, and circuits over it.

Naming follows EAP-IG/MIB (``docs/metrics.md``):

- writers ("forward" nodes), in residual-stream order: ``input`` (embeddings), then per layer the
  heads ``a{l}.h{h}`` and the MLP ``m{l}``;
- receivers ("backward" ports): ``a{l}.h{h}<q>``, ``<k>``, ``<v>``, ``m{l}``, ``logits``;
- an edge ``writer->receiver`` exists when the writer is upstream: a head in layer ``l`` reads
  ``input`` and every head and MLP of layers ``< l``; ``m{l}`` additionally reads layer ``l``'s
  heads; ``logits`` reads everything.

A :class:`Graph` stores a score and an ``in_graph`` flag for every edge and node as dense
``[n_writers, n_receivers]`` tensors (invalid entries stay zero / False). It reads and writes MIB
Graph JSON and Edge Pruning ``edges.json``, and converts to and from the head-level view
``{layer: [heads]}``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from circuitbench.io import atomic_write_text, without_measurements

QKV = ("q", "k", "v")
_EDGE_RE = re.compile(r"^(?P<writer>[^-<>]+)->(?P<receiver>[^-]+)$")


class GraphFormatError(ValueError):
    """A circuit file that is malformed or made for another model shape."""


@dataclass(frozen=True)
class GraphShape:
    """Layer and head counts: all the graph depends on."""

    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise GraphFormatError(f"a graph needs >= 1 layer and head, got {self}")

    # -- writers ----------------------------------------------------------------------------

    def head_writer(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_writer(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @cached_property
    def writer_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    # -- receivers --------------------------------------------------------------------------

    def qkv_receiver(self, layer: int, head: int, which: str) -> int:
        """Receiver index of head ``(layer, head)``'s q, k or v input."""
        return layer * (3 * self.n_heads + 1) + QKV.index(which) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    @cached_property
    def receiver_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            for which in QKV:
                names += [f"a{layer}.h{h}<{which}>" for h in range(self.n_heads)]
            names.append(f"m{layer}")
        return [*names, "logits"]

    def n_upstream(self, receiver: int) -> int:
        """How many writers (a prefix of the writer order) feed ``receiver``."""
        if receiver == self.logits_receiver:
            return self.n_writers
        layer, offset = divmod(receiver, 3 * self.n_heads + 1)
        if offset < 3 * self.n_heads:  # a head's q/k/v input
            return 1 + layer * (self.n_heads + 1)
        return 1 + layer * (self.n_heads + 1) + self.n_heads  # the MLP reads its layer's heads

    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_writers, n_receivers]`` bool: which writer->receiver pairs are edges."""
        upstream = torch.tensor([self.n_upstream(r) for r in range(self.n_receivers)])
        return torch.arange(self.n_writers)[:, None] < upstream[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def n_nodes(self) -> int:
        return self.n_writers + 1  # + logits

    @cached_property
    def edge_index(self) -> dict[str, tuple[int, int]]:
        """Edge name -> (writer, receiver), in canonical order."""
        index = {}
        for r, receiver in enumerate(self.receiver_names):
            for w in range(self.n_upstream(r)):
                index[f"{self.writer_names[w]}->{receiver}"] = (w, r)
        return index


class Graph:
    """Scores and membership of every edge and node of a :class:`GraphShape`.

    ``edge_scores`` ``[n_writers, n_receivers]`` float64, ``edge_in_graph`` same shape bool;
    ``node_scores`` ``[n_writers]`` (NaN = no score), ``node_in_graph`` ``[n_writers]``; the
    ``logits`` node is always in the graph.
    """

    def __init__(self, shape: GraphShape, d_model: int | None = None, meta: dict | None = None):
        self.shape = shape
        self.d_model = d_model
        self.meta: dict[str, Any] = dict(meta or {})
        self.edge_scores = torch.zeros(shape.n_writers, shape.n_receivers, dtype=torch.float64)
        self.edge_in_graph = torch.zeros(shape.n_writers, shape.n_receivers, dtype=torch.bool)
        self.node_scores = torch.full((shape.n_writers,), math.nan, dtype=torch.float64)
        self.node_in_graph = torch.zeros(shape.n_writers, dtype=torch.bool)

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def full(cls, shape: GraphShape, **kwargs: Any) -> Graph:
        graph = cls(shape, **kwargs)
        graph.edge_in_graph = shape.valid.clone()
        graph.edge_scores = shape.valid.double()
        graph.node_in_graph[:] = True
        return graph

    @classmethod
    def empty(cls, shape: GraphShape, **kwargs: Any) -> Graph:
        return cls(shape, **kwargs)

    @classmethod
    def from_heads(
        cls, shape: GraphShape, heads: dict[int, list[int]] | dict[str, list[int]], **kwargs: Any
    ) -> Graph:
        """Node-induced circuit of a head set: every edge among kept heads, MLPs, input, logits."""
        keep = torch.zeros(shape.n_writers, dtype=torch.bool)
        keep[0] = True
        for layer in range(shape.n_layers):
            keep[shape.mlp_writer(layer)] = True
        for key, layer_heads in heads.items():
            layer = int(key)
            for head in layer_heads:
                if not (0 <= layer < shape.n_layers and 0 <= head < shape.n_heads):
                    raise GraphFormatError(f"head {layer}.{head} is outside a {shape} model")
                keep[shape.head_writer(layer, head)] = True
        # A receiver port is present iff its node is; logits always.
        receiver_node = _receiver_writer(shape)
        receiver_kept = torch.ones(shape.n_receivers, dtype=torch.bool)
        has_node = receiver_node >= 0
        receiver_kept[has_node] = keep[receiver_node[has_node]]
        graph = cls(shape, **kwargs)
        graph.edge_in_graph = shape.valid & keep[:, None] & receiver_kept[None, :]
        graph.edge_scores = graph.edge_in_graph.double()
        graph.node_in_graph = keep
        return graph

    # -- views -----------------------------------------------------------------------------

    @property
    def n_edges_in_graph(self) -> int:
        return int((self.edge_in_graph & self.shape.valid).sum())

    def edge_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[n_writers, n_receivers]`` 1.0 for in-graph edges (what the patched forward reads)."""
        return (self.edge_in_graph & self.shape.valid).to(dtype)

    def prune_dangling(self) -> Graph:
        """A copy without dangling edges: an edge stays only if its writer is reached from
        ``input`` along kept edges and its receiver's node sends along a kept edge (``logits``
        always counts). Iterated to a fixed point, as EAP-IG/MIB prune."""
        shape = self.shape
        edges = self.edge_in_graph & shape.valid
        node_of = _receiver_writer(shape)
        has_node = node_of >= 0
        while True:
            sends = edges.any(1)
            receiver_alive = torch.ones(shape.n_receivers, dtype=torch.bool)
            receiver_alive[has_node] = sends[node_of[has_node]]
            incoming = torch.zeros(shape.n_writers, dtype=torch.long)
            incoming.index_add_(0, node_of[has_node], edges[:, has_node].any(0).long())
            reached = incoming > 0
            reached[0] = True
            pruned = edges & receiver_alive[None, :] & reached[:, None]
            if torch.equal(pruned, edges):
                break
            edges = pruned
        graph = self.copy()
        graph.edge_in_graph = edges
        graph.node_in_graph = edges.any(1)
        return graph

    def top_n(
        self, n: int, ranking: Ranking | str = "absolute", prune_dangling: bool = True
    ) -> Graph:
        """A copy whose circuit is the ``n`` best edges by this graph's edge scores (then without
        dangling edges, if asked)."""
        key = ranking_key(self.edge_scores, self.shape, ranking)
        return self._with_edges(top_edges(self.shape, key, n, prune_dangling))

    def cut_to_count(
        self, target: int, ranking: Ranking | str = "absolute", prune_dangling: bool = True
    ) -> Graph:
        """A copy whose circuit is the top-n cut by edge score with an edge count (after
        dangling pruning) closest to ``target`` (:func:`cut_to_count`)."""
        key = ranking_key(self.edge_scores, self.shape, ranking)
        return self._with_edges(cut_to_count(self.shape, key, target, prune_dangling))

    def _with_edges(self, keep: torch.Tensor) -> Graph:
        graph = self.copy()
        graph.edge_in_graph = keep.cpu() & self.shape.valid
        graph.node_in_graph = graph.edge_in_graph.any(1)
        return graph

    def heads(self) -> dict[int, list[int]]:
        """Head-level view: heads with at least one in-graph outgoing edge after pruning dangling
        edges (``docs/metrics.md``)."""
        pruned = self.prune_dangling()
        out: dict[int, list[int]] = {}
        for layer in range(self.shape.n_layers):
            kept = [
                h
                for h in range(self.shape.n_heads)
                if pruned.edge_in_graph[self.shape.head_writer(layer, h)].any()
            ]
            if kept:
                out[layer] = kept
        return out

    def copy(self) -> Graph:
        graph = Graph(self.shape, self.d_model, self.meta)
        graph.edge_scores = self.edge_scores.clone()
        graph.edge_in_graph = self.edge_in_graph.clone()
        graph.node_scores = self.node_scores.clone()
        graph.node_in_graph = self.node_in_graph.clone()
        return graph

    def check_shape(self, n_layers: int, n_heads: int) -> None:
        if (self.shape.n_layers, self.shape.n_heads) != (n_layers, n_heads):
            raise GraphFormatError(
                f"circuit is for a {self.shape.n_layers}x{self.shape.n_heads} model, "
                f"the model is {n_layers}x{n_heads}"
            )

    # -- MIB Graph JSON --------------------------------------------------------------------

    def to_mib(self) -> dict[str, Any]:
        shape = self.shape
        nodes: dict[str, Any] = {}
        for w, name in enumerate(shape.writer_names):
            node: dict[str, Any] = {"in_graph": bool(self.node_in_graph[w])}
            if not math.isnan(self.node_scores[w]):
                node["score"] = float(self.node_scores[w])
            nodes[name] = node
        nodes["logits"] = {"in_graph": True}
        edges = {
            name: {
                "score": float(self.edge_scores[w, r]),
                "in_graph": bool(self.edge_in_graph[w, r]),
            }
            for name, (w, r) in shape.edge_index.items()
        }
        payload: dict[str, Any] = {
            "cfg": {
                "n_layers": shape.n_layers,
                "n_heads": shape.n_heads,
                "parallel_attn_mlp": False,
                "d_model": self.d_model,
            },
            "nodes": nodes,
            "edges": edges,
        }
        if self.meta:
            # A circuit file states how it was made, never how long that took: reruns with the
            # same seed write identical bytes (timings live in the steps' summary rows).
            payload["meta"] = without_measurements(self.meta)
        return payload

    @classmethod
    def from_mib(cls, payload: Any, source: str = "<graph>") -> Graph:
        def fail(why: str) -> GraphFormatError:
            return GraphFormatError(f"{source}: not a MIB circuit graph: {why}")

        if not isinstance(payload, dict) or not {"cfg", "nodes", "edges"} <= set(payload):
            raise fail("needs top-level 'cfg', 'nodes' and 'edges'")
        cfg = payload["cfg"]
        try:
            shape = GraphShape(int(cfg["n_layers"]), int(cfg["n_heads"]))
        except (KeyError, TypeError, ValueError) as err:
            raise fail(f"cfg needs integer n_layers and n_heads ({err})") from err
        if cfg.get("parallel_attn_mlp"):
            raise fail("parallel attention/MLP graphs are not supported")
        graph = cls(shape, cfg.get("d_model"), payload.get("meta"))
        index = shape.edge_index
        edges = payload["edges"]
        if not isinstance(edges, dict):
            raise fail("'edges' must be an object")
        unknown = [name for name in edges if name not in index]
        if unknown:
            raise fail(
                f"{len(unknown)} edges do not exist in a {shape.n_layers}x{shape.n_heads} model, "
                f"e.g. {unknown[0]!r}"
            )
        if len(edges) != len(index):
            raise fail(
                f"has {len(edges)} edges, a {shape.n_layers}x{shape.n_heads} model has {len(index)}"
            )
        for name, entry in edges.items():
            w, r = index[name]
            try:
                graph.edge_scores[w, r] = float(entry["score"])
                in_graph = entry["in_graph"]
            except (KeyError, TypeError, ValueError) as err:
                raise fail(f"edge {name!r} needs a numeric 'score' and 'in_graph' ({err})") from err
            if not isinstance(in_graph, bool):
                raise fail(f"edge {name!r}: in_graph must be true/false")
            graph.edge_in_graph[w, r] = in_graph
        nodes = payload["nodes"]
        expected_nodes = set(shape.writer_names) | {"logits"}
        if not isinstance(nodes, dict) or set(nodes) != expected_nodes:
            raise fail("'nodes' must name exactly input, every head, every MLP and logits")
        for w, name in enumerate(shape.writer_names):
            entry = nodes[name]
            if not isinstance(entry.get("in_graph"), bool):
                raise fail(f"node {name!r}: in_graph must be true/false")
            graph.node_in_graph[w] = entry["in_graph"]
            if "score" in entry and entry["score"] is not None:
                graph.node_scores[w] = float(entry["score"])
        return graph

    def dumps(self) -> str:
        return json.dumps(self.to_mib(), indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.dumps())

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GraphFormatError(f"{path}: not valid JSON ({err})") from err
        return cls.from_mib(payload, source=str(path))

    # -- Edge Pruning edges.json -----------------------------------------------------------

    def to_edge_pruning(self, embedding_nodes: bool = True) -> list[list[str]]:
        """In-graph edges as EP ``[writer, reader]`` pairs; ``input`` becomes ``tok_embeds`` and
        ``pos_embeds`` (or is dropped without embedding nodes: embeddings are always present)."""
        pairs = []
        for name, (w, r) in self.shape.edge_index.items():
            if not self.edge_in_graph[w, r]:
                continue
            writer, receiver = name.split("->")
            reader = _ep_reader(receiver)
            if writer == "input":
                if embedding_nodes:
                    pairs += [["tok_embeds", reader], ["pos_embeds", reader]]
            else:
                pairs.append([writer, reader])
        return pairs

    @classmethod
    def from_edge_pruning(
        cls,
        pairs: Any,
        shape: GraphShape,
        embedding_merge: str = "tok_only",
        embedding_nodes: bool = True,
        source: str = "<edges>",
    ) -> Graph:
        """Read EP ``edges.json``. ``embedding_merge``: ``tok_only`` (``input->X`` iff
        ``tok_embeds->X``) or ``union``; without embedding nodes the embeddings are always present
        (every ``input->X`` is set). Dangling edges are dropped (the effective rule)."""
        if embedding_merge not in ("tok_only", "union"):
            raise ValueError(f"embedding_merge must be tok_only|union, got {embedding_merge!r}")
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            raise GraphFormatError(f"{source}: edges.json must be a list of [writer, reader] pairs")
        graph = cls(shape)
        if not embedding_nodes:
            graph.edge_in_graph[0] = shape.valid[0]
        index = shape.edge_index
        for writer, reader in pairs:
            if writer == "pos_embeds" and embedding_merge == "tok_only":
                continue
            writer_name = "input" if writer in ("tok_embeds", "pos_embeds") else writer
            name = f"{writer_name}->{_mib_receiver(reader)}"
            if name not in index:
                raise GraphFormatError(
                    f"{source}: edge {writer}->{reader} is not in a {shape} model"
                )
            graph.edge_in_graph[index[name]] = True
        graph = graph.prune_dangling()
        graph.edge_scores = graph.edge_in_graph.double()
        return graph


# -- top-n cuts ----------------------------------------------------------------------------------


class Ranking(StrEnum):
    """How edge scores rank edges for a top-n cut."""

    ABSOLUTE = "absolute"  # |score| (Syed et al., HAP)
    SIGNED = "signed"  # the signed score (MIB's CPR)


def ranking_key(scores: torch.Tensor, shape: GraphShape, ranking: Ranking | str) -> torch.Tensor:
    """What edges are ranked by (higher = kept first); ``-inf`` off the graph."""
    key = scores.abs() if Ranking(ranking) is Ranking.ABSOLUTE else scores.clone()
    return key.double().masked_fill(~shape.valid, float("-inf"))


def _order(key: torch.Tensor) -> torch.Tensor:
    """Flat indices of the finite entries of ``key``, best first (ties: canonical order)."""
    flat = key.flatten()
    finite = torch.nonzero(torch.isfinite(flat)).flatten()
    order = torch.argsort(flat[finite], descending=True, stable=True)
    return finite[order]


def top_edges(
    shape: GraphShape, key: torch.Tensor, n: int, prune_dangling: bool = True
) -> torch.Tensor:
    """``[n_writers, n_receivers]`` bool: the ``n`` best edges by ``key`` (fewer if fewer are
    finite), then without dangling edges if asked."""
    order = _order(key)[: max(n, 0)]
    keep = torch.zeros(shape.n_writers * shape.n_receivers, dtype=torch.bool)
    keep[order] = True
    keep = keep.view(shape.n_writers, shape.n_receivers)
    if prune_dangling:
        graph = Graph(shape)
        graph.edge_in_graph = keep
        keep = graph.prune_dangling().edge_in_graph
    return keep


def cut_to_count(
    shape: GraphShape, key: torch.Tensor, target: int, prune_dangling: bool = True
) -> torch.Tensor:
    """The top-``n`` cut whose edge count (after pruning dangling edges) is closest to
    ``target`` (ties: the larger circuit). Pruning is monotone in ``n``, so this is a binary
    search over ``n``."""
    n_finite = int(torch.isfinite(key).sum())

    def count(n: int) -> int:
        return int(top_edges(shape, key, n, prune_dangling).sum())

    lo, hi = 0, n_finite  # smallest n with count(n) >= target lies in [lo, hi]
    if count(hi) <= target:
        return top_edges(shape, key, hi, prune_dangling)
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    above, below = count(lo), count(max(lo - 1, 0))
    best = lo if above - target <= target - below else max(lo - 1, 0)
    return top_edges(shape, key, best, prune_dangling)


def _receiver_writer(shape: GraphShape) -> torch.Tensor:
    """For each receiver port, the writer index of its node (-1 for logits)."""
    out = torch.full((shape.n_receivers,), -1, dtype=torch.long)
    for layer in range(shape.n_layers):
        for which in QKV:
            for head in range(shape.n_heads):
                out[shape.qkv_receiver(layer, head, which)] = shape.head_writer(layer, head)
        out[shape.mlp_receiver(layer)] = shape.mlp_writer(layer)
    return out


def _ep_reader(receiver: str) -> str:
    if receiver == "logits":
        return "resid_post"
    match = re.fullmatch(r"(a\d+\.h\d+)<([qkv])>", receiver)
    return f"{match.group(1)}.{match.group(2)}" if match else receiver


def _mib_receiver(reader: str) -> str:
    if reader == "resid_post":
        return "logits"
    match = re.fullmatch(r"(a\d+\.h\d+)\.([qkv])", reader)
    return f"{match.group(1)}<{match.group(2)}>" if match else reader
