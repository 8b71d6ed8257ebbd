"""The pipeline steps behind ``circuitbench <step>``, one module per stage.

A stage module declares ``STEPS`` (step name -> one-line help) and ``add_parsers(sub)`` (its
subcommands); the handler of step ``a-b`` is its function ``a_b``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

from circuitbench.steps import (
    bench,
    circuits,
    discovery,
    mechanisms,
    models,
    path_patching,
    planted,
    pruning,
)

STAGES: tuple[ModuleType, ...] = (
    models,
    circuits,
    path_patching,
    pruning,
    discovery,
    mechanisms,
    planted,
    bench,
)


def handler(step: str) -> Callable[[argparse.Namespace], None]:
    """The function that runs ``step``."""
    for stage in STAGES:
        if step in stage.STEPS:
            return getattr(stage, step.replace("-", "_"))
    raise KeyError(f"no handler for step {step!r}")
