"""Approach 3 (parametric L(N, D) fit): published refit, synthetic recovery, allocation, I/O, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special

import flops_fit
from flops_fit.analysis import parametric_bootstrap, parametric_search
from flops_fit.analysis.huber import HuberLogObjective
from flops_fit.analysis.parametric import CHINCHILLA_INIT_GRID, ParametricFit, fit_parametric
from flops_fit.core.validate import canonical_order
from synth import isoflop_sweep

CHINCHILLA_CSV = Path(flops_fit.__file__).parent / "data" / "chinchilla_epoch.csv"

# Besiroglu, Erdil, Barnett & You (2024), "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102):
# their Approach 3 refit of the points digitised from Hoffmann et al. (2022), Figure 4, with Huber
# delta = 1e-3 on log loss, L-BFGS from Hoffmann et al.'s grid, the five highest-loss points dropped.
BESIROGLU = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}

TRUTH = {"E": 1.7, "A": 400.0, "B": 1100.0, "alpha": 0.34, "beta": 0.28}
SMALL_GRID = {"e": [0.0, 1.0], "a": [5.0, 10.0], "b": [5.0, 10.0], "alpha": [0.2, 0.5], "beta": [0.2, 0.5]}


def chinchilla_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) of the bundled Chinchilla points without the five highest losses; D = C / (6 N)."""
    df = pd.read_csv(CHINCHILLA_CSV).sort_values("loss", kind="stable").iloc[:-5]
    n = df["Model Size"].to_numpy(float)
    return n, df["Training FLOP"].to_numpy(float) / (6.0 * n), df["loss"].to_numpy(float)


def law(n: np.ndarray, d: np.ndarray, p: dict = TRUTH) -> np.ndarray:
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def isoflop_design(seed: int = 0, noise: float = 0.005, sizes: int = 9) -> tuple[np.ndarray, ...]:
    """9 budgets 1e17..1e21 FLOPs, ``sizes`` models per budget over N_opt/10..10 N_opt, lognormal noise."""
    rng = np.random.default_rng(seed)
    p = TRUTH
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    a = p["beta"] / (p["alpha"] + p["beta"])
    n = np.concatenate(
        [
            np.geomspace(g * (c / 6) ** a / 10, g * (c / 6) ** a * 10, sizes)
            for c in np.geomspace(1e17, 1e21, 9)
        ]
    )
    c = np.repeat(np.geomspace(1e17, 1e21, 9), sizes)
    d = c / (6 * n)
    return n, d, law(n, d) * np.exp(rng.normal(0.0, noise, n.size))


def reference_objective(theta, n, d, loss, delta=1e-3, weights=None) -> float:
    """Plain restatement of the published objective, independent of the library's kernel."""
    e, a, b, alpha, beta = theta
    pred = special.logsumexp([a - alpha * np.log(n), b - beta * np.log(d), np.full(n.shape, e)], axis=0)
    h = special.huber(delta, pred - np.log(loss))
    return float(np.sum(h if weights is None else weights * h))


def reference_value_and_grad(theta, n, d, loss, delta=1e-3, weights=1.0) -> tuple[float, np.ndarray]:
    """The objective with its gradient by the chain rule through log-sum-exp (softmax weights)."""
    e, a, b, alpha, beta = theta
    u = np.stack([a - alpha * np.log(n), b - beta * np.log(d), np.full(n.shape, e)])
    top = u.max(axis=0)
    p = np.exp(u - top)
    total = p.sum(axis=0)
    r = top + np.log(total) - np.log(loss)
    psi = np.clip(r, -delta, delta)
    value = (weights * np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))).sum()
    p *= weights * psi / total
    grad = [p[2].sum(), p[0].sum(), p[1].sum(), -(p[0] * np.log(n)).sum(), -(p[1] * np.log(d)).sum()]
    return float(value), np.array(grad)


def log_params(fit: ParametricFit) -> np.ndarray:
    return np.array([math.log(fit.E), math.log(fit.A), math.log(fit.B), fit.alpha, fit.beta])


@pytest.fixture(scope="module")
def chinchilla_fit() -> ParametricFit:
    return fit_parametric(*chinchilla_points())


@pytest.fixture(scope="module")
def synthetic_fit() -> ParametricFit:
    return fit_parametric(*isoflop_design(seed=0), bootstrap=400, seed=0)


# --- 1. the published refit ------------------------------------------------------------------------------


