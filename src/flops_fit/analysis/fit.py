"""What every scaling-law fit offers (the :class:`Fit` protocol), and the part shared by the fits made of
power laws across budgets (Approaches 1 and 2, :class:`LawsFit`).

A fit says how the compute-optimal model size and data grow with compute C (FLOPs): N_opt ∝ C^a
(parameters) and D_opt ∝ C^b (tokens), with 95% intervals where it has them, and answers ``optimal(C)``.
The one registry of fit types by approach name is :data:`flops_fit.analysis.approaches.FIT_TYPES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd

from flops_fit.analysis.power_law import CI_LEVEL, PowerLawFit
from flops_fit.core.validate import positive_budgets


class Fit(Protocol):
    """A fitted scaling law of one approach (``EnvelopeFit``, ``IsoFLOPFit``, ``ParametricFit``)."""

    #: The approach's name, a key of :data:`flops_fit.analysis.approaches.FIT_TYPES`.
    approach: str
    #: The runs left out of the fit as outliers, with the reason.
    excluded: pd.DataFrame

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a (parameters against FLOPs)."""
        ...

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b (tokens against FLOPs)."""
        ...

    @property
    def a_ci(self) -> tuple[float, float] | None:
        """95% interval of ``a``, or None where the fit has none (e.g. no bootstrap)."""
        ...

    @property
    def b_ci(self) -> tuple[float, float] | None:
        """95% interval of ``b``, or None where the fit has none."""
        ...

    def optimal(self, C: Any) -> dict[str, Any]:
        """Compute-optimal N (parameters), D (tokens) and loss at budget(s) C (FLOPs): see
        :func:`optimum_record` for the keys."""
        ...

    def summary(self) -> str:
        """A readable block of the fit."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, with ``approach``; the type's ``from_dict`` rebuilds the fit."""
        ...

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fit:
        """Inverse of :meth:`to_dict`."""
        ...


class LawsFit:
    """A fit made of power laws N_opt(C), D_opt(C), L_opt(C) across budgets (C in FLOPs), with optional
    bootstrap ``samples`` (columns ln k_N, a, ln k_D, b, then the L_opt law's offset, ln k, exponent).

    The base of ``EnvelopeFit`` and ``IsoFLOPFit``: the exponents, their intervals and ``optimal(C)``.
    """

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    samples: np.ndarray | None

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a."""
        return self.n_opt_fit.a

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b."""
        return self.d_opt_fit.a

    @property
    def a_ci(self) -> tuple[float, float] | None:
        """95% interval of ``a`` (the N_opt law's), or None."""
        return self.n_opt_fit.a_ci

    @property
    def b_ci(self) -> tuple[float, float] | None:
        """95% interval of ``b`` (the D_opt law's), or None."""
        return self.d_opt_fit.a_ci

    def optimal(self, C: Any) -> dict[str, Any]:
        """Compute-optimal N (parameters), D (tokens) and loss at budget(s) C (FLOPs), with 95% intervals."""
        return optimum_from_laws(
            positive_budgets(C), (self.n_opt_fit, self.d_opt_fit, self.l_opt_fit), self.samples
        )


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """`` [lo, hi]`` of an interval for a summary line, or nothing without one."""
    return "" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]"


def _ci(samples: np.ndarray) -> tuple[float, float] | None:
    """95% percentile interval of the finite draws, or None with fewer than 2."""
    s = samples[np.isfinite(samples)]
    if s.size < 2:
        return None
    lo, hi = np.percentile(s, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)])
    return float(lo), float(hi)


