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
resamples in one batch, warm-started from the distinct optima of the full-data fit
(:mod:`flops_fit.analysis.parametric_search`, :mod:`flops_fit.analysis.parametric_bootstrap`). Constrained
variants fit one exponent for both terms (alpha = beta) and/or a fixed E.

Compute-optimal allocation under C = 6 N D (Hoffmann et al., Eq. 4):
``N_opt = G (C/6)^a``, ``D_opt = G^-1 (C/6)^b`` with ``G = (alpha A / (beta B))^(1/(alpha+beta))``,
``a = beta / (alpha + beta)`` and ``b = alpha / (alpha + beta)``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.huber import HuberLogObjective as _HuberLogObjective
from flops_fit.analysis.huber import objective_scale
from flops_fit.analysis.outliers import detect_outliers, report_excluded
from flops_fit.analysis.parametric_bootstrap import (
    CI_LEVEL,
    MIN_FLOOR_FRACTION,
    RESAMPLE_KINDS,
    bootstrap_refits,
    budget_strata,
    collapsed,
    percentile_ci,
    sample_ci,
)
from flops_fit.analysis.parametric_search import CHINCHILLA_INIT_GRID as CHINCHILLA_INIT_GRID  # re-exported
from flops_fit.analysis.parametric_search import (
    DISTINCT_OPTIMUM,
    MIN_POINTS,
    N_BOOTSTRAP_STARTS,
    Constraint,
    distinct,
    grid_axes,
    grid_rows,
    polish,
    search,
)
from flops_fit.analysis.parametric_search import GRID_KEYS as GRID_KEYS  # re-exported
from flops_fit.analysis.parametric_search import PARAM_NAMES as PARAM_NAMES  # re-exported
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

#: Exponents at or below this make the allocation degenerate (G = (alpha A / (beta B))^(1/(alpha+beta))
#: goes to 0 or infinity): the loss then barely depends on N or on D.
MIN_EXPONENT = 1e-3
#: A term changing the predicted loss by less than this fraction of E across the fitted N (or D) range is
#: not identified by the data (an order of magnitude below the Huber delta of 1e-3 in log loss).
MIN_TERM_CHANGE = 1e-4
#: Share of each tail a 95% interval leaves out (2.5%). When more bootstrap refits than this collapse E to
#: about 0 (or put an exponent outside its start grid), an end of the 95% intervals is set by such refits.
TAIL_SHARE = (1 - CI_LEVEL) / 2
_CONVERGED_GTOL = 1e-5  # final normalised gradient (max-abs) below which a fit is reported as converged


# --------------------------------------------------------------------------------------------------------
# Result


