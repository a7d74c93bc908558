"""Approach 1 of Hoffmann et al. (2022): the training-curve envelope.

Every run's validation curve is mapped onto compute: the point where the run has seen ``t`` of its
``num_tokens`` tokens has spent ``t / num_tokens`` of its ``compute_budget`` (whatever FLOP convention the
runs used). At each of many log-spaced FLOP values the run with the lowest (log-interpolated) loss is the
envelope; its N and its tokens at that point give N_opt(C) and D_opt(C), to which power laws are fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis._validate import (
    canonical_order,
    check_bootstrap,
    check_budget_rtol,
    check_seed,
    positive_budgets,
)
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.isoflop import optimum_record, with_sample_ci
from flops_fit.analysis.outliers import exclude_outliers
from flops_fit.analysis.power_law import PowerLawFit, fit_power_law
from flops_fit.runs import validate_runs

logger = logging.getLogger(__name__)

#: Number of log-spaced FLOP values at which the envelope is read (Hoffmann et al. used 1,500).
DEFAULT_GRID_POINTS = 1500


@dataclass(frozen=True, eq=False)
class EnvelopeFit:
    """Result of Approach 1. ``envelope`` holds, per FLOP value, the best run's N, D and loss."""

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    envelope: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)

    approach = "envelope"

    @property
    def a(self) -> float:
        return self.n_opt_fit.a

    @property
    def b(self) -> float:
        return self.d_opt_fit.a

    def optimal(self, C: Any) -> dict[str, Any]:
        """Compute-optimal N (parameters), D (tokens) and loss at budget(s) C (FLOPs)."""
        c = positive_budgets(C)
        return optimum_record(
            c,
            self.n_opt_fit.predict(c),
            self.d_opt_fit.predict(c),
            self.l_opt_fit.predict(c),
            self.n_opt_fit.predict_interval(c),
            self.d_opt_fit.predict_interval(c),
            self.l_opt_fit.predict_interval(c),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "a": self.a,
            "b": self.b,
            "n_opt_fit": self.n_opt_fit.to_dict(),
            "d_opt_fit": self.d_opt_fit.to_dict(),
            "l_opt_fit": self.l_opt_fit.to_dict(),
            "envelope": self.envelope.to_dict(orient="list"),
            "excluded": self.excluded.drop(columns=[c for c in ("curve",) if c in self.excluded]).to_dict(
                orient="records"
            ),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvelopeFit:
        return cls(
            n_opt_fit=PowerLawFit.from_dict(d["n_opt_fit"]),
            d_opt_fit=PowerLawFit.from_dict(d["d_opt_fit"]),
            l_opt_fit=PowerLawFit.from_dict(d["l_opt_fit"]),
            envelope=pd.DataFrame(d.get("envelope", {})),
            excluded=pd.DataFrame.from_records(d.get("excluded", [])),
        )

    def summary(self) -> str:
        sizes = self.envelope["optimal_params"].nunique()
        return "\n".join(
            [
                "Approach 1 (training-curve envelope)",
                f"  envelope: {len(self.envelope)} FLOP values, {sizes} distinct model sizes on it",
                f"  N_opt: {self.n_opt_fit}",
                f"  D_opt: {self.d_opt_fit}",
                f"  L_opt: {self.l_opt_fit}",
                f"  a = {self.a:.4f}   b = {self.b:.4f}",
            ]
        )

    def __repr__(self) -> str:
        return f"EnvelopeFit(a={self.a:.4f}, b={self.b:.4f})"


def _curve_arrays(curve: Any, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        arr = np.asarray(curve, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"run {run_id}: curve must be a list of (tokens, loss) pairs") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"run {run_id}: curve must be a list of (tokens, loss) pairs, got shape {arr.shape}")
    ok = np.all(np.isfinite(arr), axis=1) & (arr[:, 0] > 0) & (arr[:, 1] > 0)
    arr = arr[ok]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    _, first = np.unique(arr[:, 0], return_index=True)
    return arr[first, 0], arr[first, 1]


def fit_envelope(
    runs: pd.DataFrame,
    *,
    grid_points: int = DEFAULT_GRID_POINTS,
    exclude: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
) -> EnvelopeFit:
    """Approach 1 from per-run loss curves (column ``curve``: list of (tokens, loss) pairs).

    ``bootstrap`` resamples whole runs (with replacement) and rebuilds the envelope for 95% intervals; without
    it the fit carries no intervals (envelope points are not independent, so regression intervals would lie). Runs flagged by :func:`detect_outliers` are left out unless ``exclude=False``.
    """
    bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
    budget_rtol = check_budget_rtol(budget_rtol)
    if isinstance(grid_points, bool) or not isinstance(grid_points, (int, np.integer)):
        raise TypeError(f"grid_points must be an int >= 10, got {grid_points!r}")
    df = validate_runs(runs)
    if "curve" not in df.columns or not df["curve"].map(lambda c: c is not None and len(c) > 0).any():
        raise ValueError(
            "Approach 1 needs loss curves: the runs carry no 'curve' column of (tokens, loss) pairs. "
            "Train with eval_every set so each run records its curve, or use fit_isoflop/fit_parametric."
        )
    if int(grid_points) < 10:
        raise ValueError(f"grid_points must be >= 10, got {grid_points}")
    excluded = pd.DataFrame()
    if exclude:
        df, excluded = exclude_outliers(df, what="fit_envelope", budget_rtol=budget_rtol)
    else:
        df = df[df["status"] == "completed"].reset_index(drop=True)
    keys = ("num_params", "compute_budget", "num_tokens", "final_loss")
    df = df.iloc[canonical_order(*(df[k].to_numpy(float, na_value=np.nan) for k in keys))]

    runs_c: list[tuple[float, float, np.ndarray, np.ndarray]] = []  # (N, FLOPs per token, log C, log L)
    for row in df.itertuples(index=False):
        curve = row.curve
        if curve is None or (isinstance(curve, float) and np.isnan(curve)) or len(curve) == 0:
            continue
        tokens, loss = _curve_arrays(curve, row.experiment_id)
        if tokens.size == 0:
            continue
        fpt = row.compute_budget / row.num_tokens
        runs_c.append((row.num_params, fpt, np.log(tokens * fpt), np.log(loss)))
    if len({r[0] for r in runs_c}) < 2:
        raise ValueError("Approach 1 needs curves from at least 2 model sizes")

    grid = np.linspace(min(r[2][0] for r in runs_c), max(r[2][-1] for r in runs_c), int(grid_points))
    env = _envelope(runs_c, grid)
    if len(env) < 2 or env["optimal_params"].nunique() < 2:
        raise ValueError(
            "the envelope has fewer than 2 model sizes where the optimum is bracketed (a smaller and a larger "
            "model reach the same FLOPs); train more sizes, smaller and larger, so the best size changes with compute"
        )
    n_fit, d_fit, l_fit = _laws(env)
    if bootstrap > 0:
        n_fit, d_fit, l_fit = _bootstrap_laws(runs_c, grid, (n_fit, d_fit, l_fit), int(bootstrap), seed)
    return EnvelopeFit(n_fit, d_fit, l_fit, env, excluded)


def _envelope(runs_c: list[tuple[float, float, np.ndarray, np.ndarray]], grid: np.ndarray) -> pd.DataFrame:
    """The lowest-loss run at each grid FLOP value (log), kept only where the optimum is bracketed.

    At a FLOP value where the winner is the smallest (or largest) model whose curve reaches it, a still
    smaller (larger) model might have been better: such points are censored, like an edge minimum in
    Approach 2, and are dropped (otherwise the envelope flattens at both ends and biases the exponent).
    """
    best_l = np.full(grid.size, np.inf)
    best_run = np.full(grid.size, -1)
    n_lo = np.full(grid.size, np.inf)
    n_hi = np.full(grid.size, -np.inf)
    for j, (n, _, lc, ll) in enumerate(runs_c):
        inside = (grid >= lc[0]) & (grid <= lc[-1])
        if not inside.any():
            continue
        interp = np.interp(grid[inside], lc, ll) if lc.size > 1 else np.full(inside.sum(), ll[0])
        idx = np.flatnonzero(inside)
        better = interp < best_l[idx]
        best_l[idx[better]] = interp[better]
        best_run[idx[better]] = j
        n_lo[idx] = np.minimum(n_lo[idx], n)
        n_hi[idx] = np.maximum(n_hi[idx], n)
    covered = best_run >= 0
    n_best = np.where(covered, np.array([runs_c[j][0] for j in np.maximum(best_run, 0)]), np.nan)
    keep = covered & (n_best > n_lo) & (n_best < n_hi)
    grid, best_l, best_run = grid[keep], best_l[keep], best_run[keep]
    n_opt = np.array([runs_c[j][0] for j in best_run])
    d_opt = np.exp(grid) / np.array([runs_c[j][1] for j in best_run])
    return pd.DataFrame(
        {
            "compute": np.exp(grid),
            "optimal_params": n_opt,
            "optimal_tokens": d_opt,
            "optimal_loss": np.exp(best_l),
        }
    )


def _strip_ci(fit: PowerLawFit) -> PowerLawFit:
    """Regression intervals over envelope points are meaningless (the points are not independent)."""
    return replace(fit, k_ci=None, a_ci=None, offset_ci=None, cov=None)


def _laws(env: pd.DataFrame) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
    c = env["compute"].to_numpy()
    n_fit = fit_power_law(c, env["optimal_params"].to_numpy())
    d_fit = fit_power_law(c, env["optimal_tokens"].to_numpy())
    l_fit = fit_power_law(c, env["optimal_loss"].to_numpy(), offset=True)
    return _strip_ci(n_fit), _strip_ci(d_fit), _strip_ci(l_fit)


def _bootstrap_laws(
    runs_c: list[tuple[float, float, np.ndarray, np.ndarray]],
    grid: np.ndarray,
    fits: tuple[PowerLawFit, PowerLawFit, PowerLawFit],
    reps: int,
    seed: int,
) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
    """Resample whole runs with replacement, rebuild the envelope and refit: 95% percentile intervals."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        pick = rng.integers(0, len(runs_c), len(runs_c))
        env = _envelope([runs_c[i] for i in pick], grid)
        if len(env) < 2 or env["optimal_params"].nunique() < 2:
            continue
        try:
            n_fit, d_fit, l_fit = _laws(env)
        except ValueError:
            continue
        draws.append(
            [np.log(n_fit.k), n_fit.a, np.log(d_fit.k), d_fit.a, l_fit.offset, np.log(l_fit.k), l_fit.a]
        )
    if len(draws) < 2:
        return fits
    s = np.asarray(draws)
    return tuple(
        with_sample_ci(fit, s, cols)
        for fit, cols in zip(fits, ((0, 1, None), (2, 3, None), (5, 6, 4)), strict=True)
    )
