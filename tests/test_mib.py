"""MIB's CPR and CMD: the areas on closed-form curves, and the curve of real scores on a random
model (the 100% point is the full circuit; pruning never keeps more edges than asked)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import task_data

from circuitbench.evaluate import EvaluationOptions
from circuitbench.methods import eap
from circuitbench.mib import (
    MIB_FRACTIONS,
    area_metrics,
    curve_summary,
    faithfulness_curve,
    faithfulness_curves,
)
from circuitbench.report.mib import mib_table


def test_areas_of_closed_form_curves():
    ones = area_metrics(MIB_FRACTIONS, [1.0] * 10)
    assert ones["cpr"] == pytest.approx(0.999) and ones["cmd"] == pytest.approx(0.0)
    zeros = area_metrics(MIB_FRACTIONS, [0.0] * 10)
    assert zeros["cpr"] == pytest.approx(0.0) and zeros["cmd"] == pytest.approx(0.999)
    # A ramp to 1 at the midpoint, then flat: CPR 0.25 + 0.5, CMD 0.25.
    ramp = area_metrics([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    assert ramp == pytest.approx({"cpr": 0.75, "cmd": 0.25})
    # Above 1 counts against CMD as much as below 1.
    over = area_metrics([0.0, 1.0], [2.0, 2.0])
    assert over == pytest.approx({"cpr": 2.0, "cmd": 1.0})
    with pytest.raises(ValueError, match="increase"):
        area_metrics([0.5, 0.1], [1.0, 1.0])
    with pytest.raises(ValueError, match="one faithfulness per fraction"):
        area_metrics([0.1, 0.5], [1.0])


def test_curve_of_eap_scores_ends_at_the_full_model(model, toy_tokenizer):
    data = task_data(toy_tokenizer, "ioi", n=8)
    result = eap.eap_scores(model, data, eap.EAPConfig(batch_size=4), "abc")
    shape = model.shape
    graph = eap.circuit_from_scores(shape, result.scores, torch.zeros_like(shape.valid))
    cache = EvaluationOptions(batch_size=8).cache(
        model, task_data(toy_tokenizer, "ioi", n=8, seed=1)
    )
    signed = faithfulness_curve(model, cache, graph, "signed")
    absolute = faithfulness_curve(model, cache, graph, "absolute")
    for curve in (signed, absolute):
        assert [row["fraction"] for row in curve] == list(MIB_FRACTIONS)
        assert all(row["edges_asked"] == int(row["fraction"] * shape.n_edges) for row in curve)
        assert all(row["n_edges"] <= row["edges_asked"] for row in curve)
        counts = [row["n_edges"] for row in curve]
        assert counts == sorted(counts) and counts[-1] == shape.n_edges
        assert curve[-1]["faithfulness"] == pytest.approx(1.0, abs=1e-5)
        assert curve[-1]["kl"] == pytest.approx(0.0, abs=1e-5)
    # Signed and absolute rankings differ on these scores (some are negative) ...
    assert (result.scores[shape.valid] < 0).any()
    assert [r["n_edges"] for r in signed] != [r["n_edges"] for r in absolute] or [
        r["faithfulness"] for r in signed
    ] != [r["faithfulness"] for r in absolute]
    both = faithfulness_curves(model, cache, graph)
    assert both["signed"] == signed and both["absolute"] == absolute
    # ... and coincide on their absolute values, where the pair is evaluated once.
    graph.edge_scores = graph.edge_scores.abs()
    again = faithfulness_curve(model, cache, graph, "signed")
    assert [r["faithfulness"] for r in again] == [r["faithfulness"] for r in absolute]
    once = faithfulness_curves(model, cache, graph)
    assert [r["faithfulness"] for r in once["signed"]] == [r["faithfulness"] for r in absolute]
    assert {r["ranking"] for r in once["signed"]} == {"signed"}
    summary = curve_summary(absolute)
    assert summary["f_1"] == absolute[-1]["faithfulness"]
    assert (
        summary["cpr"] == area_metrics(MIB_FRACTIONS, [r["faithfulness"] for r in absolute])["cpr"]
    )


def test_table_puts_mibs_pair_first():
    rows = []
    for ranking, cpr, cmd in (("signed", 0.4, 0.3), ("absolute", 0.8, 0.1)):
        rows.append(dict(model="m", task="ioi", method="eap", run="eap", ranking=ranking,
                         cpr=cpr, cmd=cmd))  # fmt: skip
    table = mib_table(pd.DataFrame(rows))
    assert table.iloc[0][
        ["CPR (signed)", "CMD (absolute)", "CPR (absolute)", "CMD (signed)"]
    ].tolist() == [0.4, 0.1, 0.8, 0.3]