def _ci_pair(v: Any) -> tuple[float, float]:
    return float(v[0]), float(v[1])


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


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

    Constrained fits (:func:`fit_parametric` options): ``equal_exponents`` says alpha = beta was imposed
    (one shared exponent, so a = b = 0.5 exactly: fixed by the constraint, not estimated); ``fixed_E`` is
    the irreducible loss E imposed (None: E fitted). ``floor_collapse_share`` is the share of bootstrap
    refits whose E collapsed to about 0 (None without a bootstrap, or with E fixed). ``fragility`` holds plain statements of
    what makes this fit fragile (too few points for its free parameters, collapsing floors, exponents at the
    edge of the start grid); :func:`fit_parametric` also warns each of them. ``resample`` says how the
    bootstrap drew runs: ``"budgets"`` (within each compute budget) or ``"points"`` (from all runs).
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
    equal_exponents: bool = False
    fixed_E: float | None = None
    floor_collapse_share: float | None = None
    fragility: tuple[str, ...] = ()
    resample: str = "points"
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False, repr=False)
    approach: str = field(default="parametric", init=False)

    def __post_init__(self) -> None:
        if self.samples is not None:
            samples = np.array(self.samples, dtype=float, copy=True).reshape(-1, len(PARAM_NAMES))
            samples.setflags(write=False)
            object.__setattr__(self, "samples", samples)
        object.__setattr__(self, "fragility", tuple(str(note) for note in self.fragility))

    @property
    def n_free_params(self) -> int:
        """Parameters estimated from the data: 5, less one for alpha = beta and one for a fixed E."""
        return 5 - int(self.equal_exponents) - int(self.fixed_E is not None)

    @property
    def dof(self) -> int:
        """Residual degrees of freedom: points fitted minus free parameters (0 or less: an exact fit)."""
        return self.n_points - self.n_free_params

    @property
    def constraint(self) -> str:
        """The constraint imposed on the fit, in words ("none" for the free five-parameter fit)."""
        parts = (["alpha = beta"] if self.equal_exponents else []) + (
            [f"E fixed at {self.fixed_E:.6g}"] if self.fixed_E is not None else []
        )
        return " and ".join(parts) if parts else "none"

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
        if self.n_range is None or self.d_range is None or self.fixed_E is not None:
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
        cis: list[Any] = [None, None, None, None]
        if self.samples is not None and self.samples.shape[0]:
            s = self.samples
            n_s, d_s, l_s = _allocation(c[..., None], s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4])
            cis = [percentile_ci(v, axis=-1) for v in (n_s, d_s, l_s, d_s / n_s)]

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
            "tokens_per_param_ci": cis[3],
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
            "equal_exponents": self.equal_exponents,
            "fixed_E": self.fixed_E,
            "floor_collapse_share": self.floor_collapse_share,
            "fragility": list(self.fragility),
            "resample": self.resample,
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
            equal_exponents=bool(d.get("equal_exponents", False)),
            fixed_E=None if d.get("fixed_E") is None else float(d["fixed_E"]),
            floor_collapse_share=_optional_float(d.get("floor_collapse_share")),
            fragility=tuple(d.get("fragility") or ()),
            resample=str(d.get("resample", "points")),
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
        c_ci = None
        if (
            self.samples is not None and self.samples.shape[0]
        ):  # the loss exponent alpha beta / (alpha + beta)
            al, be = self.samples[:, 3], self.samples[:, 4]
            with np.errstate(invalid="ignore", divide="ignore"):
                c_ci = percentile_ci(-al * be / (al + be))
        l_law = PowerLawFit(
            k=k_l, a=-c_exp, r_squared=math.nan, a_ci=c_ci, offset=self.E, offset_ci=self.ci.get("E")
        )
        return n_law, d_law, l_law

    def summary(self) -> str:
        """A readable block: the model and its constraint, estimates with 95% intervals, a, b, objective,
        method, and what makes the fit fragile."""
        width = 78
        rule, thin = "=" * width, "-" * width
        if self.n_bootstrap:
            how = "runs drawn within each budget" if self.resample == "budgets" else "runs drawn from all"
            boot = f"{self.n_bootstrap} bootstrap resamples ({how}), 95% percentile intervals"
        elif self.dof <= 0:
            boot = "none: an exact fit has no uncertainty estimate"
        else:
            boot = "none (fit with bootstrap=B for intervals)"
        lines = [
            "Parametric scaling law (Chinchilla Approach 3)".center(width),
            rule,
            "Model:        L(N, D) = E + A / N^alpha + B / D^beta   (N params, D tokens)",
            f"Constraint:   {self.constraint} ({self.n_free_params} free parameters)",
            f"Method:       Huber (delta = {self.huber_delta:g}) on log L, L-BFGS from {self.n_starts} starts",
            f"Points:       {self.n_points:<10d}  Objective (sum of Huber losses): {self.objective:.6g}",
            f"Converged:    {'yes' if self.converged else 'NO (treat the estimates with care)'}",
            f"Uncertainty:  {boot}",
            thin,
            f"{'':12s}{'estimate':>14s}{'[0.025':>14s}{'0.975]':>14s}",
            *self._summary_rows(thin),
        ]
        if self.degeneracy is not None:
            lines += [thin, "WARNING: degenerate fit. " + self.degeneracy]
        else:
            lines.append(f"G = {self.G:.6g}   (N_opt = G (C/6)^a, D_opt = (C/6)^b / G, C = 6ND)")
        if self.fragility:
            lines += [thin, "FRAGILE:"] + [f"  - {note}" for note in self.fragility]
        lines.append(rule)
        return "\n".join(lines)

    def _summary_rows(self, thin: str) -> list[str]:
        """The estimate rows of :meth:`summary`; a value fixed by a constraint says so instead of an interval."""
        tied = "fixed by the constraint alpha = beta, not estimated"
        fixed = {
            "E": "fixed (not estimated)" if self.fixed_E is not None else None,
            "beta": "= alpha (constraint)" if self.equal_exponents else None,
            "a": tied if self.equal_exponents else None,
            "b": tied if self.equal_exponents else None,
        }

        def row(key: str, value: float, note: str = "") -> str:
            if fixed.get(key):
                return f"{key:12s}{value:>14.6g}   {fixed[key]}"
            if key in self.ci:
                lo, hi = self.ci[key]
                return f"{key:12s}{value:>14.6g}{lo:>14.6g}{hi:>14.6g}{note}"
            return f"{key:12s}{value:>14.6g}{note}"

        return [
            *(row(name, getattr(self, name)) for name in PARAM_NAMES),
            thin,
            row("a", self.a, "   N_opt ∝ C^a, a = beta/(alpha+beta)"),
            row("b", self.b, "   D_opt ∝ C^b, b = alpha/(alpha+beta)"),
        ]

    def __str__(self) -> str:
        return (
            f"L(N, D) = {self.E:.4g} + {self.A:.4g} / N^{self.alpha:.4f} + {self.B:.4g} / D^{self.beta:.4f}"
            f"  (a = {self.a:.4f}, b = {self.b:.4f}, n = {self.n_points})"
            + ("" if self.constraint == "none" else f" [{self.constraint}]")
        )


