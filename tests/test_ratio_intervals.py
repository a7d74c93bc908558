"""Every number of the summary and the Chinchilla table carries its 95% interval where the fit has draws:
tokens per parameter (D/N) and the loss exponent c of L_opt = [E +] k C^c, for Approaches 2 and 3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flops_fit.analysis import chinchilla_table, fit_isoflop, fit_parametric, to_markdown
from flops_fit.core.runs import runs_from_arrays
from flops_fit.report.result import Result
from synth import isoflop_sweep


@pytest.fixture(scope="module")
def sweep():
    return isoflop_sweep(budgets=(1e17, 3e17, 1e18, 3e18, 1e19), sizes=7, noise=0.01, seed=3)


@pytest.fixture(scope="module")
def fits(sweep):
    n, d, l, c = sweep
    return {
        "isoflop": fit_isoflop(n, d, l, c, bootstrap=60, seed=0),
        "parametric": fit_parametric(n, d, l, C=c, bootstrap=30, seed=0),
    }


@pytest.mark.parametrize("approach", ["isoflop", "parametric"])
def test_tokens_per_param_interval_brackets_the_estimate(fits, approach):
    opt = fits[approach].optimal(1e21)
    lo, hi = opt["tokens_per_param_ci"]
    assert lo < opt["tokens_per_param"] < hi
    # D/N of each draw: at 100x beyond the data the interval is wider than at the data
    near_lo, near_hi = fits[approach].optimal(1e19)["tokens_per_param_ci"]
    assert hi / lo > near_hi / near_lo


def test_tokens_per_param_has_no_interval_without_draws(sweep):
    n, d, l, c = sweep
    assert fit_parametric(n, d, l, C=c).optimal(1e21)["tokens_per_param_ci"] is None


@pytest.mark.parametrize("approach", ["isoflop", "parametric"])
def test_table_shows_the_ratio_interval(fits, approach):
    table = chinchilla_table(fits[approach], [1e20, 1e21])
    assert {"tokens_per_param_lo", "tokens_per_param_hi"} <= set(table.columns)
    row = table.iloc[1]
    assert row.tokens_per_param_lo < row.tokens_per_param < row.tokens_per_param_hi
    ratio_cell = to_markdown(table).splitlines()[3].split("|")[4]
    assert f"[{row.tokens_per_param_lo:.1f}, {row.tokens_per_param_hi:.1f}]" in ratio_cell


def test_parametric_loss_exponent_interval_from_draws(fits):
    fit = fits["parametric"]
    _, _, l_law = fit.power_laws()
    lo, hi = l_law.a_ci
    c = -fit.samples[:, 3] * fit.samples[:, 4] / (fit.samples[:, 3] + fit.samples[:, 4])
    assert (lo, hi) == pytest.approx(tuple(np.nanpercentile(c, [2.5, 97.5])))
    assert lo < l_law.a < hi


def test_summary_law_lines_carry_every_interval(sweep):
    n, d, l, c = sweep
    runs = runs_from_arrays(n, d, l, c)
    result = Result.from_runs(runs, approach=["isoflop", "parametric"], bootstrap=30, seed=0)
    lines = result.law_lines("parametric")
    l_line = next(x for x in lines if x.startswith("L_opt"))
    assert "E = " in l_line and l_line.count("[") == 2  # E and the exponent c, each with an interval
    fixed = result.law_lines("parametric:alpha=beta")
    assert any("a = 0.5 (fixed by the constraint)" in x for x in fixed)
    assert not any("[0.5, 0.5]" in x for x in fixed)
    for line in result.law_lines("isoflop"):
        assert "[" in line and not math.isnan(float(line.split(" = ")[-1].split(" [")[0]))
