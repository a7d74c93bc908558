import json
import warnings

import numpy as np
import pandas as pd
import pytest

from flops_fit.analysis._offset import fit_offset_power_laws
from flops_fit.analysis.isoflop import IsoFLOPFit, _profile_minima, _tokens_at, fit_isoflop, fit_profile
from offset_reference import assert_same_optimum
from synth import TRUE, isoflop_sweep, true_a, true_n_opt


def test_recovers_true_exponent_within_bootstrap_ci():
    n, d, l, c = isoflop_sweep(noise=0.003, seed=0)
    fit = fit_isoflop(n, d, l, c, bootstrap=300, seed=0)
    assert fit.a == pytest.approx(true_a(), abs=0.03)
    assert fit.a_ci[0] <= true_a() <= fit.a_ci[1]
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-9)  # D = C / 6N exactly
    opt = fit.optimal(1e21)
    assert opt["optimal_params"] == pytest.approx(float(true_n_opt(1e21)), rel=0.25)
    lo, hi = opt["optimal_params_ci"]
    assert lo < opt["optimal_params"] < hi
    assert opt["tokens_per_param"] == pytest.approx(opt["optimal_tokens"] / opt["optimal_params"])
    assert set(fit.minima.columns) >= {
        "compute_budget",
        "optimal_params",
        "optimal_tokens",
        "optimal_loss",
        "n_points",
        "flags",
    }


def test_default_budget_is_6nd_and_arrays_work():
    n, d, l, _ = isoflop_sweep(noise=0.0)
    fit = fit_isoflop(n, d, l)
    assert fit.a == pytest.approx(true_a(), abs=0.02)
    out = fit.optimal(np.array([1e20, 1e21]))
    assert out["optimal_params"].shape == (2,)


def test_round_trip():
    n, d, l, c = isoflop_sweep(seed=4)
    fit = fit_isoflop(n, d, l, c, bootstrap=50)
    again = IsoFLOPFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert again.a == fit.a and again.b == fit.b
    o1, o2 = fit.optimal(3e20), again.optimal(3e20)
    assert o1["optimal_params"] == pytest.approx(o2["optimal_params"])
    assert o1["optimal_params_ci"] == pytest.approx(o2["optimal_params_ci"])
    assert "Approach 2" in fit.summary()


def test_edge_minimum_is_flagged_and_left_out():
    n, _d, _l, c = isoflop_sweep(noise=0.0)
    # shift the last budget's sizes so its optimum lies above the largest sampled size
    last = c == c.max()
    n2 = n.copy()
    n2[last] = n[last] / 30
    d2 = c / (6 * n2)
    from synth import TRUE as p

    l2 = p["E"] + p["A"] / n2 ** p["alpha"] + p["B"] / d2 ** p["beta"]
    with pytest.warns(UserWarning, match="edge_large"):
        fit = fit_isoflop(n2, d2, l2, c)
    row = fit.minima.iloc[-1]
    assert "edge_large" in row["flags"] and not row["used"]
    assert fit.n_opt_fit.n_points == len(fit.minima) - 1


def test_profile_flags():
    assert fit_profile(np.array([1e6, 2e6]), np.array([3.0, 2.9])).flags == ("too_few_points",)
    flat = fit_profile(np.geomspace(1e6, 1e8, 5), np.full(5, 3.0) + np.array([0, 1e-5, 0, 1e-5, 2e-5]))
    assert "flat" in flat.flags or "no_curvature" in flat.flags
    falling = fit_profile(np.geomspace(1e6, 1e8, 5), np.array([3.0, 2.9, 2.8, 2.7, 2.6]))
    assert "edge_large" in falling.flags


