"""The slurm profile, tested without a cluster: fake slurm commands on PATH record what the executor
plugin submits; GPU requests go only to jobs that run a paper (hub) model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_command

ROOT = Path(__file__).resolve().parents[1]

FAKE = {
    # sbatch: record the call line and hand out job ids.
    "sbatch": """#!/bin/sh
echo "sbatch $*" >> "$FAKE_SLURM_LOG"
echo $$
""",
    "sacct": "#!/bin/sh\necho testacct\n",
    "sacctmgr": "#!/bin/sh\necho testacct\n",
    "squeue": "#!/bin/sh\nexit 0\n",
    "scancel": "#!/bin/sh\nexit 0\n",
    "sinfo": "#!/bin/sh\necho PARTITION\necho cpu*\necho gpu\n",
}


def fake_slurm(directory: Path) -> Path:
    directory.mkdir()
    for name, text in FAKE.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o755)
    return directory


def touch_inputs(workdir: Path) -> None:
    """Upstream artifacts of the jobs under test, oldest first, so those jobs are ready at once."""
    data = [f"results/data/{m}/ioi/test.json" for m in ("toy", "paper")]
    models = ["results/models/toy/model.json", "results/models/paper/model.json"]
    for path in ["results/tokenizers/toy/tokenizer.json", *data, *models]:
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")
        time.sleep(0.01)


@pytest.mark.slow
def test_slurm_profile_requests_gpus_only_for_gpu_jobs(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["tasks"] = {"ioi": {"n_train": 4, "n_validation": 4, "n_test": 4}}
    config["models"] = {
        "toy": {"kind": "toy", "train": {"n_layer": 1, "n_head": 2, "d_model": 16}},
        "paper": {"kind": "hub", "source": "openai-community/gpt2"},
    }
    config["cluster"] = {
        "gpu_model": "h100",
        "gpu_partition": "gpupart",
        "cpu_partition": "cpupart",
    }
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    touch_inputs(workdir)
    log = tmp_path / "sbatch.log"
    log.touch()
    env = {
        **os.environ,
        "PATH": f"{fake_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM_LOG": str(log),
    }
    targets = [
        "results/toy/model_eval.csv",
        "results/paper/model_eval.csv",
        "results/paper/circuits/full.json",
    ]
    command = snakemake_command(
        workdir,
        "slurm",
        "--configfile",
        str(workdir / "config.yaml"),
        "--slurm-init-seconds-before-status-checks",
        "600",
        *targets,
    )
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if len(log.read_text().splitlines()) >= len(targets):
                break
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        output = process.stdout.read() if process.stdout else ""
    lines = log.read_text().splitlines()
    assert len(lines) == len(targets), output

    def submitted(rule: str, model: str) -> str:
        pattern = re.compile(rf"rule_{rule}_wildcards_{model}(_|\s|$)")
        found = [line for line in lines if pattern.search(line)]
        assert len(found) == 1, (rule, model, lines)
        return found[0]

    gpu_job = submitted("eval_model", "paper")
    assert "--gpus=h100:1" in gpu_job
    assert "-p gpupart" in gpu_job
    for line in (submitted("eval_model", "toy"), submitted("baseline_circuit", "paper")):
        assert "--gpus" not in line
        assert "-p cpupart" in line
    assert all("-A testacct" in line for line in lines)
