"""Approach 3 variants (alpha = beta, fixed E) and the fragility a fit reports (dof, floor collapse, grid edges)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from flops_fit.analysis import parametric_bootstrap, parametric_search
from flops_fit.analysis.huber import HuberLogObjective
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from flops_fit.core.runs import runs_from_arrays
from synth import isoflop_sweep

TIED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.3, "beta": 0.3}
SMALL_GRID = {"e": [0.0, 1.0], "a": [5.0, 10.0], "b": [5.0, 10.0], "alpha": [0.2, 0.5], "beta": [0.2, 0.5]}
BUDGETS = (1e17, 1e18, 1e19)


def sweep(p: dict = TIED, noise: float = 0.005, seed: int = 1) -> tuple[np.ndarray, ...]:
    return isoflop_sweep(budgets=BUDGETS, sizes=5, noise=noise, seed=seed, p=p)


@pytest.fixture(scope="module")
def tied_fit() -> ParametricFit:
    n, d, l, c = sweep()
    return fit_parametric(n, d, l, C=c, equal_exponents=True, bootstrap=100, seed=0)


@pytest.fixture(scope="module")
def fixed_fit() -> ParametricFit:
    n, d, l, c = sweep()
    return fit_parametric(n, d, l, C=c, fixed_E=1.69, bootstrap=100, seed=0)


# --- the variants ------------------------------------------------------------------------------------------


def test_equal_exponents_share_one_exponent_in_the_fit_and_every_refit(tied_fit):
    fit = tied_fit
    assert fit.equal_exponents and fit.fixed_E is None and fit.n_free_params == 4
    assert fit.alpha == fit.beta == pytest.approx(0.3, abs=0.01)
    assert fit.E == pytest.approx(1.69, abs=0.05)
    assert fit.a == fit.b == 0.5  # N_opt ∝ C^0.5 exactly: the constraint, not the data
    assert fit.n_starts == 5 * 6 * 6 * 5  # the Chinchilla grid's diagonal alpha = beta
    assert np.array_equal(fit.samples[:, 3], fit.samples[:, 4])
    assert fit.ci["a"] == (0.5, 0.5)
    lo, hi = fit.ci["alpha"]
    assert lo < fit.alpha < hi
    text = fit.summary()
    assert "Constraint:   alpha = beta (4 free parameters)" in text
    assert "fixed by the constraint alpha = beta, not estimated" in text


def test_fixed_e_is_kept_exactly_and_not_bootstrapped(fixed_fit):
    fit = fixed_fit
    assert fit.E == 1.69 and fit.fixed_E == 1.69 and fit.n_free_params == 4
    assert fit.n_starts == 6 * 6 * 5 * 5  # the grid without its e axis
    assert np.allclose(fit.samples[:, 0], 1.69, rtol=1e-15)
    assert fit.alpha == pytest.approx(0.3, abs=0.02) and fit.beta == pytest.approx(0.3, abs=0.02)
    assert fit.floor_collapse_share is None and fit.floor_collapsed is None  # E is not estimated
    assert "E fixed at 1.69" in fit.summary() and "fixed (not estimated)" in fit.summary()


def test_both_constraints_leave_three_parameters():
    n, d, l, c = sweep()
    fit = fit_parametric(n, d, l, C=c, equal_exponents=True, fixed_E=1.69)
    assert fit.n_free_params == 3 and fit.dof == n.size - 3 and fit.n_starts == 6 * 6 * 5
    assert fit.constraint == "alpha = beta and E fixed at 1.69"
    assert fit.alpha == fit.beta and fit.E == 1.69


def test_constrained_fit_is_the_constrained_optimum():
    """No point satisfying the constraint does better: scipy from the truth on the reduced objective agrees."""
    n, d, l, c = sweep(seed=5)
    fit = fit_parametric(n, d, l, C=c, equal_exponents=True)
    obj = HuberLogObjective(np.log(n), np.log(d), np.log(l), 1e-3, np.ones(n.size))

    def tied(z: np.ndarray) -> float:
        return float(obj(np.array([z[0], z[1], z[2], z[3], z[3]])[:, None])[0][0])

    res = optimize.minimize(
        tied,
        [math.log(1.69), math.log(406.4), math.log(410.7), 0.3],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000},
    )
    assert fit.objective <= res.fun * (1 + 1e-9)


def test_constraint_gradient_is_the_chain_rule():
    """The kernel over the free coordinates matches finite differences of the full kernel at the expanded point."""
    n, d, l, _ = sweep()
    obj = HuberLogObjective(np.log(n), np.log(d), np.log(l), 1e-3, np.ones(n.size))

    def full(rows: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return obj(theta)

    for constraint in (
        parametric_search.Constraint(equal_exponents=True),
        parametric_search.Constraint(fixed_e=math.log(1.7)),
        parametric_search.Constraint(True, math.log(1.7)),
    ):
        z = np.array(
            [
                [0.4, 6.0, 6.1, 0.31, 0.27][i]
                for i, k in enumerate("e a b alpha beta".split())
                if k in constraint.free
            ]
        )[:, None]
        f, g = constraint.wrap(full)(np.zeros(1, dtype=int), z)
        assert f[0] == obj(constraint.expand(z))[0][0]
        h = 1e-6
        for i in range(z.shape[0]):
            step = np.zeros_like(z)
            step[i] = h
            fd = (obj(constraint.expand(z + step))[0][0] - obj(constraint.expand(z - step))[0][0]) / (2 * h)
            assert g[i, 0] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_variants_round_trip_and_old_dicts_still_load(tied_fit, fixed_fit):
    for fit in (tied_fit, fixed_fit):
        back = ParametricFit.from_dict(json.loads(json.dumps(fit.to_dict(), allow_nan=False)))
        assert back == fit and back.to_dict() == fit.to_dict()
    old = {
        k: v
        for k, v in tied_fit.to_dict().items()
        if k not in ("equal_exponents", "fixed_E", "floor_collapse_share", "fragility")
    }
    plain = ParametricFit.from_dict(old)
    assert not plain.equal_exponents and plain.fixed_E is None and plain.fragility == ()
    assert plain.floor_collapse_share is None and plain.n_free_params == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fixed_E": 0.0}, ValueError, r"fixed_E must be a positive"),
        ({"fixed_E": math.nan}, ValueError, r"fixed_E must be a positive"),
        ({"equal_exponents": "yes"}, TypeError, r"equal_exponents must be True or False"),
    ],
)
def test_bad_constraint_options_name_the_argument(kwargs, error, match):
    n, d, l, c = sweep()
    with pytest.raises(error, match=match):
        fit_parametric(n, d, l, C=c, **kwargs)


# --- fragility -----------------------------------------------------------------------------------------


def test_five_points_five_parameters_is_an_exact_fit_without_intervals():
    n = np.array([1e8, 2e8, 4e8, 3e8, 6e8])
    c = np.array([1e18, 1e18, 1e18, 1e19, 1e19])
    d = c / (6 * n)
    l = (TIED["E"] + TIED["A"] / n**0.34 + TIED["B"] / d**0.28) * np.exp([0.01, -0.01, 0.005, 0.0, -0.008])
    with pytest.warns(UserWarning, match="exact fit: no uncertainty estimate; use more runs"):
        fit = fit_parametric(n, d, l, C=c, bootstrap=50)
    assert fit.dof == 0 and fit.samples is None and fit.ci == {}
    assert fit.optimal(1e20)["optimal_params_ci"] is None
    assert "exact fit" in fit.summary() and "FRAGILE" in fit.summary()
    # the same points with alpha = beta leave one degree of freedom: few, said as such
    with pytest.warns(UserWarning, match=r"few residual degrees of freedom \(1: 5 points for 4"):
        fit_parametric(n, d, l, C=c, equal_exponents=True)


def test_enough_points_say_nothing_fragile(tied_fit):
    assert tied_fit.fragility == () and "FRAGILE" not in tied_fit.summary()
    assert tied_fit.floor_collapse_share == 0.0


def test_share_of_refits_whose_floor_collapsed_is_recorded_and_warned():
    """Losses with no floor (E = 0): most refits put E at about 0, which the fit records and warns."""
    p = {"E": 0.0, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    n, d, l, c = isoflop_sweep(budgets=BUDGETS, sizes=5, noise=0.005, seed=4, p=p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_parametric(n, d, l, C=c, bootstrap=40)
    assert fit.floor_collapse_share > 0.5
    assert any(
        "of the bootstrap refits" in str(w.message) and "E collapsed" in str(w.message) for w in caught
    )
    assert any(note.startswith("E collapsed to about 0 in") for note in fit.fragility)


def test_exponent_beyond_its_start_grid_is_said():
    n, d, l, c = sweep(p={**TIED, "alpha": 0.34, "beta": 0.28})
    grid = {**SMALL_GRID, "alpha": [0.1, 0.2], "beta": [0.1, 0.5]}
    with pytest.warns(
        UserWarning, match=r"alpha = 0.3\d* is at or beyond the edge of its start grid \[0.1, 0.2\]"
    ):
        fit = fit_parametric(n, d, l, C=c, init_grid=grid)
    assert len(fit.fragility) == 1 and "widen init_grid" in fit.fragility[0]


# --- how the bootstrap draws runs ----------------------------------------------------------------------------


def test_budget_strata_keep_each_budget_and_pool_lone_runs():
    budgets = np.array([1e18, 1.02e18, 1e18, 1e19, 1e19, 3e19, 7e19])
    used = np.ones(budgets.size, dtype=bool)
    strata = parametric_bootstrap.budget_strata(budgets, used, 0.05)
    assert strata.tolist() == [0, 0, 0, 1, 1, -1, -1]  # the two lone budgets form one stratum
    assert (
        parametric_bootstrap.budget_strata(np.array([1e18, 3e18, 1e19, 3e19, 1e20]), used[:5], 0.05) is None
    )
    n = np.array([1e8, 2e8, 4e8, 3e8, 6e8, 5e8, 9e8])
    counts = parametric_bootstrap.resample_counts(
        np.ones(7), 200, np.log(n), np.log(budgets / n), np.random.default_rng(0), strata
    )
    for label, size in ((0, 3), (1, 2), (-1, 2)):
        assert np.all(counts[:, strata == label].sum(axis=1) == size)


def test_resample_option_is_recorded_and_checked(tied_fit):
    assert tied_fit.resample == "budgets" and "drawn within each budget" in tied_fit.summary()
    n, d, l, c = sweep()
    points = fit_parametric(n, d, l, C=c, equal_exponents=True, bootstrap=100, seed=0, resample="points")
    assert points.resample == "points" and "drawn from all" in points.summary()
    assert points.alpha == tied_fit.alpha and not np.array_equal(points.samples, tied_fit.samples)
    assert (
        ParametricFit.from_dict({"E": 1.7, "A": 400, "B": 400, "alpha": 0.3, "beta": 0.3}).resample
        == "points"
    )
    with pytest.raises(ValueError, match=r"resample must be one of \['budgets', 'points'\], got 'pairs'"):
        fit_parametric(n, d, l, C=c, resample="pairs")


# --- forcing a variant -------------------------------------------------------------------------------------


def _runs_table() -> pd.DataFrame:
    n, d, l, c = isoflop_sweep(budgets=(1e17, 3e17, 1e18, 3e18), sizes=5, noise=0.005, seed=2)
    return runs_from_arrays(n, d, l, c)


def test_a_variant_asked_for_alone_is_fitted_and_primary():
    from flops_fit.report.result import Result

    result = Result.from_runs(_runs_table(), approach="parametric:alpha=beta")
    assert result.primary == "parametric:alpha=beta" and result.selection.rule == "asked"
    assert list(result.fits) == ["parametric"] and list(result.variants) == ["parametric:alpha=beta"]
    assert result.variants["parametric:alpha=beta"].equal_exponents
    assert result.predict(1e21)["optimal_params"] == pytest.approx(
        result.variants["parametric:alpha=beta"].optimal(1e21)["optimal_params"]
    )


def test_primary_may_name_a_variant_of_a_fitted_approach_but_not_of_another():
    from flops_fit.report.result import Result

    runs = _runs_table()
    result = Result.from_runs(runs, approach=["isoflop", "parametric"], primary="isoflop:shared")
    assert result.primary == "isoflop:shared" and "isoflop:shared" in result.variants
    with pytest.raises(ValueError, match=r"variant of 'parametric'.*add it to approach"):
        Result.from_runs(runs, approach="isoflop", primary="parametric:alpha=beta")


def test_unknown_approach_lists_the_variants():
    from flops_fit.analysis.approaches import resolve_approaches

    assert resolve_approaches(["2", "parametric:alpha=beta"]) == ["isoflop", "parametric:alpha=beta"]
    with pytest.raises(ValueError, match=r"parametric:alpha=beta"):
        resolve_approaches("parametric:alpha=gamma")


def test_cli_fits_a_variant_by_name(tmp_path, capsys):
    from flops_fit.app.cli import main

    path = tmp_path / "runs.csv"
    _runs_table().to_csv(path, index=False)
    assert main(["fit", str(path), "--approach", "parametric:alpha=beta"]) == 0
    out = capsys.readouterr().out
    assert "alpha = beta" in out


def test_cli_analyze_makes_a_named_variant_primary(tmp_path, capsys):
    from flops_fit.app.cli import main

    out = tmp_path / "sweep"
    assert (
        main(["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e20", "--sizes", "7"]) == 0
    )
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    assert main(["analyze", str(out), "--approach", "parametric:alpha=beta"]) == 0
    laws = json.loads((out / "scaling_laws.json").read_text())
    assert laws["approach"] == "parametric:alpha=beta"
    assert laws["n_opt_fit"]["a"] == pytest.approx(0.5)  # alpha = beta puts N_opt on C^0.5 exactly
