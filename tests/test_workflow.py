"""The Snakemake workflow: config validation fails before any job runs; the DAG is complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from circuitbench.cli import main
from circuitbench.steps import STAGES

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_default_dag_dry_run_reaches_the_model_table(tmp_path):
    result = snakemake("-n", "--directory", str(tmp_path))
    assert result.returncode == 0, result.stderr + result.stdout
    rules = ("tokenizer", "data", "train_toy", "eval_model", "table_models")
    rules += ("baseline_circuit", "evaluate_baseline", "table_baselines")
    for rule in rules:
        assert f"rule {rule}:" in result.stdout
    assert "results/tables/models.md" in result.stdout
    assert "results/tables/baselines.md" in result.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"tasks": {"colours": {"n_test": 5}}}, "'colours' was unexpected"),
        ({"tasks": {"ioi": {"n_test": -5}}}, "['tasks']['ioi']['n_test']"),
        ({"seed": "abc"}, "['seed']"),
        ({"tasks": {"ioi": {"corruption": "xyz"}}}, "['tasks']['ioi']['corruption']"),
        ({"models": {"gpt2": {"kind": "hub"}}}, "'source' is a required property"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, override, named):
    # A --configfile is a complete configuration (it replaces config.yaml): the default with one
    # bad key.
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            for inner, inner_value in value.items():
                if isinstance(inner_value, dict) and isinstance(config[key].get(inner), dict):
                    config[key][inner] = {**config[key][inner], **inner_value}
                else:
                    config[key][inner] = inner_value
        else:
            config[key] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Error validating config file" in output
    assert named in output
    assert "rule tokenizer" not in output  # failed before building the DAG
    assert not (tmp_path / "results").exists()


def test_a_configfile_replaces_the_default_config(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["tasks"] = {"ioi": config["tasks"]["ioi"]}
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(own))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "task=ioi" in result.stdout
    assert "task=docstring" not in result.stdout  # not merged with config.yaml's tasks


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_lists_every_step(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    steps = [step for stage in STAGES for step in stage.STEPS]
    assert len(steps) > 10
    for step in steps:
        assert step in text


@pytest.mark.parametrize("preset", ["smoke", "gpt2"])
def test_presets_are_valid_complete_configs(tmp_path, preset):
    path = ROOT / "workflow" / "presets" / f"{preset}.yaml"
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(path))
    assert result.returncode == 0, result.stderr + result.stdout
    models = yaml.safe_load(path.read_text())["models"]
    for model in models:
        assert f"model={model}" in result.stdout
    for rule in ("path_patching", "prune", "app", "eap", "edge_pruning", "hap", "planted_run"):
        assert f"rule {rule}:" in result.stdout


def test_named_targets(tmp_path):
    for target in ("all_reference", "all_app", "all_hap", "all_planted"):
        result = snakemake("-n", "--directory", str(tmp_path), target)
        assert result.returncode == 0, result.stderr + result.stdout
    result = snakemake("-n", "--directory", str(tmp_path), "--list-target-rules")
    assert result.returncode == 0, result.stderr + result.stdout
    assert {"all_app", "all_hap", "all_planted", "all_reference"} <= set(result.stdout.split())


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"edge_pruning": {"sweep_tasks": ["colours"]}}, "edge_pruning.sweep_tasks names colours"),
        ({"hap": {"sweep_tasks": ["docstring"]}}, "hap.sweep_tasks names docstring"),
        ({"flap": {"sweep": {"low": 0.9, "high": 0.5, "step": 0.01}}}, "flap.sweep: low (0.9)"),
        (
            {"models": {"toy-4l8h": {"kind": "toy", "train": {"n_head": 3}}}},
            "models.toy-4l8h.train: d_model (128) must be divisible by n_head (3)",
        ),
        (
            {"models": {"toy-4l8h": {"kind": "toy", "checkpoint": "no/such/dir"}}},
            "models.toy-4l8h.checkpoint: no/such/dir is not a checkpoint directory",
        ),
    ],
)
def test_rules_between_keys_fail_at_plan_time_naming_the_key(tmp_path, override, named):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["tasks"] = {"ioi": {}}  # docstring is not configured
    config.update(override)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(bad))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "invalid configuration" in output and named in output, output[-2000:]
    assert not (tmp_path / "results").exists()
