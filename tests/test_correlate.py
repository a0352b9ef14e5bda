"""Kendall tau, granulated consistency, the PGDL score and correlate() on synthetic stores (no training)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rethink.errors import UserError
from rethink.measures.correlate import correlate, correlation_output, granulated, kendall_tau, pgdl_score
from rethink.store import Store

DEFAULT = {"subset": None, "percentile": 10.0}


def test_kendall_tau_by_hand():
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # pairs: +1, +1, -1
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)  # the tied pair counts 0 of 3
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_matches_scipy_without_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b = a + rng.normal(size=40)
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


# A 2-axis grid: p in {0, 0.5, 1} x width in {1, 2}, one run each.
GRID = [(p, w) for w in (1, 2) for p in (0.0, 0.5, 1.0)]
GAPS = [0.1, 0.3, 0.5, 0.2, 0.4, 0.6]
VALUES = [1.0, 2.0, 3.0, 4.0, 5.0, 0.0]


def test_granulated_by_hand():
    # psi_p: width 1: tau(1,2,3 vs .1,.3,.5) = 1; width 2: tau(4,5,0 vs .2,.4,.6) = (1 - 1 - 1)/3 = -1/3.
    # psi_width: p = 0: (1 vs 4) with gaps (.1 vs .2) +1; p = 0.5: +1; p = 1: (3 vs 0), (.5 vs .6) -1.
    axes = {"p": [p for p, _ in GRID], "width": [w for _, w in GRID], "model": ["mlp"] * 6}
    result = granulated(VALUES, GAPS, axes)
    assert set(result["psi"]) == {"p", "width"}  # the constant axis is left out
    assert result["psi"]["p"] == pytest.approx((1 - 1 / 3) / 2)
    assert result["psi"]["width"] == pytest.approx(1 / 3)
    assert result["Psi"] == pytest.approx(1 / 3)


def test_granulated_constant_axes_is_an_error():
    with pytest.raises(UserError, match="every axis is constant; vary at least one of p, width"):
        granulated([1, 2, 3], [1, 2, 3], {"p": [0, 0, 0], "width": [1, 1, 1]})
    with pytest.raises(UserError, match="every axis is constant"):
        pgdl_score([1, 2, 3], [1, 2, 3], {"p": [0, 0, 0]})


def _pgdl_grid(seeds=5):
    """60 runs: 3 x 2 x 2 settings of three axes, 5 replicates each, random gaps."""
    settings = list(itertools.product((0.0, 0.5, 1.0), (1, 2), (0.0, 0.1))) * seeds
    axes = {"p": [s[0] for s in settings], "width": [s[1] for s in settings], "dropout": [s[2] for s in settings]}
    return np.random.default_rng(1).uniform(size=len(settings)), axes


def test_pgdl_perfect_and_independent():
    gaps, axes = _pgdl_grid()
    assert len(gaps) == 60
    assert pgdl_score(gaps, gaps, axes) == pytest.approx(100.0)
    assert pgdl_score(3 * gaps + 1, gaps, axes) == pytest.approx(100.0)  # only the order matters
    noise = np.random.default_rng(2).uniform(size=len(gaps))
    assert 0.0 <= pgdl_score(noise, gaps, axes) < 10.0


def test_pgdl_one_axis_and_determined_pairs():
    gaps, axes = _pgdl_grid()
    assert pgdl_score(gaps, gaps, {"p": axes["p"], "width": [1] * 60}) == pytest.approx(100.0)
    # Two axes and no replicates: the axes' values fix every gap order, nothing is left to score.
    assert math.isnan(pgdl_score(VALUES, GAPS, {"p": [p for p, _ in GRID], "width": [w for _, w in GRID]}))


def _store(tmp_path, runs) -> Store:
    """A store with one finished run per (spec, summary, measures) of ``runs``."""
    db = Store(str(tmp_path / "s.sqlite"))
    for i, (spec, summary, measures) in enumerate(runs):
        run_id = f"run{i:02d}"
        db.start_run(run_id, spec)
        db.finish_run(run_id, "fitted", summary, [], [])
        if measures is not None:
            db.record_measures(run_id, measures, DEFAULT)
    return db


def _grid_store(tmp_path):
    runs = []
    for (p, w), gap, value in zip(GRID, GAPS, VALUES, strict=True):
        spec = {"p": p, "width": w, "seed": int(10 * gap), "model": "mlp1x512", "data_dir": f"/d{w}"}
        measures = {"gap_copy": gap, "minus_gap": -gap, "hand": value, "dist": [1.0, 2.0], "none": None}
        measures["_unsupported"] = {}
        runs.append((spec, {"train_acc": 1.0, "test_acc": 1.0 - gap}, measures))
    return _store(tmp_path, runs)


def test_correlate_on_a_grid(tmp_path):
    db = _grid_store(tmp_path)
    db.record_measures("run00", {"hand": 99.0}, {"subset": 100, "percentile": 10.0})  # not the default options
    result = correlate(db)
    assert result["runs"] == 6 and result["axes"] == ["p", "width"]  # seed and data_dir are no axes
    by_name = {m["name"]: m for m in result["measures"]}
    assert set(by_name) == {"gap_copy", "minus_gap", "hand"}  # list, None and "_" names left out
    assert by_name["gap_copy"]["tau"] == pytest.approx(1.0)
    assert by_name["minus_gap"]["tau"] == pytest.approx(-1.0)
    assert by_name["hand"]["tau"] == pytest.approx(kendall_tau(VALUES, GAPS))
    assert by_name["hand"]["psi"] == pytest.approx({"p": 1 / 3, "width": 1 / 3})
    assert by_name["hand"]["Psi"] == pytest.approx(1 / 3)
    assert [m["name"] for m in result["measures"]] == ["gap_copy", "hand", "minus_gap"]  # tau, highest first
    error = correlate(db, target="test_error")
    assert {m["name"]: m["tau"] for m in error["measures"]}["gap_copy"] == pytest.approx(1.0)


def test_correlation_output_rows_in_tau_order(tmp_path):
    output = correlation_output(correlate(_grid_store(tmp_path)))
    table = output.tables[0]
    assert table.header == ["measure", "runs", "tau", "psi (p)", "psi (width)", "Psi", "PGDL"]
    assert [row[0] for row in table.rows] == ["gap_copy", "hand", "minus_gap"]
    assert [row[1] for row in table.rows] == ["6", "6", "6"]
    assert [row[2] for row in table.rows] == ["1.000", f"{kendall_tau(VALUES, GAPS):.3f}", "-1.000"]
    assert len(output.figures) == 1 and len(output.specs) == 6
    import matplotlib.pyplot as plt

    plt.close(output.figures[0].fig)


def test_correlate_needs_three_runs_with_measures(tmp_path):
    summary = {"train_acc": 1.0, "test_acc": 0.5}
    runs = [({"p": 0.0}, summary, {"m": 1.0}), ({"p": 1.0}, summary, {"m": 2.0}), ({"p": 0.5}, summary, None)]
    with pytest.raises(UserError, match="at least 3 finished runs with measures; 2 have them"):
        correlate(_store(tmp_path, runs))


def test_correlate_constant_target(tmp_path):
    runs = [({"p": p}, {"train_acc": 1.0, "test_acc": 0.5}, {"m": p}) for p in (0.0, 0.5, 1.0)]
    with pytest.raises(UserError, match="the gap is 0.5 in every one of the 3 runs"):
        correlate(_store(tmp_path, runs))


def test_correlate_seeds_only_gives_tau_alone(tmp_path):
    runs = [({"p": 0.0, "seed": s}, {"train_acc": 1.0, "test_acc": 0.5 + s / 10}, {"m": -s}) for s in range(3)]
    (row,) = correlate(_store(tmp_path, runs))["measures"]
    assert row["tau"] == pytest.approx(1.0) and row["psi"] == {}
    assert math.isnan(row["Psi"]) and math.isnan(row["pgdl"])
