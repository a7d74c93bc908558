"""Approach 2 of Hoffmann et al. (2022): IsoFLOP profiles.

For every compute budget, loss is fitted as a parabola in log N near the observed minimum; the vertex gives
the budget's optimal model size N*, tokens D* and loss L*. Power laws N_opt = k C^a, D_opt = k' C^b and
L_opt = E + k'' C^c are then fitted across budgets. Budgets whose minimum is not bracketed by the sampled
sizes (edge), with too few sizes, or with a flat or concave profile are flagged and left out of the laws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.fit import LawsFit, fmt_ci, with_sample_ci
from flops_fit.analysis.isoflop_intervals import LawInputs, parametric_draws
from flops_fit.analysis.outliers import exclude_outliers
from flops_fit.analysis.power_law import PowerLawFit, _ols, fit_power_law, fit_power_law_batch
from flops_fit.analysis.profiles import (
    DEEP_VERTEX_FRACTION,
    FLAG_CONCAVE,
    FLAG_DEEP,
    FLAG_EDGE_LARGE,
    FLAG_EDGE_SMALL,
    FLAG_FLAT,
    FLAG_TOO_FEW,
    FLAT_RELATIVE_DEPTH,
    MIN_POINTS_PER_BUDGET,
    PROFILE_MODELS,
    VertexModel,
    fit_shared_profiles,
    parabola_model,
)
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, runs_from_arrays
from flops_fit.core.validate import (
    Options,
    canonical_order,
    check,
    check_bootstrap,
    check_budget_rtol,
    check_flag,
    check_ids,
    check_seed,
    positive_arrays,
)

#: Summaries and warnings list flagged budgets one by one up to this many.
MAX_FLAGS_LISTED = 8
#: Only sizes within this factor of the lowest-loss size (either side) enter a budget's parabola.
PROFILE_WINDOW = 8.0
#: The L_opt law gets an irreducible-loss offset when at least this many budgets are usable.
MIN_BUDGETS_FOR_OFFSET = 4
#: How ``bootstrap=B`` draws intervals: from the profiles' noise and the laws' lack of fit (default; see
#: :mod:`flops_fit.analysis.isoflop_intervals`), or by resampling runs within budgets (release 0.1.0).
INTERVAL_METHODS = ("parametric", "resample")
#: Budgets the laws need for an uncertainty estimate: through 2 points a power law is exact.
MIN_BUDGETS_FOR_INTERVALS = 3


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
    vertex sits at or beyond the smallest / largest sampled size: the sweep does not bracket the optimum;
    ``deep_vertex`` when the vertex's loss is more than ``DEEP_VERTEX_FRACTION`` (10%) below the lowest
    observed loss: no run supports such a minimum.
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
    if coef is not None and l[i_min] - l_star > DEEP_VERTEX_FRACTION * l[i_min]:
        flags.append(FLAG_DEEP)  # a vertex far below every run: the parabola does not describe the profile
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
    deep = l_min - l_star > DEEP_VERTEX_FRACTION * l_min
    used = enough & has & ~flat & ~edge & ~deep
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
    profile: str = "parabola",
) -> pd.DataFrame:
    """One row per budget bucket: its optimum and flags (see :func:`fit_profile`). ``labels``: each run's
    bucket when the buckets were formed before some runs were dropped (see :func:`fit_isoflop`);
    ``profile``: the profile model (:data:`flops_fit.analysis.profiles.PROFILE_MODELS`)."""
    return _minima(N, D, L, C, budget_rtol, labels, profile)[0]


def _minima(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    C: np.ndarray,
    budget_rtol: float,
    labels: np.ndarray | None,
    profile: str,
) -> tuple[pd.DataFrame, VertexModel | None, tuple[float, float] | None]:
    """:func:`budget_minima`, the used budgets' :class:`VertexModel` (None without a used budget) and the
    shared exponents (None for parabolas)."""
    labels, centers = _grouped(C, labels, budget_rtol)
    masks = [labels == k for k in range(len(centers))]
    rows = []
    if profile == "shared":
        shared = fit_shared_profiles([(N[m], L[m]) for m in masks])
        fits = [(p.optimal_params, p.optimal_loss, p.flags, p.taylor) for p in shared.profiles]
        spans = [(float(N[m].min()), float(N[m].max())) for m in masks]
    else:
        profs = [fit_profile(N[m], L[m]) for m in masks]
        fits = [(p.optimal_params, p.optimal_loss, p.flags, p.coef) for p in profs]
        spans = [(p.n_lo, p.n_hi) for p in profs]
    for k, (m, (n_star, l_star, flags, coef)) in enumerate(zip(masks, fits, strict=True)):
        rows.append(
            {
                "compute_budget": float(centers[k]),
                "optimal_params": n_star,
                "optimal_tokens": _tokens_at(N[m], D[m], n_star),
                "optimal_loss": l_star,
                "n_points": int(m.sum()),
                "flags": ",".join(flags),
                "used": not flags,
                "coef": coef,
                "fit_n_lo": spans[k][0],
                "fit_n_hi": spans[k][1],
            }
        )
    minima = pd.DataFrame(rows)
    if profile == "shared":
        minima["profile_coef"] = [p.coef for p in shared.profiles]
        return minima, shared.model, (shared.alpha, shared.beta)
    used = [k for k in range(len(centers)) if not fits[k][2]]
    windows = []
    for k in used:
        m = masks[k] & (N >= spans[k][0]) & (N <= spans[k][1])
        windows.append((np.log(N[m]), L[m]))
    ranges = [(math.log(N[masks[k]].min()), math.log(N[masks[k]].max())) for k in used]
    model = parabola_model(used, windows, [fits[k][3] for k in used], ranges) if used else None
    return minima, model, None


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
    profile: str = "parabola"  # the profile model: "parabola" or "shared" (PROFILE_MODELS)
    profile_exponents: tuple[float, float] | None = None  # (alpha, beta) of the shared profiles
    interval: str = "regression"  # how the intervals were made: regression, parametric, resample or none
    noise_sd: float | None = None  # pooled relative loss noise of the profiles (parametric intervals)
    scatter_sd: float | None = None  # scatter of ln N* about the N_opt law beyond that noise (parametric)

    approach = "isoflop"

    def to_dict(self) -> dict[str, Any]:
        minima = self.minima.copy()
        for col in ("coef", "profile_coef"):
            if col in minima:
                minima[col] = [list(c) for c in minima[col]]
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
            "profile": self.profile,
            "profile_exponents": None if self.profile_exponents is None else list(self.profile_exponents),
            "interval": self.interval,
            "noise_sd": self.noise_sd,
            "scatter_sd": self.scatter_sd,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IsoFLOPFit:
        minima = pd.DataFrame.from_records(d.get("minima", []))
        for col in ("coef", "profile_coef"):
            if col in minima:
                minima[col] = [tuple(c) for c in minima[col]]
        samples = d.get("samples")
        exponents = d.get("profile_exponents")
        # dicts written before the interval field: a bootstrap then meant resampling runs within budgets
        interval = d.get("interval", "resample" if samples is not None else "regression")
        return cls(
            n_opt_fit=PowerLawFit.from_dict(d["n_opt_fit"]),
            d_opt_fit=PowerLawFit.from_dict(d["d_opt_fit"]),
            l_opt_fit=PowerLawFit.from_dict(d["l_opt_fit"]),
            minima=minima,
            excluded=pd.DataFrame.from_records(d.get("excluded", [])),
            budget_rtol=float(d.get("budget_rtol", DEFAULT_BUDGET_RTOL)),
            samples=None if samples is None else np.asarray(samples, dtype=float),
            profile=str(d.get("profile", "parabola")),
            profile_exponents=None if exponents is None else (float(exponents[0]), float(exponents[1])),
            interval=str(interval),
            noise_sd=_optional_float(d.get("noise_sd")),
            scatter_sd=_optional_float(d.get("scatter_sd")),
        )

    def summary(self) -> str:
        lines = [
            "Approach 2 (IsoFLOP profiles)",
            f"  profile model: {self._profile_text()}",
            f"  budgets used: {int(self.minima['used'].sum())} of {len(self.minima)}",
            f"  N_opt: {self.n_opt_fit}",
            f"  D_opt: {self.d_opt_fit}",
            f"  L_opt: {self.l_opt_fit}",
            f"  a = {self.a:.4f}{fmt_ci(self.a_ci)}   b = {self.b:.4f}{fmt_ci(self.b_ci)}",
        ]
        lines.append(f"  intervals: {self._interval_text()}")
        lines += [f"  {line}" for line in describe_flagged(self.minima)]
        if len(self.excluded):
            lines.append(f"  excluded runs: {self.excluded['outlier_reason'].value_counts().to_dict()}")
        return "\n".join(lines)

    def _profile_text(self) -> str:
        if self.profile == "shared" and self.profile_exponents is not None:
            alpha, beta = self.profile_exponents
            return (
                f"shared exponents, L_C(N) = E_C + a_C N^-alpha + b_C N^beta with alpha = {alpha:.4g}, "
                f"beta = {beta:.4g} (variable projection)"
            )
        return "parabola in ln N near each budget's lowest loss (Hoffmann et al. 2022)"

    def _interval_text(self) -> str:
        if self.interval == "parametric":
            extra = f"; relative loss noise {self.noise_sd:.3g}" if self.noise_sd is not None else ""
            if self.scatter_sd:
                extra += f"; extra scatter of ln N* about the law {self.scatter_sd:.3g}"
            n = 0 if self.samples is None else len(self.samples)
            return f"95%, parametric bootstrap of the profiles and the laws' lack of fit ({n} draws{extra})"
        if self.interval == "resample":
            return "95%, runs resampled within budgets (percentile bootstrap)"
        if self.interval == "regression":
            return "95%, regression on the minima (ignores each minimum's own uncertainty; bootstrap=B calibrates)"
        return "none (no uncertainty estimate: see the fit's warning)"

    def __repr__(self) -> str:
        return f"IsoFLOPFit(a={self.a:.4f}, b={self.b:.4f}, budgets={int(self.minima['used'].sum())})"


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


def describe_flagged(minima: pd.DataFrame) -> list[str]:
    """One line per flagged budget, or a count per flag when there are more than ``MAX_FLAGS_LISTED``."""
    flagged = minima[~minima["used"].astype(bool)]
    if len(flagged) <= MAX_FLAGS_LISTED:
        return [
            f"budget C={r.compute_budget:.3g}: {r.flags} ({r.n_points} runs)" for r in flagged.itertuples()
        ]
    counts = flagged["flags"].str.split(",").explode().value_counts().to_dict()
    return [
        f"{len(flagged)} flagged budgets by flag: {counts} (listed per budget in the report's IsoFLOP minima table)"
    ]


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
    profile: str = "parabola",
    interval: str = "parametric",
) -> IsoFLOPFit:
    """Approach 2: per-budget profile minima, then power laws across budgets.

    Args:
        N, D, L: parameters, tokens and final loss of each run.
        C: each run's compute budget in FLOPs (default 6 N D). Budgets within ``budget_rtol`` share a bucket
            (:func:`flops_fit.analysis.bucketing.bucket_budgets`).
        bootstrap: draws for 95% percentile intervals (see ``interval``); 0 gives regression intervals on
            the minima, which ignore each minimum's own uncertainty.
        exclude: drop runs flagged by :func:`flops_fit.analysis.outliers.detect_outliers` (reported in
            ``excluded``).
        ids: a name for each run, used when excluded runs are reported (default ``run-0``, ``run-1``, ...).
        profile: ``"parabola"`` (a parabola in ln N per budget, Hoffmann et al.) or ``"shared"`` (the
            Chinchilla profile E_C + a_C N^-alpha + b_C N^beta with exponents shared by all budgets, free of
            the parabola's bias on asymmetric profiles; see :mod:`flops_fit.analysis.profiles`).
        interval: with ``bootstrap``: ``"parametric"`` draws the profiles from their fitted noise and adds
            the minima's scatter about the laws beyond it (:mod:`flops_fit.analysis.isoflop_intervals`);
            ``"resample"`` resamples runs within budgets (parabola profiles only).

    With 2 usable budgets, or (parametric) profiles that pass exactly through their points, there is no
    uncertainty estimate: the fit has no intervals and a warning says what to train.
    """
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    budget_rtol, exclude = check_budget_rtol(budget_rtol), check_flag("exclude", exclude)
    profile = check("profile", profile, Options(PROFILE_MODELS))
    interval = check("interval", interval, Options(INTERVAL_METHODS))
    if profile == "shared" and interval == "resample" and bootstrap > 0:
        raise ValueError("interval='resample' works with profile='parabola' only; use interval='parametric'")
    n, d, l, c, labels, excluded = _clean_runs(N, D, L, C, exclude, budget_rtol, ids)
    minima, model, exponents = _minima(n, d, l, c, budget_rtol, labels, profile)
    _check_minima(minima, n.size, budget_rtol)
    base = IsoFLOPFit(
        *_laws(minima), minima, excluded, budget_rtol, profile=profile, profile_exponents=exponents
    )
    n_used = int(minima["used"].sum())
    if n_used < MIN_BUDGETS_FOR_INTERVALS:
        _warn_no_uncertainty(
            f"{n_used} budgets: the power laws pass exactly through their minima, so there is no uncertainty "
            f"estimate; train at least {MIN_BUDGETS_FOR_INTERVALS} budgets (5 or more recommended)"
        )
        return _without_intervals(base)
    if bootstrap == 0:
        return base
    if interval == "resample":
        samples = _bootstrap(n, d, l, c, minima, labels, int(bootstrap), seed)
        return _with_samples(base, samples, interval="resample")
    assert model is not None  # 3 or more used budgets
    return _with_parametric(base, _law_inputs(n, d, minima, labels, model, base), model, int(bootstrap), seed)


def _with_parametric(
    base: IsoFLOPFit, inputs: LawInputs, model: VertexModel, reps: int, seed: int
) -> IsoFLOPFit:
    """``base`` with parametric intervals (:func:`parametric_draws`), or none, with a warning saying why."""
    draws = parametric_draws(model, inputs, reps, seed)
    if draws is None:
        _warn_no_uncertainty(
            "every profile passes exactly through its points (3 sizes for a parabola), so the loss noise "
            "cannot be estimated and there is no uncertainty estimate; train at least 4 sizes per budget "
            "(5-7 recommended), or fit with bootstrap=0 for regression intervals from the minima's scatter",
            stacklevel=4,
        )
        return _without_intervals(base)
    if not inputs.offset:
        warnings.warn(
            f"fit_isoflop: no L_opt interval: {inputs.centers.size} budgets fit a pure power law L_opt = k C^c, "
            f"without the irreducible loss (which needs {MIN_BUDGETS_FOR_OFFSET} budgets); its extrapolation runs "
            f"low by more than the noise says. Train at least {MIN_BUDGETS_FOR_OFFSET} budgets.",
            stacklevel=4,
        )
    fit = _with_samples(base, draws.samples, interval="parametric")
    return replace(fit, noise_sd=draws.noise_sd, scatter_sd=draws.scatter_n)


def _clean_runs(
    N: Any, D: Any, L: Any, C: Any, exclude: bool, budget_rtol: float, ids: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Checked arrays (n, d, l, c, bucket labels) in canonical order, outliers left out, and the excluded runs."""
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
    return n[order], d[order], l[order], c[order], labels[order], excluded


def _check_minima(minima: pd.DataFrame, runs: int, budget_rtol: float) -> None:
    """Raise when fewer than 2 budgets are usable; warn about flagged budgets."""
    if len(minima) < 2:
        raise ValueError(
            f"Approach 2 needs runs at 2 or more compute budgets; all {runs} runs fall in one budget bucket "
            f"(C ≈ {minima['compute_budget'].iloc[0]:.3g} FLOPs, budgets within {budget_rtol:.0%} are merged). "
            "Train the sweep at several budgets."
        )
    flagged = minima[~minima["used"]]
    if len(flagged):
        detail = "; ".join(describe_flagged(minima))
        warnings.warn(
            f"fit_isoflop: {len(flagged)} budget(s) left out of the power laws ({detail}). "
            "edge_small/edge_large: extend the sweep to smaller/larger models; too_few_points: train at least "
            f"{MIN_POINTS_PER_BUDGET} sizes; flat/no_curvature: widen the size span; deep_vertex: the fitted "
            "minimum lies far below every run, train more sizes around the lowest loss.",
            stacklevel=3,
        )
    n_used = int(minima["used"].sum())
    if n_used < 2:
        raise ValueError(
            f"Approach 2 needs at least 2 budgets with a bracketed minimum, got {n_used} of {len(minima)} "
            f"({'; '.join(describe_flagged(minima))}). Re-plan the sweep so each budget's sizes straddle the optimum."
        )


def _warn_no_uncertainty(reason: str, stacklevel: int = 3) -> None:
    """Said once, as a warning (the commands show it as one log line; a second log call printed it twice)."""
    warnings.warn(f"fit_isoflop: no intervals: {reason}.", stacklevel=stacklevel)


def _no_ci(fit: PowerLawFit) -> PowerLawFit:
    """``fit`` without intervals or covariance."""
    return replace(fit, k_ci=None, a_ci=None, offset_ci=None, cov=None)


def _without_intervals(fit: IsoFLOPFit) -> IsoFLOPFit:
    """``fit`` with no interval anywhere (no uncertainty estimate)."""
    laws = {k: _no_ci(getattr(fit, k)) for k in ("n_opt_fit", "d_opt_fit", "l_opt_fit")}
    return replace(fit, **laws, samples=None, interval="none")


def _with_samples(fit: IsoFLOPFit, samples: np.ndarray, interval: str) -> IsoFLOPFit:
    """``fit`` with its laws' intervals taken from the draws ``samples`` (columns as ``IsoFLOPFit.samples``)."""
    return replace(
        fit,
        n_opt_fit=with_sample_ci(fit.n_opt_fit, samples, (0, 1, None)),
        d_opt_fit=with_sample_ci(fit.d_opt_fit, samples, (2, 3, None)),
        l_opt_fit=with_sample_ci(fit.l_opt_fit, samples, (5, 6, 4)),
        samples=samples,
        interval=interval,
    )


def _law_inputs(
    n: np.ndarray,
    d: np.ndarray,
    minima: pd.DataFrame,
    labels: np.ndarray,
    model: VertexModel,
    fit: IsoFLOPFit,
) -> LawInputs:
    """What :func:`parametric_draws` needs of the used budgets."""
    _, dense = np.unique(labels, return_inverse=True)
    used = np.flatnonzero(minima["used"].to_numpy(bool))
    position = {b: j for j, b in enumerate(model.budgets)}
    lines = [np.polyfit(np.log(n[dense == k]), np.log(d[dense == k]), 1) for k in used]
    return LawInputs(
        centers=minima["compute_budget"].to_numpy(float)[used],
        columns=np.array([position[int(k)] for k in used]),
        d_icpt=np.array([ln[1] for ln in lines]),
        d_slope=np.array([ln[0] for ln in lines]),
        laws=(fit.n_opt_fit, fit.d_opt_fit, fit.l_opt_fit),
        offset=used.size >= MIN_BUDGETS_FOR_OFFSET,
    )


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
