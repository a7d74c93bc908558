"""What every figure draws from, built once: the plottable runs, their budget buckets, the fits, the targets.

:class:`PlotContext` checks its inputs, groups the budgets by the one rule the fits use
(:func:`flops_fit.analysis.bucketing.bucket_budgets`) and reads the loss curves; its methods answer the
questions several figures ask (which runs a fit excluded, which runs lie in a parabola's window, the compute
range to show, a fit's allocation).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from flops_fit.analysis.approaches import APPROACHES, FIT_TYPES
from flops_fit.analysis.bucketing import bucket_budgets
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.core.runs import usable_mask, validate_runs
from flops_fit.core.validate import check_budget_rtol, positive_values
from flops_fit.report.plots.style import log_norm

logger = logging.getLogger(__name__)

#: The fit type of each approach.
#: Without target budgets, the laws are drawn this factor beyond the largest observed budget.
EXTRAPOLATION_FACTOR = 10.0
#: A fit's excluded run is matched to a plotted run when N, D and loss agree to this relative tolerance.
_EXCLUDED_MATCH_RTOL = 1e-9
_MATCH_COLUMNS = ["num_params", "num_tokens", "final_loss"]
#: Why a figure of one approach cannot be drawn without its fit.
_NEEDS_FIT = {
    "isoflop": "needs an IsoFLOPFit (fits['isoflop'])",
    "parametric": "needs a ParametricFit (fits['parametric'])",
    "envelope": "needs an EnvelopeFit (fits['envelope'])",
}

Grouping = Callable[..., tuple[np.ndarray, np.ndarray]]


class Curve(NamedTuple):
    """One run's loss curve against compute: FLOPs = tokens * C / D, as Approach 1 counts them."""

    run_id: str
    num_params: float
    flops: np.ndarray
    loss: np.ndarray


