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

from flops_fit.analysis._offset import BLOCK_ELEMENTS
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.fit import LawsFit, fmt_ci, with_sample_ci
from flops_fit.analysis.outliers import exclude_outliers
from flops_fit.analysis.power_law import PowerLawFit, fit_power_law, fit_power_law_batch
from flops_fit.core.runs import validate_runs
from flops_fit.core.validate import (
    Integer,
    canonical_order,
    check,
    check_bootstrap,
    check_budget_rtol,
    check_flag,
    check_seed,
)

logger = logging.getLogger(__name__)

#: Number of log-spaced FLOP values at which the envelope is read (Hoffmann et al. used 1,500).
DEFAULT_GRID_POINTS = 1500
#: ... and the most it accepts (each bootstrap resample holds a row of this many envelope values).
MAX_GRID_POINTS = 100_000
_AT_LEAST_10 = Integer(10, type_label="an int >= 10")
_AT_MOST = Integer(
    hi=MAX_GRID_POINTS, range_label=f"at most {MAX_GRID_POINTS:,} (default {DEFAULT_GRID_POINTS})"
)


@dataclass(frozen=True, eq=False)
class EnvelopeFit(LawsFit):
    """Result of Approach 1. ``envelope`` holds, per FLOP value, the best run's N, D and loss.

    ``a``, ``b``: exponents of N_opt ∝ C^a and D_opt ∝ C^b; ``a_ci``, ``b_ci``: their 95% bootstrap
    intervals (None without a bootstrap: envelope points are not independent, so there are no regression
    intervals).
    """

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    envelope: pd.DataFrame
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: np.ndarray | None = None  # bootstrap draws, columns as IsoFLOPFit.samples

    approach = "envelope"

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
            "samples": None if self.samples is None else self.samples.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvelopeFit:
        samples = d.get("samples")
        return cls(
            n_opt_fit=PowerLawFit.from_dict(d["n_opt_fit"]),
            d_opt_fit=PowerLawFit.from_dict(d["d_opt_fit"]),
            l_opt_fit=PowerLawFit.from_dict(d["l_opt_fit"]),
            envelope=pd.DataFrame(d.get("envelope", {})),
            excluded=pd.DataFrame.from_records(d.get("excluded", [])),
            samples=None if samples is None else np.asarray(samples, dtype=float),
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
                f"  a = {self.a:.4f}{fmt_ci(self.a_ci)}   b = {self.b:.4f}{fmt_ci(self.b_ci)}",
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
    budget_rtol, exclude = check_budget_rtol(budget_rtol), check_flag("exclude", exclude)
    grid_points = check("grid_points", grid_points, _AT_LEAST_10)
    grid_points = check("grid_points", grid_points, _AT_MOST)
    df = validate_runs(runs)
    if "curve" not in df.columns or not df["curve"].map(lambda c: c is not None and len(c) > 0).any():
        raise ValueError(
            "Approach 1 needs loss curves: the runs carry no 'curve' column of (tokens, loss) pairs. "
            "Train with eval_every set so each run records its curve, or use fit_isoflop/fit_parametric."
        )
    excluded = pd.DataFrame()
    if exclude:
        df, excluded = exclude_outliers(df, what="fit_envelope", budget_rtol=budget_rtol)
    else:
        df = df[df["status"] == "completed"].reset_index(drop=True)
    keys = ("num_params", "compute_budget", "num_tokens", "final_loss")
    df = df.iloc[canonical_order(*(df[k].to_numpy(float, na_value=np.nan) for k in keys))]

    runs_c = _run_curves(df)
    if len({r[0] for r in runs_c}) < 2:
        raise ValueError("Approach 1 needs curves from at least 2 model sizes")

    grid = np.linspace(min(r[2][0] for r in runs_c), max(r[2][-1] for r in runs_c), grid_points)
    env = _envelope(runs_c, grid)
    if len(env) < 2 or env["optimal_params"].nunique() < 2:
        raise ValueError(
            "the envelope has fewer than 2 model sizes where the optimum is bracketed (a smaller and a larger "
            "model reach the same FLOPs); train more sizes, smaller and larger, so the best size changes with compute"
        )
    n_fit, d_fit, l_fit = _laws(env)
    samples = None
    if bootstrap > 0:
        (n_fit, d_fit, l_fit), samples = _bootstrap_laws(runs_c, grid, (n_fit, d_fit, l_fit), bootstrap, seed)
    return EnvelopeFit(n_fit, d_fit, l_fit, env, excluded, samples)


def _run_curves(df: pd.DataFrame) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
    """(N, FLOPs per token, log FLOPs, log loss) of each run with a non-empty curve, in ``df``'s order."""
    runs_c = []
    for row in df.itertuples(index=False):
        curve = row.curve
        if curve is None or (isinstance(curve, float) and np.isnan(curve)) or len(curve) == 0:
            continue
        tokens, loss = _curve_arrays(curve, row.experiment_id)
        if tokens.size == 0:
            continue
        fpt = row.compute_budget / row.num_tokens
        runs_c.append((row.num_params, fpt, np.log(tokens * fpt), np.log(loss)))
    return runs_c


def _sizes(runs_c: list[tuple[float, float, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Each run's N (parameters) and FLOPs per token, as arrays."""
    return np.array([r[0] for r in runs_c]), np.array([r[1] for r in runs_c])


def _on_grid(runs_c: list[tuple[float, float, np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """Each run's log loss interpolated at the grid's log FLOP values, inf where its curve does not reach."""
    out = np.full((len(runs_c), grid.size), np.inf)
    for j, (_, _, lc, ll) in enumerate(runs_c):
        inside = (grid >= lc[0]) & (grid <= lc[-1])
        out[j, inside] = np.interp(grid[inside], lc, ll) if lc.size > 1 else ll[0]
    return out


def _envelope_arrays(
    sizes: np.ndarray, fpt: np.ndarray, curves: np.ndarray, grid: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The envelope of each subset of runs (row of ``present``, (R, runs) bool) at every grid point.

    ``sizes``, ``fpt``: each run's N and FLOPs per token; ``curves``: :func:`_on_grid`. Returns (kept, N, D,
    loss), each (R, G): ``kept`` marks grid points where the lowest-loss run (the first of equals) has both a
    smaller and a larger run reaching that FLOP value, i.e. where the optimum is bracketed.
    """
    block = max(1, BLOCK_ELEMENTS // curves.size)
    kept = np.zeros((present.shape[0], grid.size), dtype=bool)
    best = np.zeros(kept.shape, dtype=int)
    loss = np.zeros(kept.shape)
    for lo in range(0, present.shape[0], block):
        rows = slice(lo, lo + block)
        lv = np.where(present[rows, :, None], curves[None], np.inf)  # (rows, runs, G)
        b = np.argmin(lv, axis=1)
        reach = np.isfinite(lv)
        n_lo = np.where(reach, sizes[:, None], np.inf).min(1)
        n_hi = np.where(reach, sizes[:, None], -np.inf).max(1)
        best[rows] = b
        loss[rows] = np.take_along_axis(lv, b[:, None], axis=1)[:, 0]
        kept[rows] = np.isfinite(loss[rows]) & (sizes[b] > n_lo) & (sizes[b] < n_hi)
    return kept, sizes[best], np.exp(grid) / fpt[best], np.exp(np.where(kept, loss, 0.0))


def _envelope(runs_c: list[tuple[float, float, np.ndarray, np.ndarray]], grid: np.ndarray) -> pd.DataFrame:
    """The lowest-loss run at each grid FLOP value (log), kept only where the optimum is bracketed.

    At a FLOP value where the winner is the smallest (or largest) model whose curve reaches it, a still
    smaller (larger) model might have been better: such points are censored, like an edge minimum in
    Approach 2, and are dropped (otherwise the envelope flattens at both ends and biases the exponent).
    """
    sizes, fpt = _sizes(runs_c)
    kept, n_opt, d_opt, l_opt = (
        v[0]
        for v in _envelope_arrays(sizes, fpt, _on_grid(runs_c, grid), grid, np.ones((1, len(runs_c)), bool))
    )
    return pd.DataFrame(
        {
            "compute": np.exp(grid[kept]),
            "optimal_params": n_opt[kept],
            "optimal_tokens": d_opt[kept],
            "optimal_loss": l_opt[kept],
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
) -> tuple[tuple[PowerLawFit, PowerLawFit, PowerLawFit], np.ndarray | None]:
    """Resample whole runs with replacement, rebuild the envelope and refit: the laws with 95% percentile
    intervals, and the draws (columns ln k_N, a, ln k_D, b, L_opt offset, ln k, exponent)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(runs_c), (reps, len(runs_c)))
    present = np.zeros(picks.shape, dtype=bool)
    present[np.arange(reps)[:, None], picks] = True
    sizes, fpt = _sizes(runs_c)
    curves = _on_grid(runs_c, grid)
    c = np.exp(grid)
    draws = []
    block = 500  # resamples at a time: bounds the memory of the (resample, grid) arrays
    for lo in range(0, reps, block):
        kept, n_opt, d_opt, l_opt = _envelope_arrays(sizes, fpt, curves, grid, present[lo : lo + block])
        w = kept.astype(float)
        # a draw needs 2 sizes on its envelope and 3 points for the L_opt law, as fit_power_law does
        varied = np.where(kept, n_opt, np.inf).min(1) < np.where(kept, n_opt, -np.inf).max(1)
        ok = varied & (kept.sum(1) >= 3)
        laws = [
            fit_power_law_batch(c, y[ok], w[ok], offset=off)
            for y, off in ((n_opt, False), (d_opt, False), (l_opt, True))
        ]
        draws.append(np.concatenate([laws[0][:, 1:], laws[1][:, 1:], laws[2]], axis=1))
    s = np.concatenate(draws)
    if len(s) < 2:
        return fits, None
    laws = tuple(
        with_sample_ci(fit, s, cols)
        for fit, cols in zip(fits, ((0, 1, None), (2, 3, None), (5, 6, 4)), strict=True)
    )
    return laws, s
