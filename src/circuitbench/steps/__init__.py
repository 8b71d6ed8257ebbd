"""The pipeline steps behind ``circuitbench <step>``, one module per stage.

A stage module other than :mod:`core` declares ``STEPS`` (step name -> one-line help) and
``add_parsers(sub)`` (its subcommands); the handler of step ``a-b`` is its function ``a_b``.
"""

from __future__ import annotations

from types import ModuleType

from circuitbench.steps import core, discovery, planted, pruning, report
from circuitbench.steps.core import (
    csv_text,
    load_patched_model,
    load_text_tokenizer,
    model_shape,
    read_manifest,
    read_task_data,
)

STAGES: tuple[ModuleType, ...] = (pruning, discovery, planted, report)

__all__ = [
    "STAGES",
    "core",
    "csv_text",
    "handler",
    "load_patched_model",
    "load_text_tokenizer",
    "model_shape",
    "read_manifest",
    "read_task_data",
]


def handler(step: str):
    """The function that runs ``step``."""
    name = step.replace("-", "_")
    for module in (core, *STAGES):
        if step in getattr(module, "STEPS", {}) or module is core:
            function = getattr(module, name, None)
            if function is not None:
                return function
    raise KeyError(f"no handler for step {step!r}")