@dataclass(frozen=True, eq=False)
class PlotContext:
    """The inputs of every figure. ``runs``: the runs table as given (checked); ``points``: its completed
    runs with positive finite C, N, D and loss, with their budget ``bucket``; ``budgets``: each bucket's
    geometric-mean budget (FLOPs), increasing; ``curves``: the loss curves of the points that have one; ``backtest``: a
    rolling back-test table, or None."""

    runs: pd.DataFrame
    points: pd.DataFrame
    fits: Mapping[str, Any]
    budget_rtol: float
    target_budgets: tuple[float, ...]
    budgets: np.ndarray
    curves: tuple[Curve, ...]
    backtest: pd.DataFrame | None = None

    @classmethod
    def build(
        cls,
        runs: pd.DataFrame,
        fits: Mapping[str, Any] | Any,
        budget_rtol: float,
        target_budgets: Iterable[float] | float | None,
        group: Grouping = bucket_budgets,
        backtest: pd.DataFrame | None = None,
    ) -> PlotContext:
        """Check the inputs and group the runs' budgets with ``group`` (the one bucketing rule);
        ``backtest``: a rolling back-test table, for the figure of that name."""
        fits = check_fits(fits)
        rtol = check_budget_rtol(budget_rtol)
        targets = check_targets(target_budgets)
        runs = validate_runs(runs)
        points = usable_points(runs)
        labels, centers = group(points["compute_budget"].to_numpy(float), rtol=rtol)
        points["bucket"] = labels
        _warn_if_grouped_unlike(fits, rtol)
        if backtest is not None and not isinstance(backtest, pd.DataFrame):
            raise TypeError(
                f"backtest must be a back-test table (Result.backtest()), got {type(backtest).__name__}"
            )
        curves = read_curves(points)
        return cls(runs, points, MappingProxyType(fits), rtol, targets, centers, curves, backtest)

    @property
    def n(self) -> np.ndarray:
        return self.points["num_params"].to_numpy(float)

    @property
    def d(self) -> np.ndarray:
        return self.points["num_tokens"].to_numpy(float)

    @property
    def loss(self) -> np.ndarray:
        return self.points["final_loss"].to_numpy(float)

    @property
    def bucket(self) -> np.ndarray:
        return self.points["bucket"].to_numpy()

    def missing(self, name: str) -> str | None:
        """Why figure ``name`` cannot be drawn, or None when it can."""
        if name in _NEEDS_FIT and name not in self.fits:
            return _NEEDS_FIT[name]
        if name == "residuals" and not self.fits:
            return "needs a fit"
        if name == "envelope" and not self.curves:
            return "needs loss curves in the runs table (column 'curve')"
        if name == "backtest" and (self.backtest is None or "distance" not in self.backtest.columns):
            return "needs a rolling back-test table (Result.with_backtest(), or backtest=result.backtest())"
        return None

    def excluded_mask(self, fit: Any) -> np.ndarray:
        """True for the plotted runs that ``fit`` left out as outliers, matched on N, D and loss (not on C:
        a fit may have rebuilt the budgets as 6 N D)."""
        excluded = getattr(fit, "excluded", None)
        mask = np.zeros(len(self.points), dtype=bool)
        if not isinstance(excluded, pd.DataFrame) or excluded.empty:
            return mask
        if not set(_MATCH_COLUMNS) <= set(excluded.columns):
            return mask
        mine = self.points[_MATCH_COLUMNS].to_numpy(float)
        for row in excluded[_MATCH_COLUMNS].to_numpy(float):
            mask |= np.all(np.isclose(mine, row, rtol=_EXCLUDED_MATCH_RTOL, atol=0.0), axis=1)
        return mask

    def budget_norm(self, extra: Iterable[float] = ()) -> LogNorm:
        """The budgets' colour scale (widened to cover ``extra`` budgets)."""
        return log_norm(np.concatenate([self.budgets, np.asarray(list(extra), dtype=float)]))

    def bucket_of(self, budget: float) -> int:
        """Index of the bucket whose centre is nearest to ``budget`` in log, or -1 beyond ``budget_rtol``."""
        dist = np.abs(np.log(self.budgets) - math.log(budget))
        k = int(np.argmin(dist))
        return k if dist[k] <= math.log1p(self.budget_rtol) + 1e-9 else -1

    def c_range(self) -> tuple[float, float, float]:
        """(left edge, largest observed budget, right edge) of the compute axis, in FLOPs."""
        c_obs = self.points["compute_budget"].to_numpy(float)
        c_max = float(c_obs.max())
        right = c_max * EXTRAPOLATION_FACTOR
        if self.target_budgets:
            right = max(right, max(self.target_budgets) * 2.0)
        return float(c_obs.min()) / 1.5, c_max, right

    def optimal(self, name: str, c: np.ndarray) -> dict[str, Any] | None:
        """``fits[name].optimal(c)``, or None (logged) when the fit cannot give an allocation."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.fits[name].optimal(c)
        if not np.isfinite(np.asarray(out["optimal_params"], dtype=float)).any():
            reason = "; ".join(str(w.message) for w in caught) or "non-finite allocation"
            logger.warning("%s: no compute-optimal allocation to draw (%s)", name, reason)
            return None
        return out

    def windows(self, iso: IsoFLOPFit) -> tuple[np.ndarray, dict[int, Any]]:
        """(in_window, row_of_bucket): whether each plotted run lies in its budget's parabola window, and
        the ``minima`` row matched to each bucket. Runs of a bucket without a parabola count as inside."""
        n, bucket = self.n, self.bucket
        inside = np.ones(len(self.points), dtype=bool)
        rows: dict[int, Any] = {}
        for row in iso.minima.itertuples(index=False):
            k = self.bucket_of(row.compute_budget)
            if k < 0:
                continue
            rows[k] = row
            if np.all(np.isfinite(np.asarray(row.coef, dtype=float))):
                member = bucket == k
                lo, hi = row.fit_n_lo * (1 - 1e-9), row.fit_n_hi * (1 + 1e-9)
                inside[member] = (n[member] >= lo) & (n[member] <= hi)
        return inside, rows


def check_fits(fits: Any) -> dict[str, Any]:
    """``fits`` (one fit, or a mapping of approach name to fit) as a dict in :data:`APPROACHES` order."""
    if isinstance(fits, tuple(FIT_TYPES.values())):
        fits = {fits.approach: fits}
    if not isinstance(fits, Mapping):
        raise TypeError(
            "fits must be a fit (EnvelopeFit, IsoFLOPFit or ParametricFit) or a mapping of approach name "
            f"({', '.join(APPROACHES)}) to fits, got {type(fits).__name__}"
        )
    if not fits:
        raise ValueError(f"fits is empty; pass at least one of {list(APPROACHES)} (e.g. {{'isoflop': fit}})")
    for key, fit in fits.items():
        if key not in FIT_TYPES:
            raise ValueError(f"fits has unknown approach {key!r}; use keys from {list(APPROACHES)}")
        if not isinstance(fit, FIT_TYPES[key]):
            raise TypeError(f"fits[{key!r}] must be a {FIT_TYPES[key].__name__}, got {type(fit).__name__}")
    return {name: fits[name] for name in APPROACHES if name in fits}


def check_targets(target_budgets: Any) -> tuple[float, ...]:
    """The target budgets (FLOPs) as sorted unique floats; None gives none."""
    if target_budgets is None:
        return ()
    try:
        if isinstance(target_budgets, (str, bytes)):
            raise TypeError
        arr = np.asarray(target_budgets, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"target_budgets must be numbers of FLOPs, got {target_budgets!r}") from None
    positive_values("target_budgets", target_budgets, "FLOPs (e.g. target_budgets=[1e21])")
    return tuple(float(v) for v in np.unique(arr))


def _warn_if_grouped_unlike(fits: Mapping[str, Any], budget_rtol: float) -> None:
    """Log a warning when the IsoFLOP fit grouped its budgets with another ``budget_rtol``."""
    iso = fits.get("isoflop")
    if iso is not None and not math.isclose(iso.budget_rtol, budget_rtol):
        logger.warning(
            "budget_rtol=%g differs from the IsoFLOP fit's %g: the plotted profiles may group budgets "
            "differently from the fit; pass budget_rtol=%g",
            budget_rtol,
            iso.budget_rtol,
            iso.budget_rtol,
        )


def usable_points(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed runs whose C, N, D and loss are positive and finite (the only ones a log plot can show)."""
    ok = usable_mask(runs)
    if not ok.any():
        raise ValueError(
            "runs holds no completed run with positive finite compute_budget, num_params, num_tokens and "
            "final_loss; there is nothing to plot (check the results file)"
        )
    if (~ok).any():
        logger.info(
            "plots leave out %d run(s) that are not completed or have non-finite values", int((~ok).sum())
        )
    return runs[ok].reset_index(drop=True)


