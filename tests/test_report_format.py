"""Numbers as the tables and figures print them."""

from __future__ import annotations

import math

from circuitbench.report.app import ratio_label
from circuitbench.report.common import format_cell


def test_a_value_that_rounds_to_zero_prints_without_a_sign():
    assert format_cell(-0.0001) == "0.000"
    assert format_cell(-0.0) == "0.000"
    assert format_cell(-0.0006) == "-0.001"
    assert format_cell(0.12345) == "0.123"
    assert format_cell(float("nan")) == ""


def test_speedup_ratios_keep_their_digits():
    assert ratio_label(0.0012345) == "×0.0012"  # never ×0.00
    assert ratio_label(0.91) == "×0.91"
    assert ratio_label(12.4) == "×12"
    assert ratio_label(math.nan) == "×–"