# --------------------------------------------------------------------------------------------------------
# Fitting


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


def _check_constraint(equal_exponents: Any, fixed_E: Any) -> tuple[Constraint, float | None]:
    """The search's Constraint for the options ``equal_exponents`` and ``fixed_E``, and the checked fixed E."""
    equal_exponents = check_flag("equal_exponents", equal_exponents)
    if fixed_E is not None:
        fixed_E = check_positive(
            "fixed_E", fixed_E, "the irreducible loss to impose, e.g. fixed_E=1.69, or None"
        )
    return Constraint(equal_exponents, None if fixed_E is None else math.log(fixed_E)), fixed_E


def _check_resample(resample: Any) -> str:
    if resample not in RESAMPLE_KINDS:
        raise ValueError(f"resample must be one of {list(RESAMPLE_KINDS)}, got {resample!r}")
    return str(resample)


def _check_design(n: np.ndarray, d: np.ndarray, w: np.ndarray, c: np.ndarray, budget_rtol: float) -> None:
    used = w > 0
    n_used = int(used.sum())
    if n_used < MIN_POINTS:
        raise ValueError(
            f"Approach 3 needs at least {MIN_POINTS} points with positive weight (it fits up to 5 parameters), "
            f"got {n_used}"
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


def _edge_notes(fit: ParametricFit, axes: Mapping[str, np.ndarray]) -> list[str]:
    """Exponents at or beyond the edge of their start values, in the fit or in more than TAIL_SHARE of the
    bootstrap refits (an exponent <= MIN_EXPONENT is reported as degenerate instead)."""
    notes = []
    for name, col in (("alpha", 3),) if fit.equal_exponents else (("alpha", 3), ("beta", 4)):
        values = np.r_[axes["alpha"], axes["beta"]] if fit.equal_exponents else axes[name]
        lo, hi = float(values.min()), float(values.max())
        value = getattr(fit, name)
        if value > MIN_EXPONENT and not lo < value < hi:
            notes.append(
                f"{name} = {value:.3g} is at or beyond the edge of its start grid [{lo:g}, {hi:g}]: the search did "
                "not bracket it, so the optimum may lie where the grid has no start; widen init_grid or add runs"
            )
        if fit.samples is not None:
            share = float(np.mean(~((fit.samples[:, col] > lo) & (fit.samples[:, col] < hi))))
            if share > TAIL_SHARE:
                notes.append(
                    f"{name} left its start grid [{lo:g}, {hi:g}] in {share:.1%} of the bootstrap refits (more than "
                    f"the {TAIL_SHARE:.1%} a 95% interval leaves in each tail): the interval of {name} and of "
                    "the allocation rests on refits the grid does not cover; add runs"
                )
    return notes


def _fragility(fit: ParametricFit, axes: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """Plain statements of what makes ``fit`` fragile (see ParametricFit.fragility)."""
    k = fit.n_free_params
    notes = []
    if fit.dof <= 0:
        notes.append(
            f"exact fit: no uncertainty estimate; use more runs ({fit.n_points} points for {k} free parameters: "
            "the law can pass through every point, so a zero objective and 'converged' say nothing of its accuracy)"
        )
    elif fit.dof < k:
        notes.append(
            f"few residual degrees of freedom ({fit.dof}: {fit.n_points} points for {k} free parameters): a "
            "bootstrap resample holds about 63% of the distinct points, so many refits are nearly exact and the "
            f"intervals are unreliable; use at least {2 * k} runs"
        )
    share = fit.floor_collapse_share
    if share is not None and share > TAIL_SHARE:
        notes.append(
            f"E collapsed to about 0 in {share:.1%} of the bootstrap refits (more than the {TAIL_SHARE:.1%} a 95% "
            "interval leaves in each tail): the data do not pin the loss floor, so the intervals of E, the "
            "exponents and L_opt reach refits without one; add runs at larger N and D (in Python, "
            "fit_parametric(..., fixed_E=...) shows the fit with E fixed)"
        )
    return tuple(notes + _edge_notes(fit, axes))


def _warn_if_unsound(fit: ParametricFit, grad: np.ndarray) -> None:
    """Warn the caller of :func:`fit_parametric` about a degenerate, floorless, unconverged or fragile fit."""
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
    for note in fit.fragility:
        warnings.warn(f"Approach 3 is fragile: {note}", UserWarning, stacklevel=4)


@dataclass(frozen=True)
class _Options:
    """The checked options of one :func:`fit_parametric` call."""

    huber_delta: float
    axes: Mapping[str, np.ndarray]
    constraint: Constraint
    fixed_E: float | None
    bootstrap: int
    seed: int
    resample: str
    budget_rtol: float


@dataclass(frozen=True)
class _Optimum:
    """The winning point of the search (full and free coordinates), its objective and gradient, and the
    other refined optima (free coordinates, best first) that warm-start the bootstrap."""

    theta: np.ndarray
    f: float
    grad: np.ndarray
    optima: np.ndarray
    n_starts: int


def _evaluator(objective: _HuberLogObjective, constraint: Constraint) -> Any:
    """The search's kernel: ``objective`` over the free coordinates of ``constraint``."""

    def full(rows: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return objective(theta)

    return constraint.wrap(full)


def _grid_objective(arrays: tuple[np.ndarray, ...], w: np.ndarray, C: np.ndarray, opts: _Options) -> Any:
    """``(evaluate, scale)`` of the start grid on a budget-stratified subsample when there are more than
    MAX_GRID_POINTS points (None otherwise: the grid sees every point, as always)."""
    rows = grid_rows(bucket_budgets(C, rtol=opts.budget_rtol)[0], w > 0)
    if rows.size == int((w > 0).sum()):
        return None
    logger.info(
        "Approach 3: %d points; the start grid runs on a budget-stratified sample of %d (refinement on all)",
        int((w > 0).sum()),
        rows.size,
    )
    scale = objective_scale(w[rows], opts.huber_delta)
    log_n, log_d, log_l = (a[rows] for a in arrays)
    sub = _HuberLogObjective(log_n, log_d, log_l, opts.huber_delta, w[rows] / scale)
    return _evaluator(sub, opts.constraint), scale


def _optimise(
    objective: _HuberLogObjective, scale: float, opts: _Options, grid_objective: Any = None
) -> _Optimum:
    """Steps 1-3: every start of the (constrained) grid (on ``grid_objective``'s subsample when given),
    refinement of the best, scipy polish."""
    t_start = time.perf_counter()
    evaluate = _evaluator(objective, opts.constraint)
    starts = opts.constraint.starts(opts.axes)
    logger.info("Approach 3: %d starts on %d points", starts.shape[0], objective.n_points)
    grid, finite, refined, ranked = search(starts, evaluate, scale, grid_objective)
    best_z, best_f, grad = polish(evaluate, refined.x[ranked[0]].copy(), float(refined.f[ranked[0]]))
    logger.info(
        "Approach 3: %d starts (%d iterations, %.1f evaluations per start), %d within 1e-6 of the best%s; "
        "objective %.6g; %.2f s",
        starts.shape[0],
        int(grid.n_iter.max(initial=0)),
        grid.n_eval / starts.shape[0],
        int((grid.f[finite] <= (refined.f[ranked[0]] if grid_objective else best_f) * (1 + 1e-6)).sum()),
        " of the sample" if grid_objective else "",
        best_f * scale,
        time.perf_counter() - t_start,
    )
    optima = np.array([best_z] + [refined.x[i] for i in ranked[1:]])
    theta = opts.constraint.expand(best_z[:, None])[:, 0]
    return _Optimum(theta, best_f * scale, grad, optima, int(starts.shape[0]))


def _fit_clean(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, w: np.ndarray, C: np.ndarray, opts: _Options
) -> ParametricFit:
    """Approach 3 on validated arrays: N, D, L, C (FLOPs) positive finite, w >= 0 with a usable design."""
    log_n, log_d = np.log(N), np.log(D)
    scale = objective_scale(w, opts.huber_delta)
    log_l = np.log(L)
    objective = _HuberLogObjective(log_n, log_d, log_l, opts.huber_delta, w / scale)
    best = _optimise(objective, scale, opts, _grid_objective((log_n, log_d, log_l), w, C, opts))
    used = w > 0
    n_points = int(used.sum())
    samples, share = None, None
    ci: dict[str, tuple[float, float]] = {}
    if opts.bootstrap > 0 and n_points > len(opts.constraint.free):  # an exact fit gets no intervals
        keep = distinct(best.optima, np.arange(len(best.optima)), DISTINCT_OPTIMUM, N_BOOTSTRAP_STARTS)
        strata = None if opts.resample == "points" else budget_strata(C, used, opts.budget_rtol)
        refits = bootstrap_refits(
            objective, w, opts.huber_delta, (log_n, log_d), best.optima[keep], opts.bootstrap, opts.seed,
            opts.constraint, strata,
        )  # fmt: skip
        samples, ci = sample_ci(refits)
        if opts.fixed_E is None:
            share = float(collapsed(samples, N[used].max(), D[used].max()).mean())
    E, A, B = (math.exp(v) for v in best.theta[:3])
    fit = ParametricFit(
        E=E if opts.fixed_E is None else opts.fixed_E,
        A=A,
        B=B,
        alpha=float(best.theta[3]),
        beta=float(best.theta[4]),
        objective=best.f,
        n_points=n_points,
        huber_delta=opts.huber_delta,
        ci=ci,
        samples=samples,
        n_starts=best.n_starts,
        converged=bool(np.abs(best.grad).max() <= _CONVERGED_GTOL),
        n_range=(float(N[used].min()), float(N[used].max())),
        d_range=(float(D[used].min()), float(D[used].max())),
        equal_exponents=opts.constraint.equal_exponents,
        fixed_E=opts.fixed_E,
        floor_collapse_share=share,
        resample=opts.resample,
    )
    fit = replace(fit, fragility=_fragility(fit, opts.axes))
    _warn_if_unsound(fit, best.grad)
    return fit


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
    equal_exponents: bool = False,
    fixed_E: float | None = None,
    resample: str = "budgets",
) -> ParametricFit:
    """Fit L(N, D) = E + A / N**alpha + B / D**beta (Chinchilla Approach 3).

    ``N`` parameters, ``D`` training tokens, ``L`` final losses (equal-length, positive, finite). Minimises
    the sum of ``weights``-weighted Huber(``huber_delta``) losses of log residuals with L-BFGS from every
    start of ``init_grid`` (``"chinchilla"``: Hoffmann et al.'s 4,500-point grid, or a mapping of
    ``e, a, b, alpha, beta`` to start values, E = exp(e), A = exp(a), B = exp(b)) and keeps the best.
    ``bootstrap=B`` refits B resamples of the runs (seeded by ``seed``) for 95% percentile intervals;
    ``resample="budgets"`` (default) draws runs with replacement within each budget ``C`` (as many as it
    holds; budgets of one run are pooled), ``"points"`` from all runs at once (see docs/analysis.md).

    ``exclude`` drops runs flagged by :func:`flops_fit.analysis.outliers.detect_outliers` (duplicates and
    IsoFLOP-profile outliers; profiles are the runs' budgets ``C`` in FLOPs, default 6ND, grouped within
    ``budget_rtol``) before fitting; they are reported in ``excluded``, named by ``ids`` (default ``run-0``,
    ``run-1``, ...). ``C`` plays no other part in the fit.

    Constrained variants (the free five-parameter fit is the default): ``equal_exponents=True`` fits one
    exponent for both terms (alpha = beta, as Gadre et al. 2024 fitted over-training suites), so N_opt and
    D_opt both grow as C^0.5 by construction; ``fixed_E`` fixes the irreducible loss E (a positive loss, e.g.
    ``fixed_E=1.69`` or another fit's ``E``). Either takes its coordinate out of the search (the start grid
    is restricted to the free coordinates) and every bootstrap refit keeps the same constraint.

    Needs at least 5 points, at least 2 distinct N and 2 distinct D, and runs at 2 or more budgets (one
    IsoFLOP line does not separate the N and D terms); raises ValueError otherwise.
    """
    n, d, loss = positive_arrays(N=N, D=D, L=L)
    huber_delta = check_positive("huber_delta", huber_delta, "Chinchilla: 1e-3")
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    budget_rtol, exclude = check_budget_rtol(budget_rtol), check_flag("exclude", exclude)
    names = check_ids(ids, n.size)
    w = np.ones_like(n) if weights is None else _check_weights(weights, n.size)
    axes = grid_axes(init_grid)
    constraint, fixed_E = _check_constraint(equal_exponents, fixed_E)
    resample = _check_resample(resample)
    budgets = FLOPS_PER_PARAM_TOKEN * n * d if C is None else positive_arrays(C=C)[0]
    if budgets.size != n.size:
        raise ValueError(f"C must have one budget per point: got {budgets.size} for {n.size} points")
    excluded = pd.DataFrame()
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
    opts = _Options(huber_delta, axes, constraint, fixed_E, int(bootstrap), int(seed), resample, budget_rtol)
    fit = _fit_clean(n, d, loss, w, budgets, opts)
    return replace(fit, excluded=excluded) if len(excluded) else fit
