"""Published numbers (the "paper" side of paper-vs-ours), transcribed from the papers and the
APP authors' README (each row names its source and status).

- ``app_table2.csv``: APP Table 2, one row per paper model x method x task;
- ``app_speedup.csv``: APP's PP/APP GFLOP ratios per paper model x task.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

# APP's abstract: the merged pruning circuit removes 56% of the heads on average; its Table 2
# implies 65% (the mean head sparsity of its 20 Merged cells).
APP_SEARCH_SPACE_REDUCTION = {"abstract [paper]": 56.0, "Table 2 mean [paper]": 65.0}


def load(name: str) -> pd.DataFrame:
    """One of this directory's CSV files, e.g. ``load("app_table2")``."""
    return pd.read_csv(HERE / f"{name}.csv", keep_default_na=False, na_values=[""])
