"""``circuitbench <step> …``: the only entry point the workflow's rules call.

Each step reads files and writes files (atomically); the options that change a result reach it
as config sections in one JSON argument (``--options``), recorded in the artifact's provenance.
"""

from __future__ import annotations

import argparse
import logging
import sys

from circuitbench import __version__
from circuitbench.options import OptionsError
from circuitbench.steps import STAGES, handler

log = logging.getLogger("circuitbench")


def build_parser() -> argparse.ArgumentParser:
    every_step = {name: text for stage in STAGES for name, text in stage.STEPS.items()}
    parser = argparse.ArgumentParser(
        prog="circuitbench",
        description="Automated circuit discovery pipeline (APP, HAP, Edge Pruning). Steps:\n"
        + "\n".join(f"  {name:<16} {text}" for name, text in every_step.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"circuitbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for stage in STAGES:
        stage.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler(args.step)(args)
    except OptionsError as err:
        log.error("%s: bad options: %s", args.step, err)
        return 2
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        log.error("%s failed: %s", args.step, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
