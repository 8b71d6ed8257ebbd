"""Writers shared by every paper-vs-ours table and figure.

- :func:`save_table`: one DataFrame -> ``<stem>.csv`` (every column), ``<stem>.md`` (captioned
  Markdown) and ``<stem>.tex`` (a booktabs ``table`` with caption and label), all atomic.
- :func:`save_figure`: one matplotlib figure -> ``<stem>.png`` and ``<stem>.pdf``, atomic, with
  no timestamps in the files (reruns give identical bytes).
- :func:`paper_mark`: how a "paper" cell shows its source status ([secondary], [unverified]).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from circuitbench.io import atomic_write_text

# (Any: matplotlib types rc_context's keys as one long literal union.)
PAPER_STYLE: Any = {
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def format_cell(value: object) -> str:
    """Numbers to 3 decimals (scientific past 1e5; a value that rounds to zero prints without a
    sign), NaN blank, text as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if value != value:  # NaN
        return ""
    if isinstance(value, int):
        return str(value)
    text = f"{value:.3g}" if abs(value) >= 1e5 else f"{value:.3f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def stem_of(path: str | Path) -> Path:
    """``results/tables/x.csv`` -> ``results/tables/x`` (any of the three suffixes)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".csv", ".md", ".tex", ".png", ".pdf") else path


def save_table(
    table: pd.DataFrame,
    stem: str | Path,
    title: str,
    caption: str,
    columns: list[str] | None = None,
) -> None:
    """Write ``table`` as CSV (all columns), Markdown and LaTeX (``columns``, default all)."""
    stem = stem_of(stem)
    shown = table[columns] if columns else table
    atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    body = shown.map(format_cell).to_markdown(index=False, disable_numparse=True)
    atomic_write_text(stem.with_suffix(".md"), f"# {title}\n\n{caption}\n\n{body}\n")
    atomic_write_text(stem.with_suffix(".tex"), latex_table(shown, title, caption, stem.name))


def latex_table(table: pd.DataFrame, title: str, caption: str, label: str) -> str:
    """A self-contained booktabs table (needs ``\\usepackage{booktabs}``)."""

    def escape(text: str) -> str:
        for char, replacement in (
            ("\\", r"\textbackslash{}"),
            ("&", r"\&"),
            ("%", r"\%"),
            ("$", r"\$"),
            ("#", r"\#"),
            ("_", r"\_"),
            ("{", r"\{"),
            ("}", r"\}"),
            ("~", r"\textasciitilde{}"),
            ("^", r"\textasciicircum{}"),
            ("<", r"\textless{}"),
            (">", r"\textgreater{}"),
        ):
            text = text.replace(char, replacement)
        return text

    align = "".join("r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{\textbf{{{escape(title)}.}} {escape(caption)}}}",
        rf"\label{{tab:{escape(label)}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(escape(str(c)) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for _, row in table.iterrows():
        lines.append(" & ".join(escape(format_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def save_figure(figure, stem: str | Path) -> None:
    """Save ``figure`` as PNG and PDF next to each other, atomically and reproducibly."""
    import matplotlib.pyplot as plt

    stem = stem_of(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, metadata in ((".png", {"Software": None}), (".pdf", {"CreationDate": None})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix[1:], bbox_inches="tight", metadata=metadata)
        target = stem.with_suffix(suffix)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, target)
    plt.close(figure)


def paper_mark(value: object, status: str) -> str:
    """A paper cell with its status mark unless it is a published table/figure or code."""
    text = format_cell(value)
    if not text or status in ("paper", "code"):
        return text
    return f"{text} [{status}]"
