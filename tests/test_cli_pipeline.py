"""The CLI steps chained as the workflow chains them, on tiny sizes (seconds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from circuitbench.cli import main
from circuitbench.tasks import TASKS

TINY_SPEC = {
    "n_layer": 2,
    "n_head": 2,
    "d_model": 32,
    "max_steps": 4,
    "batch_size": 8,
    "eval_every": 2,
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    tokenizer = root / "tokenizer"
    assert main(["tokenizer", "--out", str(tokenizer)]) == 0
    data_dirs = []
    for task in TASKS:
        out = root / "data" / task
        args = ["data", "--task", task, "--tokenizer", str(tokenizer), "--n-train", "6"]
        args += ["--n-validation", "6", "--n-test", "10", "--seed", "3", "--model", "tiny"]
        assert main([*args, "--out", str(out)]) == 0
        data_dirs.append(out)
    model = root / "models" / "tiny"
    args = [
        "train",
        "--name",
        "tiny",
        "--tokenizer",
        str(tokenizer),
        "--data",
        *map(str, data_dirs),
    ]
    assert main([*args, "--spec", json.dumps(TINY_SPEC), "--out", str(model)]) == 0
    evaluation = root / "eval.csv"
    tests = [str(d / "test.json") for d in data_dirs]
    args = ["eval-model", "--model", str(model), "--data", *tests, "--device", "cpu"]
    assert main([*args, "--out", str(evaluation)]) == 0
    tables = root / "tables"
    args = ["table-models", "--inputs", str(evaluation)]
    assert main([*args, "--out-csv", str(tables / "m.csv"), "--out-md", str(tables / "m.md")]) == 0
    return root, model, evaluation, tables


def test_every_step_writes_its_artifacts(pipeline):
    root, model, _, tables = pipeline
    for task in TASKS:
        for split in ("train", "validation", "test"):
            payload = json.loads((root / "data" / task / f"{split}.json").read_text())
            assert payload["meta"]["task"] == task and payload["meta"]["seed"] == 3
            assert payload["meta"]["package_version"]
    assert (model / "hf" / "config.json").exists() and (model / "hf" / "tokenizer.json").exists()
    manifest = json.loads((model / "model.json").read_text())
    assert manifest["name"] == "tiny" and manifest["kind"] == "local"
    table = pd.read_csv(tables / "m.csv")
    assert sorted(table["task"]) == sorted(TASKS)
    assert "| tiny" in (tables / "m.md").read_text()
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_bridge_evaluation_agrees_with_the_trainers_hf_evaluation(pipeline):
    _, model, evaluation, _ = pipeline
    report = json.loads((model / "training_report.json").read_text())
    table = pd.read_csv(evaluation).set_index("task")
    for task, scores in report["tasks"].items():
        assert table.loc[task, "accuracy"] == pytest.approx(scores["accuracy"], abs=1e-6)
        assert table.loc[task, "logit_diff"] == pytest.approx(scores["metric"], abs=1e-4)


def test_data_step_refuses_bad_input(tmp_path, capsys):
    tokenizer = tmp_path / "tok"
    assert main(["tokenizer", "--out", str(tokenizer)]) == 0
    base = ["data", "--tokenizer", str(tokenizer), "--n-train", "2", "--n-validation", "2"]
    base += ["--n-test", "2", "--seed", "0", "--model", "m", "--out", str(tmp_path / "d")]
    assert main([*base, "--task", "nope"]) == 1
    assert main([*base, "--task", "ioi", "--options", '{"corruption": "zzz"}']) == 1
    assert not (tmp_path / "d").exists()  # nothing half-written
    with pytest.raises(SystemExit):
        main([*base[:2], "--task", "ioi", "--n-train", "-1"])
