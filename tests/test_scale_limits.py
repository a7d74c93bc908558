"""Sizes of work: budgets are capped and must stay within what a run can count; Approach 3 scales to many
points by running its start grid on a budget-stratified sample (ordinary sweeps are fitted as before)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flops_fit.analysis import parametric, parametric_search
from flops_fit.analysis.parametric import fit_parametric
from flops_fit.analysis.parametric_search import grid_rows
from flops_fit.app.cli import main
from flops_fit.plan.planner import MAX_COMPUTE_BUDGETS, SweepPlanner
from synth import isoflop_sweep

# ------------------------------------------------------------------------------------------- budgets


def test_num_budgets_is_capped_with_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=rf"num_compute_budgets=1000000 is more than the limit of {MAX_COMPUTE_BUDGETS}"
    ):
        SweepPlanner(1e17, 1e19, 1_000_000, 7)
    assert main(["plan", "--num-budgets", "1000000", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"--num-budgets=1000000 is more than the limit of {MAX_COMPUTE_BUDGETS}" in err
    many = ",".join(f"{1e15 * (1 + i / 1e4):.6e}" for i in range(MAX_COMPUTE_BUDGETS + 1))
    assert main(["plan", "--budgets", many, "--out", str(tmp_path / "b")]) == 2
    assert "--budgets has 1001 values" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_budget_near_float_max_is_a_usage_error_not_an_overflow(tmp_path, capsys):
    assert main(["plan", "--budgets", "1e15,1.7e308", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert (
        "--budgets[1] must be a positive finite number of FLOPs up to 1e+40" in err and "Traceback" not in err
    )
    assert main(["plan", "--min-flops", "1e17", "--max-flops", "1e45", "--out", str(tmp_path / "b")]) == 2
    assert "--max-flops must be a positive finite number of FLOPs up to 1e+40" in capsys.readouterr().err


def test_budgets_whose_token_counts_overflow_are_refused_naming_budgets(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"budgets: the budget C=1e\+39 plans .* tokens"):
        SweepPlanner.from_budgets([1e15, 1e39], 7).plan()
    assert main(["plan", "--budgets", "1e15,1e39", "--out", str(tmp_path / "a")]) == 2
    assert "--budgets: the budget C=1e+39" in capsys.readouterr().err


def test_ordinary_budgets_still_plan():
    plan = SweepPlanner(1e17, 1e21, 5, 7).plan()
    assert len(plan) == 35 and np.isfinite(plan.total_flops)


# ------------------------------------------------------------------------------------------- Approach 3


def test_grid_rows_keeps_small_data_whole_and_samples_large_data_by_budget():
    strata = np.repeat(np.arange(4), [10, 10, 10, 970])
    used = np.ones(strata.size, bool)
    used[5] = False
    assert np.array_equal(grid_rows(strata, used, limit=2000), np.flatnonzero(used))
    rows = grid_rows(strata, used, limit=100)
    assert rows.size <= 110 and np.all(used[rows]) and np.array_equal(rows, np.unique(rows))
    assert set(strata[rows]) == {0, 1, 2, 3}  # every budget is represented, the large one most
    assert (strata[rows] == 3).sum() > 80
    assert np.array_equal(rows, grid_rows(strata, used, limit=100))  # seeded


def test_many_points_fit_on_a_sampled_grid_finds_the_full_grids_optimum(monkeypatch, caplog):
    n, d, loss, c = isoflop_sweep(budgets=(1e17, 1e18, 1e19, 1e20), sizes=40, noise=0.003, seed=1)
    grid = {"e": (0.0, 0.5), "a": (5.0, 6.0), "b": (5.0, 6.0), "alpha": (0.3, 0.4), "beta": (0.25, 0.35)}
    full = fit_parametric(n, d, loss, C=c, init_grid=grid, exclude=False)
    monkeypatch.setattr(parametric_search, "MAX_GRID_POINTS", 60)
    with caplog.at_level(logging.INFO, logger="flops_fit"):
        sampled = fit_parametric(n, d, loss, C=c, init_grid=grid, exclude=False)
    assert "the start grid runs on a budget-stratified sample of 60" in caplog.text
    assert "Approach 3: 32 starts on 160 points" in caplog.text
    assert sampled.objective == pytest.approx(full.objective, rel=1e-9)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert getattr(sampled, key) == pytest.approx(getattr(full, key), rel=1e-5)


def test_few_points_never_take_the_sampled_path(monkeypatch):
    n, d, loss, c = isoflop_sweep(sizes=9)
    monkeypatch.setattr(parametric, "search", _refuse_sampling(parametric.search))
    fit = fit_parametric(n, d, loss, C=c)
    assert fit.converged


def _refuse_sampling(search):
    def guarded(starts, evaluate, scale, grid_objective=None):
        assert grid_objective is None
        return search(starts, evaluate, scale, grid_objective)

    return guarded


def test_bootstrap_resampling_of_many_distinct_points_needs_no_square_matrix():
    """1e5 distinct N and D: resampling once built a 1e5 x 1e5 one-hot map (75 GiB); now a min/max check."""
    import numpy as np

    from flops_fit.analysis.parametric_bootstrap import resample_counts

    values = np.arange(100_000, dtype=float)
    counts = resample_counts(np.ones(values.size), 3, values, values, np.random.default_rng(0))
    assert counts.shape == (3, values.size) and np.all(counts.sum(axis=1) == values.size)
    # a design with one distinct D cannot be bootstrapped: said, not attempted
    with pytest.raises(ValueError, match="single N or D"):
        resample_counts(np.ones(6), 2, np.arange(6.0), np.zeros(6), np.random.default_rng(0))
