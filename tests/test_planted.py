"""Planted ground-truth models: they load through TransformerBridge and solve their task; their
truth is verified with our patched forward (and the check can fail); path patching's, EAP's,
EAP-IG's, Edge Pruning's and HAP's circuits are scored against it; the CLI stage writes its
artifacts."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import PLANTED

from circuitbench.cli import main
from circuitbench.graph import Graph, ranking_key, top_edges
from circuitbench.methods.base import MethodData
from circuitbench.methods.eap import EAPConfig
from circuitbench.methods.hap import subgraph_size
from circuitbench.methods.registry import METHODS, method_options
from circuitbench.models.planted import (
    SPECS,
    TruthCriteria,
    build_planted,
    truth_graph,
    verify_truth,
)
from circuitbench.options import OptionsError
from circuitbench.recovery import recovery
from circuitbench.report.planted import METHOD_ORDER
from circuitbench.tasks import TASKS, extra_metrics, make_task, read_task_data

SIZES = {"train": 40, "validation": 40, "test": 64}  # as the builds fixture (conftest) makes them


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is several times faster than two on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_at_least_three_planted_models_with_different_structures():
    shapes = {
        name: (spec.arch.n_layers, spec.arch.n_heads, spec.truth_edges)
        for name, spec in SPECS.items()
    }
    assert len(shapes) >= 3
    assert len({edges for _, _, edges in shapes.values()}) == len(shapes)


@pytest.mark.parametrize("name", PLANTED)
def test_loads_through_the_bridge_and_solves_its_task(builds, planted_models, name):
    data = read_task_data(builds[name] / "data" / "test.json")
    hf_model, _, _ = build_planted(name, seed=0)
    with torch.no_grad():
        bridge_logits = planted_models[name].forward(data.clean_tokens)
        hf_logits = hf_model(data.clean_tokens).logits
    assert (bridge_logits - hf_logits).abs().max() < 1e-3  # the saved model is the built one
    end = data.logits_at_end(bridge_logits)
    assert data.accuracy(end).mean() == 1.0
    with torch.no_grad():
        corrupt_end = data.logits_at_end(
            planted_models[name].forward(data.corrupt_tokens["resample"])
        )
    assert data.metric(end).mean() > 5 and data.metric(corrupt_end).mean() < -5


@pytest.mark.parametrize("name", PLANTED)
def test_every_pair_changes_the_answer_at_equal_length(builds, name):
    data = read_task_data(builds[name] / "data" / "train.json")
    corrupt = data.corrupt_tokens["resample"]
    assert corrupt.shape == data.clean_tokens.shape
    assert (data.answer_ids[:, 0] != data.distractor_ids[:, 0]).all()
    assert ((corrupt != data.clean_tokens).sum(1) >= 2).all()
    assert data.meta["task"] == "planted" and data.meta["task_options"]["model"] == name


@pytest.mark.parametrize("name", PLANTED)
def test_the_truth_alone_reproduces_the_model_and_every_true_edge_matters(
    builds, planted_models, name
):
    data = read_task_data(builds[name] / "data" / "test.json")
    truth = Graph.load(builds[name] / "truth.json")
    assert truth.n_edges_in_graph == len(SPECS[name].truth_edges)
    check = verify_truth(planted_models[name], data, truth, TruthCriteria(), other_examples=16)
    assert check["truth_faithfulness"] >= 0.95
    assert len(check["edges"]) == truth.n_edges_in_graph
    for edge in check["edges"]:
        assert edge["drop_from_truth"] >= 0.05, edge
        assert edge["drop_from_full"] >= 0.05, edge
    assert check["max_other_effect"] <= 0.01
    assert check["passed"]
    # The build step ran the same check and recorded it.
    recorded = json.loads((builds[name] / "verification.json").read_text())
    assert recorded["passed"] and recorded["n_true_edges"] == truth.n_edges_in_graph


@pytest.mark.parametrize("name", PLANTED)
def test_the_truth_check_fails_for_a_wrong_truth(builds, planted_models, name):
    data = read_task_data(builds[name] / "data" / "test.json").select(slice(0, 32))
    model, shape = planted_models[name], planted_models[name].shape
    truth = Graph.load(builds[name] / "truth.json")
    # Missing a true edge: the rest does not reproduce the model.
    missing = truth.copy()
    w, r = shape.edge_index[SPECS[name].truth_edges[-1]]
    missing.edge_in_graph[w, r] = False
    check = verify_truth(model, data, missing, TruthCriteria(), other_examples=8)
    assert check["truth_faithfulness"] < 0.95 and not check["passed"]
    # An extra edge that carries nothing: removing it does not degrade the circuit.
    padded = truth.copy()
    extra = next(
        n for n in shape.edge_index if n.startswith("input->") and n not in SPECS[name].truth_edges
    )
    padded.edge_in_graph[shape.edge_index[extra]] = True
    check = verify_truth(model, data, padded, TruthCriteria(), other_examples=8)
    assert check["min_degradation"] < 0.05 and not check["checks"]["min_degradation"]


@pytest.mark.parametrize("name", PLANTED)
def test_distractors_write_input_dependent_signals(builds, planted_models, name):
    """Every head and MLP writes something that differs between clean and corrupted prompts,
    so the distractors are real: only the truth's readers make them irrelevant."""
    data = read_task_data(builds[name] / "data" / "test.json").select(slice(0, 16))
    model = planted_models[name]
    with torch.no_grad():
        clean, _ = model.record_writers(data.clean_tokens)
        corrupt, _ = model.record_writers(data.corrupt_tokens["resample"])
    difference = (clean - corrupt).abs().amax(dim=(0, 1, 3))  # per writer
    assert (difference[1:] > 1e-2).all(), difference  # every head and MLP (not `input` only)


