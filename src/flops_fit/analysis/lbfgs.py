"""Batched L-BFGS: minimise one smooth objective from many starts at once, all starts in one array.

Algorithm, per start (Nocedal & Wright, "Numerical Optimization", Alg. 7.4 and 7.5): the search direction is
``-H g`` from the two-loop recursion over the last ``MEMORY`` curvature pairs ``(s, y)``, with the initial
Hessian scaled by ``gamma = s.y / y.y`` of the newest pair (a unit-length steepest-descent step while there
is none, as L-BFGS-B does); a weak-Wolfe line search (bisection / doubling with quadratic interpolation,
Lewis & Overton) picks the step. A pair with too little curvature is skipped; a start whose line search
finds no decrease drops its memory and retries once from steepest descent.

Everything is vectorised across starts: a point of the search space is a column of a (dim, k) array and the
history is (MEMORY, dim, k), so each of the many tiny vector operations per iteration runs over contiguous
memory; starts that stop leave the batch.

Interface: :func:`lbfgs_batch` takes the starts ``x0`` (k, dim), an objective/gradient kernel
``evaluate(rows, x) -> (f, grad)`` that evaluates the columns of ``x`` (dim, m) belonging to starts ``rows``
(so per-start data, e.g. bootstrap weights, can be looked up), and a :class:`Stop` rule; it returns a
:class:`BatchResult` with each start's end point, value, gradient, status, iterations, and the evaluations
in total.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: A kernel: ``evaluate(rows, x)`` -> ``(f, grad)``, shapes (m,) and (dim, m), for the columns of ``x``
#: (dim, m) that belong to starts ``rows`` (m,).
Evaluate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: L-BFGS correction pairs, as scipy's L-BFGS-B default.
MEMORY = 10

# Status codes of a start.
RUNNING, GTOL, FTOL, LINE_SEARCH, MAX_ITER, NON_FINITE = range(6)


@dataclass(frozen=True)
class Stop:
    """When one start stops: its gradient max-norm is <= ``gtol``; ``f`` fell by <= ``ftol * max(|f|,
    ftol_floor)`` in ``patience`` consecutive iterations; no step decreases ``f`` any more; or after
    ``max_iter`` iterations."""

    gtol: float
    ftol: float
    ftol_floor: float
    patience: int
    max_iter: int


@dataclass
class BatchResult:
    """Per start: where it ended and why."""

    x: np.ndarray  # (k, dim) end points
    f: np.ndarray  # (k,) objective at x (inf for starts that never had a finite value)
    grad: np.ndarray  # (k, dim) gradient at x
    status: np.ndarray  # (k,) one of the GTOL.. codes
    n_iter: np.ndarray  # (k,) iterations per start
    n_eval: int  # evaluations of the objective (one per column) in total


def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Column-wise inner products of two (dim, k) arrays."""
    return np.einsum("dk,dk->k", u, v)


def two_loop(
    g: np.ndarray,
    s_hist: np.ndarray,
    y_hist: np.ndarray,
    rho: np.ndarray,
    gamma: np.ndarray,
    order: Sequence[int],
) -> np.ndarray:
    """Return -H g for every column (L-BFGS two-loop recursion); ``order`` lists history slots newest first.

    ``g`` is (dim, k), ``s_hist`` and ``y_hist`` (MEMORY, dim, k), ``rho`` (MEMORY, k), ``gamma`` (k,).
    Slots with ``rho == 0`` (empty, or a skipped update) are no-ops.
    """
    q = g.copy()
    step = np.empty_like(q)
    coef = {}
    for j in order:
        c = dot(s_hist[j], q)
        c *= rho[j]
        q -= np.multiply(y_hist[j], c, out=step)
        coef[j] = c
    q *= gamma
    for j in reversed(order):
        c = dot(y_hist[j], q)
        c *= rho[j]
        np.subtract(coef[j], c, out=c)
        q += np.multiply(s_hist[j], c, out=step)
    return np.negative(q, out=q)


# --------------------------------------------------------------------------------------------------------
# Line search


