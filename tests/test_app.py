"""APP: path patching restricted to every head equals dense path patching, and stays inside a
smaller head set; overlap and speed-up measures; the paper data file and its source."""

from __future__ import annotations

import json
import math

import pytest
from conftest import task_data

from circuitbench import metrics
from circuitbench.methods import app
from circuitbench.methods import path_patching as pp
from circuitbench.report import paper


@pytest.fixture(scope="module")
def splits(toy_tokenizer):
    return task_data(toy_tokenizer, n=8), task_data(toy_tokenizer, n=10, split="validation")


# Permissive thresholds so the search visits receivers and finds non-empty circuits on a random
# model (the 16-configuration grid varies scale and min-value on top of these).
PERMISSIVE = pp.PathPatchingConfig(resid_scale=0.0, k=0.0, early_stop_fraction=2.0)


def comparable(record):
    keys = ("name", "heads", "size", "performance", "forward_passes_app", "flops_app", "steps")
    return [{k: run[k] for k in keys} for run in record["runs"]]


def test_app_on_all_heads_equals_dense_path_patching(model, splits):
    discovery, validation = splits
    every = [(layer, head) for layer in range(3) for head in range(4)]
    dense = pp.run_grid(
        model, discovery, validation, "abc", None, PERMISSIVE, app.APP_RULE, progress=False
    )
    restricted = app.run_app(model, discovery, validation, "abc", every, PERMISSIVE, progress=False)
    assert comparable(restricted) == comparable(dense)
    assert restricted["chosen"] == dense["chosen"]
    assert any(run["size"] > 0 for run in dense["runs"])  # not vacuous


def test_app_stays_inside_the_merged_set_and_costs_less(model, splits):
    discovery, validation = splits
    merged = app.merge_heads([(0, 1), (1, 2)], [(1, 2), (2, 0), (2, 3)])
    assert set(merged) >= {(0, 1), (1, 2), (2, 0), (2, 3)}
    record = app.run_app(model, discovery, validation, "abc", merged, PERMISSIVE, progress=False)
    dense = pp.run_grid(
        model, discovery, validation, "abc", None, PERMISSIVE, app.APP_RULE, progress=False
    )
    for run in record["runs"]:
        heads = {(int(layer), h) for layer, hs in run["heads"].items() for h in hs}
        assert heads <= set(merged)
    assert record["allowed"] == ["0.1", "1.2", "2.0", "2.3"]
    assert sum(r["flops_app"] for r in record["runs"]) < sum(r["flops_app"] for r in dense["runs"])


def test_overlap_measures():
    reference = [(0, 1), (1, 2), (2, 3), (3, 0)]
    same = metrics.overlap(reference, reference, 16)
    assert same["tpr"] == same["precision"] == same["iou"] == 100.0
    assert same["fdr"] == 0.0 and same["true_fpr"] == 0.0
    found = [(0, 1), (1, 2), (3, 3)]
    measures = metrics.overlap(found, reference, 16)
    assert measures["tpr"] == pytest.approx(100 * 2 / 4)
    assert measures["precision"] == pytest.approx(100 * 2 / 3)
    assert measures["iou"] == pytest.approx(100 * 2 / 5)
    assert measures["fdr"] == pytest.approx(100 - 100 * 2 / 3)
    assert measures["true_fpr"] == pytest.approx(100 * 1 / 12)
    # Undefined ratios are NaN, not 0 or 100: an empty reference, an empty circuit.
    empty_reference = metrics.overlap(found, [], 16)
    assert math.isnan(empty_reference["tpr"]) and empty_reference["precision"] == 0.0
    empty_circuit = metrics.overlap([], reference, 16)
    assert empty_circuit["tpr"] == 0.0 and math.isnan(empty_circuit["precision"])


def test_speedup():
    assert metrics.speedup(10.0, 2.0) == {"ratio": 5.0, "saving_pct": pytest.approx(80.0)}
    assert metrics.speedup(2.0, 4.0)["saving_pct"] == pytest.approx(-100.0)  # a slow-down
    assert math.isnan(metrics.speedup(1.0, 0.0)["ratio"])


