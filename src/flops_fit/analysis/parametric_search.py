"""The optimisation behind Approach 3: start grid, constraints, multi-start search, polish, bootstrap refits.

:mod:`flops_fit.analysis.parametric` defines the model and the fit result; this module finds the optimum of
the Huber objective (:mod:`flops_fit.analysis.huber`) with the batched L-BFGS (:mod:`flops_fit.analysis.lbfgs`).
A point of the search space is ``(e, a, b, alpha, beta)`` with E = exp(e), A = exp(a), B = exp(b), or, for a
constrained fit (:class:`Constraint`: one shared exponent alpha = beta, and/or E fixed), the free subset of
those coordinates; the kernel always sees the full five, and the gradient is folded back onto the free ones.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import optimize

from flops_fit.analysis.lbfgs import BatchResult, Evaluate, Stop, lbfgs_batch

logger = logging.getLogger(__name__)

#: Parameter order of ``ParametricFit.samples``: E, A, B and the exponents of N and D.
PARAM_NAMES: tuple[str, ...] = ("E", "A", "B", "alpha", "beta")
#: Names of the five coordinates an ``init_grid`` mapping must give: E = exp(e), A = exp(a), B = exp(b).
GRID_KEYS: tuple[str, ...] = ("e", "a", "b", "alpha", "beta")
#: The grid of Hoffmann et al. as used by Besiroglu et al.: 5 * 6 * 6 * 5 * 5 = 4,500 starts.
CHINCHILLA_INIT_GRID: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
        "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
        "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    }
)
#: A resample (or a fit) needs at least this many distinct points.
MIN_POINTS = 5

# Optimiser settings. The objective the optimiser sees is the summed Huber loss divided by delta * sum(w),
# i.e. the weighted mean absolute log residual in the linear part of the Huber loss, so the tight tolerances
# below do not depend on the number of points, their weights or delta.
#
# Every grid start stops where scipy's L-BFGS-B with its default options stops on the summed Huber
# objective itself (pgtol 1e-5 on the gradient; a decrease of at most factr * eps = 2.2e-9 times
# max(|f|, 1)), i.e. where the per-start loop the method prescribes stops: on the Chinchilla points the
# batch then takes the same iterations and evaluations per start as that loop. The grid only ranks the
# starts; the best ones are refined with the tight tolerances below. (scipy's iteration cap is 15000; the
# grid's is 1000, far above the 373 the slowest Chinchilla start needs.)
_GRID_PGTOL, _GRID_FACTR_EPS, _GRID_MAX_ITER = 1e-5, 2.2e-9, 1000

# Refinement and bootstrap: run to the precision the objective allows. The Huber loss with a small delta is
# nearly piecewise linear, so L-BFGS can crawl for a few iterations and then speed up again; a start stops
# only after `patience` consecutive iterations of negligible progress.
TIGHT_STOP = Stop(gtol=1e-10, ftol=1e-14, ftol_floor=0.0, patience=3, max_iter=2000)
_N_REFINE_BEST = 16  # best grid starts refined with tight tolerances
_N_REFINE_DISTINCT = 8  # plus the best start of up to this many distinct basins
_DISTINCT_START = 0.1  # max |difference| of coordinates for grid end points to count as one basin
DISTINCT_OPTIMUM = 1e-3  # ... and for refined optima
N_BOOTSTRAP_STARTS = 4  # warm starts per resample: the optimum and up to 3 other distinct optima
_N_FULL_REFINE = 4  # grid on a sample: best refined optima (and distinct ones) refined again on all points


def grid_stop(scale: float) -> Stop:
    """Scipy L-BFGS-B's default stop on the summed objective, for the objective divided by ``scale``."""
    return Stop(
        gtol=_GRID_PGTOL / scale,
        ftol=_GRID_FACTR_EPS,
        ftol_floor=1.0 / scale,
        patience=1,
        max_iter=_GRID_MAX_ITER,
    )


def distinct(x: np.ndarray, order: np.ndarray, tol: float, limit: int) -> list[int]:
    """Up to ``limit`` indices from ``order`` (best first), each differing from every earlier pick by > ``tol``."""
    candidates = np.asarray(order)
    picked: list[int] = []
    while candidates.size and len(picked) < limit:
        i = int(candidates[0])
        picked.append(i)
        candidates = candidates[np.abs(x[candidates] - x[i]).max(axis=1) > tol]
    return picked


