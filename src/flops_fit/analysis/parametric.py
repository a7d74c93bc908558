"""Chinchilla Approach 3: fit L(N, D) = E + A / N**alpha + B / D**beta to final losses.

The estimator is Hoffmann et al. (2022, "Training Compute-Optimal Large Language Models", Sec. 3.3 and
App. D) as re-examined by Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt"): with
``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, minimise over ``(e, a, b, alpha, beta)``

    sum_i  w_i * Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3,

where LSE (log-sum-exp) of the three terms is the log of the predicted loss, with L-BFGS from every
point of a grid of starts, keeping the best. N is in parameters, D in tokens, L the final loss (nats;
any positive loss works); the Huber loss acts on natural-log residuals.

All starts are optimised together: the objective and its analytic gradient are evaluated for every
start in one vectorised pass (:mod:`flops_fit.analysis.huber`), and a batched L-BFGS
(:mod:`flops_fit.analysis.lbfgs`: two-loop recursion, a weak-Wolfe line search per start, converged starts
leave the batch) drives them. The best starts are then refined with tight
tolerances and the winner is polished with scipy's L-BFGS-B. The bootstrap refits resampled data, all
resamples in one batch, warm-started from the distinct optima of the full-data fit.

Compute-optimal allocation under C = 6 N D (Hoffmann et al., Eq. 4):
``N_opt = G (C/6)^a``, ``D_opt = G^-1 (C/6)^b`` with ``G = (alpha A / (beta B))^(1/(alpha+beta))``,
``a = beta / (alpha + beta)`` and ``b = alpha / (alpha + beta)``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.huber import HuberLogObjective as _HuberLogObjective
from flops_fit.analysis.huber import objective_scale
from flops_fit.analysis.lbfgs import MAX_ITER, NON_FINITE, BatchResult, Evaluate, Stop, lbfgs_batch
from flops_fit.analysis.outliers import detect_outliers, report_excluded
from flops_fit.analysis.power_law import PowerLawFit
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, runs_from_arrays
from flops_fit.core.validate import (
    canonical_order,
    check_bootstrap,
    check_budget_rtol,
    check_flag,
    check_ids,
    check_positive,
    check_seed,
    positive_arrays,
    positive_budgets,
    positive_values,
)

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
#: Parameter order of ``ParametricFit.samples`` (and of the internal log-space vector (e, a, b, alpha, beta)).
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
MIN_POINTS = 5
#: Exponents at or below this make the allocation degenerate (G = (alpha A / (beta B))^(1/(alpha+beta))
#: goes to 0 or infinity): the loss then barely depends on N or on D.
MIN_EXPONENT = 1e-3
#: A term changing the predicted loss by less than this fraction of E across the fitted N (or D) range is
#: not identified by the data (an order of magnitude below the Huber delta of 1e-3 in log loss).
MIN_TERM_CHANGE = 1e-4
#: An irreducible loss E below this fraction of the lowest loss the fit predicts on its data is reported as
#: collapsed to zero: the data do not pin E, and the exponents then carry the loss floor too.
MIN_FLOOR_FRACTION = 1e-3

# Optimiser settings (the optimiser is flops_fit.analysis.lbfgs). The objective it sees is the summed Huber
# loss divided by delta * sum(w), i.e. the weighted mean absolute log residual in the linear part of the
# Huber loss, so the tight tolerances below do not depend on the number of points, their weights or delta.
#
# Every grid start stops where scipy's L-BFGS-B with its default options stops on the summed Huber
# objective itself (pgtol 1e-5 on the gradient; a decrease of at most factr * eps = 2.2e-9 times
# max(|f|, 1)), i.e. where the per-start loop the method prescribes stops: on the Chinchilla points the
# batch then takes the same iterations and evaluations per start as that loop. The grid only ranks the
# starts; the best ones are refined with the tight tolerances below. (scipy's iteration cap is 15000; the
# grid's is 1000, far above the 373 the slowest Chinchilla start needs.)
_GRID_PGTOL, _GRID_FACTR_EPS, _GRID_MAX_ITER = 1e-5, 2.2e-9, 1000


def _grid_stop(scale: float) -> Stop:
    """Scipy L-BFGS-B's default stop on the summed objective, for the objective divided by ``scale``."""
    return Stop(
        gtol=_GRID_PGTOL / scale,
        ftol=_GRID_FACTR_EPS,
        ftol_floor=1.0 / scale,
        patience=1,
        max_iter=_GRID_MAX_ITER,
    )