def test_chinchilla_refit_matches_besiroglu(chinchilla_fit):
    fit = chinchilla_fit
    assert fit.n_points == 240 and fit.n_starts == 4500 and fit.converged
    assert round(fit.E, 2) == BESIROGLU["E"]  # reported to 2 decimals
    assert fit.alpha == pytest.approx(BESIROGLU["alpha"], abs=0.005)
    assert fit.beta == pytest.approx(BESIROGLU["beta"], abs=0.005)
    # A and B move with the exponents (A / N^alpha is what the data pin down): a few percent.
    assert fit.A == pytest.approx(BESIROGLU["A"], rel=0.05)
    assert fit.B == pytest.approx(BESIROGLU["B"], rel=0.05)
    n, d, loss = chinchilla_points()
    published = ParametricFit(**BESIROGLU, objective=math.nan, n_points=240)
    assert np.allclose(fit.predict_loss(n, d), published.predict_loss(n, d), rtol=3e-3)
    # On these points the optimum is at least as good as the rounded published parameters.
    published_theta = [math.log(BESIROGLU[k]) for k in "EAB"] + [BESIROGLU["alpha"], BESIROGLU["beta"]]
    assert fit.objective <= reference_objective(published_theta, n, d, loss)


def test_objective_is_the_published_sum_of_huber_losses(chinchilla_fit):
    n, d, loss = chinchilla_points()
    assert chinchilla_fit.objective == pytest.approx(
        reference_objective(log_params(chinchilla_fit), n, d, loss), rel=1e-12
    )


def test_no_worse_than_per_start_scipy_lbfgsb(chinchilla_fit):
    n, d, loss = chinchilla_points()
    grid = parametric_search.grid_starts("chinchilla")
    starts = grid[np.random.default_rng(1).choice(len(grid), 24, replace=False)]
    runs = [
        optimize.minimize(reference_value_and_grad, x0, args=(n, d, loss), jac=True, method="L-BFGS-B")
        for x0 in starts
    ]
    best = min(r.fun for r in runs)
    assert best <= chinchilla_fit.objective * (1 + 1e-5)  # one of these starts reaches the same basin ...
    assert chinchilla_fit.objective <= best * (1 + 1e-12)  # ... and ours is at least as low


def test_kernel_gradient_matches_finite_differences():
    n, d, loss = chinchilla_points()
    rng = np.random.default_rng(0)
    theta = np.column_stack(
        [
            rng.uniform(0, 1, 6),
            rng.uniform(4, 8, 6),
            rng.uniform(4, 9, 6),
            rng.uniform(0.2, 0.5, 6),
            rng.uniform(0.2, 0.5, 6),
        ]
    )
    weighted, unit = rng.uniform(0.5, 2.0, n.size), np.ones(n.size)
    for w in (weighted, unit):  # per-point weights, and equal weights (applied once to f and grad)
        check_kernel(theta, w, n, d, loss)
    # A bootstrap table: column i takes the weights in row rows[i], whatever the constructor's weights.
    obj = HuberLogObjective(np.log(n), np.log(d), np.log(loss), 1e-3, unit)
    rows = np.arange(theta.shape[0]) % 2
    f, g = obj(np.ascontiguousarray(theta.T), np.stack([weighted, 3.0 * unit]), rows)
    for i, row in enumerate(theta):
        w = weighted if rows[i] == 0 else 3.0 * unit
        assert f[i] == pytest.approx(reference_objective(row, n, d, loss, weights=w), rel=1e-12)
    by_weights = HuberLogObjective(np.log(n), np.log(d), np.log(loss), 1e-3, weighted)
    assert np.allclose(g[:, rows == 0], by_weights(np.ascontiguousarray(theta[rows == 0].T))[1], rtol=1e-12)


def check_kernel(theta, w, n, d, loss) -> None:
    obj = HuberLogObjective(np.log(n), np.log(d), np.log(loss), 1e-3, w)
    f, g = obj(np.ascontiguousarray(theta.T))  # the kernel takes parameter vectors as columns
    g = g.T
    for i, row in enumerate(theta):
        assert f[i] == pytest.approx(reference_objective(row, n, d, loss, weights=w), rel=1e-12)
        h = 1e-6
        fd = [
            (
                reference_objective(row + h * e, n, d, loss, weights=w)
                - reference_objective(row - h * e, n, d, loss, weights=w)
            )
            / (2 * h)
            for e in np.eye(5)
        ]
        assert np.allclose(g[i], fd, rtol=1e-5, atol=1e-9 * np.abs(fd).max())


# --- 2. synthetic recovery ------------------------------------------------------------------------------


