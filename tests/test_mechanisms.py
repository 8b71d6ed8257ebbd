"""The mechanism stage's measurements, checked where the answer is known: hand-built (planted)
mechanisms, hand-made attention patterns, and two implementations of one quantity."""

from __future__ import annotations

import pytest
import torch
from conftest import task_data

from circuitbench import head_scores
from circuitbench import mechanisms as mech
from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph
from circuitbench.models.loading import load_text_tokenizer
from circuitbench.models.planted import SPECS
from circuitbench.patching import Ablation, MeanScope
from circuitbench.tasks import TASKS, make_task
from circuitbench.tasks.probes import PROBES, probe_prompts

OPTIONS = mech.MechanismOptions(n_probe=24, n_random=24, random_length=7, batch_size=16)


def planted_tokenizer(builds, name):
    return load_text_tokenizer(str(builds[name] / "model" / "hf"), prepend_bos=True)


def test_head_scores_of_a_hand_made_pattern():
    """A layer whose head 0 attends to the previous token, head 1 to the token after the earlier
    occurrence, head 2 to the earlier occurrence itself."""
    length, offset = 5, 1
    n = offset + 2 * length
    pattern = torch.zeros(1, 3, n, n)
    for q in range(n):
        pattern[0, 0, q, max(q - 1, 0)] = 1
        first = q - length
        pattern[0, 1, q, first + 1 if first >= offset else q] = 1
        pattern[0, 2, q, first if first >= offset else q] = 1
    scores = head_scores.attention_scores([pattern], length, offset)
    assert scores["previous_token"][0].tolist() == [1, 0, 0]
    assert scores["induction"][0, 1] == 1 and scores["induction"][0, 0] == 0
    assert scores["duplicate_token"][0, 2] == 1 and scores["duplicate_token"][0, 1] == 0


def test_planted_induction_heads_are_found_and_composed(builds, planted_models):
    model = planted_models["induction"]
    scores = mech.random_block_scores(model, planted_tokenizer(builds, "induction"), OPTIONS)
    (pl, ph), (il, ih) = SPECS["induction"].PREV_HEAD, SPECS["induction"].INDUCTION_HEAD
    assert scores["previous_token"][pl, ph] >= 0.5
    assert scores["induction"][il, ih] >= 0.5
    # No other head passes either threshold: the classes are the hand-built ones.
    assert (scores["previous_token"] >= 0.5).sum() == 1 and (scores["induction"] >= 0.5).sum() == 1
    circuit = Graph.from_heads(model.shape, {pl: [ph], il: [ih]})
    circuit.meta = {
        "heads": {str(pl): [ph], str(il): [ih]},
        "roles": {f"{il}.{ih}": ["logits"], f"{pl}.{ph}": [f"a{il}.h{ih}<k>"]},
    }
    pp = mech.pp_structure(circuit)
    assert pp["layer_span"] == 2 and pp["via_qkv"] == {f"{pl}.{ph}": [f"a{il}.h{ih}<k>"]}
    found = mech.compositions(scores, pp, 0.5)
    assert len(found) == 1 and found[0]["selected_by_pp_through_k"]
    assert found[0]["previous_token_head"] == f"{pl}.{ph}"
    # Selected through the query instead: not the K-composition.
    circuit.meta["roles"][f"{pl}.{ph}"] = [f"a{il}.h{ih}<q>"]
    assert not mech.compositions(scores, mech.pp_structure(circuit), 0.5)[0][
        "selected_by_pp_through_k"
    ]


def test_the_planted_copy_head_copies(builds, planted_models):
    tokenizer = planted_tokenizer(builds, "copy")
    spec = SPECS["copy"]
    ids = [tokenizer.ids(" " + word)[0] for word in (*spec.COLORS, *spec.ANIMALS)]
    copy = mech.copy_scores(planted_models["copy"], ids)
    layer, head = spec.COPY_HEAD
    assert copy["copy"][layer, head] >= 0.9
    assert copy["copy"][layer, head] == copy["copy"].max()
    assert copy["negative_copy"][layer, head] == 0


