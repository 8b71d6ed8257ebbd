"""The computation graph: names, counts, file formats, head view, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_random_gpt2

from circuitbench.graph import Graph, GraphFormatError, GraphShape
from circuitbench.models.loading import load_model
from circuitbench.patching import PatchedModel


@pytest.mark.parametrize(
    ("layers", "heads", "edges", "nodes", "receivers"),
    [(12, 12, 32_491, 158, 445), (4, 4, 479, 22, 53), (2, 4, 110, 12, 27), (6, 8, 3_628, 56, 151)],
)
def test_counts_follow_the_reference_table(layers, heads, edges, nodes, receivers):
    shape = GraphShape(layers, heads)
    assert (shape.n_edges, shape.n_nodes, shape.n_receivers) == (edges, nodes, receivers)
    assert len(shape.edge_index) == edges


def test_gpt2_small_shaped_model_has_the_reference_graph(tmp_path, toy_tokenizer):
    # Random weights, built here; a small vocabulary keeps it cheap (the graph ignores it).
    directory = save_random_gpt2(tmp_path / "g", toy_tokenizer, n_layer=12, n_head=12, n_embd=96)
    model = PatchedModel(load_model(str(directory), device="cpu"))
    assert model.shape.n_nodes == 158
    assert model.shape.n_edges == 32_491
    assert Graph.full(model.shape).n_edges_in_graph == 32_491


def test_edge_names_follow_eap_ig():
    shape = GraphShape(2, 2)
    names = list(shape.edge_index)
    assert "input->a0.h1<q>" in names and "a0.h0->a1.h1<k>" in names
    assert "a1.h0->m1" in names and "m1->logits" in names
    assert "a1.h0->a1.h1<q>" not in names  # same layer: not upstream of a head
    assert "m0->a0.h0<v>" not in names


def random_graph(shape: GraphShape, seed: int = 0) -> Graph:
    generator = torch.Generator().manual_seed(seed)
    graph = Graph(shape, d_model=64, meta={"method": "test", "seed": seed})
    graph.edge_scores = (
        torch.randn(shape.n_writers, shape.n_receivers, generator=generator, dtype=torch.float64)
        * shape.valid
    )
    graph.edge_in_graph = (
        torch.rand(shape.n_writers, shape.n_receivers, generator=generator) < 0.3
    ) & shape.valid
    graph.node_in_graph = torch.rand(shape.n_writers, generator=generator) < 0.5
    graph.node_scores[::2] = torch.randn(
        len(graph.node_scores[::2]), generator=generator, dtype=torch.float64
    )
    return graph


def test_mib_json_round_trip_is_exact(tmp_path):
    graph = random_graph(GraphShape(3, 4))
    path = tmp_path / "c.json"
    graph.save(path)
    back = Graph.load(path)
    assert back.dumps() == path.read_text()
    assert torch.equal(back.edge_scores, graph.edge_scores)
    assert torch.equal(back.edge_in_graph, graph.edge_in_graph)
    assert torch.equal(back.node_in_graph, graph.node_in_graph)
    assert torch.equal(back.node_scores.isnan(), graph.node_scores.isnan())
    # A file written elsewhere (other key order, no indentation) reads to the same content.
    payload = json.loads(path.read_text())
    shuffled = {
        "edges": dict(reversed(payload["edges"].items())),
        "nodes": payload["nodes"],
        "cfg": payload["cfg"],
    }
    assert Graph.from_mib(shuffled).to_mib()["edges"] == payload["edges"]


def test_edge_pruning_edges_round_trip():
    shape = GraphShape(3, 4)
    graph = Graph.from_heads(shape, {0: [1], 2: [0, 3]})
    expected = graph.prune_dangling().edge_in_graph
    for embedding_nodes in (True, False):
        pairs = json.loads(json.dumps(graph.to_edge_pruning(embedding_nodes=embedding_nodes)))
        back = Graph.from_edge_pruning(pairs, shape, embedding_nodes=embedding_nodes)
        assert torch.equal(back.edge_in_graph, expected), embedding_nodes
    assert ["tok_embeds", "a0.h1.q"] in graph.to_edge_pruning()
    assert ["m2", "resid_post"] in graph.to_edge_pruning()
    with pytest.raises(GraphFormatError, match="not in a"):
        Graph.from_edge_pruning([["a2.h0", "a1.h0.q"]], shape)
    with pytest.raises(GraphFormatError, match="list of"):
        Graph.from_edge_pruning({"edges": []}, shape)


def test_head_view_round_trip_and_node_induced_edges():
    shape = GraphShape(4, 4)
    heads = {0: [1, 3], 2: [0], 3: [2]}
    graph = Graph.from_heads(shape, heads)
    assert graph.heads() == heads
    index = shape.edge_index
    assert graph.edge_in_graph[index["a0.h1->a2.h0<v>"]]
    assert not graph.edge_in_graph[index["a0.h0->a2.h0<v>"]]  # 0.0 is not kept
    assert graph.edge_in_graph[index["input->m1"]] and graph.edge_in_graph[index["m0->logits"]]
    assert Graph.full(shape).heads() == {layer: list(range(4)) for layer in range(4)}
    assert Graph.empty(shape).heads() == {}


def test_dangling_edges_are_pruned():
    shape = GraphShape(2, 2)
    graph = Graph.empty(shape)
    index = shape.edge_index
    graph.edge_in_graph[index["input->a0.h0<q>"]] = True  # a0.h0 sends nowhere: dangling
    graph.edge_in_graph[index["a0.h1->logits"]] = True  # a0.h1 receives nothing: dangling
    graph.edge_in_graph[index["input->m0"]] = True
    graph.edge_in_graph[index["m0->logits"]] = True  # a live path
    pruned = graph.prune_dangling()
    assert pruned.n_edges_in_graph == 2
    assert pruned.heads() == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("edges"), "needs top-level"),
        (lambda p: p["cfg"].update(n_layers="x"), "integer n_layers"),
        (
            lambda p: p["edges"].update({"a9.h0->logits": {"score": 1.0, "in_graph": True}}),
            "do not exist",
        ),
        (lambda p: p["edges"].pop(next(iter(p["edges"]))), "has 109 edges"),
        (lambda p: next(iter(p["edges"].values())).update(in_graph="yes"), "in_graph must be"),
        (lambda p: next(iter(p["edges"].values())).pop("score"), "numeric 'score'"),
        (lambda p: p["nodes"].pop("m0"), "'nodes' must name"),
    ],
)
def test_malformed_files_are_clear_errors(mutate, message):
    payload = Graph.full(GraphShape(2, 4)).to_mib()
    mutate(payload)
    with pytest.raises(GraphFormatError, match=message):
        Graph.from_mib(payload)


def test_graph_for_another_model_shape_is_rejected(tmp_path):
    graph = Graph.full(GraphShape(2, 4))
    with pytest.raises(GraphFormatError, match="2x4 model, the model is 3x4"):
        graph.check_shape(3, 4)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GraphFormatError, match="not valid JSON"):
        Graph.load(bad)
    with pytest.raises(GraphFormatError, match="outside"):
        Graph.from_heads(GraphShape(2, 4), {5: [0]})


def test_circuit_files_carry_no_measurements():
    graph = Graph.full(GraphShape(2, 2))
    graph.meta = {
        "method": "ep",
        "steps": 300,
        "cost": {"wall_seconds": 1.5, "seconds_per_step": 0.01, "forward_passes": 12},
        "runs": [{"cpu_seconds": 2.0, "sparsity": 0.9}],
        "peak_memory_mb": 100.0,
    }
    meta = Graph.from_mib(json.loads(graph.dumps())).meta
    assert meta == {
        "method": "ep",
        "steps": 300,
        "cost": {"forward_passes": 12},
        "runs": [{"sparsity": 0.9}],
    }
    assert graph.meta["cost"]["wall_seconds"] == 1.5  # the object itself keeps them
