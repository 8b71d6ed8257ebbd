"""The MIB table: CPR and CMD of every task's edge-scoring runs (EAP, EAP-IG, Edge Pruning, HAP).

``results/tables/mib.csv`` holds one row per run and edge ranking with the ten faithfulness
values; the Markdown and LaTeX tables show MIB's pair (CPR with the signed ranking, CMD with the
absolute one) and the other ranking's values beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from circuitbench.io import atomic_write_text
from circuitbench.report.common import save_table

KEYS = ["model", "task", "method", "run"]
CAPTION = (
    "MIB's circuit-localization metrics on the test split under interchange ablation: for the "
    "fractions {fractions} of all edges, the top-scored edges (dangling ones pruned) are "
    "evaluated; CPR is the area under their normalized faithfulness (higher is better, at most "
    "0.999), CMD the area under |1 - faithfulness| (lower is better), both over the linear axis "
    "of fractions. MIB ranks edges by signed score for CPR and by absolute score for CMD; the "
    "other ranking's values stand beside them. Edge Pruning and HAP are ranked by their soft "
    "masks."
)


def mib_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per run: CPR and CMD under each ranking, MIB's pair first."""
    wide = summary.pivot_table(index=KEYS, columns="ranking", values=["cpr", "cmd"], sort=False)
    out = pd.DataFrame(
        {
            "CPR (signed)": wide[("cpr", "signed")],
            "CMD (absolute)": wide[("cmd", "absolute")],
            "CPR (absolute)": wide[("cpr", "absolute")],
            "CMD (signed)": wide[("cmd", "signed")],
        }
    ).reset_index()
    return out.sort_values(KEYS, kind="stable").reset_index(drop=True)


def write_mib_table(paths: Sequence[Path], tables: Path, fractions: Sequence[float]) -> None:
    summary = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    summary["run"] = summary["run"].astype(str)
    tables.mkdir(parents=True, exist_ok=True)
    wide = mib_table(summary)
    save_table(wide, tables / "mib", "MIB CPR and CMD", CAPTION.format(fractions=list(fractions)))
    atomic_write_text(tables / "mib_long.csv", summary.to_csv(index=False))
