"""The whole workflow on the smoke preset: it runs end to end, two runs with the same seed give the
same circuit files and tables, and a run killed mid-rule resumes to the same outputs.

"The same" means byte-identical circuit files (every MIB JSON under ``results/``) and identical
table values once the columns that *measure* the run (wall and CPU seconds, peak memory, speed-ups
computed from them) are set aside: those are facts about the machine, not results.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import snakemake_command

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"
# Columns that measure the run rather than state a result.
MEASURED = re.compile(
    r"(second|(^|[ _])s($| )|runtime|wall|cpu|memory|rss|speedup|speed_up|per_step"
    r"|timestamp|_time)",
    re.IGNORECASE,
)

pytestmark = pytest.mark.slow


def command(workdir: Path, *extra: str) -> list[str]:
    return snakemake_command(workdir, "default", "--configfile", str(SMOKE), "--cores", "2", *extra)


def run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(workdir, *extra), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return result


def circuit_files(workdir: Path) -> dict[str, bytes]:
    """Every MIB circuit graph the run wrote, by relative path."""
    found = {}
    for path in sorted((workdir / "results").rglob("*.json")):
        text = path.read_bytes()
        if b'"edges"' in text[:4096] or b'"cfg"' in text[:4096]:
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(payload, dict) and {"cfg", "nodes", "edges"} <= set(payload):
                found[str(path.relative_to(workdir))] = text
    return found


def how_they_differ(first: bytes, second: bytes) -> str:
    """The largest score difference and the number of membership flips of two circuit files (to
    tell last-bit noise from a different circuit when the test fails)."""
    a, b = json.loads(first), json.loads(second)
    largest, flips = 0.0, 0
    for part in ("nodes", "edges"):
        for key, entry in a[part].items():
            other = b[part].get(key, {})
            if isinstance(entry.get("score"), float) and isinstance(other.get("score"), float):
                largest = max(largest, abs(entry["score"] - other["score"]))
            flips += entry.get("in_graph") != other.get("in_graph")
    return f"max |score difference| {largest:.3g}, {flips} in_graph flips"


def tables(workdir: Path) -> dict[str, pd.DataFrame]:
    """Every table CSV, without the measured columns."""
    out = {}
    for path in sorted((workdir / "results" / "tables").glob("*.csv")):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        out[path.name] = table[[c for c in table.columns if not MEASURED.search(c)]]
    return out


def assert_same_outputs(first: Path, second: Path) -> None:
    circuits_a, circuits_b = circuit_files(first), circuit_files(second)
    assert circuits_a, "the smoke run wrote no circuit files"
    assert circuits_a.keys() == circuits_b.keys()
    different = {
        name: how_they_differ(circuits_a[name], circuits_b[name])
        for name in circuits_a
        if circuits_a[name] != circuits_b[name]
    }
    assert not different, f"circuit files differ: {different}"
    tables_a, tables_b = tables(first), tables(second)
    assert tables_a.keys() == tables_b.keys()
    for name, table in tables_a.items():
        pd.testing.assert_frame_equal(table, tables_b[name], obj=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke-reference")
    run(workdir)
    return workdir


def test_smoke_preset_runs_end_to_end(reference):
    targets = run(reference, "-n", "--quiet", "all").stdout
    assert "Nothing to be done" in targets or not targets.strip()
    for name in ("app_speedup.csv", "hap_table1.csv", "ep_table1.csv", "planted_recovery.csv"):
        assert (reference / "results" / "tables" / name).exists()
    assert list((reference / "figures").glob("*.png"))
    # The report holds every final table and figure with its caption.
    run(reference, "--report", "report.html")
    html = (reference / "report.html").read_text(encoding="utf-8", errors="replace")
    for caption in sorted((ROOT / "workflow" / "report").glob("*.rst")):
        words = " ".join(caption.read_text().split()[:4])
        assert words in html, caption.name


def test_two_runs_with_the_same_seed_agree(reference, tmp_path):
    run(tmp_path)
    assert_same_outputs(reference, tmp_path)


def test_a_run_killed_mid_rule_resumes_to_the_same_outputs(reference, tmp_path):
    process = subprocess.Popen(
        command(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Kill everything (snakemake and its running jobs) while a discovery rule is mid-flight.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if list((tmp_path / "logs").glob("path_patching/*/*.log")):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "results" / "tables" / "hap_table1.csv").exists()
    # A killed snakemake leaves its lock behind (a Ctrl-C does not): unlock, then rerun. The
    # profile reruns incomplete jobs; atomic writes left nothing half-written to trust.
    run(tmp_path, "--unlock")
    run(tmp_path)
    assert_same_outputs(reference, tmp_path)
