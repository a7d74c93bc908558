import numpy as np
import pytest

from flops_fit.analysis._offset import _golden, fit_offset_power_laws
from flops_fit.analysis.power_law import (
    PowerLawFit,
    _offset_least_squares,
    fit_power_law,
    fit_power_law_batch,
)
from offset_reference import assert_same_optimum


def test_pure_power_law_recovers_exponent_with_ci():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e17, 1e22, 12)
    y = 2e-3 * x**0.52 * np.exp(rng.normal(0, 0.03, x.size))
    fit = fit_power_law(x, y)
    assert fit.a == pytest.approx(0.52, abs=0.02)
    assert fit.a_ci[0] < 0.52 < fit.a_ci[1]
    assert fit.k_ci[0] < fit.k < fit.k_ci[1]
    assert fit.r_squared > 0.99
    assert fit.n_points == 12
    boot = fit_power_law(x, y, bootstrap=500, seed=3)
    assert boot.a == fit.a  # the point estimate does not depend on the bootstrap
    assert boot.a_ci[0] < 0.52 < boot.a_ci[1]
    assert fit_power_law(x, y, bootstrap=500, seed=3).a_ci == boot.a_ci  # seeded


def test_offset_power_law_recovers_irreducible_loss():
    rng = np.random.default_rng(2)
    x = np.geomspace(1e17, 1e22, 10)
    y = 1.7 + 300 * x**-0.12 * (1 + rng.normal(0, 1e-3, x.size))
    fit = fit_power_law(x, y, offset=True)
    assert fit.offset == pytest.approx(1.7, abs=0.05)
    assert fit.a == pytest.approx(-0.12, abs=0.01)
    lo, hi = fit.predict_interval(1e23)
    assert lo < fit.predict(1e23) < hi


def test_exact_power_law_and_prediction():
    x = np.array([1.0, 10.0, 100.0])
    fit = fit_power_law(x, 3 * x**0.5)
    assert fit.k == pytest.approx(3.0)
    assert fit.a == pytest.approx(0.5)
    assert fit.predict(10_000.0) == pytest.approx(300.0)
    np.testing.assert_allclose(fit.predict(np.array([1.0, 4.0])), [3.0, 6.0])


def test_round_trip_dict():
    x = np.geomspace(1, 1e4, 6)
    fit = fit_power_law(x, 2 + x**-0.3, offset=True)
    assert PowerLawFit.from_dict(fit.to_dict()) == fit
    assert "x^" in fit.summary()


@pytest.mark.parametrize(
    "x, y, offset",
    [
        ([1.0], [1.0], False),
        ([1.0, 2.0], [1.0, 2.0], True),
        ([1.0, -2.0, np.nan], [1.0, 2.0, 3.0], False),
        ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0], False),
    ],
)
def test_not_enough_valid_points(x, y, offset):
    with pytest.raises(ValueError, match="Not enough valid points"):
        fit_power_law(x, y, offset=offset)


def test_invalid_points_are_ignored():
    fit = fit_power_law([1, 10, 100, -1, np.inf], [2, 20, 200, 5, 7])
    assert fit.n_points == 3
    assert fit.a == pytest.approx(1.0)


def test_mismatched_lengths_and_negative_bootstrap():
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="bootstrap"):
        fit_power_law([1, 2, 3], [1, 2, 3], bootstrap=-1)


# --------------------------------------------------------------------------------------------------
# the batched offset solver behind the bootstrap intervals


def test_batched_offset_solver_matches_scipy_on_full_data():
    rng = np.random.default_rng(7)
    x = np.geomspace(1e17, 1e22, 10)
    for e, a, noise in ((1.7, -0.12, 1e-3), (2.5, -0.3, 3e-3), (0.6, -0.5, 1e-2), (3.0, -0.05, 1e-3)):
        y = (e + 0.5 * (x / 1e19) ** a) * (1 + rng.normal(0, noise, x.size))
        q = fit_offset_power_laws(x, y[None], np.ones((1, x.size)))[0]
        assert_same_optimum(q, x, y)
        assert q[0] == pytest.approx(e, rel=0.2) and q[2] == pytest.approx(a, rel=0.2)


def test_batched_offset_solver_at_its_bounds():
    x = np.geomspace(1e18, 1e22, 9)
    falling_fast = 10 * x**-0.05 - 0.3  # an irreducible term below 0 would fit: the offset stops at 0
    q = fit_offset_power_laws(x, falling_fast[None], np.ones((1, 9)))[0]
    assert q[0] == 0.0
    np.testing.assert_allclose(q[1:], _offset_least_squares(x, falling_fast)[1:], rtol=1e-6)
    floor = 2.0 + np.array([1.0, 0.01, 0, 0, 0, 0, 0, 0, 0]) + np.array([0, 0, 1, 2, 1, 0, 1, 2, 1]) * 1e-4
    q = fit_offset_power_laws(x, floor[None], np.ones((1, 9)))[0]
    assert q[0] == 2.0 * (1 - 1e-9)  # the offset stops just under the smallest y
    assert_same_optimum(q, x, floor)


