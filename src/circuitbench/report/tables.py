"""Result tables: result rows (CSV) in, a full CSV and a captioned Markdown table out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from circuitbench.io import atomic_write_text
from circuitbench.report.common import format_cell


@dataclass(frozen=True)
class TableSpec:
    title: str
    caption: str
    sort: tuple[str, ...]
    columns: tuple[str, ...]  # shown in Markdown (the CSV keeps every column)
    optional: tuple[str, ...] = ()  # shown when present


TABLES = {
    "models": TableSpec(
        title="Models: held-out accuracy and task metric",
        caption=(
            "accuracy: full-vocabulary argmax is a correct answer; logit_diff: the task's metric "
            "(docs/tasks.md); answer_beats_distractor: fraction with logit_diff > 0. Test split, "
            "clean prompts, evaluated through TransformerBridge."
        ),
        sort=("model", "task"),
        columns=("model", "task", "n", "accuracy", "logit_diff", "answer_beats_distractor"),
        optional=("prob_diff", "prob_diff_restricted"),
    ),
    "baselines": TableSpec(
        title="Baselines: the full and the empty circuit",
        caption=(
            "Each circuit evaluated with one patched pass per batch on the test split. "
            "metric: the task's logit difference with the circuit; full_metric / empty_metric: "
            "the model and the empty circuit; "
            "faithfulness = (m(C) - m(empty)) / (m(M) - m(empty)); "
            "kl: KL(full || circuit) at the prediction position; exact_match: circuit argmax = "
            "model argmax. The full circuit must give faithfulness 1 and KL 0; under interchange "
            "ablation the empty circuit is the corrupted run."
        ),
        sort=("model", "task", "circuit"),
        columns=(
            "model",
            "task",
            "circuit",
            "ablation",
            "n_edges",
            "metric",
            "full_metric",
            "empty_metric",
            "faithfulness",
            "kl",
            "accuracy",
            "exact_match",
        ),
    ),
    "pp_circuits": TableSpec(
        title="Dense path-patching circuits (the reference circuits)",
        caption=(
            "APP's automated head-level search on the dense model, 16 configurations "
            "(scale x min-value), one circuit chosen by APP's rule on the validation split. "
            "roles: how each head entered the circuit: 'logits' (selected at step 0, direct "
            "effect through the final residual) or the receiver input it was selected for "
            "(a{l}.h{h}<q|k|v>). performance: APP's performance % (heads outside the circuit "
            "mean-ablated per template within batches of 25; MLPs kept). grid_flops_app: the "
            "FLOPs APP's accounting charges for all 16 configurations run separately."
        ),
        sort=("model", "task"),
        columns=(
            "model",
            "task",
            "size",
            "heads",
            "roles",
            "config",
            "validation_performance",
            "test_performance",
            "test_faithfulness",
            "grid_flops_app",
            "grid_wall_seconds",
        ),
    ),
}


def write_table(kind: str, inputs: list[Path], out_csv: Path, out_md: Path) -> pd.DataFrame:
    if kind not in TABLES:
        raise KeyError(f"unknown table {kind!r}; known: {', '.join(TABLES)}")
    spec = TABLES[kind]
    # Text columns stay text ("0.1" is head 1 of layer 0, not a number).
    text = {"heads": str, "roles": str, "config": str, "circuit": str}
    table = pd.concat([pd.read_csv(path, dtype=text) for path in inputs], ignore_index=True)
    table = table.sort_values(list(spec.sort)).reset_index(drop=True)
    atomic_write_text(out_csv, table.to_csv(index=False))
    shown = [c for c in (*spec.columns, *spec.optional) if c in table]
    body = table[shown].map(format_cell).to_markdown(index=False, disable_numparse=True)
    atomic_write_text(out_md, f"# {spec.title}\n\n{spec.caption}\n\n{body}\n")
    return table
