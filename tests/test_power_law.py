import numpy as np
import pytest

from flops_fit.analysis.power_law import PowerLawFit, fit_power_law


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
