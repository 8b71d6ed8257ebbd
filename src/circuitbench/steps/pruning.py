"""Steps of the stage: FLAP / Contrastive-FLAP pruning sweeps, cliff selection, merged head sets and
APP (issue 5)."""

from __future__ import annotations

import argparse

STEPS: dict[str, str] = {}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