# Refinement and bootstrap: run to the precision the objective allows. The Huber loss with a small delta is
# nearly piecewise linear, so L-BFGS can crawl for a few iterations and then speed up again; a start stops
# only after `patience` consecutive iterations of negligible progress.
_TIGHT_STOP = Stop(gtol=1e-10, ftol=1e-14, ftol_floor=0.0, patience=3, max_iter=2000)
_N_REFINE_BEST = 16  # best grid starts refined with tight tolerances
_N_REFINE_DISTINCT = 8  # plus the best start of up to this many distinct basins
_DISTINCT_START = 0.1  # max |difference| in (e, a, b, alpha, beta) for grid end points to count as one basin
_DISTINCT_OPTIMUM = 1e-3  # ... and for refined optima
_N_BOOTSTRAP_STARTS = 4  # warm starts per resample: the optimum and up to 3 other distinct optima
_CONVERGED_GTOL = 1e-5  # final normalised gradient (max-abs) below which a fit is reported as converged


# --------------------------------------------------------------------------------------------------------
# Fitting helpers


def _distinct(x: np.ndarray, order: np.ndarray, tol: float, limit: int) -> list[int]:
    """Up to ``limit`` indices from ``order`` (best first), each differing from every earlier pick by > ``tol``."""
    candidates = np.asarray(order)
    picked: list[int] = []
    while candidates.size and len(picked) < limit:
        i = int(candidates[0])
        picked.append(i)
        candidates = candidates[np.abs(x[candidates] - x[i]).max(axis=1) > tol]
    return picked


# --------------------------------------------------------------------------------------------------------
# Result


def _ci_pair(v: Any) -> tuple[float, float]:
    return float(v[0]), float(v[1])