@dataclass
class _Bracket:
    """Each column's trial step ``t`` and the bracket ``[lo, hi]`` known to hold an acceptable step."""

    t: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    t_min: np.ndarray  # smallest useful step (set after the first round)

    def shrink(
        self, rl: np.ndarray, tq: np.ndarray, ft: np.ndarray, f_l: np.ndarray, gd_l: np.ndarray
    ) -> None:
        """Columns ``rl`` whose step ``tq`` was too long: quadratic interpolation while there is no lower
        end of the bracket, then bisection."""
        self.hi[rl] = tq
        t_quad = -gd_l * tq * tq / (2.0 * (ft - f_l - gd_l * tq))
        t_quad = np.clip(np.where(np.isfinite(t_quad), t_quad, 0.1 * tq), 0.1 * tq, 0.5 * tq)
        lo_rl = self.lo[rl]
        self.t[rl] = np.where(lo_rl > 0, 0.5 * (lo_rl + tq), t_quad)

    def grow(self, rs: np.ndarray, ts: np.ndarray) -> None:
        """Columns ``rs`` whose step ``ts`` was too short (still steep): double it, or bisect a bracket."""
        self.lo[rs] = ts
        hi_rs = self.hi[rs]
        self.t[rs] = np.where(np.isfinite(hi_rs), 0.5 * (ts + hi_rs), 2.0 * ts)

    def stuck(self, live: np.ndarray) -> np.ndarray:
        """Which of the columns ``live`` have a collapsed bracket or a negligible step."""
        hi_l, lo_l = self.hi[live], self.lo[live]
        return (np.isfinite(hi_l) & (hi_l - lo_l <= 1e-12 * hi_l)) | (
            (self.t[live] < self.t_min[live]) & (lo_l == 0)
        )


def _min_steps(x: np.ndarray, d: np.ndarray, xtol: float) -> np.ndarray:
    """Smallest useful step per column: moves no coordinate by more than ``xtol`` relative to its size."""
    return xtol * (1.0 + np.abs(x).max(axis=0)) / np.maximum(np.abs(d).max(axis=0), 1e-300)


