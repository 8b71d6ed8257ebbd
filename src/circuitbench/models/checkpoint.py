"""Committed checkpoints of our own trainer (``docs/models.md``).

Training the default toy suite takes longer than the pipeline's budget, so the default model can
start from a checkpoint that ``circuitbench train`` wrote: its ``hf/`` directory (weights and
tokenizer), its training report, and ``SHA256SUMS``. Installing it checks, before anything is
copied:

- every file against ``SHA256SUMS``;
- that its tokenizer is the pipeline's toy tokenizer, token for token;
- that the prompts held out from its training are exactly those the current configuration
  evaluates on (the digest the training report records), so every accuracy stays held out.

``snakemake --cores all retrain`` retrains every checkpointed model from its recorded spec.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.models.loading import MANIFEST

SUMS = "SHA256SUMS"
REPORT = "training_report.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is damaged, or that does not fit the current configuration."""


def held_out_digest(texts: set[str]) -> str:
    """sha256 of the held-out prompt texts (sorted, one per line)."""
    return hashlib.sha256("\n".join(sorted(texts)).encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SUMS)


def write_checkpoint(model_dir: Path, out: Path) -> dict[str, str]:
    """Copy a trained model directory (``hf/`` and the training report) to ``out`` with its
    ``SHA256SUMS``; returns the sums."""
    model_dir = Path(model_dir)
    if not (model_dir / "hf").is_dir() or not (model_dir / REPORT).exists():
        raise CheckpointError(f"{model_dir} is not a trained model directory (hf/, {REPORT})")
    with atomic_directory(out) as tmp:
        shutil.copytree(model_dir / "hf", tmp / "hf")
        shutil.copy2(model_dir / REPORT, tmp / REPORT)
        sums = {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)}
        atomic_write_text(tmp / SUMS, "".join(f"{h}  {name}\n" for name, h in sums.items()))
    return sums


def verify(checkpoint: Path) -> dict[str, Any]:
    """Check every file against ``SHA256SUMS``; returns the training report."""
    checkpoint = Path(checkpoint)
    sums_file = checkpoint / SUMS
    if not sums_file.exists():
        raise CheckpointError(f"{checkpoint} has no {SUMS}: not a checkpoint")
    expected = {}
    for line in sums_file.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        expected[name] = digest
    present = {str(p.relative_to(checkpoint)) for p in _files(checkpoint)}
    if present != set(expected):
        raise CheckpointError(
            f"{checkpoint}: files {sorted(present ^ set(expected))} differ from {SUMS}"
        )
    for name, digest in expected.items():
        if _sha256(checkpoint / name) != digest:
            raise CheckpointError(f"{checkpoint}/{name} does not match its sha256 in {SUMS}")
    return json.loads((checkpoint / REPORT).read_text(encoding="utf-8"))


def _vocabulary(tokenizer_dir: Path) -> dict[str, int]:
    return json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))[
        "model"
    ]["vocab"]


def install(
    checkpoint: Path,
    tokenizer_dir: Path,
    held_out: set[str],
    name: str,
    out: Path,
    prepend_bos: bool = True,
) -> dict[str, Any]:
    """Verify ``checkpoint`` against the pipeline's toy tokenizer and held-out prompts, then
    install it as the prepared model directory ``out``; returns its training report."""
    report = verify(checkpoint)
    if _vocabulary(Path(checkpoint) / "hf") != _vocabulary(tokenizer_dir):
        raise CheckpointError(
            f"{checkpoint} was trained with another vocabulary than {tokenizer_dir}: retrain it "
            "(`snakemake --cores all retrain`) or remove models.<name>.checkpoint"
        )
    digest = held_out_digest(held_out)
    if report.get("held_out_sha256") != digest:
        raise CheckpointError(
            f"{checkpoint} held out other prompts than this configuration evaluates on "
            f"(digest {report.get('held_out_sha256')}, now {digest}): its accuracy would not be "
            "held out. Keep the tasks' sizes, seed and probes as they were, retrain it "
            "(`snakemake --cores all retrain`), or remove models.<name>.checkpoint"
        )
    with atomic_directory(out) as tmp:
        shutil.copytree(Path(checkpoint) / "hf", tmp / "hf")
        shutil.copy2(Path(checkpoint) / REPORT, tmp / REPORT)
        atomic_write_json(
            tmp / MANIFEST,
            provenance(
                name=name,
                kind="local",
                source="hf",
                prepend_bos=prepend_bos,
                trained=True,
                checkpoint=str(checkpoint),
                checkpoint_sha256=_sha256(Path(checkpoint) / SUMS),
            ),
        )
    return report
