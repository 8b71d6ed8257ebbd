"""Regenerate this directory's APP data files from the reference document.

``python -m circuitbench.report.paper.generate ../shared/reference/results.md`` parses APP's
Table 2 (``results.md`` §1.2) and the speed-up ratios (§1.3) and writes ``app_table2.csv`` and
``app_speedup.csv`` next to this file. Every row keeps its source and status tag; sparsity is
recomputed from the size (the printed value is kept beside it), and the cells ``results.md`` flags
as doubtful carry a note.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = {
    "IOI": "ioi",
    "GreaterThan": "greater_than",
    "GenderedPronouns": "gendered_pronouns",
    "GP": "gendered_pronouns",
    "GT": "greater_than",
    "Induction": "induction",
    "Docstring": "docstring",
}
METHODS = {
    "Path Patching": "pp",
    "FLAP": "flap",
    "Contrastive FLAP": "cflap",
    "Merged": "merged",
}
# Cells results.md §1.2 lists under "Checks and anomalies": (model, method, task) -> note.
DOUBTFUL_TPR = {
    ("GPT-2 small", "flap", "docstring"): "TPR equals the cell's Perf. (probably a copy error)",
    ("GPT-2 large", "merged", "induction"): "TPR is not k/|PP| for an integer k",
    ("Qwen2.5-0.5B", "merged", "gendered_pronouns"): "TPR equals Perf. (probably a copy error)",
    ("Qwen2.5-0.5B", "flap", "docstring"): "TPR = 4/21, but the PP circuit has 34 heads",
    ("Qwen2.5-0.5B", "cflap", "docstring"): "TPR = 18/21, but the PP circuit has 34 heads",
    ("Qwen2.5-0.5B", "merged", "docstring"): "TPR = 18/21, but the PP circuit has 34 heads",
    ("Qwen2.5-7B", "merged", "ioi"): "TPR is not k/|PP| for an integer k",
}
SOURCE_TABLE2 = "APP README img/accuracy-app.PNG (results.md 1.2)"
SOURCE_SPEEDUP = "APP README img/GFLOPS-app.PNG (results.md 1.3)"


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def table_rows(block: str) -> list[list[str]]:
    """The data rows of the first Markdown table in ``block`` (header included)."""
    rows = [line for line in block.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return [row for row in cells if not all(set(c) <= set("-: ") for c in row)]


def table2(text: str) -> list[dict[str, object]]:
    block = section(text, "### 1.2 Table 2", "**Setting.**")
    out = []
    for match in re.finditer(r"\*\*(?P<model>[^*]+) \((?P<heads>\d+) heads\)\*\*", block):
        model, n_heads = match["model"], int(match["heads"])
        rows = table_rows(block[match.end() :].split("\n\n", 2)[1])
        header = [TASKS[name] for name in rows[0][1:]]
        for row in rows[1:]:
            method = METHODS[row[0]]
            for task, cell in zip(header, row[1:], strict=True):
                perf, size_part, tpr = (part.strip() for part in cell.split("/"))
                size, printed = re.fullmatch(r"(\d+) \(([\d.]+)\)", size_part).groups()
                out.append(
                    {
                        "paper_model": model,
                        "n_heads": n_heads,
                        "method": method,
                        "task": task,
                        "performance_pct": float(perf),
                        "size_heads": int(size),
                        "head_sparsity": round(1 - int(size) / n_heads, 4),
                        "head_sparsity_printed": float(printed),
                        "tpr": "" if tpr in ("–", "-") else float(tpr),
                        "status": "paper",
                        "source": SOURCE_TABLE2,
                        "note": DOUBTFUL_TPR.get((model, method, task), ""),
                    }
                )
    return out


def speedups(text: str) -> list[dict[str, object]]:
    block = section(text, "### 1.3 Speed-up figure", "**Savings implied")
    rows = table_rows(block)
    header = [TASKS[name] for name in rows[0][1:]]
    out = []
    for row in rows[1:]:
        for task, cell in zip(header, row[1:], strict=True):
            ratio = float(cell.lstrip("×x"))
            out.append(
                {
                    "paper_model": row[0],
                    "task": task,
                    "ratio": ratio,
                    "saving_pct": round(100 * (1 - 1 / ratio), 2),
                    "status": "paper",
                    "source": SOURCE_SPEEDUP,
                    "note": "ratio PP/APP of grid-summed GFLOPs as printed on the bars",
                }
            )
    return out


def write(rows: list[dict[str, object]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_md", type=Path, help="path to results.md")
    args = parser.parse_args()
    text = args.results_md.read_text(encoding="utf-8")
    write(table2(text), HERE / "app_table2.csv")
    write(speedups(text), HERE / "app_speedup.csv")


if __name__ == "__main__":
    main()