def test_batched_offset_solver_weights_are_repeated_points():
    rng = np.random.default_rng(3)
    x = np.geomspace(1e17, 1e21, 8)
    y = 1.8 + 500 * x**-0.15 * np.exp(rng.normal(0, 0.004, x.size))
    w = rng.multinomial(8, np.full(8, 1 / 8), size=6).astype(float)
    w[4] = [4, 4, 0, 0, 0, 0, 0, 0]  # 2 distinct x: cannot be fitted
    w[5] = [0, 0, 3, 0, 0, 2, 0, 3]
    ys = np.where(w > 0, y, np.nan)  # values of left-out points are ignored
    q = fit_offset_power_laws(x, ys, w)
    assert np.isnan(q[4]).all() and np.isfinite(q[[0, 1, 2, 3, 5]]).all()
    for r in (0, 5):
        idx = np.repeat(np.arange(8), w[r].astype(int))
        assert_same_optimum(q[r], x[idx], y[idx])


def test_fit_power_law_batch_follows_fit_power_law_rules():
    rng = np.random.default_rng(4)
    x = np.geomspace(1e17, 1e21, 7)
    y_off = 1.7 + 300 * x**-0.12 * (1 + rng.normal(0, 1e-3, x.size))
    y_pure = 10 * x**-0.05 - 0.3  # the offset fit stops at 0: fit_power_law gives the pure law
    y = np.stack([y_off, y_pure, y_off, y_off, y_off, -y_off])
    w = np.ones_like(y)
    w[2, :5] = 0  # 2 points: pure law only
    w[3, :6] = 0  # 1 point: nothing
    out = fit_power_law_batch(x, y, w, offset=np.array([True, True, True, True, False, True]))
    full = fit_power_law(x, y_off, offset=True)
    np.testing.assert_allclose(out[0], [full.offset, np.log(full.k), full.a], rtol=5e-6)
    pure = fit_power_law(x, y_pure)
    np.testing.assert_allclose(out[1], [0.0, np.log(pure.k), pure.a], rtol=1e-12)
    assert np.isnan(out[2]).all() and np.isnan(out[3]).all() and np.isnan(out[5]).all()  # y <= 0 is left out
    pure = fit_power_law(x, y_off)
    np.testing.assert_allclose(out[4], [0.0, np.log(pure.k), pure.a], rtol=1e-12)
    np.testing.assert_allclose(
        fit_power_law_batch(x, y[2:3], w[2:3])[0, 1:], np.polyfit(np.log(x[5:]), np.log(y_off[5:]), 1)[::-1]
    )


def test_offset_bootstrap_intervals_cover_truth_and_are_seeded():
    rng = np.random.default_rng(5)
    x = np.geomspace(1e17, 1e22, 12)
    y = 1.7 + 300 * x**-0.12 * (1 + rng.normal(0, 3e-3, x.size))
    fit = fit_power_law(x, y, offset=True, bootstrap=2000, seed=1)
    assert fit.offset_ci[0] < 1.7 < fit.offset_ci[1]
    assert fit.a_ci[0] < -0.12 < fit.a_ci[1]
    assert fit.k_ci[0] < 300 < fit.k_ci[1]
    assert fit_power_law(x, y, offset=True, bootstrap=2000, seed=1) == fit
    assert fit_power_law(x, y, offset=True, bootstrap=2000, seed=2).a_ci != fit.a_ci
    # with 4 points many resamples hold < 3 distinct x: they are dropped, not NaN in the intervals
    few = fit_power_law(x[::3], y[::3], offset=True, bootstrap=300, seed=0)
    assert np.isfinite(np.asarray(few.cov)).all() and np.isfinite(few.a_ci).all()


def test_golden_section_fallback_finds_each_rows_minimum():
    # the solver's fallback for a grid minimum that brackets no sign change of dSSE/da
    target = np.array([-0.3, 0.1, 2.0])
    found = _golden(lambda b: (b - target) ** 2 + np.abs(b - target) ** 3, target - 1.0, target + 0.5)
    np.testing.assert_allclose(found, target, atol=1e-7)


def test_left_out_points_are_reported(caplog):
    import logging

    x = np.array([1e6, 1e7, 1e8, 1e9])
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        fit = fit_power_law(x, [4.0, np.nan, 3.0, 2.6])
    assert fit.n_points == 3
    assert "left out 1 of 4 point(s)" in caplog.text and "x[1] = 1e+07, y[1] = nan" in caplog.text