def test_ioi_classes_follow_their_rules():
    shape = (2, 3)
    zeros = lambda: torch.zeros(shape)  # noqa: E731
    attention = {k: zeros() for k in ("end_to_io", "end_to_s1", "end_to_s2", "s2_to_s1")}
    attention["s2_to_s1_plus_1"] = zeros()
    attention["s1_plus_1_to_s1"] = zeros()
    attention["end_to_io"][1, 0] = attention["end_to_io"][1, 1] = 0.6
    attention["end_to_s2"][1, 2] = 0.5
    attention["end_to_s2"][1, 0] = 0.5  # a name mover that also attends to S2 is a name mover
    attention["s2_to_s1"][0, 1] = 0.4
    attention["s2_to_s1_plus_1"][0, 2] = 0.4
    copy = {"copy": zeros(), "negative_copy": zeros()}
    copy["copy"][1, 0] = 0.95
    copy["negative_copy"][1, 1] = 0.8
    scores = {k: zeros() for k in ("previous_token", "induction", "duplicate_token")}
    scores["previous_token"][0, 0] = 0.9
    scores["induction"][0, 0] = 0.9  # in layer 0 an induction score is not an induction head
    classes = mech.ioi_classes(attention, copy, scores, mech.MechanismOptions())
    assert classes[(1, 0)] == ["name_mover"]
    assert classes[(1, 1)] == ["negative_name_mover"]
    assert classes[(1, 2)] == ["s_inhibition"]
    assert classes[(0, 1)] == ["duplicate_token"]
    assert classes[(0, 2)] == ["induction"]
    assert classes[(0, 0)] == ["previous_token"]


def test_layer_ablation_costs_equal_evaluating_the_circuit_without_them(model, toy_tokenizer):
    data = task_data(toy_tokenizer, n=16, split="test")
    rows = {row["ablated"]: row for row in mech.ablation_rows(model, data, batch_size=8)}
    cache = model.build_cache(data, Ablation.MEAN, "abc", MeanScope.TEMPLATE, 8)
    for layer in range(model.shape.n_layers):
        graph = Graph.full(model.shape)
        graph.edge_in_graph[mech.writers_of_layer(model, layer)] = False
        row = evaluate_graph(model, cache, graph)
        expected = 1 - row["metric"] / row["full_metric"]
        assert rows[f"layer {layer}"]["cost"] == pytest.approx(expected, abs=1e-5)
    assert set(rows) >= {"layers >= 1", "heads -> MLPs", "heads -> logits"}


@pytest.mark.parametrize("task_name", sorted(PROBES))
def test_every_probe_tokenizes_for_the_toy_vocabulary(task_name, toy_tokenizer):
    task = make_task(task_name)
    test = task_data(toy_tokenizer, task_name, n=12, split="test")
    data = mech.probe_data(task, toy_tokenizer, OPTIONS, test)
    assert set(data) == set(PROBES[task_name])
    for probe, split in data.items():
        assert len(split) == OPTIONS.n_probe and split.meta["dropped"] == {}, probe
        assert (split.accuracy(torch.zeros(len(split), len(toy_tokenizer.hf))) <= 1).all()


def test_probes_are_deterministic_and_shift_positions(toy_tokenizer):
    task = TASKS["ioi"]()
    first = probe_prompts(task, "position_shifted", 20, 3, toy_tokenizer)
    assert first == probe_prompts(task, "position_shifted", 20, 3, toy_tokenizer)
    assert all(p.info["prefix"] and p.clean.startswith(p.info["prefix"]) for p in first)
    for prompt in first:  # the named positions moved with the text
        assert prompt.clean[prompt.positions["IO"] :].startswith(prompt.info["IO"])
    twice = probe_prompts(task, "io_twice", 20, 3, toy_tokenizer)
    for prompt in twice:
        assert (
            prompt.clean.count(prompt.info["IO"]) == 2 and prompt.target == " " + prompt.info["IO"]
        )
        assert prompt.clean[prompt.positions["S2"] :].startswith(prompt.info["S"])
