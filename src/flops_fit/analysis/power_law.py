"""Power laws y = offset + k * x**a, with their uncertainty.

A pure power law (offset 0) is fitted by least squares on log y = log k + a log x. With ``offset=True``
the irreducible term (e.g. L_opt(C) = E + k C^a) is fitted by nonlinear least squares in linear space.
Uncertainty comes from the regression (t intervals, parameter covariance) or, with ``bootstrap=B``, from
refitting B resamples of the points (95% percentile intervals).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from flops_fit.analysis._offset import UPPER_MARGIN, distinct_present, fit_offset_power_laws
from flops_fit.core.validate import canonical_order, check_bootstrap, check_flag, check_seed

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
#: An offset at most this fraction of the smallest y sits at its bound 0: the law is the pure power law.
OFFSET_AT_ZERO = 1e-9


def _pair(v: Any) -> tuple[float, float] | None:
    return None if v is None else (float(v[0]), float(v[1]))


@dataclass(frozen=True)
class PowerLawFit:
    """y = offset + k * x**a.

    ``k_ci``, ``a_ci``, ``offset_ci`` are 95% intervals when known. ``cov`` is the covariance of
    ``(log k, a)`` (or ``(offset, log k, a)`` for offset fits), used by :meth:`predict_interval`.
    """

    k: float
    a: float
    r_squared: float
    k_ci: tuple[float, float] | None = None
    a_ci: tuple[float, float] | None = None
    offset: float = 0.0
    offset_ci: tuple[float, float] | None = None
    n_points: int = 0
    cov: tuple[tuple[float, ...], ...] | None = None

    def predict(self, x: Any) -> Any:
        """Evaluate offset + k * x**a (scalar in, scalar out)."""
        xa = np.asarray(x, dtype=float)
        y = self.offset + self.k * np.power(xa, self.a)
        return float(y) if np.ndim(y) == 0 else y

    def predict_interval(self, x: Any, level: float = CI_LEVEL) -> tuple[Any, Any]:
        """Approximate ``level`` interval of the fitted curve at ``x`` (delta method on ``cov``).

        Returns ``(low, high)``; NaN where no covariance is known.
        """
        xa = np.asarray(x, dtype=float)
        lx = np.log(xa)
        if self.cov is None:
            nan = np.full_like(lx, np.nan)
            return (float(nan), float(nan)) if nan.ndim == 0 else (nan, nan)
        z = stats.norm.ppf(0.5 + level / 2)
        cov = np.asarray(self.cov, dtype=float)
        power = self.k * np.power(xa, self.a)
        if cov.shape == (2, 2):
            var_log = cov[0, 0] + 2 * lx * cov[0, 1] + lx**2 * cov[1, 1]
            sd = np.sqrt(np.maximum(var_log, 0.0))
            low, high = self.offset + power * np.exp(-z * sd), self.offset + power * np.exp(z * sd)
        else:
            grad = np.stack([np.ones_like(lx), power, power * lx])
            var = np.einsum("i...,ij,j...->...", grad, cov, grad)
            sd = np.sqrt(np.maximum(var, 0.0))
            centre = self.offset + power
            low, high = centre - z * sd, centre + z * sd
        if np.ndim(low) == 0:
            return float(low), float(high)
        return low, high

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("k_ci", "a_ci", "offset_ci"):
            d[key] = None if d[key] is None else list(d[key])
        d["cov"] = None if self.cov is None else [list(row) for row in self.cov]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PowerLawFit:
        cov = d.get("cov")
        if cov is not None and not (len(cov) in (2, 3) and all(len(row) == len(cov) for row in cov)):
            raise ValueError(f"cov must be a 2 x 2 or 3 x 3 table (ln k, a[, offset]), got {cov!r:.60}")
        return cls(
            k=float(d["k"]),
            a=float(d["a"]),
            r_squared=float(d.get("r_squared", math.nan)),
            k_ci=_pair(d.get("k_ci")),
            a_ci=_pair(d.get("a_ci")),
            offset=float(d.get("offset", 0.0) or 0.0),
            offset_ci=_pair(d.get("offset_ci")),
            n_points=int(d.get("n_points", 0) or 0),
            cov=None if cov is None else tuple(tuple(float(v) for v in row) for row in cov),
        )

    def __str__(self) -> str:
        def ci(v: tuple[float, float] | None, fmt: str) -> str:
            return "" if v is None else f" [{v[0]:{fmt}}, {v[1]:{fmt}}]"

        head = f"{self.offset:.4g}{ci(self.offset_ci, '.4g')} + " if self.offset else ""
        return (
            f"y = {head}{self.k:.4g}{ci(self.k_ci, '.3g')} * x^{self.a:.4f}{ci(self.a_ci, '.4f')}"
            f"  (R^2 = {self.r_squared:.4f}, n = {self.n_points})"
        )

    def summary(self) -> str:
        return str(self)


def _valid_xy(x: Any, y: Any, need: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        xa = np.asarray(x, dtype=float).reshape(-1)
        ya = np.asarray(y, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"x and y must be sequences of numbers ({exc})") from None
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    if ok.sum() < need or np.unique(xa[ok]).size < 2:
        raise ValueError(
            f"Not enough valid points for {what}: {int(ok.sum())} positive finite point(s) with "
            f"{np.unique(xa[ok]).size} distinct x, need at least {need} with 2 distinct x"
        )
    if not ok.all():
        first = int(np.flatnonzero(~ok)[0])
        logger.warning(
            "fit_power_law: left out %d of %d point(s) with a non-positive or non-finite x or y "
            "(first: x[%d] = %g, y[%d] = %g)",
            int((~ok).sum()),
            ok.size,
            first,
            xa[first],
            first,
            ya[first],
        )
    return xa[ok], ya[ok]


def _ols(lx: np.ndarray, ly: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of ly on lx for many weight rows at once: returns (intercepts, slopes).

    ``ly`` is shared by all rows (shape (m,)) or given per row (shape (R, m)).
    """
    w = np.ones((1, lx.size)) if w is None else np.atleast_2d(w)
    sw = w.sum(1)
    mx = (w @ lx) / sw
    my = (w @ ly) / sw if ly.ndim == 1 else np.einsum("ij,ij->i", w, ly) / sw
    sxx = (w * (lx - mx[:, None]) ** 2).sum(1)
    sxy = (w * (lx - mx[:, None]) * (ly - my[:, None])).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = sxy / sxx
    return my - slope * mx, slope


