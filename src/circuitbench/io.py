"""Atomic artifact writes and provenance.

Every artifact is written to a temporary sibling and renamed into place, so an interrupted run never
leaves a half-written file (or directory) that a later run would trust.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from circuitbench import __version__


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def provenance(**fields: Any) -> dict[str, Any]:
    """What every artifact records about how it was made."""
    return {
        **fields,
        "package_version": __version__,
        "torch_version": importlib.metadata.version("torch"),
        "python": platform.python_version(),
    }


# Keys of a provenance record that measure the run (seconds, memory) rather than describe it.
MEASURED_KEY = re.compile(r"(seconds|peak_memory|_rss$)", re.IGNORECASE)


def without_measurements(record: Any) -> Any:
    """``record`` (nested dicts and lists) without the keys that measure the run: what an artifact
    that must be byte-identical across reruns (a circuit file) may carry. The measurements live
    in the step's summary rows."""
    if isinstance(record, dict):
        return {
            key: without_measurements(value)
            for key, value in record.items()
            if not (isinstance(key, str) and MEASURED_KEY.search(key))
        }
    if isinstance(record, list):
        return [without_measurements(value) for value in record]
    return record


def csv_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as CSV text; the columns are the union of the rows' keys, in first-seen order."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