def _vector_ci(draws: np.ndarray) -> tuple[Any, Any]:
    """95% percentile interval along the last axis (NaNs ignored); floats for 1-D draws."""
    if not np.isfinite(draws).any():  # e.g. Approach 2's L_opt with 3 budgets: no interval, no warning
        nan = np.full(draws.shape[:-1], np.nan)
        return (float("nan"), float("nan")) if nan.ndim == 0 else (nan, nan.copy())
    lo, hi = np.nanpercentile(draws, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)], axis=-1)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def with_sample_ci(fit: PowerLawFit, s: np.ndarray, cols: tuple[int, int, int | None]) -> PowerLawFit:
    """``fit`` with intervals and covariance taken from bootstrap draws ``s`` (columns ln k, a[, offset])."""
    ik, ia, io = cols
    k_ci = _ci(np.exp(s[:, ik]))
    a_ci = _ci(s[:, ia])
    off_ci = _ci(s[:, io]) if io is not None and fit.offset else fit.offset_ci
    idx = [ik, ia] if io is None or not fit.offset else [io, ik, ia]
    good = np.all(np.isfinite(s[:, idx]), axis=1)
    cov = np.cov(s[good][:, idx].T) if good.sum() > 2 else None
    return PowerLawFit(
        k=fit.k,
        a=fit.a,
        r_squared=fit.r_squared,
        k_ci=k_ci,
        a_ci=a_ci,
        offset=fit.offset,
        offset_ci=off_ci,
        n_points=fit.n_points,
        cov=None if cov is None else tuple(tuple(float(v) for v in r) for r in cov),
    )


def optimum_from_laws(
    c: np.ndarray, laws: tuple[PowerLawFit, PowerLawFit, PowerLawFit], samples: np.ndarray | None
) -> dict[str, Any]:
    """``optimal(C)`` of a fit made of the laws N_opt(C), D_opt(C), L_opt(C) (Approaches 1 and 2).

    With bootstrap draws ``samples`` (columns ln k_N, a, ln k_D, b, then the L_opt law's offset, ln k,
    exponent) the intervals are 95% percentiles of the draws' predictions at C; without, the laws' own
    regression intervals.
    """
    n_fit, d_fit, l_fit = laws
    n, d, l = n_fit.predict(c), d_fit.predict(c), l_fit.predict(c)
    if samples is not None and len(samples):
        s, lc = samples, np.log(c)[..., None]
        n_ci = _vector_ci(np.exp(s[:, 0] + s[:, 1] * lc))
        d_ci = _vector_ci(np.exp(s[:, 2] + s[:, 3] * lc))
        l_ci = _vector_ci(s[:, 4] + np.exp(s[:, 5] + s[:, 6] * lc))
        r_ci = _vector_ci(np.exp(s[:, 2] - s[:, 0] + (s[:, 3] - s[:, 1]) * lc))
    else:
        n_ci, d_ci, l_ci = n_fit.predict_interval(c), d_fit.predict_interval(c), l_fit.predict_interval(c)
        r_ci = None  # the two laws' regression intervals are not independent: no interval for D/N
    return optimum_record(c, n, d, l, n_ci, d_ci, l_ci, r_ci)


def optimum_record(
    c: Any,
    n: Any,
    d: Any,
    l: Any,
    n_ci: Any = None,
    d_ci: Any = None,
    l_ci: Any = None,
    ratio_ci: Any = None,
) -> dict[str, Any]:
    """The dict ``optimal(C)`` returns: ``compute_budget`` (FLOPs), ``optimal_params`` (parameters),
    ``optimal_tokens`` (tokens), ``optimal_loss``, ``tokens_per_param`` and the ``*_ci`` 95% intervals
    (None where unknown; ``ratio_ci`` is that of ``tokens_per_param``); scalars for scalar C, arrays
    otherwise."""

    def conv(v: Any) -> Any:
        return float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=float)

    def conv_ci(ci: Any) -> Any:
        if ci is None:
            return None
        lo, hi = ci
        if np.ndim(lo) == 0 and not (np.isfinite(lo) and np.isfinite(hi)):
            return None
        return (conv(lo), conv(hi))

    return {
        "compute_budget": conv(c),
        "optimal_params": conv(n),
        "optimal_tokens": conv(d),
        "optimal_loss": conv(l),
        "tokens_per_param": conv(np.asarray(d) / np.asarray(n)),
        "optimal_params_ci": conv_ci(n_ci),
        "optimal_tokens_ci": conv_ci(d_ci),
        "optimal_loss_ci": conv_ci(l_ci),
        "tokens_per_param_ci": conv_ci(ratio_ci),
    }