def _percentile_ci(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _fit_pure(x: np.ndarray, y: np.ndarray, bootstrap: int, seed: int) -> PowerLawFit:
    lx, ly = np.log(x), np.log(y)
    n = lx.size
    icpt, slope = (float(v[0]) for v in _ols(lx, ly))
    resid = ly - (icpt + slope * lx)
    sst = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / sst if sst > 0 else 1.0
    k_ci = a_ci = cov = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)
        icpts, slopes = _ols(lx, ly, counts)
        keep = np.isfinite(slopes)
        icpts, slopes = icpts[keep], slopes[keep]
        k_ci = tuple(math.exp(v) for v in _percentile_ci(icpts))
        a_ci = _percentile_ci(slopes)
        cov = tuple(map(tuple, np.cov(np.stack([icpts, slopes]))))
    elif n > 2:
        s2 = float((resid**2).sum()) / (n - 2)
        design = np.stack([np.ones(n), lx], axis=1)
        c = s2 * np.linalg.inv(design.T @ design)
        t = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 2)
        se_i, se_s = math.sqrt(c[0, 0]), math.sqrt(c[1, 1])
        k_ci = (math.exp(icpt - t * se_i), math.exp(icpt + t * se_i))
        a_ci = (float(slope - t * se_s), float(slope + t * se_s))
        cov = tuple(map(tuple, c))
    return PowerLawFit(
        k=math.exp(icpt),
        a=float(slope),
        r_squared=r2,
        k_ci=k_ci,
        a_ci=a_ci,
        n_points=n,
        cov=None if cov is None else tuple(tuple(float(v) for v in row) for row in cov),
    )


