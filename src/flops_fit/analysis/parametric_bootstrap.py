"""Approach 3 bootstrap: resample the runs, refit every resample at once, and summarise the refits.

The refits run in one batch of the L-BFGS of :mod:`flops_fit.analysis.lbfgs` on the Huber kernel of
:mod:`flops_fit.analysis.huber`, warm-started from the distinct optima of the full-data fit, and keep the
fit's constraint (:class:`~flops_fit.analysis.parametric_search.Constraint`). Runs are drawn with
replacement (multinomial counts become weights), in one of two ways (``RESAMPLE_KINDS``):

- ``"budgets"``: within each compute budget, as many runs as the budget holds (a sweep's budgets are
  planned, not sampled: every resample keeps the design's span of compute, which sets how far the fit
  extrapolates). Budgets with a single run are pooled into one stratum.
- ``"points"``: from all runs at once (the bootstrap of Besiroglu et al. 2024; a resample may then hold few
  runs of the largest budget, which widens the intervals at 10x-100x beyond the data).

A resample with fewer than 5 distinct points, or a single N or D, is redrawn.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np

from flops_fit.analysis.bucketing import bucket_budgets
from flops_fit.analysis.huber import HuberLogObjective, objective_scale
from flops_fit.analysis.lbfgs import MAX_ITER, NON_FINITE, lbfgs_batch
from flops_fit.analysis.parametric_search import MIN_POINTS, PARAM_NAMES, TIGHT_STOP, Constraint

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
#: How :func:`bootstrap_refits` resamples (see the module docstring).
RESAMPLE_KINDS: tuple[str, ...] = ("budgets", "points")
#: An irreducible loss E below this fraction of the lowest loss the fit predicts on its data is reported as
#: collapsed to zero: the data do not pin E, and the exponents then carry the loss floor too.
MIN_FLOOR_FRACTION = 1e-3


def percentile_ci(draws: np.ndarray, axis: int = 0) -> tuple[Any, Any]:
    """95% percentile interval along ``axis`` (NaNs ignored); floats for 1-D input, arrays otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, said elsewhere
        lo, hi = np.nanpercentile(draws, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)], axis=axis)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def to_params(theta: np.ndarray) -> np.ndarray:
    """(e, a, b, alpha, beta) rows -> (E, A, B, alpha, beta) rows."""
    out = np.array(theta, dtype=float, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    return out


def sample_ci(samples: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """Bootstrap optima (e, a, b, alpha, beta) rows -> (E, A, B, alpha, beta) rows and the 95% intervals of
    those five and of the exponents a, b."""
    params = to_params(samples)
    draws = {name: params[:, i] for i, name in enumerate(PARAM_NAMES)}
    with np.errstate(invalid="ignore", divide="ignore"):
        draws["a"] = params[:, 4] / (params[:, 3] + params[:, 4])
        draws["b"] = params[:, 3] / (params[:, 3] + params[:, 4])
    return params, {name: percentile_ci(v) for name, v in draws.items()}


def collapsed(params: np.ndarray, n_max: float, d_max: float) -> np.ndarray:
    """Which (E, A, B, alpha, beta) rows have E below MIN_FLOOR_FRACTION of their lowest predicted loss on the
    data (at the largest N and D fitted): the floor collapsed to about 0."""
    E, A, B, alpha, beta = np.atleast_2d(params).T
    with np.errstate(over="ignore", invalid="ignore"):
        lowest = E + A * n_max**-alpha + B * d_max**-beta
        return ~(E >= MIN_FLOOR_FRACTION * lowest)


# --------------------------------------------------------------------------------------------------------
# Resampling and refitting


#: Resamples x points above which the bootstrap announces itself (1e5 points x 200 resamples: about 80 s).
LONG_BOOTSTRAP = 1_000_000


def resample_counts(
    w: np.ndarray,
    n_boot: int,
    log_n: np.ndarray,
    log_d: np.ndarray,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """(n_boot, n) multinomial resampling counts of the positive-weight points: drawn with replacement from
    all of them, or with ``strata`` (a label per point) within each stratum, as many as it holds.

    A resample with fewer than 5 distinct points, or a single distinct N or D, cannot be fitted; such
    resamples are redrawn (from the same seeded generator, so the result stays deterministic).
    """
    used = w > 0
    n_used = int(used.sum())
    probs = used / n_used
    groups = [] if strata is None else [np.flatnonzero(used & (strata == s)) for s in np.unique(strata[used])]
    # Each point's index among the distinct N and D values: a resample has two or more distinct values when
    # the smallest and largest index of its points differ (no n x n one-hot map: 1e5 points would need 75 GiB).
    codes = [np.unique(v, return_inverse=True)[1].reshape(-1) for v in (log_n, log_d)]

    def draw(size: int) -> np.ndarray:
        if strata is None:
            return rng.multinomial(n_used, probs, size=size)
        out = np.zeros((size, w.size))
        for idx in groups:
            out[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=size)
        return out

    def unusable(counts: np.ndarray) -> np.ndarray:
        present = counts > 0
        bad = present.sum(axis=1) < MIN_POINTS
        for code in codes:
            lowest = np.where(present, code, np.iinfo(np.int64).max).min(axis=1)
            bad |= lowest == np.where(present, code, -1).max(axis=1)
        return bad

    counts = draw(n_boot).astype(float)
    for _ in range(100):
        bad = np.flatnonzero(unusable(counts))
        if bad.size == 0:
            return counts
        counts[bad] = draw(bad.size)
    raise ValueError(
        "bootstrap resamples keep having fewer than 5 distinct points or a single N or D; "
        "the design is too small to bootstrap: add runs or fit without bootstrap"
    )


def budget_strata(budgets: np.ndarray, used: np.ndarray, rtol: float) -> np.ndarray | None:
    """A stratum label per point: its budget bucket (budgets in FLOPs, merged within ``rtol``), with every
    bucket of fewer than 2 positive-weight points pooled into one stratum (-1): a lone run cannot be resampled
    within its budget. None when that leaves a single stratum (resampling is then over all points)."""
    labels = bucket_budgets(budgets, rtol=rtol)[0]
    sizes = np.bincount(labels[used], minlength=labels.max() + 1)
    strata = np.where(sizes[labels] >= 2, labels, -1)
    return None if np.unique(strata[used]).size < 2 else strata


def refit_resamples(
    objective: HuberLogObjective,
    weights: np.ndarray,
    warm: np.ndarray,
    constraint: Constraint,
    huber_delta: float,
) -> np.ndarray:
    """Refit every row of the weight table ``weights`` (n_boot, n) at once from each warm start (free
    coordinates, (n_warm, n_free)); return the best full (e, a, b, alpha, beta) row of each resample."""
    t_start = time.perf_counter()
    n_boot = weights.shape[0]
    table = weights / objective_scale(weights, huber_delta)  # each refit's objective as in the full fit
    n_warm = warm.shape[0]  # row i starts from warm[i // n_boot] on resample i % n_boot

    def evaluate(rows: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return objective(theta, table, rows % n_boot)

    x0 = np.repeat(warm, n_boot, axis=0)
    res = lbfgs_batch(x0, constraint.wrap(evaluate), TIGHT_STOP)
    f = res.f.reshape(n_warm, n_boot)
    pick = np.argmin(f, axis=0) * n_boot + np.arange(n_boot)
    not_done = int(np.isin(res.status[pick], (MAX_ITER, NON_FINITE)).sum())
    if not_done:
        warnings.warn(
            f"{not_done} of {n_boot} bootstrap refits did not converge; their end points are kept",
            UserWarning,
            stacklevel=5,
        )
    logger.info(
        "Approach 3 bootstrap: %d resamples x %d warm starts, %.1f evaluations per refit, %.2f s",
        n_boot,
        n_warm,
        res.n_eval / x0.shape[0],
        time.perf_counter() - t_start,
    )
    return constraint.expand(res.x[pick].T).T


def bootstrap_refits(
    objective: HuberLogObjective,
    w: np.ndarray,
    huber_delta: float,
    logs: tuple[np.ndarray, np.ndarray],
    warm: np.ndarray,
    n_boot: int,
    seed: int,
    constraint: Constraint,
    strata: np.ndarray | None,
) -> np.ndarray:
    """Refit ``n_boot`` resamples of the points (seeded; within each stratum when ``strata`` is given) from
    each warm start (free coordinates); return the best full (e, a, b, alpha, beta) of each. ``logs``: log N
    and log D per point."""
    if w.size * n_boot > LONG_BOOTSTRAP:  # long by nature: say so before it starts
        logger.info(
            "Approach 3 bootstrap: %d resamples of %d points (about 40 s per 1e7 point-resamples on one CPU core) ...",
            n_boot,
            w.size,
        )
    counts = resample_counts(w, n_boot, *logs, np.random.default_rng(seed), strata)
    return refit_resamples(objective, counts * w, warm, constraint, huber_delta)
