"""Steps of the stage: Paper-vs-ours tables and figures, and the workflow report (issue 7)."""

from __future__ import annotations

import argparse

STEPS: dict[str, str] = {}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