@pytest.mark.slow
@pytest.mark.parametrize("name", PLANTED)
def test_no_single_edge_outside_the_truth_matters(builds, planted_models, name):
    data = read_task_data(builds[name] / "data" / "test.json")
    truth = Graph.load(builds[name] / "truth.json")
    check = verify_truth(
        planted_models[name], data, truth, TruthCriteria(), "edge", other_examples=8
    )
    assert check["other_groups"] == planted_models[name].shape.n_edges - truth.n_edges_in_graph
    assert check["max_other_effect"] <= 1e-3


def test_planted_splits_evaluate_without_joining_the_papers_tasks(builds):
    """Evaluation needs no task object: a planted split (whose task is not in the registry)
    has no extra metrics, and the registry stays the papers' five tasks."""
    assert "planted" not in TASKS
    with pytest.raises(KeyError, match="unknown task 'planted'"):
        make_task("planted")
    data = read_task_data(builds["lookup"] / "data" / "test.json")
    assert data.task == "planted"
    assert extra_metrics(data, torch.zeros(len(data), 10)) == {}


def test_building_is_deterministic_and_the_seed_moves_only_the_junk():
    first, _, _ = build_planted("copy", seed=0)
    again, _, _ = build_planted("copy", seed=0)
    other, _, _ = build_planted("copy", seed=1)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # The circuit head's weights do not depend on the seed.
    head = slice(2 * 16, 3 * 16)  # a1.h2's query columns in c_attn
    key = "transformer.h.1.attn.c_attn.weight"
    assert torch.equal(a[key][:, head], c[key][:, head])
    assert truth_graph("copy").n_edges_in_graph == 4


def run_method(model, build, method, sections=None, circuit_edges=None):
    """``method`` from the registry on a planted build, as planted-run calls it."""
    splits = _splits(build)
    data = MethodData(
        splits["train"], splits["validation"], "resample", circuit_edges, progress=False
    )
    return METHODS[method](model, data, method_options(method, sections or {}))


