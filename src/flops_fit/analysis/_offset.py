"""Least squares of the offset power law y = E + K * x**a for many weightings of the same x at once.

Bootstrap intervals refit the law on thousands of resamples; this solves them together in NumPy arrays.
Each row r minimises ``sum_j w[r, j] * (E + K * x_j**a - y[r, j])**2`` with ``0 <= E <= upper_r`` (just under
the row's smallest y) and ``K > 0``.

Method (variable projection, exact for this model): for fixed ``a`` the model is linear in (E, K), whose
best values have a closed form (E clipped to its bounds, K refitted); that leaves the profile SSE(a), a
function of one variable. Its minimum is located on a grid of ``b = a * span(ln x)`` (the log-ratio of
x**a across the data) for every row at once, then refined by a bracketed root search (Illinois regula
falsi) on dSSE/da, which the envelope theorem gives in closed form. A golden-section search takes over
for the rare row whose grid minimum does not bracket a sign change of the derivative.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Largest |a| * span(ln x) searched: beyond it x**a changes by more than e^50 across the data.
MAX_LOG_RATIO = 50.0
#: Grid points in b = a * span(ln x), sinh-spaced (dense near 0); an even count keeps b = 0 (where E and K
#: are not separately identified) off the grid.
GRID_POINTS = 128
#: The offset stays this fraction below the row's smallest y, as in the single-fit solver.
UPPER_MARGIN = 1e-9
#: Root search stops when the bracket on b is this narrow, relative to max(1, |b|).
B_TOL = 1e-12
MAX_ITER = 100
#: Array elements per block of rows (resamples) in the batched fits here and in the envelope's bootstrap,
#: to bound memory.
BLOCK_ELEMENTS = 1 << 21


def distinct_present(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Number of distinct x values with positive weight in each row of ``w``."""
    xu, inv = np.unique(x, return_inverse=True)
    if xu.size == x.size:
        return (w > 0).sum(1)
    present = np.zeros((w.shape[0], xu.size), dtype=bool)
    rows, cols = np.nonzero(w > 0)
    present[rows, inv[cols]] = True
    return present.sum(1)