@np.errstate(over="ignore", invalid="ignore", divide="ignore")  # step interpolation may divide by 0
def line_search(
    evaluate: Evaluate,
    rows: np.ndarray,
    x: np.ndarray,
    f: np.ndarray,
    g: np.ndarray,
    d: np.ndarray,
    gd: np.ndarray,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_steps: int = 25,
    xtol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Weak-Wolfe line search along ``d`` for every column at once (bisection / doubling, Lewis & Overton).

    ``x``, ``g`` and ``d`` are (dim, k). Each round evaluates only the columns still searching. Returns
    ``(x_new, f_new, g_new, ok, n_eval)``; ``ok`` is False where no step with sufficient decrease was
    found (the column has converged to the precision the objective allows, or cannot move); such columns
    keep ``x``, ``f`` and ``g``.
    """
    k = x.shape[1]
    br = _Bracket(t=np.ones(k), lo=np.zeros(k), hi=np.full(k, np.inf), t_min=np.zeros(k))
    live = np.arange(k)
    n_eval = 0
    for round_ in range(max_steps):
        if round_ == 0:  # the unit step for every column: no gathers, no scatters
            tl, d_l, f_l, gd_l = br.t, d, f, gd
            xt = x + d
        else:
            tl = br.t[live]
            d_l, f_l, gd_l = np.take(d, live, axis=1), f[live], gd[live]
            xt = np.take(x, live, axis=1)
            xt += tl * d_l
        ft, gt = evaluate(rows[live], xt)
        n_eval += live.size
        armijo = ft <= f_l + c1 * tl * gd_l  # False for inf / nan
        done = armijo & (dot(gt, d_l) >= c2 * gd_l)  # sufficient decrease and curvature
        # Every point with sufficient decrease is acceptable; keep the latest (largest such step).
        if round_ == 0:
            x_new, f_new, g_new = np.where(armijo, xt, x), np.where(armijo, ft, f), np.where(armijo, gt, g)
            ok = armijo.copy()
        else:
            good = live[armijo]
            x_new[:, good], f_new[good], g_new[:, good] = xt[:, armijo], ft[armijo], gt[:, armijo]
            ok[good] = True
        if done.all():
            break
        long_ = ~armijo
        if long_.any():
            br.shrink(live[long_], tl[long_], ft[long_], f_l[long_], gd_l[long_])
        short = armijo ^ done
        if short.any():
            br.grow(live[short], tl[short])
        live = live[~done]
        if round_ == 0:
            br.t_min[live] = _min_steps(np.take(x, live, axis=1), np.take(d, live, axis=1), xtol)
        stuck = br.stuck(live)  # stop columns whose bracket collapsed or whose step became negligible
        if stuck.any():
            live = live[~stuck]
        if live.size == 0:
            break
    return x_new, f_new, g_new, ok, n_eval


# --------------------------------------------------------------------------------------------------------
# The iteration


@dataclass
class _Batch:
    """The starts still running (``rows`` into ``x0``) and their state, one column per start."""

    rows: np.ndarray  # (k,)
    x: np.ndarray  # (dim, k)
    f: np.ndarray  # (k,)
    g: np.ndarray  # (dim, k)
    s_hist: np.ndarray  # (MEMORY, dim, k)
    y_hist: np.ndarray  # (MEMORY, dim, k)
    rho: np.ndarray  # (MEMORY, k)
    gamma: np.ndarray  # (k,); 0: no curvature pair yet
    stall: np.ndarray  # (k,) consecutive iterations of negligible decrease

    def keep(self, keep: np.ndarray) -> None:
        """Drop the columns where ``keep`` is False. np.compress keeps the arrays C-contiguous; boolean
        indexing along the last axis returns a transposed layout that slows every later operation."""
        self.rows, self.f, self.stall, self.gamma = (
            self.rows[keep],
            self.f[keep],
            self.stall[keep],
            self.gamma[keep],
        )
        self.x, self.g, self.rho = (a.compress(keep, axis=1) for a in (self.x, self.g, self.rho))
        self.s_hist, self.y_hist = (a.compress(keep, axis=2) for a in (self.s_hist, self.y_hist))


def _start(x0: np.ndarray, evaluate: Evaluate, gtol: float) -> tuple[BatchResult, _Batch]:
    """Evaluate every start: the result table (starts already stopped filled in) and the running batch."""
    k0, dim = x0.shape
    x = np.ascontiguousarray(x0.T, dtype=float)
    f0, g0 = evaluate(np.arange(k0), x)
    out = BatchResult(
        x=x0.astype(float, copy=True),
        f=f0.copy(),
        grad=g0.T.copy(),
        status=np.full(k0, RUNNING),
        n_iter=np.zeros(k0, dtype=int),
        n_eval=k0,
    )
    out.status[~np.isfinite(f0)] = NON_FINITE
    out.status[np.isfinite(f0) & (np.abs(g0).max(axis=0) <= gtol)] = GTOL
    rows = np.flatnonzero(out.status == RUNNING)
    batch = _Batch(
        rows=rows,
        x=np.take(x, rows, axis=1),
        f=f0[rows],
        g=np.take(g0, rows, axis=1),
        s_hist=np.zeros((MEMORY, dim, rows.size)),
        y_hist=np.zeros((MEMORY, dim, rows.size)),
        rho=np.zeros((MEMORY, rows.size)),
        gamma=np.zeros(rows.size),
        stall=np.zeros(rows.size, dtype=int),
    )
    return out, batch


def _direction(b: _Batch, it: int) -> tuple[np.ndarray, np.ndarray]:
    """The search direction of every column and its slope ``g.d`` (< 0) for iteration ``it``."""
    slot = it % MEMORY
    order = [(slot - 1 - j) % MEMORY for j in range(min(it, MEMORY))]  # filled slots, newest first
    fresh = b.gamma == 0
    gnorm = np.maximum(np.sqrt(dot(b.g, b.g)), 1e-300)
    # Without curvature information take a unit-length steepest-descent step, as L-BFGS-B does.
    d = two_loop(b.g, b.s_hist, b.y_hist, b.rho, np.where(fresh, 1.0 / gnorm, b.gamma), order)
    gd = dot(b.g, d)
    uphill = ~(gd < 0)
    if uphill.any():  # lost descent (numerically): restart those columns from steepest descent
        d[:, uphill] = -b.g[:, uphill] / gnorm[uphill]
        gd[uphill] = -gnorm[uphill]
        b.rho[:, uphill] = 0.0
        b.gamma[uphill] = 0.0
    return d, gd


def _remember(b: _Batch, slot: int, x_new: np.ndarray, g_new: np.ndarray, ok: np.ndarray) -> None:
    """Put the curvature pair of this step into ``slot`` (a no-op pair where the update is skipped; columns
    without an acceptable step have s = y = 0)."""
    s = np.subtract(x_new, b.x, out=b.s_hist[slot])
    y = np.subtract(g_new, b.g, out=b.y_hist[slot])
    sy = dot(s, y)
    yy = dot(y, y)
    update = ok & (sy > 1e-10 * yy) & (yy > 0)
    if not update.all():
        s *= update
        y *= update
    with np.errstate(divide="ignore", invalid="ignore"):
        b.rho[slot] = np.where(update, 1.0 / sy, 0.0)
        b.gamma = np.where(update, sy / yy, b.gamma)


def _iterate(b: _Batch, evaluate: Evaluate, stop: Stop, it: int) -> tuple[np.ndarray, int]:
    """One L-BFGS iteration of every column: each column's status afterwards, and the evaluations spent."""
    d, gd = _direction(b, it)
    x_new, f_new, g_new, ok, n_eval = line_search(evaluate, b.rows, b.x, b.f, b.g, d, gd)
    _remember(b, it % MEMORY, x_new, g_new, ok)
    decrease = b.f - f_new
    small = ok & (decrease <= stop.ftol * np.maximum(np.maximum(np.abs(b.f), np.abs(f_new)), stop.ftol_floor))
    b.stall = np.where(small, b.stall + 1, 0)
    b.x, b.f, b.g = x_new, f_new, g_new  # unchanged where no acceptable step was found
    status = np.full(b.rows.size, RUNNING)
    status[b.stall >= stop.patience] = FTOL
    status[ok & (np.abs(b.g).max(axis=0) <= stop.gtol)] = GTOL
    # No acceptable step: like L-BFGS-B, drop the curvature memory and retry once from steepest
    # descent; a column that fails without memory has converged as far as the objective allows.
    retry = ~ok & (b.gamma != 0)
    if retry.any():
        b.rho[:, retry] = 0.0
        b.gamma[retry] = 0.0
    status[~ok & ~retry] = LINE_SEARCH
    return status, n_eval


def _record(
    out: BatchResult, b: _Batch, sel: np.ndarray | slice, status: np.ndarray | int, n_iter: int
) -> None:
    """Copy the columns ``sel`` of the batch into the result, with their status and iteration count."""
    done = b.rows[sel]
    out.x[done], out.f[done], out.grad[done], out.status[done] = (
        b.x[:, sel].T,
        b.f[sel],
        b.g[:, sel].T,
        status,
    )
    out.n_iter[done] = n_iter


def lbfgs_batch(x0: np.ndarray, evaluate: Evaluate, stop: Stop) -> BatchResult:
    """Minimise ``evaluate`` from every row of ``x0`` (k, dim) at once with L-BFGS (see the module docstring).

    ``evaluate(rows, x)`` returns ``(f, grad)``, shapes (m,) and (dim, m), for the parameter columns of
    ``x`` (dim, m) belonging to original rows ``rows``. A row stops as :class:`Stop` says.
    """
    out, b = _start(x0, evaluate, stop.gtol)
    for it in range(stop.max_iter):
        if b.rows.size == 0:
            break
        status, n_eval = _iterate(b, evaluate, stop, it)
        out.n_eval += n_eval
        finished = status != RUNNING
        if finished.any():
            _record(out, b, finished, status[finished], it + 1)
            b.keep(~finished)
    if b.rows.size:
        _record(out, b, slice(None), MAX_ITER, stop.max_iter)
    return out