def test_synthetic_recovery_and_bootstrap_coverage(synthetic_fit):
    fit = synthetic_fit
    assert fit.E == pytest.approx(TRUTH["E"], abs=0.05)
    assert fit.A == pytest.approx(TRUTH["A"], rel=0.12)
    assert fit.B == pytest.approx(TRUTH["B"], rel=0.12)
    assert fit.alpha == pytest.approx(TRUTH["alpha"], abs=0.015)
    assert fit.beta == pytest.approx(TRUTH["beta"], abs=0.015)
    true_a = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])
    truth = {**TRUTH, "a": true_a, "b": 1 - true_a}
    assert set(fit.ci) == set(truth)
    for name, value in truth.items():
        lo, hi = fit.ci[name]
        assert lo <= value <= hi, (name, value, lo, hi)
    assert fit.samples.shape == (400, 5) and fit.n_bootstrap == 400
    assert fit.a + fit.b == pytest.approx(1.0)


def test_bootstrap_refits_are_converged(synthetic_fit):
    """Each resample's refit is a minimum: a tightly converged scipy L-BFGS-B from it does not improve it."""
    n, d, loss = isoflop_design(seed=0)
    order = canonical_order(n, d, loss)  # the fit sorts its rows before drawing resamples by position
    n, d, loss = n[order], d[order], loss[order]
    w = np.ones(n.size)
    strata = parametric_bootstrap.budget_strata(6 * n * d, w > 0, 0.05)  # runs are drawn within budgets
    assert strata is not None and np.unique(strata).size == 9
    counts = parametric_bootstrap.resample_counts(
        w, 400, np.log(n), np.log(d), np.random.default_rng(0), strata
    )
    for label in np.unique(strata):  # every resample keeps each budget's number of runs
        assert np.all(counts[:, strata == label].sum(axis=1) == (strata == label).sum())
    for j in range(0, 400, 40):
        theta = np.r_[np.log(synthetic_fit.samples[j, :3]), synthetic_fit.samples[j, 3:]]
        args = (n, d, loss, 1e-3, counts[j])
        res = optimize.minimize(
            reference_value_and_grad,
            theta,
            args=args,
            jac=True,
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000},
        )
        assert res.fun >= reference_value_and_grad(theta, *args)[0] * (1 - 1e-10), j
        assert np.abs(res.x - theta).max() < 1e-6, j


def test_noise_free_data_is_recovered_exactly():
    n, d, _ = isoflop_design()
    fit = fit_parametric(n, d, law(n, d), init_grid=SMALL_GRID)
    for name, value in TRUTH.items():
        assert getattr(fit, name) == pytest.approx(value, rel=1e-5), name
    assert fit.objective < 1e-12 and fit.n_starts == 32


# --- 3. allocation, serialisation, errors, determinism -----------------------------------------------------


@pytest.mark.parametrize("budget", [1e19, 5.76e23, 1e26])
def test_optimal_is_the_minimum_along_the_isoflop_line(chinchilla_fit, budget):
    fit = chinchilla_fit
    opt = fit.optimal(budget)

    def loss_at(log_n: float) -> float:
        return fit.predict_loss(math.exp(log_n), budget / (6 * math.exp(log_n)))

    guess = math.log(opt["optimal_params"])
    res = optimize.minimize_scalar(
        loss_at, bounds=(guess - 5, guess + 5), method="bounded", options={"xatol": 1e-10}
    )
    assert opt["optimal_params"] == pytest.approx(math.exp(res.x), rel=1e-5)
    assert opt["optimal_loss"] == pytest.approx(res.fun, rel=1e-12)
    assert opt["optimal_tokens"] * opt["optimal_params"] * 6 == pytest.approx(budget, rel=1e-12)
    assert opt["tokens_per_param"] == pytest.approx(opt["optimal_tokens"] / opt["optimal_params"])
    assert opt["optimal_params_ci"] is None and opt["optimal_loss_ci"] is None


def test_optimal_closed_form_and_array_budgets(synthetic_fit):
    fit = synthetic_fit
    budgets = np.array([1e20, 1e22, 1e24])
    opt = fit.optimal(budgets)
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / (fit.alpha + fit.beta))
    assert np.allclose(opt["optimal_params"], g * (budgets / 6) ** fit.a, rtol=1e-12)
    assert np.allclose(opt["optimal_tokens"], (budgets / 6) ** fit.b / g, rtol=1e-12)
    lo, hi = opt["optimal_params_ci"]
    assert lo.shape == hi.shape == budgets.shape
    assert np.all(lo < opt["optimal_params"]) and np.all(opt["optimal_params"] < hi)
    single = fit.optimal(1e22)
    assert isinstance(single["optimal_params"], float) and isinstance(single["optimal_loss_ci"][0], float)
    assert single["optimal_params"] == pytest.approx(opt["optimal_params"][1])


