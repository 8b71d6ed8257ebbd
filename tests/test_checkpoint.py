"""Committed checkpoints: written with their sums, installed only when intact and when they held
out exactly the prompts the configuration evaluates on."""

from __future__ import annotations

import json

import pytest
from conftest import cli_data

from circuitbench.cli import main
from circuitbench.models.checkpoint import CheckpointError, install, verify, write_checkpoint

TINY = {"n_layer": 1, "n_head": 2, "d_model": 16, "max_steps": 2, "batch_size": 4, "eval_every": 2}


def options(**sections) -> str:
    return json.dumps(sections)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tokenizer, two tasks' splits and a model trained on them by the train step."""
    root = tmp_path_factory.mktemp("ckpt")
    sizes = {"n_train": 4, "n_validation": 4, "n_test": 6}
    tokenizer, data_dirs = cli_data(root, ("ioi", "induction"), sizes, seed=0)
    splits = [str(d) for d in data_dirs]
    probes = {"n_probe": 3}
    model = root / "models" / "tiny"
    args = ["train", "--name", "tiny", "--tokenizer", str(tokenizer), "--splits", *splits]
    args += ["--options", options(train=TINY, mechanisms=probes), "--threads", "1"]
    assert main([*args, "--out", str(model)]) == 0
    return root, tokenizer, splits, model, probes


def test_training_records_what_it_held_out(trained):
    _, _, _, model, _ = trained
    report = json.loads((model / "training_report.json").read_text())
    # 2 tasks x (4 + 4 + 6) split prompts, plus 3 prompts per probe (IOI 4, induction 4).
    assert report["held_out_prompts"] == 2 * 14 + 3 * (4 + 4)
    assert len(report["held_out_sha256"]) == 64


def test_export_then_install_gives_the_same_model(trained, tmp_path):
    root, tokenizer, splits, model, probes = trained
    checkpoint = tmp_path / "checkpoint"
    args = ["export-checkpoint", "--model", str(model), "--out", str(checkpoint)]
    assert main(args) == 0
    assert verify(checkpoint)["steps"] == TINY["max_steps"]
    installed = tmp_path / "installed"
    args = ["install-checkpoint", "--name", "tiny", "--checkpoint", str(checkpoint)]
    args += ["--tokenizer", str(tokenizer), "--splits", *splits, "--out", str(installed)]
    assert main([*args, "--options", options(mechanisms=probes)]) == 0
    weights = "hf/model.safetensors"
    assert (installed / weights).read_bytes() == (model / weights).read_bytes()
    manifest = json.loads((installed / "model.json").read_text())
    assert manifest["kind"] == "local" and manifest["checkpoint"] == str(checkpoint)
    # Other probes than the checkpoint held out: refused, nothing installed.
    refused = tmp_path / "refused"
    other = options(mechanisms={"n_probe": 4})
    assert main([*args[:-1], str(refused), "--options", other]) == 1
    assert not refused.exists()


def test_a_damaged_checkpoint_or_another_vocabulary_is_refused(trained, tmp_path):
    _, tokenizer, _, model, _ = trained
    checkpoint = tmp_path / "c"
    write_checkpoint(model, checkpoint)
    weights = checkpoint / "hf" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        verify(checkpoint)
    write_checkpoint(model, checkpoint)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    config = json.loads((tokenizer / "tokenizer.json").read_text())
    config["model"]["vocab"]["zzz"] = len(config["model"]["vocab"])
    (vocab / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="another vocabulary"):
        install(checkpoint, vocab, set(), "tiny", tmp_path / "out")


def test_a_short_retrain_is_deterministic(trained, tmp_path):
    root, tokenizer, splits, _, probes = trained
    states = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["train", "--name", "tiny", "--tokenizer", str(tokenizer), "--splits", *splits]
        args += ["--options", options(train=TINY, mechanisms=probes), "--threads", "1"]
        assert main([*args, "--out", str(out)]) == 0
        states.append((out / "hf" / "model.safetensors").read_bytes())
    assert states[0] == states[1]
