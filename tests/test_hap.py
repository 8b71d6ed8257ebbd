"""HAP: with every edge kept it is Edge Pruning; otherwise it prunes inside the EAP subgraph and
lands on Edge Pruning's edge count. The CLI chain eap -> edge-pruning -> hap -> hap-report writes
circuits that read back from disk to the numbers their rows report."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import task_data

from circuitbench.cli import main
from circuitbench.evaluate import evaluate_graph
from circuitbench.graph import Graph, ranking_key, top_edges
from circuitbench.methods import eap, hap
from circuitbench.methods import edge_pruning as ep
from circuitbench.models.loading import load_model
from circuitbench.patching import PatchedModel
from circuitbench.tasks import read_task_data


def best_gap(shape, key: torch.Tensor, target: int) -> int:
    """How close to ``target`` edges the top-n cuts of ``key`` (dangling edges pruned) get."""
    n_finite = int(torch.isfinite(key).sum())
    counts = [int(top_edges(shape, key, n).sum()) for n in range(n_finite + 1)]
    return min(abs(c - target) for c in counts)


def pruning_key(graph: Graph, discretization: dict) -> torch.Tensor:
    """What a matched Edge Pruning / HAP circuit was cut by: its soft masks, writers kept."""
    writer_kept = graph.node_scores > discretization["node_threshold"]
    key = graph.edge_scores.masked_fill(graph.edge_scores <= 0, float("-inf"))
    return key.masked_fill(~writer_kept[:, None], float("-inf"))


QUICK = ep.EdgePruningConfig(steps=8, sparsity_warmup=5, lr_warmup=1, batch_size=4, target=0.6)


def test_hap_with_every_edge_is_edge_pruning_under_the_same_seed(model, toy_tokenizer):
    data = task_data(toy_tokenizer)
    scores = eap.eap_scores(model, data, eap.EAPConfig()).scores
    plain = ep.train_edge_pruning(model, data, QUICK)
    config = hap.HAPConfig(keep_fraction=1.0)
    hybrid, subgraph, used = hap.run_hap(model, data, scores, config, QUICK, target_edges=None)
    assert used == QUICK  # every edge: the schedule starts at 0, as Edge Pruning's
    assert torch.equal(subgraph, model.shape.valid)
    assert torch.equal(hybrid.edge_log_alpha, plain.edge_log_alpha)
    assert torch.equal(hybrid.node_log_alpha, plain.node_log_alpha)
    assert hybrid.history == plain.history
    assert torch.equal(hybrid.graph.edge_in_graph, plain.graph.edge_in_graph)


def test_hap_prunes_inside_the_subgraph_to_the_asked_count(model, toy_tokenizer):
    data = task_data(toy_tokenizer)
    scores = eap.eap_scores(model, data, eap.EAPConfig()).scores
    config = hap.HAPConfig(keep_fraction=0.5)
    k = hap.subgraph_size(model.shape, 0.5)
    result, subgraph, used = hap.run_hap(model, data, scores, config, QUICK, target_edges=20)
    assert used.start_sparsity == pytest.approx(1 - k / model.shape.n_edges)
    assert int(subgraph.sum()) == k == len(result.edge_log_alpha)
    # The subgraph is the top-k by |score|.
    assert scores.abs()[subgraph].min() >= scores.abs()[model.shape.valid & ~subgraph].max()
    assert not (result.graph.edge_in_graph & ~subgraph).any()
    # The count is the closest to 20 that any top-n cut of the trained masks reaches.
    gap = abs(result.graph.n_edges_in_graph - 20)
    assert gap == best_gap(model.shape, pruning_key(result.graph, result.discretization), 20)
    # Fixed-off edges count as pruned in the Lagrangian's sparsity (denominator: all edges).
    assert result.history[0]["edge_sparsity_sampled"] >= 1 - k / model.shape.n_edges - 1e-6


@pytest.mark.parametrize(
    ("with_embedding_nodes", "cache_corrupted"), [(True, True), (False, False)]
)
def test_the_subgraph_forward_trains_what_the_dense_forward_trains(
    model, toy_tokenizer, with_embedding_nodes, cache_corrupted
):
    data = task_data(toy_tokenizer)
    scores = eap.eap_scores(model, data, eap.EAPConfig()).scores
    config = replace(
        QUICK, with_embedding_nodes=with_embedding_nodes, cache_corrupted=cache_corrupted
    )
    runs = {}
    for skip in (True, False):
        settings = hap.HAPConfig(keep_fraction=0.1, skip_removed_edges=skip)
        runs[skip], _, _ = hap.run_hap(model, data, scores, settings, config, target_edges=15)
    fast, dense = runs[True], runs[False]
    assert fast.cost["masked_forward"] == "subgraph" and dense.cost["masked_forward"] == "dense"
    assert fast.cost["masked_forward_edges"] < model.shape.n_edges
    for a, b in zip(fast.history, dense.history, strict=True):
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)
        assert a["edge_sparsity_sampled"] == pytest.approx(b["edge_sparsity_sampled"], abs=1e-6)
    assert torch.allclose(fast.edge_log_alpha, dense.edge_log_alpha, atol=1e-3)
    assert torch.equal(fast.graph.edge_in_graph, dense.graph.edge_in_graph)


def test_unsupported_choices_are_refused():
    assert hap.HAPConfig().skip_removed_edges  # the subgraph-restricted forward is the default
    with pytest.raises(ValueError):
        hap.HAPConfig(keep_fraction=0)
    assert "hap.keep_fraction" in hap.HAPConfig().choices()


# -- the CLI chain --------------------------------------------------------------------------------

QUICK_EP = {"steps": 8, "sparsity_warmup": 5, "lr_warmup": 1, "batch_size": 4}


def options(**sections) -> list[str]:
    return ["--options", json.dumps(sections)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, random_model_dir):
    root = tmp_path_factory.mktemp("discovery")
    model_dir = root / "models" / "rand"
    model_dir.mkdir(parents=True)
    manifest = {"name": "rand", "kind": "local", "source": str(random_model_dir)}
    (model_dir / "model.json").write_text(json.dumps(manifest))
    data = root / "data" / "ioi"
    sizes = {"n_train": 12, "n_validation": 4, "n_test": 10}
    args = ["data", "--task", "ioi", "--tokenizer", str(random_model_dir), *options(task=sizes)]
    args += ["--seed", "1", "--name", "rand"]
    assert main([*args, "--out", str(data)]) == 0
    common = ["--model", str(model_dir), "--data", str(data), "--device", "cpu", "--threads", "1"]
    runs = root / "results" / "rand" / "ioi"
    ep_dir = runs / "ep" / "t0.6"
    ep = options(edge_pruning={**QUICK_EP, "target": 0.6})
    assert main(["edge-pruning", *common, *ep, "--out", str(ep_dir)]) == 0
    eap_dir, ig_dir = runs / "eap", runs / "eap_ig"
    eap = {"curve_sparsities": [0.5, 0.9]}
    args = ["eap", *common, *options(eap=eap), "--match", str(ep_dir)]
    assert main([*args, "--out", str(eap_dir)]) == 0
    args = ["eap", "--method", "eap_ig", *common, *options(eap=eap, eap_ig={"steps": 2})]
    assert main([*args, "--match", str(ep_dir), "--out", str(ig_dir)]) == 0
    hap_dirs = []
    for fraction in (0.3, 0.6):
        hap_dir = runs / "hap" / f"k{fraction}"
        args = ["hap", *common, "--eap", str(eap_dir), "--ep", str(ep_dir)]
        args += options(edge_pruning=QUICK_EP, hap={"keep_fraction": fraction})
        assert main([*args, "--out", str(hap_dir)]) == 0
        hap_dirs.append(hap_dir)
    return root, model_dir, data, ep_dir, eap_dir, ig_dir, hap_dirs


def test_circuits_read_back_from_disk_evaluate_to_the_same_numbers(chain, random_model_dir):
    _, _, data, ep_dir, eap_dir, _, hap_dirs = chain
    model = PatchedModel(load_model(str(random_model_dir), device="cpu"))
    test = read_task_data(data / "test.json")
    cache = model.build_cache(test, "interchange", "abc", "template", 64)
    matched = pd.read_csv(eap_dir / "matched.csv").iloc[0]
    runs = [
        (ep_dir / "circuit.json", pd.read_csv(ep_dir / "summary.csv").iloc[0]),
        (hap_dirs[0] / "circuit.json", pd.read_csv(hap_dirs[0] / "summary.csv").iloc[0]),
        (eap_dir / f"matched-{ep_dir.name}.json", matched),
    ]
    for path, row in runs:
        graph = Graph.load(path)
        assert graph.n_edges_in_graph == row.n_edges
        result = evaluate_graph(model, cache, graph)
        for column, key in (("kl", "kl"), ("logit_diff", "metric"), ("accuracy", "accuracy")):
            assert result[key] == pytest.approx(row[column], abs=1e-6), (path, column)
    # EP's edges.json reads back to its circuit.
    pairs = json.loads((ep_dir / "edges.json").read_text())
    graph = Graph.load(ep_dir / "circuit.json")
    assert torch.equal(
        Graph.from_edge_pruning(pairs, graph.shape).edge_in_graph, graph.edge_in_graph
    )


def test_rows_carry_provenance_and_matched_counts(chain):
    _, _, _, ep_dir, eap_dir, ig_dir, hap_dirs = chain
    ep_row = pd.read_csv(ep_dir / "summary.csv").iloc[0]
    hap_row = pd.read_csv(hap_dirs[0] / "summary.csv").iloc[0]
    eap_row = pd.read_csv(eap_dir / "matched.csv").iloc[0]
    for row in (ep_row, hap_row, eap_row):
        for column in ("model", "task", "n_train", "corruption", "data_seed", "package_version",
                       "edge_convention", "n_edges_ep", "edge_sparsity_ep"):  # fmt: skip
            assert column in row.index and not pd.isna(row[column]), column
    assert ep_row["edge_pruning.target"] == 0.6 and "edge_pruning.with_embedding_nodes" in ep_row
    assert hap_row["hap.keep_fraction"] == 0.3 and hap_row["hap.sparsity_denominator"] == "full"
    assert eap_row["eap.score_sign"] == "loss" and eap_row["eap.ranking"] == "absolute"
    assert pd.read_csv(ig_dir / "summary.csv").iloc[0]["eap_ig.steps"] == 2
    # Matched sparsity: EAP and HAP cut to EP's edge count, as close as any top-n cut gets.
    target = int(ep_row.n_edges)
    scores = Graph.load(eap_dir / "scores.json")
    eap_key = ranking_key(scores.edge_scores, scores.shape, "absolute")
    assert abs(eap_row.n_edges - target) == best_gap(scores.shape, eap_key, target)
    hap_graph = Graph.load(hap_dirs[0] / "circuit.json")
    discretization = json.loads((hap_dirs[0] / "masks.json").read_text())["discretization"]
    hap_key = pruning_key(hap_graph, discretization)
    assert abs(hap_row.n_edges - target) == best_gap(scores.shape, hap_key, target)
    assert hap_row.runtime_seconds == pytest.approx(hap_row.eap_seconds + hap_row.ep_stage_seconds)
    assert scores.n_edges_in_graph == 0 and scores.edge_scores.abs().max() > 0
    curve = pd.read_csv(eap_dir / "curve.csv")
    assert list(curve.nominal_sparsity) == [0.5, 0.9]


def test_report_writes_every_table_and_figure(chain, tmp_path):
    root, model_dir, data, ep_dir, eap_dir, ig_dir, hap_dirs = chain
    pp = root / "results" / "rand" / "ioi" / "pp" / "circuit.json"
    args = ["make-circuit", "--model", str(model_dir), "--kind", "heads", "--heads", '{"1": [0]}']
    assert main([*args, "--out", str(pp)]) == 0
    reference = Graph.load(pp)  # what the path-patching step records about its heads
    reference.meta.update(heads={"1": [0]}, roles={"1.0": ["logits"]})
    reference.save(pp)
    pp_eval = root / "pp_interchange.csv"
    args = ["evaluate", "--model", str(model_dir), "--split", str(data / "test.json")]
    args += ["--circuit", str(pp), *options(evaluation={"ablation": "interchange"})]
    args += ["--device", "cpu"]
    assert main([*args, "--out", str(pp_eval)]) == 0
    args = ["hap-report", "--eap", str(eap_dir), "--eap-ig", str(ig_dir), "--ep", str(ep_dir)]
    args += ["--hap", *map(str, hap_dirs), "--pp", str(pp), "--pp-eval", str(pp_eval)]
    args += ["--keep-fraction", "0.3", "--edge-target", "0.6"]
    args += ["--tables", str(tmp_path / "tables"), "--figures", str(tmp_path / "figures")]
    assert main(args) == 0
    for name in ("hap_table1", "hap_table2", "ep_table1", "hap_k_sweep"):
        for suffix in ("csv", "md", "tex"):
            assert (tmp_path / "tables" / f"{name}.{suffix}").exists(), (name, suffix)
    for name in ("ep_kl_sparsity", "ep_metric_sparsity", "hap_k_sweep"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{suffix}").stat().st_size > 1000
    table1 = pd.read_csv(tmp_path / "tables" / "hap_table1.csv")
    ours = table1[table1.source == "ours"]
    assert list(ours.method) == ["EAP", "EP", "HAP"]
    paper = table1[table1.source != "ours"]
    assert paper.accuracy.str.contains(r"\[secondary\]").all()
    table2 = pd.read_csv(tmp_path / "tables" / "hap_table2.csv")
    assert "1.0" in set(table2["head"]) and "8.10" in set(table2["head"].astype(str))
    sweep = pd.read_csv(tmp_path / "tables" / "hap_k_sweep.csv")
    assert list(sweep.method) == ["EP", "HAP", "HAP"]