def test_to_dict_round_trips_exactly_through_json(synthetic_fit):
    d = synthetic_fit.to_dict()
    assert d["approach"] == "parametric"
    back = ParametricFit.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert back == synthetic_fit
    assert np.array_equal(back.samples, synthetic_fit.samples)
    assert back.to_dict() == d
    plain = ParametricFit(E=1.7, A=400.0, B=1100.0, alpha=0.34, beta=0.28, objective=0.1, n_points=9)
    assert ParametricFit.from_dict(json.loads(json.dumps(plain.to_dict()))).samples is None


def test_summary_lists_estimates_intervals_and_method(synthetic_fit):
    text = synthetic_fit.summary()
    for needle in ("Approach 3", "alpha", "beta", "[0.025", "400 bootstrap", "Huber (delta = 0.001)", "G ="):
        assert needle in text
    assert "WARNING" not in text


def test_same_seed_same_fit_and_different_seed_different_samples():
    n, d, loss = isoflop_design(seed=3)
    one = fit_parametric(n, d, loss, init_grid=SMALL_GRID, bootstrap=60, seed=7)
    two = fit_parametric(n, d, loss, init_grid=SMALL_GRID, bootstrap=60, seed=7)
    other = fit_parametric(n, d, loss, init_grid=SMALL_GRID, bootstrap=60, seed=8)
    assert one.to_dict() == two.to_dict()
    assert not np.array_equal(one.samples, other.samples)


def test_bootstrap_redraws_resamples_that_cannot_be_fitted():
    n = np.repeat([1e8, 2e8], 3)
    d = np.tile([1e9, 2e9, 4e9], 2)
    counts = parametric_bootstrap.resample_counts(
        np.ones(6), 300, np.log(n), np.log(d), np.random.default_rng(0)
    )
    present = counts > 0
    assert np.all(counts.sum(axis=1) == 6) and np.all(present.sum(axis=1) >= 5)
    assert all(np.unique(n[p]).size == 2 and np.unique(d[p]).size >= 2 for p in present)
    with pytest.raises(ValueError, match="too small to bootstrap"):  # a single D: no resample can work
        parametric_bootstrap.resample_counts(np.ones(6), 50, np.log(n), np.zeros(6), np.random.default_rng(0))


def test_weights_scale_the_objective_and_zero_weight_drops_a_point():
    n, d, loss = isoflop_design(seed=1)
    base = fit_parametric(n[1:], d[1:], loss[1:], init_grid=SMALL_GRID)
    w = np.ones(n.size)
    w[0] = 0.0
    dropped = fit_parametric(n, d, loss, init_grid=SMALL_GRID, weights=w)
    assert dropped.n_points == base.n_points == n.size - 1
    assert np.allclose(log_params(dropped), log_params(base), rtol=1e-6, atol=1e-8)
    doubled = fit_parametric(n[1:], d[1:], loss[1:], init_grid=SMALL_GRID, weights=np.full(n.size - 1, 2.0))
    assert doubled.objective == pytest.approx(2 * base.objective, rel=1e-9)
    assert np.allclose(log_params(doubled), log_params(base), rtol=1e-6, atol=1e-8)


def test_degenerate_fit_is_flagged_not_silent():
    n, d, _ = isoflop_design(seed=2)
    no_n_dependence = (1.7 + 1100.0 / d**0.28) * np.exp(np.random.default_rng(2).normal(0, 0.005, n.size))
    with pytest.warns(UserWarning, match="degenerate"):
        fit = fit_parametric(n, d, no_n_dependence)
    assert fit.degeneracy is not None
    assert "WARNING: degenerate fit" in fit.summary()
    with pytest.warns(UserWarning, match="NaN"):
        opt = fit.optimal(1e21)
    assert math.isnan(opt["optimal_params"]) and math.isnan(fit.G)


def test_defaults_and_public_grid():
    assert math.prod(len(v) for v in CHINCHILLA_INIT_GRID.values()) == 4500
    assert parametric_search.grid_starts("chinchilla").shape == (4500, 5)
    fit = ParametricFit(E=1.7, A=400.0, B=1100.0, alpha=0.34, beta=0.28, objective=0.0, n_points=5)
    assert fit.ci == {} and fit.samples is None and fit.n_bootstrap == 0
    assert fit.predict_loss(1e9, 2e10) == pytest.approx(float(law(np.array(1e9), np.array(2e10))))
    assert fit.predict_loss([1e9, 1e10], [2e10, 2e11]).shape == (2,)


GOOD = isoflop_design(seed=0)


