"""Steps of the stage: Edge-level discovery: EAP, EAP-IG, Edge Pruning and HAP (issue 6)."""

from __future__ import annotations

import argparse

STEPS: dict[str, str] = {}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to ``circuitbench``."""
