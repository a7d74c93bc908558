import numpy as np
import pandas as pd
import pytest

from flops_fit.analysis.envelope import (
    EnvelopeFit,
    _envelope_arrays,
    _on_grid,
    _run_curves,
    _sizes,
    fit_envelope,
)
from real_data import olmo_ladder_runs
from synth import TRUE, true_a


def _synthetic_runs(p=TRUE):
    """Runs of 8 sizes, each trained to 200 N tokens, with curves L(N, t) of the true law."""
    rows = []
    for i, n in enumerate(np.geomspace(2e7, 2e9, 8)):
        d_final = 200 * n
        t = np.geomspace(d_final / 200, d_final, 60)
        loss = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / t ** p["beta"]
        rows.append(
            {
                "experiment_id": f"r{i}",
                "compute_budget": 6 * n * d_final,
                "num_params": n,
                "num_tokens": d_final,
                "final_loss": loss[-1],
                "status": "completed",
                "curve": [list(v) for v in zip(t, loss, strict=True)],
            }
        )
    return pd.DataFrame(rows)


def test_envelope_recovers_exponent_on_exact_curves():
    fit = fit_envelope(_synthetic_runs())
    # the envelope of a discrete set of sizes is a staircase; the fitted exponent is close to the truth
    assert fit.a == pytest.approx(true_a(), abs=0.05)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-6)
    assert fit.envelope["optimal_params"].nunique() >= 4
    assert fit.n_opt_fit.a_ci is None  # no bootstrap -> no (dishonest) regression interval


def test_envelope_bootstrap_gives_intervals_and_round_trips():
    fit = fit_envelope(_synthetic_runs(), bootstrap=40, seed=1)
    assert fit.n_opt_fit.a_ci is not None
    opt = fit.optimal(1e21)
    assert opt["optimal_params_ci"][0] < opt["optimal_params"] < opt["optimal_params_ci"][1]
    again = EnvelopeFit.from_dict(fit.to_dict())
    assert again.a == fit.a
    assert "Approach 1" in fit.summary()
    lo, hi = fit.n_opt_fit.a_ci
    assert f"a = {fit.a:.4f} [{lo:.4f}, {hi:.4f}]" in fit.summary()  # the summary shows the intervals
    # prediction intervals are percentiles of the draws' own predictions, as in Approach 2
    s = fit.samples
    loss_draws = s[:, 4] + np.exp(s[:, 5] + s[:, 6] * np.log(1e21))
    assert opt["optimal_loss_ci"] == pytest.approx(tuple(np.nanpercentile(loss_draws, [2.5, 97.5])))
    assert again.optimal(1e21)["optimal_loss_ci"] == pytest.approx(opt["optimal_loss_ci"])


def test_no_curves_is_a_clear_error():
    runs = _synthetic_runs().drop(columns=["curve"])
    with pytest.raises(ValueError, match="needs loss curves"):
        fit_envelope(runs)


def test_single_size_is_a_clear_error():
    runs = _synthetic_runs()
    runs["num_params"] = 1e8
    with pytest.raises(ValueError, match="at least 2 model sizes"):
        fit_envelope(runs)


def test_olmo_ladder_envelope(data_dir):
    """Approach 1 on the real OLMo model ladder (C4 loss curves of 190M-3B models)."""
    fit = fit_envelope(olmo_ladder_runs(data_dir), exclude=False)
    # compute-optimal N grows with compute, roughly as the square root (published estimates: 0.46-0.55)
    assert 0.3 < fit.a < 0.75
    assert fit.l_opt_fit.a < 0


def _envelope_one_at_a_time(runs_c, grid):
    """Reference: the envelope of one list of runs, built run by run (the lowest loss wins, first of equals)."""
    best_l, best_run = np.full(grid.size, np.inf), np.full(grid.size, -1)
    n_lo, n_hi = np.full(grid.size, np.inf), np.full(grid.size, -np.inf)
    for j, (n, _, lc, ll) in enumerate(runs_c):
        inside = (grid >= lc[0]) & (grid <= lc[-1])
        interp = np.interp(grid, lc, ll)
        better = inside & (interp < best_l)
        best_l[better], best_run[better] = interp[better], j
        n_lo[inside], n_hi[inside] = np.minimum(n_lo[inside], n), np.maximum(n_hi[inside], n)
    n_best = np.array([runs_c[j][0] if j >= 0 else np.nan for j in best_run])
    keep = (best_run >= 0) & (n_best > n_lo) & (n_best < n_hi)
    fpt = np.array([runs_c[j][1] for j in best_run[keep]])
    return keep, n_best[keep], np.exp(grid[keep]) / fpt, np.exp(best_l[keep])


def test_envelope_of_many_resamples_at_once_matches_one_at_a_time(data_dir):
    rng = np.random.default_rng(0)
    for runs in (_synthetic_runs(), olmo_ladder_runs(data_dir)):
        runs_c = _run_curves(runs)
        grid = np.linspace(min(r[2][0] for r in runs_c), max(r[2][-1] for r in runs_c), 300)
        picks = rng.integers(0, len(runs_c), (20, len(runs_c)))
        present = np.zeros(picks.shape, dtype=bool)
        present[np.arange(20)[:, None], picks] = True
        sizes, fpt = _sizes(runs_c)
        kept, n_opt, d_opt, l_opt = _envelope_arrays(sizes, fpt, _on_grid(runs_c, grid), grid, present)
        for r in range(20):
            keep, *ref = _envelope_one_at_a_time([runs_c[i] for i in picks[r]], grid)
            np.testing.assert_array_equal(kept[r], keep)
            for got, want in zip((n_opt, d_opt, l_opt), ref, strict=True):
                np.testing.assert_allclose(got[r][keep], want, rtol=1e-14)


def test_envelope_bootstrap_is_seeded():
    runs = _synthetic_runs()
    fit = fit_envelope(runs, bootstrap=60, seed=2)
    again = fit_envelope(runs, bootstrap=60, seed=2)
    for name in ("n_opt_fit", "d_opt_fit", "l_opt_fit"):
        assert getattr(again, name) == getattr(fit, name)
    assert fit_envelope(runs, bootstrap=60, seed=3).n_opt_fit.a_ci != fit.n_opt_fit.a_ci


def test_envelope_exponent_intervals_like_isoflop():
    """``a_ci``/``b_ci``: the bootstrap intervals of the N_opt and D_opt exponents, None without a bootstrap."""
    plain = fit_envelope(_synthetic_runs())
    assert plain.a_ci is None and plain.b_ci is None
    fit = fit_envelope(_synthetic_runs(), bootstrap=40, seed=1)
    assert fit.a_ci == fit.n_opt_fit.a_ci and fit.b_ci == fit.d_opt_fit.a_ci
    assert fit.a_ci[0] <= fit.a <= fit.a_ci[1] and fit.b_ci[0] <= fit.b <= fit.b_ci[1]
    again = EnvelopeFit.from_dict(fit.to_dict())
    assert (again.a_ci, again.b_ci) == (fit.a_ci, fit.b_ci)
