"""Approach 2 of Hoffmann et al. (2022): IsoFLOP profiles.

For every compute budget, loss is fitted as a parabola in log N near the observed minimum; the vertex gives
the budget's optimal model size N*, tokens D* and loss L*. Power laws N_opt = k C^a, D_opt = k' C^b and
L_opt = E + k'' C^c are then fitted across budgets. Budgets whose minimum is not bracketed by the sampled
sizes (edge), with too few sizes, or with a flat or concave profile are flagged and left out of the laws.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.fit import LawsFit, fmt_ci, with_sample_ci
from flops_fit.analysis.outliers import exclude_outliers
from flops_fit.analysis.power_law import PowerLawFit, _ols, fit_power_law, fit_power_law_batch
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, runs_from_arrays
from flops_fit.core.validate import (
    canonical_order,
    check_bootstrap,
    check_budget_rtol,
    check_flag,
    check_ids,
    check_seed,
    positive_arrays,
)

logger = logging.getLogger(__name__)

#: Fewer sizes than this in a budget cannot define a parabola.
MIN_POINTS_PER_BUDGET = 3
#: A profile whose fitted loss varies by less than this fraction across the sampled sizes is flat.
FLAT_RELATIVE_DEPTH = 1e-3
#: Summaries and warnings list flagged budgets one by one up to this many.
MAX_FLAGS_LISTED = 8
#: Only sizes within this factor of the lowest-loss size (either side) enter a budget's parabola.
PROFILE_WINDOW = 8.0
#: The L_opt law gets an irreducible-loss offset when at least this many budgets are usable.
MIN_BUDGETS_FOR_OFFSET = 4

FLAG_EDGE_SMALL = "edge_small"  # minimum at the smallest sampled size: extend the sweep to smaller models
FLAG_EDGE_LARGE = "edge_large"  # minimum at the largest sampled size: extend the sweep to larger models
FLAG_TOO_FEW = "too_few_points"
FLAG_FLAT = "flat"
FLAG_CONCAVE = "no_curvature"


@dataclass(frozen=True)
class ProfileFit:
    """The parabola loss = c2 x^2 + c1 x + c0 with x = ln N, fitted on sizes in [n_lo, n_hi]."""

    coef: tuple[float, float, float]
    n_lo: float
    n_hi: float
    optimal_params: float
    optimal_loss: float
    flags: tuple[str, ...]


def fit_profile(num_params: np.ndarray, loss: np.ndarray, window: float = PROFILE_WINDOW) -> ProfileFit:
    """Fit one IsoFLOP profile (one budget): vertex of a parabola of loss in ln N near the observed minimum.

    A parabola is a local approximation of the profile, which is asymmetric far from its minimum, so only
    sizes within a factor ``window`` of the lowest-loss size enter the fit (at least its 3 nearest sizes).
    If the parabola is not convex, the size farthest from the minimum is dropped until it is (3 sizes at
    least). The minimum is flagged ``edge_small`` / ``edge_large`` when the lowest observed loss or the
    vertex sits at or beyond the smallest / largest sampled size: the sweep does not bracket the optimum.
    """
    order = np.lexsort((loss, num_params))  # by size, ties by loss: the result does not depend on row order
    n, l = np.asarray(num_params, float)[order], np.asarray(loss, float)[order]
    x = np.log(n)
    flags: list[str] = []
    i_min = int(np.argmin(l))
    if np.unique(x).size < MIN_POINTS_PER_BUDGET:
        return ProfileFit((math.nan,) * 3, n[0], n[-1], n[i_min], l[i_min], (FLAG_TOO_FEW,))
    near = np.abs(x - x[i_min]) <= math.log(window) + 1e-12
    nearest3 = np.sort(np.argsort(np.abs(x - x[i_min]), kind="stable")[:MIN_POINTS_PER_BUDGET])
    lo = min(int(np.flatnonzero(near)[0]), int(nearest3[0]))
    hi = max(int(np.flatnonzero(near)[-1]), int(nearest3[-1])) + 1  # window [lo, hi)
    coef = None
    while True:
        xs, ls = x[lo:hi], l[lo:hi]
        if np.unique(xs).size >= 3:
            c = np.polyfit(xs - x[i_min], ls, 2)
            if c[0] > 0:
                coef = c
                break
        if hi - lo <= 3:
            break
        # drop the end farther from the observed minimum
        if x[i_min] - x[lo] >= x[hi - 1] - x[i_min]:
            lo += 1
        else:
            hi -= 1
    if coef is None:
        flags.append(FLAG_CONCAVE)
        vertex, l_star = x[i_min], l[i_min]
        coef_abs = (math.nan,) * 3
    else:
        c2, c1, c0 = coef
        shift = x[i_min]
        vertex = shift - c1 / (2 * c2)
        l_star = c0 - c1**2 / (4 * c2)
        # coefficients in absolute x = ln N
        coef_abs = (c2, c1 - 2 * c2 * shift, c0 - c1 * shift + c2 * shift**2)
        fitted = np.polyval(coef, x[lo:hi] - shift)
        if (fitted.max() - l_star) / abs(l_star) < FLAT_RELATIVE_DEPTH:
            flags.append(FLAG_FLAT)
    if i_min == 0 or vertex <= x[0]:
        flags.append(FLAG_EDGE_SMALL)
    elif i_min == n.size - 1 or vertex >= x[-1]:
        flags.append(FLAG_EDGE_LARGE)
    if not x[0] <= vertex <= x[-1]:
        # never extrapolate a parabola: report the best observed run (the budget is flagged anyway)
        vertex, l_star = x[i_min], l[i_min]
    return ProfileFit(
        coef=tuple(float(v) for v in coef_abs),
        n_lo=float(n[lo]),
        n_hi=float(n[hi - 1]),
        optimal_params=float(math.exp(vertex)),
        optimal_loss=float(l_star),
        flags=tuple(flags),
    )


def _tokens_at(n: np.ndarray, d: np.ndarray, n_star: float) -> float:
    """D at N = n_star along this budget's (N, D) relation, interpolated in log-log (exact for C = k N D)."""
    if np.unique(n).size < 2:
        return float(np.exp(np.mean(np.log(d)) - (math.log(n_star) - np.mean(np.log(n)))))
    slope, icpt = np.polyfit(np.log(n), np.log(d), 1)
    return float(math.exp(icpt + slope * math.log(n_star)))