def _offset_least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(offset, log k, a) minimising the squared error of offset + exp(log k + a log x) against y."""
    lx = np.log(x)
    ymin = float(y.min())
    upper = ymin * (1 - UPPER_MARGIN)

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] + np.exp(p[1] + p[2] * lx) - y

    def jac(p: np.ndarray) -> np.ndarray:
        e = np.exp(p[1] + p[2] * lx)
        return np.stack([np.ones_like(lx), e, e * lx], axis=1)

    best, best_cost = None, math.inf
    for frac in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99):
        e0 = frac * ymin
        icpt, slope = (float(v[0]) for v in _ols(lx, np.log(y - e0)))
        p0 = np.array([e0, icpt, slope])
        if not np.all(np.isfinite(p0)):
            continue
        sol = optimize.least_squares(
            resid,
            p0,
            jac=jac,
            bounds=([0.0, -np.inf, -np.inf], [upper, np.inf, np.inf]),
            method="trf",
            x_scale="jac",
        )
        if sol.cost < best_cost:
            best, best_cost = sol.x, sol.cost
    assert best is not None
    return best


def _fit_offset(x: np.ndarray, y: np.ndarray, bootstrap: int, seed: int) -> PowerLawFit:
    n = x.size
    p = _offset_least_squares(x, y)
    if p[0] <= OFFSET_AT_ZERO * float(y.min()):
        # The constrained optimum puts the offset at its bound 0: the data show no irreducible term, and the
        # best fit is the pure power law (whose intervals are well defined, unlike those at a bound).
        return _fit_pure(x, y, bootstrap, seed)
    lx = np.log(x)
    pred = p[0] + np.exp(p[1] + p[2] * lx)
    sse = float(((y - pred) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    k_ci = a_ci = off_ci = cov = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)
        arr = fit_offset_power_laws(x, np.broadcast_to(y, counts.shape), counts)
        arr = arr[np.all(np.isfinite(arr), axis=1)]  # resamples with < 3 distinct x cannot be fitted
        if len(arr) >= 2:
            off_ci = _percentile_ci(arr[:, 0])
            k_ci = tuple(math.exp(v) for v in _percentile_ci(arr[:, 1]))
            a_ci = _percentile_ci(arr[:, 2])
            cov = np.cov(arr.T)
    elif n > 3:
        e = np.exp(p[1] + p[2] * lx)
        jac = np.stack([np.ones_like(lx), e, e * lx], axis=1)
        s2 = sse / (n - 3)
        cov = s2 * np.linalg.pinv(jac.T @ jac)
        t = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 3)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        off_ci = (float(p[0] - t * se[0]), float(p[0] + t * se[0]))
        k_ci = (math.exp(p[1] - t * se[1]), math.exp(p[1] + t * se[1]))
        a_ci = (float(p[2] - t * se[2]), float(p[2] + t * se[2]))
    return PowerLawFit(
        k=math.exp(p[1]),
        a=float(p[2]),
        r_squared=r2,
        k_ci=k_ci,
        a_ci=a_ci,
        offset=float(p[0]),
        offset_ci=off_ci,
        n_points=n,
        cov=None if cov is None else tuple(tuple(float(v) for v in row) for row in np.asarray(cov)),
    )


def fit_power_law_batch(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, *, offset: bool | np.ndarray = False
) -> np.ndarray:
    """Fit y = offset + k * x**a to many weightings of the same x at once (bootstrap resamples).

    Follows :func:`fit_power_law`'s rules row by row: points with non-positive or non-finite y are left out;
    the pure law is a least-squares line in log-log space and needs 2 distinct x; the offset law (``offset``
    True, for all rows or per row as an (R,) bool array) needs 3 distinct x and becomes the pure law where
    its offset reaches its bound 0.

    Args:
        x: (m,) positive abscissae shared by all rows.
        y: (R, m) ordinates; w: (R, m) non-negative weights (e.g. resampling counts, 0 leaves a point out).

    Returns:
        (R, 3) rows (offset, ln k, a), NaN where a row cannot be fitted.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.where(np.isfinite(y) & (y > 0), np.asarray(w, dtype=float), 0.0)
    y = np.where(w > 0, y, 1.0)
    distinct = distinct_present(x, w)
    out = np.full((w.shape[0], 3), np.nan)
    pure = distinct >= 2
    if pure.any():
        icpt, slope = _ols(np.log(x), np.log(y[pure]), w[pure])
        out[pure] = np.stack([np.zeros_like(icpt), icpt, slope], axis=1)
    with_offset = np.broadcast_to(np.asarray(offset, dtype=bool), distinct.shape)
    rows = np.flatnonzero(with_offset & (distinct >= 3))
    out[with_offset & (distinct < 3)] = np.nan
    if rows.size:
        fit = fit_offset_power_laws(x, y[rows], w[rows])
        ymin = np.where(w[rows] > 0, y[rows], np.inf).min(1)
        # as in fit_power_law: an offset at its bound 0 means no irreducible term, the pure law is the fit
        at_zero = fit[:, 0] <= OFFSET_AT_ZERO * ymin
        out[rows] = np.where(at_zero[:, None], out[rows], fit)
    return out


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    offset: bool = False,
    bootstrap: int = 0,
    seed: int = 0,
) -> PowerLawFit:
    """Fit y = k * x**a (or y = offset + k * x**a with ``offset=True``).

    Non-positive and non-finite points are left out, with a logged warning. Needs at least 2 valid points (3 with an offset) and
    two distinct x values; otherwise raises ``ValueError("Not enough valid points ...")``.
    """
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    offset = check_flag("offset", offset)
    need = 3 if offset else 2
    xv, yv = _valid_xy(x, y, need, "an offset power law" if offset else "a power law")
    order = canonical_order(xv, yv)
    xv, yv = xv[order], yv[order]
    if offset:
        return _fit_offset(xv, yv, int(bootstrap), seed)
    return _fit_pure(xv, yv, int(bootstrap), seed)
