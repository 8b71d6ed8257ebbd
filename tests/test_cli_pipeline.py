"""The CLI steps chained as the workflow chains them, on tiny sizes (seconds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import cli_data

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
    sizes = {"n_train": 6, "n_validation": 6, "n_test": 10}
    tokenizer, data_dirs = cli_data(root, TASKS, sizes, seed=3)
    model = root / "models" / "tiny"
    args = [
        "train",
        "--name",
        "tiny",
        "--tokenizer",
        str(tokenizer),
        "--splits",
        *map(str, data_dirs),
    ]
    options = json.dumps({"train": TINY_SPEC})
    assert main([*args, "--options", options, "--out", str(model)]) == 0
    evaluation = root / "eval.csv"
    tests = [str(d / "test.json") for d in data_dirs]
    args = ["eval-model", "--model", str(model), "--splits", *tests, "--device", "cpu"]
    assert main([*args, "--out", str(evaluation)]) == 0
    tables = root / "tables"
    args = ["table", "--kind", "models", "--inputs", str(evaluation)]
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
    base = ["data", "--tokenizer", str(tokenizer), "--seed", "0", "--name", "m"]
    base += ["--out", str(tmp_path / "d")]
    sizes = {"n_train": 2, "n_validation": 2, "n_test": 2}

    def options(**task):
        return ["--options", json.dumps({"task": {**sizes, **task}})]

    assert main([*base, "--task", "nope", *options()]) == 1
    assert main([*base, "--task", "ioi", *options(corruption="zzz")]) == 2
    assert main([*base, "--task", "ioi", *options(n_train=-1)]) == 2  # bad options: exit 2
    assert main([*base, "--task", "ioi", *options(n_trian=5)]) == 2  # unknown key
    assert not (tmp_path / "d").exists()  # nothing half-written
    with pytest.raises(SystemExit):  # not JSON at all: argparse refuses it
        main([*base, "--task", "ioi", "--options", "{n_train"])


def test_make_circuit_and_evaluate_full_and_empty(pipeline):
    root, model, _, _ = pipeline
    rows = {}
    for kind in ("full", "empty"):
        circuit = root / "circuits" / f"{kind}.json"
        assert (
            main(["make-circuit", "--model", str(model), "--kind", kind, "--out", str(circuit)])
            == 0
        )
        out = root / "eval" / f"{kind}.csv"
        args = [
            "evaluate",
            "--model",
            str(model),
            "--split",
            str(root / "data" / "ioi" / "test.json"),
        ]
        assert main([*args, "--circuit", str(circuit), "--device", "cpu", "--out", str(out)]) == 0
        rows[kind] = pd.read_csv(out).iloc[0]
    assert rows["full"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    assert rows["full"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows["empty"]["faithfulness"] == pytest.approx(0.0, abs=1e-4)
    layers, heads = TINY_SPEC["n_layer"], TINY_SPEC["n_head"]  # docs/metrics.md: edge count
    upstream = [1 + layer * (heads + 1) for layer in range(layers)]
    edges = sum(3 * heads * u + u + heads for u in upstream) + 1 + layers * (heads + 1)
    assert rows["full"]["n_edges"] == edges
    for column in ("model", "task", "circuit", "ablation", "corruption", "seed", "package_version"):
        assert column in rows["full"]
    assert rows["full"]["corruption"] == "abc"
    assert rows["full"]["eval_forward_passes"] == 1  # 10 prompts, one batch


def test_evaluate_rejects_bad_circuits_without_overwriting(pipeline, tmp_path):
    root, model, _, _ = pipeline
    out = tmp_path / "row.csv"
    out.write_text("keep me\n")
    data = str(root / "data" / "ioi" / "test.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"cfg": {"n_layers": 2}}')
    other_shape = tmp_path / "other.json"
    from circuitbench.graph import Graph, GraphShape

    Graph.full(GraphShape(3, 2)).save(other_shape)
    for circuit in (bad_json, other_shape, tmp_path / "missing.json"):
        args = ["evaluate", "--model", str(model), "--split", data, "--circuit", str(circuit)]
        assert main([*args, "--device", "cpu", "--out", str(out)]) == 1
        assert out.read_text() == "keep me\n"


def test_evaluate_refuses_a_file_that_is_not_task_data(pipeline, tmp_path, caplog):
    root, model, _, _ = pipeline
    circuit = root / "circuits" / "full.json"
    assert (
        main(["make-circuit", "--model", str(model), "--kind", "full", "--out", str(circuit)]) == 0
    )
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    args = ["evaluate", "--model", str(model), "--split", str(empty), "--circuit", str(circuit)]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "row.csv")]) == 1
    assert "not a task data file: no meta, examples" in caplog.text
