"""The Fit protocol and the one registry of fit types (flops_fit.analysis.fit, approaches.FIT_TYPES)."""

from __future__ import annotations

import numpy as np
import pytest

from flops_fit.analysis import APPROACHES, fit_from_dict
from flops_fit.analysis.approaches import FIT_TYPES
from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from flops_fit.analysis.fit import Fit, LawsFit
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from synth import isoflop_sweep
from test_envelope import _synthetic_runs

SMALL_GRID = {"e": [0.0, 1.0], "a": [5.0, 10.0], "b": [5.0, 10.0], "alpha": [0.2, 0.5], "beta": [0.2, 0.5]}


@pytest.fixture(scope="module")
def fits() -> dict[str, Fit]:
    """One bootstrapped fit of every approach."""
    n, d, loss, c = isoflop_sweep()
    return {
        "envelope": fit_envelope(_synthetic_runs(), bootstrap=30, seed=0),
        "isoflop": fit_isoflop(n, d, loss, c, bootstrap=30, seed=0),
        "parametric": fit_parametric(n, d, loss, C=c, init_grid=SMALL_GRID, bootstrap=30, seed=0),
    }


def test_one_registry_names_every_approach():
    assert tuple(FIT_TYPES) == APPROACHES == ("envelope", "isoflop", "parametric")
    assert FIT_TYPES == {"envelope": EnvelopeFit, "isoflop": IsoFLOPFit, "parametric": ParametricFit}
    assert all(cls.approach == name for name, cls in FIT_TYPES.items())
    assert issubclass(EnvelopeFit, LawsFit) and issubclass(IsoFLOPFit, LawsFit)
    with pytest.raises(TypeError):
        FIT_TYPES["other"] = EnvelopeFit  # read-only


def test_every_fit_offers_the_protocol(fits):
    for name, fit in fits.items():
        assert isinstance(fit, FIT_TYPES[name]) and fit.approach == name
        lo, hi = fit.a_ci
        assert lo <= fit.a <= hi
        lo, hi = fit.b_ci
        assert lo <= fit.b <= hi
        opt = fit.optimal(1e21)
        assert opt["optimal_params"] > 0 and opt["optimal_params_ci"] is not None
        assert fit.summary()
        again = fit_from_dict(fit.to_dict())
        assert type(again) is type(fit)
        assert (again.a, again.b, again.a_ci, again.b_ci) == (fit.a, fit.b, fit.a_ci, fit.b_ci)


def test_parametric_exponent_intervals_come_from_its_bootstrap(fits):
    fit = fits["parametric"]
    assert (fit.a_ci, fit.b_ci) == (fit.ci["a"], fit.ci["b"])
    n, d, loss, c = isoflop_sweep()
    plain = fit_parametric(n, d, loss, C=c, init_grid=SMALL_GRID)
    assert plain.a_ci is None and plain.b_ci is None
    assert np.isfinite(plain.a)


def test_fit_from_dict_rejects_an_unknown_approach():
    with pytest.raises(ValueError, match="expected one of"):
        fit_from_dict({"approach": "approach 4"})