def _project(
    b: np.ndarray, v: np.ndarray, y: np.ndarray, w: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best (E, K) for fixed exponents ``b`` (per row) of z = exp(b v): returns E, K, SSE, dSSE/db.

    K = 0 (E = upper) stands for the infeasible case K <= 0: the limit of the model as K -> 0+.
    """
    z = np.exp(b[:, None] * v)
    wz = w * z
    sw = w.sum(1)
    zbar = wz.sum(1) / sw
    ybar = np.einsum("ij,ij->i", w, y) / sw
    dz = z - zbar[:, None]
    szz = np.einsum("ij,ij->i", w * dz, dz)
    szy = np.einsum("ij,ij->i", w * dz, y - ybar[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(szz > 0, szy / szz, 0.0)
        e = ybar - k * zbar
        ec = np.clip(e, 0.0, upper)
        refit = (ec != e) & (szz > 0)
        k = np.where(refit, np.einsum("ij,ij->i", wz, y - ec[:, None]) / np.einsum("ij,ij->i", wz, z), k)
    bad = ~(k > 0)
    e = np.where(bad, upper, ec)
    k = np.where(bad, 0.0, k)
    r = e[:, None] + k[:, None] * z - y
    sse = np.einsum("ij,ij->i", w * r, r)
    dsse = 2.0 * k * ((wz * r) @ v)
    return e, k, sse, dsse


def _grid_sse(b: np.ndarray, v: np.ndarray, y: np.ndarray, w: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Profile SSE of every row (R) at every grid exponent (G), from weighted moments: (R, G)."""
    zg = np.exp(np.outer(b, v))  # (G, m)
    sw = w.sum(1)
    ybar = np.einsum("ij,ij->i", w, y) / sw
    yc = y - ybar[:, None]
    wyc = w * yc
    syy = np.einsum("ij,ij->i", wyc, yc)[:, None]
    sz = w @ zg.T
    szz = w @ (zg * zg).T
    syz = wyc @ zg.T  # = sum w (z - zbar)(y - ybar), as sum w (y - ybar) = 0
    sw, ybar, upper = sw[:, None], ybar[:, None], upper[:, None]
    var = szz - sz * sz / sw
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(var > 0, syz / var, 0.0)
        e = ybar - k * sz / sw
        ec = np.clip(e, 0.0, upper)
        k = np.where(ec != e, (syz + (ybar - ec) * sz) / szz, k)
    bad = ~(k > 0)
    d = np.where(bad, upper, ec) - ybar
    k = np.where(bad, 0.0, k)
    return sw * d * d + k * k * szz + syy + 2 * d * k * sz - 2 * k * syz


def _golden(
    f: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray, iters: int = 60
) -> np.ndarray:
    """Golden-section minimum of the vectorised ``f`` (one value per row) on [lo, hi], for each row."""
    g = (np.sqrt(5.0) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        left = fc < fd
        hi, lo = np.where(left, d, hi), np.where(left, lo, c)
        c_new, d_new = hi - g * (hi - lo), lo + g * (hi - lo)
        c, d = np.where(left, c_new, d), np.where(left, c, d_new)
        f_new = f(np.where(left, c, d))
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
    return (lo + hi) / 2


def _refine(
    grid: np.ndarray, best: np.ndarray, v: np.ndarray, y: np.ndarray, w: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """The exponent b minimising each row's profile SSE, starting from its best grid index ``best``."""

    def deriv(b: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _project(b, v, y[rows], w[rows], upper[rows])[3]

    def sse(b: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _project(b, v, y[rows], w[rows], upper[rows])[2]

    n = best.size
    all_rows = np.arange(n)
    b_mid = grid[best]
    d_mid = deriv(b_mid, all_rows)
    # the minimum lies to the left of the grid point if the profile rises there, else to the right
    go_left = d_mid > 0
    other = np.clip(np.where(go_left, best - 1, best + 1), 0, grid.size - 1)
    b_other = grid[other]
    d_other = deriv(b_other, all_rows)
    lo = np.where(go_left, b_other, b_mid)
    hi = np.where(go_left, b_mid, b_other)
    d_lo = np.where(go_left, d_other, d_mid)
    d_hi = np.where(go_left, d_mid, d_other)
    bracket = (d_lo <= 0) & (d_hi > 0) & (other != best)
    out = b_mid.copy()
    # rows at a stationary point (or at the grid's end with the profile still falling) keep the grid point
    odd = ~bracket & (d_mid != 0) & (best > 0) & (best < grid.size - 1)
    if odd.any():
        rows = np.flatnonzero(odd)
        out[rows] = _golden(lambda b: sse(b, rows), grid[best[rows] - 1], grid[best[rows] + 1])
    rows = np.flatnonzero(bracket)
    lo, hi, d_lo, d_hi = lo[rows], hi[rows], d_lo[rows], d_hi[rows]
    side = np.zeros(rows.size, dtype=np.int8)
    active = np.ones(rows.size, dtype=bool)
    for _ in range(MAX_ITER):
        active &= (hi - lo) > B_TOL * np.maximum(1.0, np.abs(lo))
        if not active.any():
            break
        i = np.flatnonzero(active)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = (lo[i] * d_hi[i] - hi[i] * d_lo[i]) / (d_hi[i] - d_lo[i])
        b = np.where((b > lo[i]) & (b < hi[i]), b, (lo[i] + hi[i]) / 2)
        d = deriv(b, rows[i])
        left = d <= 0  # the root is to the right of b: b becomes the new lower end
        # Illinois: when the same end survives twice, halve its derivative so the other end moves too
        d_hi[i] = np.where(left & (side[i] == -1), d_hi[i] / 2, d_hi[i])
        d_lo[i] = np.where(~left & (side[i] == 1), d_lo[i] / 2, d_lo[i])
        lo[i], d_lo[i] = np.where(left, b, lo[i]), np.where(left, d, d_lo[i])
        hi[i], d_hi[i] = np.where(left, hi[i], b), np.where(left, d_hi[i], d)
        side[i] = np.where(left, -1, 1)
    out[rows] = (lo + hi) / 2
    return out


def fit_offset_power_laws(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least-squares (E, ln K, a) of y = E + K x**a for each row of weights.

    Args:
        x: (m,) positive abscissae shared by all rows.
        y: (R, m) targets (values where ``w`` is 0 are ignored).
        w: (R, m) non-negative weights, e.g. bootstrap counts; 0 leaves a point out of that row.

    Returns:
        (R, 3) rows (E, ln K, a); NaN for rows with fewer than 3 distinct x of positive weight or where no
        K > 0 fits better than a constant.
    """
    x = np.asarray(x, dtype=float)
    w = np.asarray(w, dtype=float)
    y = np.where(w > 0, np.asarray(y, dtype=float), 0.0)
    out = np.full((w.shape[0], 3), np.nan)
    ok = distinct_present(x, w) >= 3
    if not ok.any():
        return out
    lx = np.log(x)
    centre = (lx.max() + lx.min()) / 2
    span = lx.max() - lx.min()
    v = (lx - centre) / span  # in [-1/2, 1/2]
    grid = np.sinh(np.linspace(-np.arcsinh(MAX_LOG_RATIO), np.arcsinh(MAX_LOG_RATIO), GRID_POINTS))
    rows_ok = np.flatnonzero(ok)
    block = max(1, BLOCK_ELEMENTS // max(x.size, GRID_POINTS))
    for start in range(0, rows_ok.size, block):
        rows = rows_ok[start : start + block]
        yb, wb = y[rows], w[rows]
        upper = np.where(wb > 0, yb, np.inf).min(1) * (1 - UPPER_MARGIN)
        best = np.argmin(_grid_sse(grid, v, yb, wb, upper), axis=1)
        b = _refine(grid, best, v, yb, wb, upper)
        e, k, _, _ = _project(b, v, yb, wb, upper)
        with np.errstate(divide="ignore"):
            a = b / span
            res = np.stack([e, np.log(k) - a * centre, a], axis=1)
        res[~(k > 0)] = np.nan
        out[rows] = res
    return out
