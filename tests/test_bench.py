"""The benchmarks' own machinery: the usage tracker sees what a block allocates, and the GPU
script runs end to end (on CPU, tiny shape), writing one row per measurement."""

from __future__ import annotations

import csv

import pytest
import torch

from circuitbench.cli import main
from circuitbench.cost import track_usage

MEASUREMENTS = ["path_patching", "eap", "eap_ig", "edge_pruning", "hap", "evaluate"]


def test_usage_tracker_sees_a_block_allocation():
    with track_usage() as idle:
        pass
    with track_usage() as busy:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        total = float(block.sum())
        del block
    assert total == 64 * 2**20
    assert busy.rss_increase_mb >= 200
    assert idle.rss_increase_mb < 50
    assert busy.cpu_seconds > 0 and busy.wall_seconds > 0
    assert busy.cuda_peak_mb is None


def run_gpu_script(tmp_path, device: str) -> list[dict[str, str]]:
    out = tmp_path / "gpu.csv"
    argv = ["bench", "gpu", "--shape", "tiny", "--device", device, "--gpu-csv", str(out)]
    assert main(argv) == 0
    with out.open() as f:
        return list(csv.DictReader(f))


def check_rows(rows: list[dict[str, str]]) -> None:
    assert [r["measurement"] for r in rows] == MEASUREMENTS
    for row in rows:
        assert float(row["wall_s"]) > 0 and float(row["peak_rss_mb"]) > 0, row
    for row in rows[3:5]:  # Edge Pruning and HAP: measured steps, extrapolated to 3000
        per_step = float(row["seconds_per_step"])
        assert int(row["steps"]) == 3 and per_step > 0
        assert float(row["extrapolated_3000_steps_s"]) >= 3000 * per_step
    assert "subgraph masked forward" in rows[4]["detail"]


def test_gpu_script_runs_on_cpu_with_the_tiny_shape(tmp_path):
    rows = run_gpu_script(tmp_path, "cpu")
    check_rows(rows)
    assert all(r["device"] == "cpu" and r["cuda_peak_mb"] == "" for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_script_on_cuda(tmp_path):
    rows = run_gpu_script(tmp_path, "cuda")
    check_rows(rows)
    assert all(float(r["cuda_peak_mb"]) > 0 for r in rows)