@pytest.mark.parametrize("name", PLANTED)
def test_path_patching_recovers_heads_scored_against_the_truth(builds, planted_models, name):
    sections = {"path_patching": {"n_prompts": 40}}
    graph = run_method(planted_models[name], builds[name], "path_patching", sections).graph
    row = recovery(graph, Graph.load(builds[name] / "truth.json"))
    # Dense path patching finds no distractor head, and its scores rank every true head first.
    assert row["heads_found"] >= 1 and row["heads_precision"] == 1.0
    assert row["head_auc"] == 1.0
    # APP's sender rule cannot select a lone outlier among 4 heads (z <= 3/sqrt(4) < 2), so the
    # induction model's previous-token head is missed; the others are recovered exactly.
    assert row["heads_recall"] == (0.5 if name == "induction" else 1.0)
    assert row["edges_recall"] > 0 and 0 < row["edges_precision"] < 1  # node-induced edges


def _splits(build):
    return {s: read_task_data(build / "data" / f"{s}.json") for s in SIZES}


def _mann_whitney(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(s+ > s-) + P(s+ = s-) / 2, over every positive-negative pair (independent of the ROC)."""
    positive, negative = scores[labels], scores[~labels]
    greater = (positive[:, None] > negative[None, :]).double().mean()
    equal = (positive[:, None] == negative[None, :]).double().mean()
    return float(greater + equal / 2)


@pytest.mark.parametrize("name", PLANTED)
def test_eap_and_eap_ig_are_cut_to_the_truth_size_and_scored(builds, planted_models, name):
    truth = Graph.load(builds[name] / "truth.json")
    n_true = truth.n_edges_in_graph
    shape = planted_models[name].shape
    rows = {}
    for method in ("eap", "eap_ig"):
        sections = {"eap": {"batch_size": 16, "curve_sparsities": [0.5]}}
        if method == "eap_ig":
            sections["eap_ig"] = {"steps": 5}
        graph = run_method(planted_models[name], builds[name], method, sections, n_true).graph
        row = rows[method] = recovery(graph, truth)
        assert graph.meta["method"] == method and graph.meta["circuit_edges"] == n_true
        assert graph.meta["choices"].get("eap_ig.steps") == (5 if method == "eap_ig" else None)
        # The cut: no dangling edge, and of all top-n cuts (after dangling pruning) the one whose
        # size is closest to the truth's; the edges are scored over every edge.
        assert graph.prune_dangling().n_edges_in_graph == graph.n_edges_in_graph
        found = row["edges_found"]
        assert found == graph.n_edges_in_graph > 0
        key = ranking_key(graph.edge_scores, shape, "absolute")
        n, size = 0, 0
        while size <= n_true + abs(found - n_true):  # sizes grow with n
            size = int(top_edges(shape, key, n).sum())
            assert abs(found - n_true) <= abs(size - n_true), (method, n, size)
            n += 1
        for key in ("edges_precision", "edges_recall", "heads_precision", "heads_recall"):
            assert 0.0 <= row[key] <= 1.0, (method, key)
        labels = (truth.edge_in_graph & shape.valid)[shape.valid]
        expected = _mann_whitney(graph.edge_scores[shape.valid].abs(), labels)
        assert row["edge_auc"] == pytest.approx(expected, abs=1e-12)
        assert row["edge_auc_positives"] == n_true and row["head_auc"] == row["head_auc"]
    # EAP-IG recovers every planted circuit exactly and ranks the true edges first.
    assert rows["eap_ig"]["edges_precision"] == rows["eap_ig"]["edges_recall"] == 1.0
    assert rows["eap_ig"]["edge_auc"] >= 0.99
    assert rows["eap"]["edge_auc"] > 0.5


def test_eap_misses_the_query_and_key_of_a_saturated_head_and_eap_ig_does_not(
    builds, planted_models
):
    """The copy head's attention has a logit margin of 20: at the clean input its softmax is
    saturated, so EAP's gradient through q and k is ~0. EAP-IG integrates from the corrupted input,
    through unsaturated attention."""
    truth = Graph.load(builds["copy"] / "truth.json")
    shape = planted_models["copy"].shape
    scores = {}
    for method in ("eap", "eap_ig"):
        scores[method] = run_method(
            planted_models["copy"], builds["copy"], method, {}, 4
        ).graph.edge_scores
    for edge in ("input->a1.h2<q>", "input->a1.h2<k>"):
        assert edge in SPECS["copy"].truth_edges
        w, r = shape.edge_index[edge]
        assert abs(scores["eap"][w, r]) < 1e-3 < 1.0 < abs(scores["eap_ig"][w, r]), edge
    assert truth.n_edges_in_graph == 4


def test_edge_pruning_and_hap_train_toward_the_truth_size(builds, planted_models):
    truth = Graph.load(builds["copy"] / "truth.json")
    model, shape = planted_models["copy"], planted_models["copy"].shape
    quick = {"steps": 30, "sparsity_warmup": 20, "lr_warmup": 5, "batch_size": 16, "seed": 0}
    options = {"eap": {"batch_size": 16}, "edge_pruning": quick, "hap": {"keep_fraction": 0.2}}
    ep = run_method(model, builds["copy"], "edge_pruning", {"edge_pruning": quick}, 4).graph
    # With input edges masked (the default), every edge counts toward the sparsity.
    assert ep.meta["target"] == pytest.approx(1 - 4 / shape.n_edges)
    assert ep.meta["choices"]["edge_pruning.steps"] == 30
    assert ep.meta["edge_sparsity"] == pytest.approx(1 - ep.n_edges_in_graph / shape.n_edges)
    row = recovery(ep, truth)
    assert row["edge_auc"] == row["edge_auc"]  # soft masks are scores over every edge
    soft = ep.edge_scores[shape.valid]
    assert ((soft >= 0) & (soft <= 1)).all()
    assert (ep.edge_scores[ep.edge_in_graph] > 0).all()  # kept edges have open masks

    hap = run_method(model, builds["copy"], "hap", options, 4).graph
    subgraph = torch.zeros_like(shape.valid)
    for w, r in hap.meta["subgraph"]:
        subgraph[w, r] = True
    assert int(subgraph.sum()) == hap.meta["subgraph_edges"] == subgraph_size(shape, 0.2)
    assert not (hap.edge_in_graph & ~subgraph).any()  # HAP keeps edges of its EAP subgraph only
    assert 0 < hap.n_edges_in_graph <= 4 and hap.meta["circuit_edges"] == 4
    assert 1 - 4 / shape.n_edges == pytest.approx(hap.meta["target"])


def test_method_options_come_from_config_sections():
    options = method_options("eap_ig", {"eap": {"ranking": "signed"}, "eap_ig": {"steps": 7}})
    assert options["eap"] == EAPConfig(ranking="signed") and options["eap"].ranking == "signed"
    assert options["eap_ig"].steps == 7  # the EAP-IG entry sets ig_steps from it
    assert method_options("eap", {})["eap"] == EAPConfig()  # absent sections take defaults
    with pytest.raises(OptionsError, match=r"eap: unknown option\(s\) rankng"):
        method_options("eap", {"eap": {"rankng": "signed"}})
    with pytest.raises(OptionsError, match="eap.ranking"):
        method_options("eap", {"eap": {"ranking": "sideways"}})
    with pytest.raises(ValueError, match="not used here: hap"):
        method_options("eap", {"hap": {}})
    data = MethodData(None, None, "resample")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="circuit size"):
        data.budget("eap")


def test_cli_stage_writes_rows_tables_and_figure(builds, tmp_path):
    runs = []
    methods = ["eap", "path_patching"]  # out of METHOD_ORDER on purpose
    methods = {
        "path_patching": {"path_patching": {"n_prompts": 40}},
        "eap": {"eap": {"batch_size": 16}},
    }
    options = json.dumps({"methods": methods})
    for name in ("copy", "lookup"):
        outs = [tmp_path / name / method for method in methods]
        args = ["planted-run", "--build", str(builds[name]), "--method", *methods]
        args += ["--options", options, "--device", "cpu", "--threads", "1"]
        assert main([*args, "--out", *map(str, outs)]) == 0
        for method, out in zip(methods, outs, strict=True):
            runs.append(out)
            row = pd.read_csv(out / "recovery.csv").iloc[0]
            assert row["planted"] == name and row["method"] == method
            assert row["package_version"] and row["seed"] == 0 and row["corruption"] == "resample"
            circuit = Graph.load(out / "circuit.json")
            assert circuit.meta["method"] == method and circuit.meta["planted"] == name
            curves = json.loads((out / "roc.json").read_text())["curves"]
            if method == "path_patching":
                assert row["circuit_faithfulness"] > 0.95
                assert pd.isna(row["circuit_edges"])
            else:  # EAP scores every edge and is cut to the truth's size
                assert "edges" in curves and row["edge_score_universe"] == "all"
                assert row["circuit_edges"] == len(SPECS[name].truth_edges)
    table, truth_table, figure = tmp_path / "t" / "rec", tmp_path / "t" / "truth", tmp_path / "f"
    args = ["planted-report", "--builds", str(builds["copy"]), str(builds["lookup"])]
    args += ["--runs", *map(str, runs), "--table", str(table), "--truth-table", str(truth_table)]
    assert main([*args, "--figure", str(figure)]) == 0
    for path in (
        *(table.with_suffix(s) for s in (".csv", ".md", ".tex")),
        *(truth_table.with_suffix(s) for s in (".csv", ".md", ".tex")),
        figure.with_suffix(".png"),
        figure.with_suffix(".pdf"),
    ):
        assert path.stat().st_size > 0, path
    recovery_rows = pd.read_csv(table.with_suffix(".csv"))
    assert list(recovery_rows["planted"]) == ["copy", "copy", "lookup", "lookup"]
    assert list(recovery_rows["method"]) == sorted(methods, key=METHOD_ORDER.index) * 2
    truth_rows = pd.read_csv(truth_table.with_suffix(".csv"))
    assert truth_rows["passed"].all() and (truth_rows["truth_faithfulness"] >= 0.95).all()
    assert "a1.h2" in (truth_table.with_suffix(".md")).read_text()
    assert recovery_rows["head_auc"].notna().all() and recovery_rows["edge_auc"].notna().any()


def test_cli_run_refuses_mismatched_methods_and_outputs(builds, tmp_path):
    args = ["planted-run", "--build", str(builds["copy"]), "--method", "eap", "eap_ig"]
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "eap")])
    with pytest.raises(SystemExit):
        options = '{"methods": {"hap": {}}}'
        main([*args[:-1], "--options", options, "--out", str(tmp_path / "eap")])


@pytest.mark.parametrize("name", PLANTED)
def test_acdc_removes_every_edge_outside_the_planted_truth_and_keeps_it(
    builds, planted_models, name
):
    truth = Graph.load(builds[name] / "truth.json")
    model = planted_models[name]
    result = run_method(model, builds[name], "acdc", {"acdc": {"threshold": 1e-3}})
    graph, record = result.graph, result.record
    row = recovery(graph, truth)
    assert row["edges_precision"] == row["edges_recall"] == 1.0
    assert record["criterion_end"] < 1e-3  # the truth alone is the model
    # Receivers that no longer reach the logits are skipped, not tested.
    assert record["edges_tested"] + record["edges_skipped"] <= model.shape.n_edges
    assert result.cost["patched_passes"] == record["edges_tested"] + 1
