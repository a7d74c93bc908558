"""Reference checks for the batched E + K x^a solver (``flops_fit.analysis._offset``): scipy's answer.

Shared by the power-law and IsoFLOP tests.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from flops_fit.analysis.power_law import _offset_least_squares


def _sse(p, x, y):
    return float(((p[0] + np.exp(p[1] + p[2] * np.log(x)) - y) ** 2).sum())


def _scipy_optimum(x, y):
    """``_offset_least_squares`` (the single-fit path), and that solution polished to tight tolerances."""
    p = _offset_least_squares(x, y)
    lx, upper = np.log(x), y.min() * (1 - 1e-9)
    tight = optimize.least_squares(
        lambda q: q[0] + np.exp(q[1] + q[2] * lx) - y,
        p,
        bounds=([0.0, -np.inf, -np.inf], [upper, np.inf, np.inf]),
        x_scale="jac",
        ftol=1e-15,
        xtol=1e-15,
        gtol=1e-15,
    ).x
    return p, tight


def assert_same_optimum(q, x, y):
    """The batched solution ``q`` (E, ln K, a) is the scipy optimum: scipy stops ~1e-6 short (ftol 1e-8)."""
    p, tight = _scipy_optimum(x, y)
    for ref, rtol in ((tight, 1e-6), (p, 5e-6)):
        np.testing.assert_allclose([q[0], np.exp(q[1]), q[2]], [ref[0], np.exp(ref[1]), ref[2]], rtol=rtol)
    assert _sse(q, x, y) <= _sse(p, x, y) * (1 + 1e-10) + 1e-20 * float((y**2).sum())