def _profile_minima(
    n: np.ndarray, d: np.ndarray, l: np.ndarray, counts: np.ndarray, window: float = PROFILE_WINDOW
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`fit_profile` and :func:`_tokens_at` for many resamples of one budget's runs at once.

    ``n``, ``d``, ``l`` (m,): the budget's runs; ``counts`` (R, m): how often each run is drawn in each
    resample. Row r reproduces ``fit_profile`` on the runs repeated ``counts[r]`` times, the same rules step
    by step on positions in that sorted, repeated list (run j fills positions [start_j, end_j)).

    Returns (used, N*, D*, L*), each (R,): ``used`` is False where fit_profile would flag the budget.
    """
    order = np.lexsort((l, n))
    n, d, l, cnt = n[order], d[order], l[order], counts[:, order]
    x = np.log(n)
    rows, m = cnt.shape
    end = np.cumsum(cnt, axis=1)
    start = end - cnt
    size = end[:, -1]
    present = cnt > 0
    group_start = np.flatnonzero(np.r_[True, np.diff(x) > 0])  # runs sharing a size count once

    def n_sizes(mask: np.ndarray) -> np.ndarray:
        return np.logical_or.reduceat(mask, group_start, axis=1).sum(1)

    def x_at(pos: np.ndarray) -> np.ndarray:  # size of the run at each row's position ``pos``
        return x[np.minimum((end <= pos[:, None]).sum(1), m - 1)]

    def in_window() -> np.ndarray:  # how many of each run's copies lie in each row's window [lo, hi)
        return np.clip(np.minimum(hi[:, None], end) - np.maximum(lo[:, None], start), 0, None)

    enough = n_sizes(present) >= MIN_POINTS_PER_BUDGET
    j_min = np.argmin(np.where(present, l, np.inf), axis=1)  # first run with the lowest loss
    x_min, l_min, i_min = x[j_min], l[j_min], start[np.arange(rows), j_min]
    dist = np.abs(x[None, :] - x_min[:, None])
    # the window: sizes within a factor ``window`` of the minimum, and at least the 3 nearest positions
    near = present & (dist <= math.log(window) + 1e-12)
    lo = np.where(near, start, size[:, None]).min(1)
    hi = np.where(near, end, 0).max(1)
    by_dist = np.argsort(np.where(present, dist, np.inf), axis=1, kind="stable")
    c_sorted = np.take_along_axis(cnt, by_dist, axis=1)
    before = np.cumsum(c_sorted, axis=1) - c_sorted
    take = np.clip(MIN_POINTS_PER_BUDGET - before, 0, c_sorted)
    s_sorted = np.take_along_axis(start, by_dist, axis=1)
    lo = np.minimum(lo, np.where(take > 0, s_sorted, size[:, None]).min(1))
    hi = np.maximum(hi, np.where(take > 0, s_sorted + take, 0).max(1))
    # drop the end farther from the minimum until the parabola is convex (fit_profile's loop, all rows)
    coef = np.full((rows, 3), np.nan)
    active = enough.copy()
    while active.any():
        in_win = in_window()
        fits = active & (n_sizes(in_win > 0) >= MIN_POINTS_PER_BUDGET)
        if fits.any():
            c = _quadratic_fit(x[None, :] - x_min[fits, None], l - l_min[fits, None], in_win[fits])
            convex = c[:, 0] > 0
            coef[np.flatnonzero(fits)[convex]] = c[convex]
            active[np.flatnonzero(fits)[convex]] = False
        active &= hi - lo > MIN_POINTS_PER_BUDGET
        left = x_min - x_at(lo) >= x_at(hi - 1) - x_min
        lo = np.where(active & left, lo + 1, lo)
        hi = np.where(active & ~left, hi - 1, hi)
    c2, c1, c0 = coef.T
    has = np.isfinite(c2)
    in_win = in_window()
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = x_min - c1 / (2 * c2)
        l_star = l_min + c0 - c1**2 / (4 * c2)
        dx = x[None, :] - x_min[:, None]
        fitted = np.where(in_win > 0, c2[:, None] * dx**2 + c1[:, None] * dx + c0[:, None], -np.inf)
        flat = (l_min + fitted.max(1) - l_star) / np.abs(l_star) < FLAT_RELATIVE_DEPTH
    x_lo, x_hi = x_at(np.zeros(rows, dtype=int)), x_at(size - 1)
    edge = (i_min == 0) | (vertex <= x_lo) | (i_min == size - 1) | (vertex >= x_hi)
    used = enough & has & ~flat & ~edge
    icpt, slope = _ols(np.log(n), np.log(d), cnt.astype(float))
    vertex = np.where(used, vertex, np.nan)
    return used, np.exp(vertex), np.exp(icpt + slope * vertex), np.where(used, l_star, np.nan)


def _quadratic_fit(dx: np.ndarray, dl: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabolas dl = c2 dx^2 + c1 dx + c0, one per row: (R, 3) rows (c2, c1, c0)."""
    powers = np.stack([dx**2, dx, np.ones_like(dx)], axis=-1) * np.sqrt(w)[..., None]  # (R, m, 3)
    q, r = np.linalg.qr(powers)
    rhs = np.einsum("rmk,rm->rk", q, np.broadcast_to(dl, w.shape) * np.sqrt(w))
    return np.linalg.solve(r, rhs[..., None])[..., 0]


def _grouped(C: np.ndarray, labels: np.ndarray | None, budget_rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Buckets numbered 0.. in increasing budget, and their geometric-mean budgets (FLOPs): from
    :func:`bucket_budgets`, or from ``labels`` given for these runs by a grouping of a larger set."""
    if labels is None:
        return bucket_budgets(C, rtol=budget_rtol)
    _, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(-1)
    return dense, np.exp(np.bincount(dense, weights=np.log(C)) / np.bincount(dense))


def budget_minima(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    C: np.ndarray,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
    labels: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per budget bucket: its optimum and flags (see :func:`fit_profile`). ``labels``: each run's
    bucket when the buckets were formed before some runs were dropped (see :func:`fit_isoflop`)."""
    labels, centers = _grouped(C, labels, budget_rtol)
    rows = []
    for k, center in enumerate(centers):
        m = labels == k
        prof = fit_profile(N[m], L[m])
        rows.append(
            {
                "compute_budget": float(center),
                "optimal_params": prof.optimal_params,
                "optimal_tokens": _tokens_at(N[m], D[m], prof.optimal_params),
                "optimal_loss": prof.optimal_loss,
                "n_points": int(m.sum()),
                "flags": ",".join(prof.flags),
                "used": not prof.flags,
                "coef": prof.coef,
                "fit_n_lo": prof.n_lo,
                "fit_n_hi": prof.n_hi,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class IsoFLOPFit(LawsFit):
    """Result of Approach 2. ``a``, ``b``: exponents of N_opt ∝ C^a and D_opt ∝ C^b."""

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    minima: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget_rtol: float = DEFAULT_BUDGET_RTOL
    samples: np.ndarray | None = None  # bootstrap draws: columns ln k_N, a, ln k_D, b, L_opt(C) params

    approach = "isoflop"

    def to_dict(self) -> dict[str, Any]:
        minima = self.minima.copy()
        minima["coef"] = [list(c) for c in minima["coef"]]
        return {
            "approach": self.approach,
            "a": self.a,
            "b": self.b,
            "n_opt_fit": self.n_opt_fit.to_dict(),
            "d_opt_fit": self.d_opt_fit.to_dict(),
            "l_opt_fit": self.l_opt_fit.to_dict(),
            "minima": minima.to_dict(orient="records"),
            "excluded": self.excluded.drop(columns=[c for c in ("curve",) if c in self.excluded]).to_dict(
                orient="records"
            ),
            "budget_rtol": self.budget_rtol,
            "samples": None if self.samples is None else self.samples.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IsoFLOPFit:
        minima = pd.DataFrame.from_records(d.get("minima", []))
        if "coef" in minima:
            minima["coef"] = [tuple(c) for c in minima["coef"]]
        samples = d.get("samples")
        return cls(
            n_opt_fit=PowerLawFit.from_dict(d["n_opt_fit"]),
            d_opt_fit=PowerLawFit.from_dict(d["d_opt_fit"]),
            l_opt_fit=PowerLawFit.from_dict(d["l_opt_fit"]),
            minima=minima,
            excluded=pd.DataFrame.from_records(d.get("excluded", [])),
            budget_rtol=float(d.get("budget_rtol", DEFAULT_BUDGET_RTOL)),
            samples=None if samples is None else np.asarray(samples, dtype=float),
        )

    def summary(self) -> str:
        lines = [
            "Approach 2 (IsoFLOP profiles)",
            f"  budgets used: {int(self.minima['used'].sum())} of {len(self.minima)}",
            f"  N_opt: {self.n_opt_fit}",
            f"  D_opt: {self.d_opt_fit}",
            f"  L_opt: {self.l_opt_fit}",
            f"  a = {self.a:.4f}{fmt_ci(self.a_ci)}   b = {self.b:.4f}{fmt_ci(self.b_ci)}",
        ]
        lines += [f"  {line}" for line in describe_flagged(self.minima)]
        if len(self.excluded):
            lines.append(f"  excluded runs: {self.excluded['outlier_reason'].value_counts().to_dict()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"IsoFLOPFit(a={self.a:.4f}, b={self.b:.4f}, budgets={int(self.minima['used'].sum())})"


def describe_flagged(minima: pd.DataFrame) -> list[str]:
    """One line per flagged budget, or a count per flag when there are more than ``MAX_FLAGS_LISTED``."""
    flagged = minima[~minima["used"].astype(bool)]
    if len(flagged) <= MAX_FLAGS_LISTED:
        return [
            f"budget C={r.compute_budget:.3g}: {r.flags} ({r.n_points} runs)" for r in flagged.itertuples()
        ]
    counts = flagged["flags"].str.split(",").explode().value_counts().to_dict()
    return [f"{len(flagged)} flagged budgets by flag: {counts} (see .minima)"]


def _laws(
    minima: pd.DataFrame, bootstrap: int = 0, seed: int = 0
) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
    used = minima[minima["used"]]
    c = used["compute_budget"].to_numpy()
    n_fit = fit_power_law(c, used["optimal_params"].to_numpy(), bootstrap=bootstrap, seed=seed)
    d_fit = fit_power_law(c, used["optimal_tokens"].to_numpy(), bootstrap=bootstrap, seed=seed)
    l = used["optimal_loss"].to_numpy()
    if len(used) >= MIN_BUDGETS_FOR_OFFSET:
        l_fit = fit_power_law(c, l, offset=True, bootstrap=bootstrap, seed=seed)
    else:
        l_fit = fit_power_law(c, l, bootstrap=bootstrap, seed=seed)
    return n_fit, d_fit, l_fit


def fit_isoflop(
    N: Any,
    D: Any,
    L: Any,
    C: Any = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    exclude: bool = True,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
    ids: Sequence[str] | None = None,
) -> IsoFLOPFit:
    """Approach 2: per-budget parabola minima, then power laws across budgets.

    Args:
        N, D, L: parameters, tokens and final loss of each run.
        C: each run's compute budget in FLOPs (default 6 N D). Budgets within ``budget_rtol`` share a bucket
            (:func:`flops_fit.analysis.bucketing.bucket_budgets`).
        bootstrap: resamples (runs drawn with replacement within each budget) for 95% percentile intervals;
            0 gives regression intervals that ignore the uncertainty of each minimum.
        exclude: drop runs flagged by :func:`flops_fit.analysis.outliers.detect_outliers` (reported in
            ``excluded``).
        ids: a name for each run, used when excluded runs are reported (default ``run-0``, ``run-1``, ...).
    """
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    budget_rtol, exclude = check_budget_rtol(budget_rtol), check_flag("exclude", exclude)
    if C is None:
        n, d, l = positive_arrays(1, N=N, D=D, L=L)
        c = FLOPS_PER_PARAM_TOKEN * n * d
    else:
        n, d, l, c = positive_arrays(1, N=N, D=D, L=L, C=C)
    names = check_ids(ids, n.size)
    excluded = pd.DataFrame()
    # Budgets are grouped over every run, as outlier detection and the plots group them: dropping an
    # outlier (say the smallest run of its bucket) must not regroup the rest.
    labels = bucket_budgets(c, rtol=budget_rtol)[0]
    if exclude:
        kept, excluded = exclude_outliers(
            runs_from_arrays(n, d, l, c, ids=names).assign(budget_bucket=labels),
            what="fit_isoflop",
            budget_rtol=budget_rtol,
        )
        n, d, l, c, labels = (
            kept[k].to_numpy()
            for k in ("num_params", "num_tokens", "final_loss", "compute_budget", "budget_bucket")
        )
    order = canonical_order(c, n, d, l)
    n, d, l, c, labels = n[order], d[order], l[order], c[order], labels[order]
    minima = budget_minima(n, d, l, c, budget_rtol, labels=labels)
    if len(minima) < 2:
        raise ValueError(
            f"Approach 2 needs runs at 2 or more compute budgets; all {n.size} runs fall in one budget bucket "
            f"(C ≈ {minima['compute_budget'].iloc[0]:.3g} FLOPs, budgets within {budget_rtol:.0%} are merged). "
            "Train the sweep at several budgets."
        )
    flagged = minima[~minima["used"]]
    if len(flagged):
        detail = "; ".join(describe_flagged(minima))
        warnings.warn(
            f"fit_isoflop: {len(flagged)} budget(s) left out of the power laws ({detail}). "
            "edge_small/edge_large: extend the sweep to smaller/larger models; too_few_points: train at least "
            f"{MIN_POINTS_PER_BUDGET} sizes; flat/no_curvature: widen the size span.",
            stacklevel=2,
        )
    n_used = int(minima["used"].sum())
    if n_used < 2:
        raise ValueError(
            f"Approach 2 needs at least 2 budgets with a bracketed minimum, got {n_used} of {len(minima)} "
            f"({'; '.join(describe_flagged(minima))}). Re-plan the sweep so each budget's sizes straddle the optimum."
        )
    n_fit, d_fit, l_fit = _laws(minima)
    samples = None
    if bootstrap > 0:
        samples = _bootstrap(n, d, l, c, minima, labels, int(bootstrap), seed)
        n_fit, d_fit, l_fit = (
            with_sample_ci(f, samples, cols)
            for f, cols in ((n_fit, (0, 1, None)), (d_fit, (2, 3, None)), (l_fit, (5, 6, 4)))
        )
    return IsoFLOPFit(n_fit, d_fit, l_fit, minima, excluded, budget_rtol, samples)


def _bootstrap(
    n: np.ndarray,
    d: np.ndarray,
    l: np.ndarray,
    c: np.ndarray,
    minima: pd.DataFrame,
    labels: np.ndarray,
    reps: int,
    seed: int,
) -> np.ndarray:
    """Resample runs within each budget bucket, redo minima and laws; rows: ln k_N, a, ln k_D, b, E, ln k_L, c_L."""
    rng = np.random.default_rng(seed)
    labels, centers = _grouped(c, labels, 0.0)
    shape = (reps, len(centers))
    used = np.zeros(shape, dtype=bool)
    n_star, d_star, l_star = (np.full(shape, np.nan) for _ in range(3))
    for k in range(len(centers)):
        m = np.flatnonzero(labels == k)
        counts = rng.multinomial(m.size, np.full(m.size, 1.0 / m.size), size=reps)
        used[:, k], n_star[:, k], d_star[:, k], l_star[:, k] = _profile_minima(n[m], d[m], l[m], counts)
    w = used.astype(float)
    n_law = fit_power_law_batch(centers, n_star, w)
    d_law = fit_power_law_batch(centers, d_star, w)
    # the L_opt law gets its offset where the full fit had one and the resample keeps 3 or more budgets
    use_offset = bool(minima["used"].sum() >= MIN_BUDGETS_FOR_OFFSET)
    l_law = fit_power_law_batch(centers, l_star, w, offset=use_offset & (used.sum(1) >= 3))
    out = np.concatenate([n_law[:, 1:], d_law[:, 1:], l_law], axis=1)
    out[used.sum(1) < 2] = np.nan
    return out[np.isfinite(out[:, 1])]