def read_curves(points: pd.DataFrame) -> tuple[Curve, ...]:
    """The loss curve of every run that has one (column ``curve``: (tokens, loss) pairs)."""
    if "curve" not in points.columns:
        return ()
    out = []
    for row in points.itertuples(index=False):
        pairs = _pairs(row.curve, row.experiment_id)
        if len(pairs):
            fpt = row.compute_budget / row.num_tokens
            out.append(Curve(str(row.experiment_id), float(row.num_params), pairs[:, 0] * fpt, pairs[:, 1]))
    return tuple(out)


def _pairs(curve: Any, run_id: Any) -> np.ndarray:
    """A run's curve as positive finite (tokens, loss) rows in increasing tokens; empty if it has none."""
    if not isinstance(curve, (list, tuple, np.ndarray)) or len(curve) == 0:
        return np.zeros((0, 2))
    try:
        arr = np.asarray(list(curve), dtype=float)  # list of pairs, or an array of arrays (Parquet)
    except (TypeError, ValueError):
        arr = np.zeros((0, 0))
    if arr.ndim != 2 or arr.shape[1] != 2:
        logger.debug("run %s: curve is not a list of (tokens, loss) pairs; not drawn", run_id)
        return np.zeros((0, 2))
    arr = arr[np.all(np.isfinite(arr) & (arr > 0), axis=1)]
    return arr[np.argsort(arr[:, 0], kind="stable")]