def test_outliers_excluded_by_default_and_kept_on_request():
    n, d, l, c = isoflop_sweep(noise=0.001, sizes=11)
    l = l.copy()
    i = 5  # middle of the first profile, near its minimum
    l[i] *= 1.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_isoflop(n, d, l, c)
        kept = fit_isoflop(n, d, l, c, exclude=False)
    assert len(fit.excluded) == 1 and fit.excluded["outlier_reason"].iloc[0] == "profile_residual"
    assert len(kept.excluded) == 0
    assert abs(fit.a - true_a()) <= abs(kept.a - true_a()) + 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"N": [1e6, np.nan, 1e7], "D": [1, 2, 3], "L": [3, 2, 3]}, "N has 1 non-finite"),
        ({"N": [1e6, 2e6, 1e7], "D": [1, 2, 3], "L": [3, 0, 3]}, "L has 1"),
        ({"N": [1e6, 2e6, 1e7], "D": [1, 2], "L": [3, 2, 3]}, "same length"),
        ({"N": [1e6, 2e6, 4e6], "D": [1e9, 1e9, 1e9], "L": [3, 2, 3], "C": [1e18] * 3}, "one budget"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_isoflop(**kwargs)


def test_bad_bootstrap():
    n, d, l, c = isoflop_sweep()
    with pytest.raises(ValueError, match="bootstrap"):
        fit_isoflop(n, d, l, c, bootstrap=-2)


def test_porian_configs_match_authors_exponent(data_dir):
    """Approach 2 on Porian et al. (2024)'s 15 configurations vs the authors' own N_opt exponent."""
    df = pd.read_csv(data_dir / "porian2024_isoflop_points.csv")
    theirs = json.loads((data_dir / "porian2024_n_exponents.json").read_text())
    keys = ["source_file", "dataset", "hparams", "warmup", "decay", "param_count", "val"]
    gaps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ref in theirs:
            sub = df
            for k in keys:
                sub = sub[sub[k] == ref[k]]
            fit = fit_isoflop(sub["n"], sub["t"], sub["loss"], sub["flops"])
            gaps.append(fit.a - ref["n_exponent"])
    gaps = np.abs(gaps)
    assert len(gaps) == 15
    assert gaps.max() < 0.05, gaps
    assert np.median(gaps) < 0.02, gaps


# --------------------------------------------------------------------------------------------------
# the vectorised bootstrap: per-budget minima of many resamples at once, then batched laws


def _porian_configs(data_dir, count):
    df = pd.read_csv(data_dir / "porian2024_isoflop_points.csv")
    keys = ["source_file", "dataset", "hparams", "warmup", "decay", "param_count", "val"]
    return [g for _, g in list(df.groupby(keys))[:count]]


def _odd_budgets():
    """Budgets of every shape fit_profile meets: ties in N or loss, edges, concave, flat, too few sizes."""
    rng = np.random.default_rng(11)
    out = []
    for i in range(30):
        m = int(rng.integers(2, 12))
        n = np.round(np.geomspace(1e6, 1e6 * 10 ** rng.uniform(0.3, 3), m), -3)
        if i % 3 == 0:
            n[rng.integers(0, m)] = n[rng.integers(0, m)]
        x = np.log(n)
        l = 3 + 0.05 * (x - x.mean() - rng.normal(0, 1)) ** 2 + rng.normal(0, 10 ** rng.uniform(-4, -1), m)
        if i % 5 == 0:
            l[rng.integers(0, m)] = l.min()
        out.append((n, 6e18 / n, l))
    return out


def test_profile_minima_match_fit_profile_on_resamples(data_dir):
    budgets = _odd_budgets()
    for g in _porian_configs(data_dir, 2):
        c = g["flops"].to_numpy()
        for center in np.unique(c):
            m = c == center
            budgets.append((g["n"].to_numpy()[m], g["t"].to_numpy()[m], g["loss"].to_numpy()[m]))
    rng = np.random.default_rng(0)
    flags_seen = set()
    for n, d, l in budgets:
        counts = rng.multinomial(n.size, np.full(n.size, 1 / n.size), size=25)
        used, n_star, d_star, l_star = _profile_minima(n, d, l, counts)
        for r in range(25):
            pick = rng.permutation(np.repeat(np.arange(n.size), counts[r]))  # any row order
            prof = fit_profile(n[pick], l[pick])
            flags_seen.update(prof.flags)
            assert used[r] == (not prof.flags)
            if used[r]:
                d_ref = _tokens_at(n[pick], d[pick], prof.optimal_params)
                np.testing.assert_allclose(
                    [n_star[r], d_star[r], l_star[r]],
                    [prof.optimal_params, d_ref, prof.optimal_loss],
                    rtol=1e-9,
                )
    assert flags_seen >= {"edge_small", "edge_large", "no_curvature", "too_few_points", "flat"}


def test_fit_profile_does_not_depend_on_row_order_with_tied_sizes():
    n = np.array([1e6, 2e6, 2e6, 4e6, 8e6, 8e6, 16e6])
    l = np.array([3.2, 3.1, 3.05, 3.0, 3.02, 3.04, 3.15])
    ref = fit_profile(n, l)
    for seed in range(5):
        p = np.random.default_rng(seed).permutation(n.size)
        assert fit_profile(n[p], l[p]) == ref


def test_batched_l_opt_law_matches_scipy_on_porian_minima(data_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in _porian_configs(data_dir, 4):
            minima = fit_isoflop(g["n"], g["t"], g["loss"], g["flops"]).minima
            used = minima[minima["used"]]
            x, y = used["compute_budget"].to_numpy(), used["optimal_loss"].to_numpy()
            assert_same_optimum(fit_offset_power_laws(x, y[None], np.ones((1, x.size)))[0], x, y)


def test_bootstrap_covers_l_opt_truth_and_is_seeded():
    n, d, l, c = isoflop_sweep(noise=0.003, seed=0)
    fit = fit_isoflop(n, d, l, c, bootstrap=400, seed=0)
    # for L = E + A/N^alpha + B/D^beta at D = C/6N the compute-optimal loss is exactly E + k C^c
    c_true = -TRUE["alpha"] * TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.l_opt_fit.offset_ci[0] < TRUE["E"] < fit.l_opt_fit.offset_ci[1]
    assert fit.l_opt_fit.a_ci[0] < c_true < fit.l_opt_fit.a_ci[1]
    assert fit.samples.shape == (400, 7)
    again = fit_isoflop(n, d, l, c, bootstrap=400, seed=0)
    np.testing.assert_array_equal(again.samples, fit.samples)
    assert not np.array_equal(fit_isoflop(n, d, l, c, bootstrap=400, seed=1).samples, fit.samples)


def test_budgets_are_grouped_before_outliers_are_dropped():
    """Dropping an outlier that is the smallest run of its bucket must not regroup the rest: the fit's
    buckets are those of every run, as the plots and the report group them."""
    from flops_fit.analysis.bucketing import bucket_budgets

    rows = []
    for c in (1e18, 1e19, 1e20):
        for i, f in enumerate(np.geomspace(1 / 8, 8, 7)):
            n, ci = np.sqrt(c / 120) * f, c * (1.01 + 0.004 * i)
            rows.append((n, ci / (6 * n), 2 + 0.05 * np.log(f) ** 2 + 1e-3 * np.sin(7 * i), ci))
    n = np.sqrt(1e19 / 120)
    rows.append((n, 1e19 / (6 * n), 3.5, 1e19))  # the outlier, anchoring its bucket at exactly 1e19
    rows.append((2 * n, 1.055e19 / (12 * n), 2 + 0.05 * np.log(2) ** 2, 1.055e19))  # 5.5% above it
    N, D, L, C = map(np.array, zip(*rows, strict=True))
    with pytest.warns(UserWarning, match="too_few_points"):
        fit = fit_isoflop(N, D, L, C)
    assert list(fit.excluded["outlier_reason"]) == ["profile_residual"]
    centers = bucket_budgets(C)[1]
    assert len(fit.minima) == len(centers) == 4
    np.testing.assert_allclose(fit.minima["compute_budget"].iloc[2], 1.055e19)
