"""Steps of the stage: Planted ground-truth circuits: hand-built models and method recovery (issue
8)."""

from __future__ import annotations

import argparse

STEPS: dict[str, str] = {}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