def _with(index: int, position: int, value: float) -> list[np.ndarray]:
    arrays = [a.copy() for a in GOOD]
    arrays[index][position] = value
    return arrays


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (_with(2, 3, np.nan), {}, ValueError, r"L has 1 non-finite"),
        (_with(0, 0, np.inf), {}, ValueError, r"N has 1 non-finite"),
        (_with(1, 5, 0.0), {}, ValueError, r"D has 1 non-finite or non-positive"),
        (_with(2, 0, -2.0), {}, ValueError, r"L\[0\] = -2"),
        ([GOOD[0], GOOD[1][:-1], GOOD[2]], {}, ValueError, r"same length"),
        ([a[:4] for a in GOOD], {}, ValueError, r"at least 5 points"),
        (
            [np.full(9, 1e8), np.geomspace(1e9, 1e11, 9), np.linspace(3, 2.5, 9)],
            {},
            ValueError,
            r"2 distinct N",
        ),
        (
            [np.geomspace(1e7, 1e9, 9), np.full(9, 1e10), np.linspace(3, 2.5, 9)],
            {},
            ValueError,
            r"2 distinct D",
        ),
        (GOOD, {"init_grid": "random"}, ValueError, r"init_grid must be 'chinchilla'"),
        (GOOD, {"init_grid": 3}, ValueError, r"init_grid must be 'chinchilla'"),
        (
            GOOD,
            {"init_grid": {k: v for k, v in SMALL_GRID.items() if k != "beta"}},
            ValueError,
            r"missing \['beta'\]",
        ),
        (GOOD, {"init_grid": {**SMALL_GRID, "E": [1.0]}}, ValueError, r"unknown \['E'\]"),
        (GOOD, {"init_grid": {**SMALL_GRID, "a": []}}, ValueError, r"init_grid\['a'\] must be a non-empty"),
        (GOOD, {"init_grid": {**SMALL_GRID, "a": "0 5"}}, ValueError, r"init_grid\['a'\] must be a sequence"),
        (GOOD, {"bootstrap": -1}, ValueError, r"bootstrap must be >= 0"),
        (GOOD, {"bootstrap": 2.5}, TypeError, r"bootstrap must be an int"),
        (GOOD, {"huber_delta": 0.0}, ValueError, r"huber_delta must be a positive"),
        (GOOD, {"seed": "x"}, TypeError, r"seed must be a non-negative int"),
        (GOOD, {"seed": -1, "bootstrap": 2}, ValueError, r"seed must be a non-negative int, got -1"),
        (GOOD, {"bootstrap": 10**12}, ValueError, r"bootstrap=1000000000000 resamples is more than"),
        (GOOD, {"exclude": "no"}, TypeError, r"exclude must be True or False, got 'no'"),
        (GOOD, {"ids": ["a", "b"]}, ValueError, r"ids must name each of the"),
        (GOOD, {"weights": np.ones(3)}, ValueError, r"one value per point"),
        (GOOD, {"weights": -np.ones(GOOD[0].size)}, ValueError, r"weights\[0\] = -1"),
        (
            GOOD,
            {"weights": np.r_[np.ones(4), np.zeros(GOOD[0].size - 4)]},
            ValueError,
            r"at least 5 points with positive",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_parametric(*args, **kwargs)


def test_optimal_rejects_bad_budgets(chinchilla_fit):
    for bad in (-1.0, 0.0, math.nan, [1e20, math.inf]):
        with pytest.raises(ValueError, match="positive finite compute budget"):
            chinchilla_fit.optimal(bad)


def test_a_floor_that_collapses_to_zero_is_reported():
    """Data with no irreducible loss (E = 0 in the generating law): the fit's E goes to about 0, which is
    said (a warning and ParametricFit.floor_collapsed); a law with a real floor is not flagged."""
    p = {"E": 0.0, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    n, d, l, _ = isoflop_sweep(noise=0.002, seed=4, p=p)
    with pytest.warns(UserWarning, match="is about 0"):
        fit = fit_parametric(n, d, l)
    assert fit.E < 1e-3 * l.min() and fit.floor_collapsed is not None
    n, d, l, _ = isoflop_sweep(noise=0.002, seed=4)
    assert fit_parametric(n, d, l).floor_collapsed is None


def test_points_in_one_budget_are_refused():
    """All points on one IsoFLOP line (C = 6ND within 5%): N and D move together, so the fit is refused."""
    n = np.geomspace(1e7, 1e9, 9)
    d = 1e19 / (6 * n)
    loss = 1.7 + 400 / n**0.34 + 400 / d**0.28
    with pytest.raises(ValueError, match=r"Approach 3 needs runs at 2 or more compute budgets; all 9 points"):
        fit_parametric(n, d, loss)
