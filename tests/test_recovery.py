"""Recovery metrics against a known circuit: hand-computed overlaps, ROC points and AUCs, and the
recovery row of a small hand-built graph."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from circuitbench.graph import Graph, GraphShape
from circuitbench.recovery import (
    edge_universe,
    head_matrix,
    overlap,
    recovery,
    roc_auc,
    roc_curves,
    roc_points,
)


def flags(n: int, on: list[int]) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[on] = True
    return out


def test_overlap_counts_and_ratios_by_hand():
    # found {0,1,2}, truth {1,2,3}, 10 items: tp 2, fp 1, fn 1, tn 6.
    result = overlap(flags(10, [0, 1, 2]), flags(10, [1, 2, 3]))
    assert (result.tp, result.fp, result.fn, result.tn) == (2, 1, 1, 6)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.iou == pytest.approx(2 / 4)
    assert result.fpr == pytest.approx(1 / 7)
    row = result.as_dict("edges_")
    assert row["edges_found"] == 3 and row["edges_true"] == 3


def test_overlap_within_a_universe_and_degenerate_cases():
    universe = flags(10, [0, 1, 2, 3, 4])
    result = overlap(flags(10, [0, 1]), flags(10, [1]), universe)
    assert (result.tp, result.fp, result.fn, result.tn) == (1, 1, 0, 3)
    empty = overlap(flags(5, []), flags(5, [2]))
    assert math.isnan(empty.precision) and empty.recall == 0 and empty.iou == 0
    assert math.isnan(overlap(flags(3, []), flags(3, [])).iou)
    with pytest.raises(ValueError, match="outside the universe"):
        overlap(flags(10, [7]), flags(10, [1]), universe)
    with pytest.raises(ValueError, match="differ"):
        overlap(flags(3, []), flags(4, []))


def test_roc_points_and_auc_by_hand():
    # Positives score 0.9 and 0.7, negatives 0.8 and 0.6: 3 of 4 pairs ordered, AUC 0.75.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([True, False, True, False])
    fpr, tpr = roc_points(scores, labels)
    assert fpr == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, False])) == 1.0
    assert roc_auc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, False])) == 0.0


def test_tied_scores_enter_together_and_count_half():
    # The positive ties with one negative and beats the other: AUC = 1/2 + (1/2)/2 = 0.75.
    scores, labels = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False])
    assert roc_points(scores, labels) == ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    # All scores equal: the diagonal.
    assert roc_auc(torch.zeros(6), flags(6, [0, 3])) == pytest.approx(0.5)


def test_auc_equals_the_pairwise_probability_on_random_tied_scores():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (40,), generator=generator).double()
    labels = torch.rand(40, generator=generator) < 0.3
    pos, neg = scores[labels].tolist(), scores[~labels].tolist()
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert roc_auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))


def test_auc_needs_both_classes_and_no_nan():
    assert math.isnan(roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool)))
    assert math.isnan(roc_auc(torch.ones(3), torch.zeros(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="NaN"):
        roc_points(torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))


def test_head_paths_universe_by_hand():
    shape = GraphShape(2, 2)
    universe = edge_universe(shape, "head_paths")
    # Layer 1's 2 heads x q/k/v read layer 0's 2 heads (12 edges); logits read all 4 heads.
    assert int(universe.sum()) == 12 + 4
    names = {name for name, (w, r) in shape.edge_index.items() if universe[w, r]}
    assert "a0.h1->a1.h0<k>" in names and "a1.h1->logits" in names
    assert not any(n.startswith(("input", "m")) or "->m" in n for n in names)
    assert torch.equal(edge_universe(shape, "all"), shape.valid)
    with pytest.raises(ValueError, match="universe"):
        edge_universe(shape, "heads")


def graph_with(shape: GraphShape, edges: list[str], scores: dict[str, float] | None = None):
    graph = Graph(shape)
    for edge in edges:
        graph.edge_in_graph[shape.edge_index[edge]] = True
    for edge, value in (scores or {}).items():
        graph.edge_scores[shape.edge_index[edge]] = value
    return graph


def test_recovery_row_of_a_small_graph_by_hand():
    shape = GraphShape(2, 2)
    truth = graph_with(
        shape, ["input->a0.h1<v>", "a0.h1->a1.h0<k>", "input->a1.h0<q>", "a1.h0->logits"]
    )
    found = graph_with(
        shape,
        [
            "input->a1.h0<q>",
            "a1.h0->logits",
            "input->a0.h0<v>",
            "a0.h0->logits",
            "a0.h1->a1.h1<q>",  # dangling: a0.h1 is never reached, a1.h1 sends nothing
        ],
    )
    for (layer, head), value in {(1, 0): 0.9, (0, 1): -0.8, (0, 0): 0.5}.items():
        found.node_scores[shape.head_writer(layer, head)] = value  # a1.h1: no score
    row = recovery(found, truth)
    # Edges (dangling pruned): tp 2, fp 2, fn 2 over the 46 edges of a 2x2 model.
    assert (row["edges_tp"], row["edges_fp"], row["edges_fn"]) == (2, 2, 2)
    assert row["edges_precision"] == 0.5 and row["edges_recall"] == 0.5
    assert row["edges_iou"] == pytest.approx(2 / 6)
    assert row["edges_fpr"] == pytest.approx(2 / (shape.n_edges - 4))
    # Heads: found {a0.h0, a1.h0}, truth {a0.h1, a1.h0}.
    assert (row["heads_tp"], row["heads_fp"], row["heads_fn"]) == (1, 1, 1)
    assert row["heads_iou"] == pytest.approx(1 / 3)
    # |0.9| and |-0.8| (true) above 0.5 and the unscored head (0): AUC 1. No edge universe.
    assert row["head_auc"] == 1.0
    assert math.isnan(row["edge_auc"]) and row["edge_score_universe"] == ""
    assert set(roc_curves(found, truth)) == {"heads"}


def test_edge_auc_over_the_declared_universe():
    shape = GraphShape(2, 2)
    truth = graph_with(shape, ["input->a0.h1<v>", "a0.h1->a1.h0<k>", "a1.h0->logits"])
    scores = {"a0.h1->a1.h0<k>": -0.7, "a1.h0->logits": 0.2, "a0.h0->logits": 0.4}
    found = graph_with(shape, [], scores)
    found.meta["edge_score_universe"] = "head_paths"
    row = recovery(found, truth)
    # Universe: 16 head paths with 2 positives (0.7, 0.2) and 14 negatives (0.4, then 13 zeros):
    # pairs ordered: 0.7 beats all 14, 0.2 beats the 13 zeros: (14 + 13) / 28.
    assert row["edge_auc_positives"] == 2
    assert row["edge_auc"] == pytest.approx(27 / 28)
    found.meta["edge_score_universe"] = "all"
    # Over all 46 edges the input edge (score 0) is a third positive, tied with the 42 zeros
    # among the 43 negatives: (43 + 42 + 42 / 2) / (3 * 43).
    assert shape.n_edges == 46
    assert recovery(found, truth)["edge_auc"] == pytest.approx(106 / 129)


def test_head_matrix_and_shape_check():
    shape = GraphShape(3, 4)
    matrix = head_matrix(shape, {0: [1], 2: [0, 3]})
    assert matrix.sum() == 3 and matrix[2, 3] and not matrix[1].any()
    with pytest.raises(ValueError, match="model"):
        recovery(Graph(GraphShape(2, 2)), Graph(shape))


def test_signed_rankings_are_scored_as_the_method_ranks():
    from circuitbench.graph import Graph, GraphShape
    from circuitbench.recovery import recovery

    shape = GraphShape(1, 4)
    truth = Graph.from_heads(shape, {0: [0]})
    found = Graph.from_heads(shape, {0: [0]})
    # The true head scores highest, a wrong head has the largest magnitude (negative).
    for head, value in enumerate([2.0, -5.0, 0.5, 0.1]):
        found.node_scores[shape.head_writer(0, head)] = value
    assert recovery(found, truth)["head_auc"] < 1.0  # |score| ranks head 1 first
    found.meta["score_ranking"] = "signed"
    assert recovery(found, truth)["head_auc"] == 1.0