def test_paper_data_is_consistent():
    table = paper.load("app_table2")
    assert len(table) == 4 * 4 * 5  # paper models x methods x tasks
    # Sparsity is recomputed from size. The printed value is that, rounded or truncated to two
    # decimals, in every cell but one (of the four the long CSV flags as doubtful, three are
    # truncations).
    hundredths = table["head_sparsity"] * 100
    printed = (table["head_sparsity_printed"] * 100).round()
    explained = (printed == (hundredths + 0.5).apply(math.floor)) | (
        printed == hundredths.apply(math.floor)
    )
    odd = table[~explained]
    assert list(zip(odd["paper_model"], odd["method"], odd["task"], strict=True)) == [
        ("GPT-2 small", "pp", "induction"),  # 22 heads of 144 printed as 0.83
    ]
    assert set(table["status"]) == {"paper"}
    assert table["tpr"].isna().sum() == 4 * 5  # the PP rows are the reference
    speedups = paper.load("app_speedup")
    assert len(speedups) == 4 * 5
    saving = speedups["saving_pct"]
    assert saving.min() == pytest.approx(59.35, abs=0.01)  # APP's smallest saving: x2.46
    assert saving.max() == pytest.approx(93.28, abs=0.01)  # x14.87


@pytest.mark.slow
def test_cli_prune_app_and_report(tmp_path, random_model_dir):
    """The three steps chained as the workflow chains them, on a random model and one task."""
    import pandas as pd

    from circuitbench.cli import main

    model = tmp_path / "models" / "rnd"
    assert (
        main(
            ["prepare-model", "--name", "rnd", "--source", str(random_model_dir)]
            + ["--prepend-bos", "--out", str(model)]
        )
        == 0
    )
    data = tmp_path / "data" / "ioi"

    def options(**sections) -> list[str]:
        return ["--options", json.dumps(sections)]

    sizes = {"n_train": 8, "n_validation": 10, "n_test": 10}
    args = ["data", "--task", "ioi", "--tokenizer", str(random_model_dir), *options(task=sizes)]
    args += ["--seed", "3", "--name", "rnd"]
    assert main([*args, "--out", str(data)]) == 0
    run = tmp_path / "results" / "rnd" / "ioi"
    common = ["--model", str(model), "--data", str(data), "--device", "cpu", "--threads", "1"]
    search = options(path_patching={"n_prompts": 8})
    assert main(["path-patching", *common, *search, "--out", str(run / "pp")]) == 0
    flap = {"n_calibration": 8, "sweep": {"low": 0, "high": 1, "step": 1 / 12}}
    assert main(["prune", *common, *options(flap=flap), "--out", str(run / "pruning")]) == 0
    app_args = ["--pruning", str(run / "pruning"), *search]
    assert main(["app", *common, *app_args, "--out", str(run / "app")]) == 0
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    args = ["app-report", "--runs", str(run), "--tables", str(tables), "--figures", str(figures)]
    assert main(args) == 0

    pruning = pd.read_csv(run / "pruning" / "summary.csv", dtype={"heads": str})
    assert list(pruning["method"]) == ["flap", "cflap", "merged"]
    assert {"flap.cliff_rule", "flap.sweep_step", "seed", "package_version"} <= set(pruning)
    merged = set(str(pruning["heads"].fillna("").iloc[2]).split())
    for kept in pruning["heads"].fillna("").iloc[:2]:
        assert set(kept.split()) <= merged
    app_row = pd.read_csv(run / "app" / "summary.csv", dtype={"heads": str}).iloc[0]
    assert set(str(app_row["heads"]).split()) - {"nan"} <= merged
    speed = pd.read_csv(tables / "app_speedup.csv").iloc[0]
    pp_row = pd.read_csv(run / "pp" / "summary.csv").iloc[0]
    assert speed["ratio_flops_app"] == pytest.approx(
        pp_row["grid_flops_app"] / app_row["grid_flops_app"]
    )
    assert speed["speedup"] == speed["ratio_flops_app_with_pruning"]  # cost_includes_pruning
    table = (tables / "app_table2_rnd.md").read_text()
    for label in ("Path Patching", "FLAP", "C-FLAP", "Merged", "APP", "paper (GPT-2 small)"):
        assert f"| {label}" in table
    assert (tables / "app_table2_rnd.tex").read_text().startswith("\\begin{table}")
    long = pd.read_csv(tables / "app_table2_rnd_long.csv")
    assert set(long["source"]) == {"ours", "paper"}
    for name in ("app_speedup_rnd", "app_sweep_rnd"):
        assert (figures / f"{name}.png").stat().st_size > 10_000
        assert (figures / f"{name}.pdf").exists()
