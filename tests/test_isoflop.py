import json
import warnings

import numpy as np
import pandas as pd
import pytest

from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop, fit_profile
from synth import isoflop_sweep, true_a, true_n_opt


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