def _percentile_ci(draws: np.ndarray, axis: int = 0) -> tuple[Any, Any]:
    """95% percentile interval along ``axis`` (NaNs ignored); floats for 1-D input, arrays otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, said elsewhere
        lo, hi = np.nanpercentile(draws, [50 * (1 - CI_LEVEL), 50 * (1 + CI_LEVEL)], axis=axis)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def _allocation(C: np.ndarray, E: Any, A: Any, B: Any, alpha: Any, beta: Any) -> tuple[Any, Any, Any]:
    """(N_opt, D_opt, L_opt) at budgets C (FLOPs) under C = 6 N D; NaN where alpha or beta <= MIN_EXPONENT."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ok = (alpha > MIN_EXPONENT) & (beta > MIN_EXPONENT)
        al = np.where(ok, alpha, np.nan)
        be = np.where(ok, beta, np.nan)
        log_g = (np.log(al) + np.log(A) - np.log(be) - np.log(B)) / (al + be)
        log_c6 = np.log(C / FLOPS_PER_PARAM_TOKEN)
        log_n = log_g + log_c6 * (be / (al + be))
        log_d = -log_g + log_c6 * (al / (al + be))
        n_opt, d_opt = np.exp(log_n), np.exp(log_d)
        l_opt = E + A * np.exp(-al * log_n) + B * np.exp(-be * log_d)
    return n_opt, d_opt, l_opt


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N**alpha + B / D**beta (N parameters, D tokens), fitted by Approach 3.

    ``objective`` is the minimised sum of (weighted) Huber losses of natural-log residuals. With a
    bootstrap, ``ci`` maps ``E, A, B, alpha, beta, a, b`` to 95% percentile intervals and ``samples``
    holds the refitted ``(E, A, B, alpha, beta)`` of every resample, shape (B, 5); otherwise ``ci`` is
    empty and ``samples`` is None. ``n_starts`` counts the initial points tried; ``converged`` says the
    winning optimisation ended at a point where the normalised gradient is at most 1e-5 (scipy's default
    L-BFGS-B tolerance). ``n_range`` and ``d_range`` are the (min, max) N and D of the fitted points.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    huber_delta: float = 1e-3
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, compare=False, repr=False)
    n_starts: int = 0
    converged: bool = True
    n_range: tuple[float, float] | None = None
    d_range: tuple[float, float] | None = None
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False, repr=False)
    approach: str = field(default="parametric", init=False)

    def __post_init__(self) -> None:
        if self.samples is not None:
            samples = np.array(self.samples, dtype=float, copy=True).reshape(-1, len(PARAM_NAMES))
            samples.setflags(write=False)
            object.__setattr__(self, "samples", samples)

    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def a_ci(self) -> tuple[float, float] | None:
        """95% bootstrap interval of ``a``, or None without a bootstrap."""
        return self.ci.get("a")

    @property
    def b_ci(self) -> tuple[float, float] | None:
        """95% bootstrap interval of ``b``, or None without a bootstrap."""
        return self.ci.get("b")

    @property
    def G(self) -> float:
        """(alpha A / (beta B))^(1 / (alpha + beta)): N_opt = G (C/6)^a; NaN for a degenerate fit."""
        if self.degeneracy is not None:
            return math.nan
        return math.exp(
            (math.log(self.alpha * self.A) - math.log(self.beta * self.B)) / (self.alpha + self.beta)
        )

    @property
    def n_bootstrap(self) -> int:
        """Number of bootstrap resamples behind ``ci`` (0 without a bootstrap)."""
        return 0 if self.samples is None else int(self.samples.shape[0])

    @property
    def degeneracy(self) -> str | None:
        """Why the compute-optimal allocation is undefined for this fit, or None when it is fine.

        Degenerate: an exponent at or below ``MIN_EXPONENT``, or (when the data ranges are known) a term
        that changes the predicted loss by less than ``MIN_TERM_CHANGE`` (relative to E) across the
        fitted N or D; either way the loss does not identify how to trade N against D.
        """
        terms = (
            ("alpha", self.alpha, self.A, "N", self.n_range),
            ("beta", self.beta, self.B, "D", self.d_range),
        )
        for name, expo, coef, var, span in terms:
            fix = (
                "so G = (alpha A / (beta B))^(1/(alpha+beta)) and the compute-optimal N and D are undefined. "
                f"Add runs that vary {var} over a wider range at fixed compute, or check the data."
            )
            if not expo > MIN_EXPONENT:
                return f"{name} = {expo:.3g} <= {MIN_EXPONENT:g}: the fitted loss does not fall with {var}, {fix}"
            if span is not None:
                change = coef * (span[0] ** -expo - span[1] ** -expo)
                if not change > MIN_TERM_CHANGE * self.E:
                    return (
                        f"the {var} term changes the fitted loss by only {change:.3g} across {var} in "
                        f"[{span[0]:.3g}, {span[1]:.3g}] (E = {self.E:.3g}): the data do not constrain it, {fix}"
                    )
        return None

    @property
    def floor_collapsed(self) -> str | None:
        """Why the fitted irreducible loss E is not to be trusted (it collapsed to about 0), or None.

        Needs the data ranges (known for fits made by :func:`fit_parametric`).
        """
        if self.n_range is None or self.d_range is None:
            return None
        lowest = self.E + self.A * self.n_range[1] ** -self.alpha + self.B * self.d_range[1] ** -self.beta
        if self.E >= MIN_FLOOR_FRACTION * lowest:
            return None
        return (
            f"E = {self.E:.3g} is about 0 (below {MIN_FLOOR_FRACTION:.1%} of the lowest predicted loss on the data, "
            f"{lowest:.3g}): the data do not pin the irreducible loss, so alpha and beta also carry the loss floor "
            "and predictions fall without bound; add runs at larger N and D, or compare with a fit that fixes E"
        )

    def predict_loss(self, N: Any, D: Any) -> Any:
        """Predicted loss at N parameters and D tokens (broadcasts; scalars in, float out)."""
        n, d = (positive_values(name, v, "number(s)") for name, v in (("N", N), ("D", D)))
        loss = self.E + self.A * np.power(n, -self.alpha) + self.B * np.power(d, -self.beta)
        return float(loss) if np.ndim(loss) == 0 else loss

    def optimal(self, C: Any) -> dict[str, Any]:
        """Compute-optimal N (parameters), D (tokens) and loss at budget(s) C (FLOPs, C = 6 N D).

        Returns ``compute_budget, optimal_params, optimal_tokens, optimal_loss, tokens_per_param`` and
        ``optimal_params_ci, optimal_tokens_ci, optimal_loss_ci`` (95% percentile ``(low, high)`` over the
        bootstrap samples, None without a bootstrap). Floats for scalar C, arrays for array C. A
        degenerate fit (see :attr:`degeneracy`) warns and gives NaN.
        """
        c = positive_budgets(C)
        n, d, loss = _allocation(c, self.E, self.A, self.B, self.alpha, self.beta)
        if self.degeneracy is not None:
            warnings.warn(f"optimal(C) is NaN: {self.degeneracy}", UserWarning, stacklevel=2)
            n = d = loss = np.full_like(c, np.nan)
        cis: list[Any] = [None, None, None]
        if self.samples is not None and self.samples.shape[0]:
            s = self.samples
            draws = _allocation(c[..., None], s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4])
            cis = [_percentile_ci(v, axis=-1) for v in draws]

        def conv(v: Any) -> Any:
            return float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=float)

        return {
            "compute_budget": conv(c),
            "optimal_params": conv(n),
            "optimal_tokens": conv(d),
            "optimal_loss": conv(loss),
            "tokens_per_param": conv(d / n),
            "optimal_params_ci": cis[0],
            "optimal_tokens_ci": cis[1],
            "optimal_loss_ci": cis[2],
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict; :meth:`from_dict` rebuilds the fit exactly (samples included)."""
        return {
            "approach": self.approach,
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "objective": self.objective,
            "n_points": self.n_points,
            "huber_delta": self.huber_delta,
            "ci": {k: [lo, hi] for k, (lo, hi) in self.ci.items()},
            "samples": None if self.samples is None else self.samples.tolist(),
            "n_starts": self.n_starts,
            "converged": self.converged,
            "n_range": None if self.n_range is None else list(self.n_range),
            "d_range": None if self.d_range is None else list(self.d_range),
            "excluded": self.excluded.to_dict(orient="records"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParametricFit:
        """Inverse of :meth:`to_dict`."""
        missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in d]
        if missing:
            raise ValueError(f"a ParametricFit dict needs keys {missing}; got {sorted(d)}")
        samples = d.get("samples")
        return cls(
            E=float(d["E"]),
            A=float(d["A"]),
            B=float(d["B"]),
            alpha=float(d["alpha"]),
            beta=float(d["beta"]),
            objective=float(d.get("objective", math.nan)),
            n_points=int(d.get("n_points", 0)),
            huber_delta=float(d.get("huber_delta", 1e-3)),
            ci={str(k): _ci_pair(v) for k, v in (d.get("ci") or {}).items()},
            samples=None if samples is None else np.asarray(samples, dtype=float),
            n_starts=int(d.get("n_starts", 0)),
            converged=bool(d.get("converged", True)),
            n_range=None if d.get("n_range") is None else _ci_pair(d["n_range"]),
            d_range=None if d.get("d_range") is None else _ci_pair(d["d_range"]),
            excluded=pd.DataFrame.from_records(d.get("excluded") or []),
        )

    def power_laws(self) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
        """The laws N_opt(C), D_opt(C), L_opt(C) that the closed form implies (C = 6ND, in FLOPs).

        N_opt = G (C/6)^a and D_opt = G^-1 (C/6)^b exactly; along the optimum both loss terms scale as
        C^(-alpha a) (alpha a = beta b), so L_opt = E + (A G^-alpha + B G^beta) 6^(alpha a) C^(-alpha a).
        """
        g, a, b, six = self.G, self.a, self.b, FLOPS_PER_PARAM_TOKEN
        c_exp = self.alpha * a
        n_law = PowerLawFit(k=g * six**-a, a=a, r_squared=math.nan, a_ci=self.ci.get("a"))
        d_law = PowerLawFit(k=six**-b / g, a=b, r_squared=math.nan, a_ci=self.ci.get("b"))
        k_l = (self.A * g**-self.alpha + self.B * g**self.beta) * six**c_exp
        l_law = PowerLawFit(k=k_l, a=-c_exp, r_squared=math.nan, offset=self.E, offset_ci=self.ci.get("E"))
        return n_law, d_law, l_law

    def summary(self) -> str:
        """A readable block: the model, estimates with 95% intervals, a, b, objective and method."""
        width = 78
        rule, thin = "=" * width, "-" * width
        boot = (
            f"{self.n_bootstrap} bootstrap resamples, 95% percentile intervals"
            if self.n_bootstrap
            else "none (fit with bootstrap=B for intervals)"
        )
        lines = [
            "Parametric scaling law (Chinchilla Approach 3)".center(width),
            rule,
            "Model:        L(N, D) = E + A / N^alpha + B / D^beta   (N params, D tokens)",
            f"Method:       Huber (delta = {self.huber_delta:g}) on log L, L-BFGS from {self.n_starts} starts",
            f"Points:       {self.n_points:<10d}  Objective (sum of Huber losses): {self.objective:.6g}",
            f"Converged:    {'yes' if self.converged else 'NO (treat the estimates with care)'}",
            f"Uncertainty:  {boot}",
            thin,
            f"{'':12s}{'estimate':>14s}{'[0.025':>14s}{'0.975]':>14s}",
        ]

        def row(label: str, key: str, value: float) -> str:
            lo, hi = self.ci.get(key, (math.nan, math.nan))
            if key in self.ci:
                return f"{label:12s}{value:>14.6g}{lo:>14.6g}{hi:>14.6g}"
            return f"{label:12s}{value:>14.6g}"

        for name in PARAM_NAMES:
            lines.append(row(name, name, getattr(self, name)))
        lines.append(thin)
        lines.append(row("a", "a", self.a) + "   N_opt ∝ C^a, a = beta/(alpha+beta)")
        lines.append(row("b", "b", self.b) + "   D_opt ∝ C^b, b = alpha/(alpha+beta)")
        if self.degeneracy is not None:
            lines += [thin, "WARNING: degenerate fit. " + self.degeneracy]
        else:
            lines.append(f"G = {self.G:.6g}   (N_opt = G (C/6)^a, D_opt = (C/6)^b / G, C = 6ND)")
        lines.append(rule)
        return "\n".join(lines)

    def __str__(self) -> str:
        return (
            f"L(N, D) = {self.E:.4g} + {self.A:.4g} / N^{self.alpha:.4f} + {self.B:.4g} / D^{self.beta:.4f}"
            f"  (a = {self.a:.4f}, b = {self.b:.4f}, n = {self.n_points})"
        )


# --------------------------------------------------------------------------------------------------------
# Fitting


def _grid_starts(init_grid: Any) -> np.ndarray:
    """The start rows (e, a, b, alpha, beta) of ``init_grid`` ("chinchilla" or a mapping of GRID_KEYS)."""
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
    axes = []
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
        axes.append(arr)
    return np.array(list(itertools.product(*axes)), dtype=float)


def _check_weights(weights: Any, n: int) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a sequence of {n} non-negative numbers, got {weights!r}") from None
    if w.size != n:
        raise ValueError(f"weights must have one value per point ({n}), got {w.size}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"weights must be finite and >= 0; weights[{i}] = {w[i]}")
    return w


def _check_design(n: np.ndarray, d: np.ndarray, w: np.ndarray, c: np.ndarray, budget_rtol: float) -> None:
    used = w > 0
    n_used = int(used.sum())
    if n_used < MIN_POINTS:
        raise ValueError(
            f"Approach 3 fits 5 parameters and needs at least {MIN_POINTS} points with positive weight, got {n_used}"
        )
    for name, values, what in (("N", n, "model sizes"), ("D", d, "token counts")):
        distinct = np.unique(values[used]).size
        if distinct < 2:
            raise ValueError(
                f"Approach 3 needs at least 2 distinct {name} ({what}) to separate the N and D terms, "
                f"got {distinct}; train more than one {'model size' if name == 'N' else 'data size'}"
            )
    centers = bucket_budgets(c[used], rtol=budget_rtol)[1]
    if centers.size < 2:
        raise ValueError(
            f"Approach 3 needs runs at 2 or more compute budgets; all {n_used} points fall in one budget bucket "
            f"(C ≈ {centers[0]:.3g} FLOPs, budgets within {budget_rtol:.0%} are merged). On one IsoFLOP line N "
            "and D move together, so the N and D terms are not told apart: train the sweep at several budgets."
        )


def _resample_counts(
    w: np.ndarray, n_boot: int, log_n: np.ndarray, log_d: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n) multinomial resampling counts of the positive-weight points.

    A resample with fewer than 5 distinct points, or a single distinct N or D, cannot be fitted; such
    resamples are redrawn (from the same seeded generator, so the result stays deterministic).
    """
    used = w > 0
    n_used = int(used.sum())
    probs = used / n_used
    # One-hot maps from points to their distinct N and D values, to count distinct values per resample.
    one_hot = [
        np.eye(inv.max() + 1)[inv] for inv in (np.unique(v, return_inverse=True)[1] for v in (log_n, log_d))
    ]

    def unusable(counts: np.ndarray) -> np.ndarray:
        present = counts > 0
        bad = present.sum(axis=1) < MIN_POINTS
        for hot in one_hot:
            bad |= ((present @ hot) > 0).sum(axis=1) < 2
        return bad

    counts = rng.multinomial(n_used, probs, size=n_boot).astype(float)
    for _ in range(100):
        bad = np.flatnonzero(unusable(counts))
        if bad.size == 0:
            return counts
        counts[bad] = rng.multinomial(n_used, probs, size=bad.size)
    raise ValueError(
        "bootstrap resamples keep having fewer than 5 distinct points or a single N or D; "
        "the design is too small to bootstrap: add runs or fit without bootstrap"
    )


def _to_params(theta: np.ndarray) -> np.ndarray:
    """(e, a, b, alpha, beta) rows -> (E, A, B, alpha, beta) rows."""
    out = np.array(theta, dtype=float, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    return out


def _search(
    starts: np.ndarray, evaluate: Evaluate, scale: float
) -> tuple[BatchResult, np.ndarray, BatchResult, np.ndarray]:
    """Steps 1 and 2 of Approach 3: every start of the grid (rows (e, a, b, alpha, beta)) stopping where
    scipy's L-BFGS-B with default options would, then the best starts and the best start of each distinct
    basin refined with tight tolerances. Returns ``(grid, finite, refined, ranked)``: the grid's results, its
    starts with a finite objective, the refined results and their order, best first."""
    grid = lbfgs_batch(starts, evaluate, _grid_stop(scale))
    finite = np.flatnonzero(np.isfinite(grid.f))
    if finite.size == 0:
        raise ValueError(
            "no start of init_grid gives a finite objective; use start values near the data's scale"
        )
    order = finite[np.argsort(grid.f[finite], kind="stable")]
    picks = list(
        dict.fromkeys(
            [*order[:_N_REFINE_BEST].tolist(), *_distinct(grid.x, order, _DISTINCT_START, _N_REFINE_DISTINCT)]
        )
    )
    refined = lbfgs_batch(grid.x[picks], evaluate, _TIGHT_STOP)
    return grid, finite, refined, np.argsort(refined.f, kind="stable")


def _polish(evaluate: Evaluate, theta: np.ndarray, f: float) -> tuple[np.ndarray, float, np.ndarray]:
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


def _sample_ci(samples: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """Bootstrap optima (e, a, b, alpha, beta) rows -> (E, A, B, alpha, beta) rows and the 95% intervals of
    those five and of the exponents a, b."""
    params = _to_params(samples)
    draws = {name: params[:, i] for i, name in enumerate(PARAM_NAMES)}
    with np.errstate(invalid="ignore", divide="ignore"):
        draws["a"] = params[:, 4] / (params[:, 3] + params[:, 4])
        draws["b"] = params[:, 3] / (params[:, 3] + params[:, 4])
    return params, {name: _percentile_ci(v) for name, v in draws.items()}


def _warn_if_unsound(fit: ParametricFit, grad: np.ndarray) -> None:
    """Warn the caller of :func:`fit_parametric` about a degenerate, floorless or unconverged fit."""
    if fit.degeneracy is not None:
        warnings.warn(f"Approach 3 fit is degenerate: {fit.degeneracy}", UserWarning, stacklevel=4)
    elif fit.floor_collapsed is not None:
        warnings.warn(f"Approach 3: {fit.floor_collapsed}", UserWarning, stacklevel=4)
    if not fit.converged:
        warnings.warn(
            f"Approach 3 optimum not converged (normalised gradient {np.abs(grad).max():.2g} > {_CONVERGED_GTOL:g}); "
            "check the data or widen init_grid",
            UserWarning,
            stacklevel=4,
        )


def _fit_clean(
    N: np.ndarray,
    D: np.ndarray,
    L: np.ndarray,
    w: np.ndarray,
    *,
    huber_delta: float,
    starts: np.ndarray,
    bootstrap: int,
    seed: int,
) -> ParametricFit:
    """Approach 3 on validated arrays: N, D, L positive finite, w >= 0 with a usable design."""
    t_start = time.perf_counter()
    log_n, log_d, log_l = np.log(N), np.log(D), np.log(L)
    scale = objective_scale(w, huber_delta)
    objective = _HuberLogObjective(log_n, log_d, log_l, huber_delta, w / scale)

    def evaluate(rows: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return objective(theta)

    grid, finite, refined, ranked = _search(starts, evaluate, scale)
    best_theta, best_f, grad = _polish(evaluate, refined.x[ranked[0]].copy(), float(refined.f[ranked[0]]))
    logger.info(
        "Approach 3: %d starts (%d iterations, %.1f evaluations per start), %d within 1e-6 of the best; "
        "objective %.6g; %.2f s",
        starts.shape[0],
        int(grid.n_iter.max(initial=0)),
        grid.n_eval / starts.shape[0],
        int((grid.f[finite] <= best_f * (1 + 1e-6)).sum()),
        best_f * scale,
        time.perf_counter() - t_start,
    )
    samples = None
    ci: dict[str, tuple[float, float]] = {}
    if bootstrap > 0:
        optima = np.array([best_theta] + [refined.x[i] for i in ranked[1:]])
        keep = _distinct(optima, np.arange(len(optima)), _DISTINCT_OPTIMUM, _N_BOOTSTRAP_STARTS)
        samples, ci = _sample_ci(
            _bootstrap(objective, w, huber_delta, log_n, log_d, optima[keep], bootstrap, seed)
        )
    E, A, B = (math.exp(v) for v in best_theta[:3])
    used = w > 0
    fit = ParametricFit(
        E=E,
        A=A,
        B=B,
        alpha=float(best_theta[3]),
        beta=float(best_theta[4]),
        objective=best_f * scale,
        n_points=int(used.sum()),
        huber_delta=huber_delta,
        ci=ci,
        samples=samples,
        n_starts=int(starts.shape[0]),
        converged=bool(np.abs(grad).max() <= _CONVERGED_GTOL),
        n_range=(float(N[used].min()), float(N[used].max())),
        d_range=(float(D[used].min()), float(D[used].max())),
    )
    _warn_if_unsound(fit, grad)
    return fit


def _bootstrap(
    objective: _HuberLogObjective,
    w: np.ndarray,
    huber_delta: float,
    log_n: np.ndarray,
    log_d: np.ndarray,
    warm: np.ndarray,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Refit ``n_boot`` resamples at once from each warm start; return the best (e, a, b, alpha, beta) of each."""
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    counts = _resample_counts(w, n_boot, log_n, log_d, rng)
    weights = counts * w  # resampled points keep their own weight
    weights /= objective_scale(weights, huber_delta)  # each refit's objective as in _fit_clean
    n_warm = warm.shape[0]  # row i starts from warm[i // n_boot] on resample i % n_boot

    def evaluate(rows: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return objective(theta, weights, rows % n_boot)

    x0 = np.repeat(warm, n_boot, axis=0)
    res = lbfgs_batch(x0, evaluate, _TIGHT_STOP)
    f = res.f.reshape(n_warm, n_boot)
    best = np.argmin(f, axis=0)
    pick = best * n_boot + np.arange(n_boot)
    not_done = int(np.isin(res.status[pick], (MAX_ITER, NON_FINITE)).sum())
    if not_done:
        warnings.warn(
            f"{not_done} of {n_boot} bootstrap refits did not converge; their end points are kept",
            UserWarning,
            stacklevel=4,
        )
    logger.info(
        "Approach 3 bootstrap: %d resamples x %d warm starts, %.1f evaluations per refit, %.2f s",
        n_boot,
        n_warm,
        res.n_eval / x0.shape[0],
        time.perf_counter() - t_start,
    )
    return res.x[pick]


def fit_parametric(
    N: Sequence[float] | np.ndarray,
    D: Sequence[float] | np.ndarray,
    L: Sequence[float] | np.ndarray,
    *,
    huber_delta: float = 1e-3,
    init_grid: str | Mapping[str, Sequence[float]] = "chinchilla",
    bootstrap: int = 0,
    seed: int = 0,
    weights: Sequence[float] | np.ndarray | None = None,
    exclude: bool = True,
    C: Sequence[float] | np.ndarray | None = None,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
    ids: Sequence[str] | None = None,
) -> ParametricFit:
    """Fit L(N, D) = E + A / N**alpha + B / D**beta (Chinchilla Approach 3).

    ``N`` parameters, ``D`` training tokens, ``L`` final losses (equal-length, positive, finite). Minimises
    the sum of ``weights``-weighted Huber(``huber_delta``) losses of log residuals with L-BFGS from every
    start of ``init_grid`` (``"chinchilla"``: Hoffmann et al.'s 4,500-point grid, or a mapping of
    ``e, a, b, alpha, beta`` to start values, E = exp(e), A = exp(a), B = exp(b)) and keeps the best.
    ``bootstrap=B`` refits B resamples of the points (seeded by ``seed``) for 95% percentile intervals.

    ``exclude`` drops runs flagged by :func:`flops_fit.analysis.outliers.detect_outliers` (duplicates and
    IsoFLOP-profile outliers; profiles are the runs' budgets ``C`` in FLOPs, default 6ND, grouped within
    ``budget_rtol``) before fitting; they are reported in ``excluded``, named by ``ids`` (default ``run-0``,
    ``run-1``, ...). ``C`` plays no other part in the fit.

    Needs at least 5 points, at least 2 distinct N and 2 distinct D, and runs at 2 or more budgets (one
    IsoFLOP line does not separate the N and D terms); raises ValueError otherwise.
    """
    n, d, loss = positive_arrays(N=N, D=D, L=L)
    huber_delta = check_positive("huber_delta", huber_delta, "Chinchilla: 1e-3")
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    budget_rtol, exclude = check_budget_rtol(budget_rtol), check_flag("exclude", exclude)
    names = check_ids(ids, n.size)
    w = np.ones_like(n) if weights is None else _check_weights(weights, n.size)
    starts = _grid_starts(init_grid)
    excluded = pd.DataFrame()
    budgets = FLOPS_PER_PARAM_TOKEN * n * d if C is None else positive_arrays(C=C)[0]
    if budgets.size != n.size:
        raise ValueError(f"C must have one budget per point: got {budgets.size} for {n.size} points")
    if exclude:
        flagged = detect_outliers(runs_from_arrays(n, d, loss, budgets, ids=names), budget_rtol=budget_rtol)
        mask = flagged["outlier"].to_numpy()
        if mask.any():
            excluded = flagged[mask].reset_index(drop=True)
            report_excluded(excluded, "fit_parametric")
            n, d, loss, w, budgets = n[~mask], d[~mask], loss[~mask], w[~mask], budgets[~mask]
    order = canonical_order(n, d, loss, w)
    n, d, loss, w, budgets = n[order], d[order], loss[order], w[order], budgets[order]
    _check_design(n, d, w, budgets, budget_rtol)
    fit = _fit_clean(
        n,
        d,
        loss,
        w,
        huber_delta=huber_delta,
        starts=starts,
        bootstrap=int(bootstrap),
        seed=int(seed),
    )
    return replace(fit, excluded=excluded) if len(excluded) else fit