# --------------------------------------------------------------------------------------------------------
# Constraints


@dataclass(frozen=True)
class Constraint:
    """Which coordinates of ``(e, a, b, alpha, beta)`` are free.

    ``equal_exponents``: one exponent shared by both terms (alpha = beta; the free vector keeps ``alpha``).
    ``fixed_e``: log of a fixed irreducible loss E (the free vector drops ``e``). Neither: all five are free
    and :meth:`wrap` returns the kernel unchanged (the unconstrained fit is computed exactly as before).
    """

    equal_exponents: bool = False
    fixed_e: float | None = None

    @property
    def is_free(self) -> bool:
        """True when no coordinate is constrained."""
        return not self.equal_exponents and self.fixed_e is None

    @property
    def free(self) -> tuple[str, ...]:
        """Names of the free coordinates, in order."""
        return tuple(
            k
            for k in GRID_KEYS
            if not (k == "e" and self.fixed_e is not None) and not (k == "beta" and self.equal_exponents)
        )

    @property
    def _source(self) -> tuple[int | None, ...]:
        """For each of the five coordinates, its row in the free vector (None: the fixed e)."""
        free = self.free
        source: list[int | None] = []
        for k in GRID_KEYS:
            if k == "e" and self.fixed_e is not None:
                source.append(None)
            else:
                source.append(free.index("alpha" if k == "beta" and self.equal_exponents else k))
        return tuple(source)

    def expand(self, z: np.ndarray) -> np.ndarray:
        """Free vectors (columns of ``z``, (n_free, k)) -> full (5, k) vectors (e, a, b, alpha, beta)."""
        if self.is_free:
            return z
        full = np.empty((len(GRID_KEYS), z.shape[1]))
        for i, s in enumerate(self._source):
            full[i] = self.fixed_e if s is None else z[s]
        return full

    def fold(self, grad: np.ndarray) -> np.ndarray:
        """Gradient over the full (5, k) vector -> gradient over the free coordinates (chain rule)."""
        if self.is_free:
            return grad
        out = np.zeros((len(self.free), grad.shape[1]))
        for i, s in enumerate(self._source):
            if s is not None:
                out[s] += grad[i]
        return out

    def wrap(self, evaluate: Evaluate) -> Evaluate:
        """A kernel over the free coordinates from a kernel over the full vector."""
        if self.is_free:
            return evaluate

        def constrained(rows: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            f, g = evaluate(rows, self.expand(z))
            return f, self.fold(g)

        return constrained

    def starts(self, axes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Start rows over the free coordinates: the grid product of their axes. With alpha = beta the shared
        exponent takes the values of both the alpha and the beta axes (the grid's diagonal when they agree)."""
        free_axes = [
            np.unique(np.r_[axes["alpha"], axes["beta"]])
            if k == "alpha" and self.equal_exponents
            else axes[k]
            for k in self.free
        ]
        return np.array(list(itertools.product(*free_axes)), dtype=float)


def grid_axes(init_grid: Any) -> dict[str, np.ndarray]:
    """The start values of each coordinate of ``init_grid`` ("chinchilla" or a mapping of GRID_KEYS)."""
    if isinstance(init_grid, str):
        if init_grid.strip().lower() != "chinchilla":
            raise ValueError(
                f"init_grid must be 'chinchilla' or a mapping of {list(GRID_KEYS)} to sequences, got {init_grid!r}"
            )
        init_grid = CHINCHILLA_INIT_GRID
    if not isinstance(init_grid, Mapping):
        raise ValueError(
            f"init_grid must be 'chinchilla' or a mapping of {list(GRID_KEYS)} to sequences of start values, "
            f"got {type(init_grid).__name__}"
        )
    keys = set(init_grid)
    if keys != set(GRID_KEYS):
        raise ValueError(
            f"init_grid mapping must have exactly the keys {list(GRID_KEYS)} (E = exp(e), A = exp(a), "
            f"B = exp(b)); missing {sorted(set(GRID_KEYS) - keys)}, unknown {sorted(map(str, keys - set(GRID_KEYS)))}"
        )
    axes = {}
    for key in GRID_KEYS:
        values = init_grid[key]
        if isinstance(values, (str, bytes)):
            raise ValueError(f"init_grid[{key!r}] must be a sequence of numbers, got {values!r}")
        try:
            arr = np.asarray(values, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"init_grid[{key!r}] must be a sequence of numbers, got {values!r}") from None
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError(
                f"init_grid[{key!r}] must be a non-empty sequence of finite numbers, got {values!r}"
            )
        axes[key] = arr
    return axes


def grid_starts(init_grid: Any) -> np.ndarray:
    """The unconstrained start rows (e, a, b, alpha, beta) of ``init_grid``."""
    return Constraint().starts(grid_axes(init_grid))


# --------------------------------------------------------------------------------------------------------
# The search


#: Most points the start grid (step 1) is run on: above it the grid sees a seeded subsample stratified by
#: budget (:func:`grid_rows`), and only the refinement and polish (steps 2-3) see every point. Ordinary
#: sweeps (tens to hundreds of runs) are far below it and are fitted exactly as without the limit.
MAX_GRID_POINTS = 2000


def grid_rows(strata: np.ndarray, used: np.ndarray, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of at most about ``limit`` (default MAX_GRID_POINTS) positive-weight points for the start
    grid: all of them when there are no more, else a seeded sample taking from each stratum (budget) in
    proportion to its size, at least 2 per stratum where it has them, sorted."""
    limit = MAX_GRID_POINTS if limit is None else limit
    idx = np.flatnonzero(used)
    if idx.size <= limit:
        return idx
    rng = np.random.default_rng(seed)
    labels = strata[idx]
    picked = []
    for label in np.unique(labels):
        members = idx[labels == label]
        take = min(members.size, max(2, round(limit * members.size / idx.size)))
        picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def search(
    starts: np.ndarray,
    evaluate: Evaluate,
    scale: float,
    grid_objective: tuple[Evaluate, float] | None = None,
) -> tuple[BatchResult, np.ndarray, BatchResult, np.ndarray]:
    """Steps 1 and 2 of Approach 3: every start of the grid stopping where scipy's L-BFGS-B with default
    options would, then the best starts and the best start of each distinct basin refined with tight
    tolerances. ``grid_objective``: ``(evaluate, scale)`` of a subsample of the points that step 1 runs on
    instead (many points; :func:`grid_rows`); step 2 always sees every point. Returns ``(grid, finite,
    refined, ranked)``: the grid's results, its starts with a finite objective, the refined results and
    their order, best first."""
    grid_evaluate, grid_scale = grid_objective or (evaluate, scale)
    grid = lbfgs_batch(starts, grid_evaluate, grid_stop(grid_scale))
    finite = np.flatnonzero(np.isfinite(grid.f))
    if finite.size == 0:
        raise ValueError(
            "no start of init_grid gives a finite objective; use start values near the data's scale"
        )
    order = finite[np.argsort(grid.f[finite], kind="stable")]
    picks = list(
        dict.fromkeys(
            [*order[:_N_REFINE_BEST].tolist(), *distinct(grid.x, order, _DISTINCT_START, _N_REFINE_DISTINCT)]
        )
    )
    starts_2 = grid.x[picks]
    if grid_objective is not None:  # many points: refine on the sample first, then the best few on all
        pre = lbfgs_batch(starts_2, grid_evaluate, TIGHT_STOP)
        pre_order = np.argsort(pre.f, kind="stable")
        best = [
            *pre_order[:_N_FULL_REFINE].tolist(),
            *distinct(pre.x, pre_order, DISTINCT_OPTIMUM, _N_FULL_REFINE),
        ]
        starts_2 = pre.x[list(dict.fromkeys(best))]
    refined = lbfgs_batch(starts_2, evaluate, TIGHT_STOP)
    return grid, finite, refined, np.argsort(refined.f, kind="stable")


def polish(evaluate: Evaluate, theta: np.ndarray, f: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Step 3: polish ``theta`` (objective ``f``) with scipy's L-BFGS-B, kept only if lower; returns the
    point, its objective and its gradient."""

    def single(theta: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = evaluate(np.zeros(1, dtype=int), theta[:, None])
        return float(f[0]), g[:, 0]

    polished = optimize.minimize(
        single,
        theta,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 15000, "ftol": 1e-15, "gtol": 1e-12},
    )
    if np.isfinite(polished.fun) and polished.fun < f:
        theta, f = np.asarray(polished.x, dtype=float), float(polished.fun)
    return theta, f, single(theta)[1]
