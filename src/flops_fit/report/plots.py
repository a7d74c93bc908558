"""Figures of a scaling-law analysis: IsoFLOP profiles, compute-optimal laws, L(N, D), residuals, envelope.

:class:`ScalingVisualizer` takes the runs table (:mod:`flops_fit.core.runs`) and the fitted approaches
(``EnvelopeFit``, ``IsoFLOPFit``, ``ParametricFit``) and draws each figure as a standalone
:class:`matplotlib.figure.Figure` (no pyplot, so no global figure state), sized for a paper column (3.5 in)
or a full page width (7 in), with colour-blind-safe colours: budgets on a truncated viridis scale, approaches
in the Okabe–Ito palette and each with its own line style. Units: C in FLOPs, N in parameters, D in tokens,
loss as given by the runs (nats for cross-entropy).

Budgets are grouped by :func:`flops_fit.analysis.bucketing.bucket_budgets`, the rule the fits use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Formatter

from flops_fit.analysis.approaches import APPROACHES, fit_from_dict
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets, lowest_loss_per_budget
from flops_fit.analysis.envelope import EnvelopeFit
from flops_fit.analysis.isoflop import (
    FLAG_CONCAVE,
    FLAG_EDGE_LARGE,
    FLAG_EDGE_SMALL,
    FLAG_FLAT,
    FLAG_TOO_FEW,
    IsoFLOPFit,
)
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.core.io import atomic_write
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, usable_mask, validate_runs
from flops_fit.report.analyzer import ScalingAnalysis

logger = logging.getLogger(__name__)

#: Every figure, in the order :meth:`ScalingVisualizer.save_all` writes them (file ``<name>.<format>``).
FIGURES: tuple[str, ...] = ("isoflop", "optimal", "parametric", "residuals", "envelope")

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}

#: Colour, line style and legend name of each approach (Hoffmann et al.'s numbering).
APPROACH_STYLE: dict[str, dict[str, str]] = {
    "envelope": {"color": OKABE_ITO["green"], "linestyle": "-.", "name": "Approach 1 (envelope)"},
    "isoflop": {"color": OKABE_ITO["blue"], "linestyle": "-", "name": "Approach 2 (IsoFLOP)"},
    "parametric": {"color": OKABE_ITO["vermillion"], "linestyle": "--", "name": "Approach 3 (parametric)"},
}

#: What each IsoFLOP flag asks the user to do (shown in the legend of flagged budgets).
FLAG_ADVICE: dict[str, str] = {
    FLAG_EDGE_SMALL: "edge: extend to smaller models",
    FLAG_EDGE_LARGE: "edge: extend to larger models",
    FLAG_TOO_FEW: "too few sizes",
    FLAG_FLAT: "flat: widen the size span",
    FLAG_CONCAVE: "no curvature: widen the size span",
}

SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.0
#: Without target budgets, the laws are drawn this factor beyond the largest observed budget.
EXTRAPOLATION_FACTOR = 10.0
#: Filled contour levels of the parametric loss surface.
N_CONTOUR_LEVELS = 12
#: At most this many IsoFLOP lines are drawn on the parametric contours.
MAX_ISOFLOP_LINES = 12

_STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.frameon": False,
    "legend.handlelength": 2.2,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "0.9",
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "figure.dpi": 150,
    "svg.hashsalt": "flops-fit",
    "svg.fonttype": "path",
}

#: viridis without its pale yellow end, which vanishes on white.
BUDGET_CMAP: Colormap = ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.85, 256)), "budget")
_EXCLUDED_MATCH_RTOL = 1e-9


def _sci(x: float, digits: int = 2) -> str:
    """``x`` as mathtext scientific notation, e.g. ``$2.5\\times10^{18}$`` or ``$10^{18}$``."""
    if not (math.isfinite(x) and x > 0):
        return f"{x:g}"
    exp = math.floor(math.log10(x))
    mant = float(f"{x / 10**exp:.{digits}g}")
    if mant >= 10:
        mant, exp = mant / 10, exp + 1
    if mant == 1:
        return f"$10^{{{exp}}}$"
    return f"${mant:g}\\times10^{{{exp}}}$"


def _check_fits(fits: Any) -> dict[str, Any]:
    types = {"envelope": EnvelopeFit, "isoflop": IsoFLOPFit, "parametric": ParametricFit}
    if isinstance(fits, tuple(types.values())):
        fits = {fits.approach: fits}
    if not isinstance(fits, Mapping):
        raise TypeError(
            "fits must be a fit (EnvelopeFit, IsoFLOPFit or ParametricFit) or a mapping of approach name "
            f"({', '.join(APPROACHES)}) to fits, got {type(fits).__name__}"
        )
    if not fits:
        raise ValueError(f"fits is empty; pass at least one of {list(APPROACHES)} (e.g. {{'isoflop': fit}})")
    out: dict[str, Any] = {}
    for key, fit in fits.items():
        if key not in types:
            raise ValueError(f"fits has unknown approach {key!r}; use keys from {list(APPROACHES)}")
        if not isinstance(fit, types[key]):
            raise TypeError(f"fits[{key!r}] must be a {types[key].__name__}, got {type(fit).__name__}")
        out[key] = fit
    return {name: out[name] for name in APPROACHES if name in out}


def _check_rtol(budget_rtol: Any) -> float:
    if isinstance(budget_rtol, bool) or not isinstance(budget_rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"budget_rtol must be a number (e.g. 0.05 for 5%), got {type(budget_rtol).__name__}")
    if not (math.isfinite(budget_rtol) and budget_rtol >= 0):
        raise ValueError(f"budget_rtol must be a finite number >= 0 (e.g. 0.05 for 5%), got {budget_rtol}")
    return float(budget_rtol)


def _check_targets(target_budgets: Any) -> tuple[float, ...]:
    if target_budgets is None:
        return ()
    if isinstance(target_budgets, (str, bytes)):
        raise TypeError(f"target_budgets must be numbers of FLOPs, got {target_budgets!r}")
    try:
        arr = np.asarray(target_budgets, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"target_budgets must be numbers of FLOPs, got {target_budgets!r}") from None
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(
            f"target_budgets must be positive finite FLOPs, got {arr[bad][0]!r}; e.g. target_budgets=[1e21]"
        )
    return tuple(float(v) for v in np.unique(arr))


def _usable_points(runs: pd.DataFrame) -> pd.DataFrame:
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


def _finite_ci(ci: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if ci is None:
        return None
    lo, hi = (np.asarray(v, dtype=float) for v in ci)
    if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
        return None
    return lo, hi


class ScalingVisualizer:
    """Draw the figures of a scaling-law analysis.

    Args:
        runs: the runs table (see :mod:`flops_fit.core.runs`); completed runs with finite values are drawn.
        fits: one fit, or a mapping of approach name (``"envelope"``, ``"isoflop"``, ``"parametric"``) to
            the fits to draw (any subset).
        budget_rtol: budgets within this relative distance form one bucket
            (:func:`~flops_fit.analysis.bucketing.bucket_budgets`); use the value the fits used.
        target_budgets: compute budgets (FLOPs) to mark on the laws, e.g. the run you are planning.

    Each ``plot_*`` method returns a new :class:`~matplotlib.figure.Figure`; :meth:`save_all` writes every
    figure whose fit is present.
    """

    def __init__(
        self,
        runs: pd.DataFrame,
        fits: Mapping[str, Any] | Any,
        *,
        budget_rtol: float = DEFAULT_BUDGET_RTOL,
        target_budgets: Iterable[float] | float | None = None,
    ) -> None:
        self.fits = _check_fits(fits)
        self.budget_rtol = _check_rtol(budget_rtol)
        self.target_budgets = _check_targets(target_budgets)
        self.runs = validate_runs(runs)
        self._points = _usable_points(self.runs)
        labels, centers = bucket_budgets(
            self._points["compute_budget"].to_numpy(float), rtol=self.budget_rtol
        )
        self._points["bucket"] = labels
        #: Geometric-mean budget (FLOPs) of each bucket, increasing.
        self.budgets: np.ndarray = centers
        iso = self.fits.get("isoflop")
        if iso is not None and not math.isclose(iso.budget_rtol, self.budget_rtol):
            logger.warning(
                "budget_rtol=%g differs from the IsoFLOP fit's %g: the plotted profiles may group budgets "
                "differently from the fit; pass budget_rtol=%g",
                self.budget_rtol,
                iso.budget_rtol,
                iso.budget_rtol,
            )

    @classmethod
    def from_files(
        cls,
        results_path: str | os.PathLike[str],
        scaling_laws_path: str | os.PathLike[str],
        *,
        columns: Mapping[str, str] | None = None,
        budget_rtol: float | None = None,
        target_budgets: Iterable[float] | float | None = None,
        plan: Any = None,
    ) -> ScalingVisualizer:
        """Visualizer for a results file (read by :func:`flops_fit.core.runs.load_runs`) and the
        ``scaling_laws.json`` written by :meth:`ScalingLawAnalyzer.analyze`.

        ``budget_rtol`` defaults to the IsoFLOP fit's own (else the library default). ``plan`` (a
        ``sweep.json`` path or a SweepPlan) keeps only that plan's runs, as the analyzer's ``plan`` does.
        """
        from flops_fit.plan.planning import load_plan_runs

        if not Path(results_path).is_file():
            raise FileNotFoundError(f"results file {str(results_path)!r} does not exist")
        path = Path(scaling_laws_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"scaling laws file {str(path)!r} does not exist; run ScalingLawAnalyzer(...).analyze() first"
            )
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON ({exc})") from exc
        fit_dicts = data.get("fits") if isinstance(data, Mapping) else None
        if not isinstance(fit_dicts, Mapping) or not fit_dicts:
            raise ValueError(
                f"{path} has no 'fits' mapping of approach name to fit; write it with "
                "ScalingLawAnalyzer(...).analyze()"
            )
        fits = {name: fit_from_dict(d) for name, d in fit_dicts.items()}
        if isinstance(data.get("run_ids"), list):  # exactly the runs the analysis read, whatever the plan
            runs = ScalingAnalysis.from_dict(data).runs_of(load_plan_runs(results_path, None, columns))
        else:
            runs = load_plan_runs(results_path, plan, columns)
        if budget_rtol is None:
            iso = fits.get("isoflop")
            recorded = data.get("budget_rtol")
            budget_rtol = (
                iso.budget_rtol
                if isinstance(iso, IsoFLOPFit)
                else DEFAULT_BUDGET_RTOL
                if recorded is None
                else float(recorded)
            )
        return cls(runs, fits, budget_rtol=budget_rtol, target_budgets=target_budgets)

    def __repr__(self) -> str:
        return (
            f"ScalingVisualizer(runs={len(self._points)}, budgets={len(self.budgets)}, "
            f"fits={list(self.fits)}, figures={list(self.available_figures())})"
        )

    # ------------------------------------------------------------------------------------------------
    # What can be drawn

    def _missing(self, name: str) -> str | None:
        """Why figure ``name`` cannot be drawn, or None when it can."""
        if name == "isoflop" and "isoflop" not in self.fits:
            return "needs an IsoFLOPFit (fits['isoflop'])"
        if name == "parametric" and "parametric" not in self.fits:
            return "needs a ParametricFit (fits['parametric'])"
        if name == "residuals" and not ({"isoflop", "parametric", "envelope"} & set(self.fits)):
            return "needs a fit"
        if name == "envelope":
            if "envelope" not in self.fits:
                return "needs an EnvelopeFit (fits['envelope'])"
            if not self._curves():
                return "needs loss curves in the runs table (column 'curve')"
        return None

    def available_figures(self) -> tuple[str, ...]:
        """Names of the figures the given fits support, in :data:`FIGURES` order."""
        return tuple(name for name in FIGURES if self._missing(name) is None)

    def figure(self, name: str) -> Figure:
        """Figure ``name`` (one of :data:`FIGURES`)."""
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; choose one of {list(FIGURES)}")
        return self._builders()[name]()

    def _builders(self) -> dict[str, Callable[[], Figure]]:
        return {
            "isoflop": self.plot_isoflop,
            "optimal": self.plot_optimal,
            "parametric": self.plot_parametric,
            "residuals": self.plot_residuals,
            "envelope": self.plot_envelope,
        }

    def _require(self, name: str) -> None:
        why = self._missing(name)
        if why is not None:
            raise ValueError(f"plot_{name} {why}; available figures: {list(self.available_figures())}")

    # ------------------------------------------------------------------------------------------------
    # Shared pieces

    def _excluded_mask(self, fit: Any) -> np.ndarray:
        """True for the plotted runs that ``fit`` left out as outliers, matched on N, D and loss (not on C:
        a fit may have rebuilt the budgets as 6 N D)."""
        excluded = getattr(fit, "excluded", None)
        mask = np.zeros(len(self._points), dtype=bool)
        cols = ["num_params", "num_tokens", "final_loss"]
        if not isinstance(excluded, pd.DataFrame) or excluded.empty or not set(cols) <= set(excluded.columns):
            return mask
        mine = self._points[cols].to_numpy(float)
        for row in excluded[cols].to_numpy(float):
            mask |= np.all(np.isclose(mine, row, rtol=_EXCLUDED_MATCH_RTOL, atol=0.0), axis=1)
        return mask

    def _budget_norm(self, extra: Iterable[float] = ()) -> LogNorm:
        values = np.concatenate([self.budgets, np.asarray(list(extra), dtype=float)])
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo * 1.0001:
            lo, hi = lo / 2, hi * 2
        return LogNorm(lo, hi)

    def _budget_colorbar(self, fig: Figure, ax: Any, norm: LogNorm) -> None:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=BUDGET_CMAP), ax=ax, pad=0.02, aspect=30)
        bar.set_label("compute budget C (FLOPs)")
        bar.ax.tick_params(labelsize=6.5)

    def _bucket_of(self, budget: float) -> int:
        """Index of the bucket whose centre is nearest to ``budget`` in log, or -1 beyond ``budget_rtol``."""
        dist = np.abs(np.log(self.budgets) - math.log(budget))
        k = int(np.argmin(dist))
        return k if dist[k] <= math.log1p(self.budget_rtol) + 1e-9 else -1

    def _c_range(self) -> tuple[float, float, float]:
        """(left edge, largest observed budget, right edge) of the compute axis, in FLOPs."""
        c_obs = self._points["compute_budget"].to_numpy(float)
        c_max = float(c_obs.max())
        right = c_max * EXTRAPOLATION_FACTOR
        if self.target_budgets:
            right = max(right, max(self.target_budgets) * 2.0)
        return float(c_obs.min()) / 1.5, c_max, right

    def _optimal(self, name: str, c: np.ndarray) -> dict[str, Any] | None:
        """``fits[name].optimal(c)``, or None (logged) when the fit cannot give an allocation."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.fits[name].optimal(c)
        if not np.isfinite(np.asarray(out["optimal_params"], dtype=float)).any():
            reason = "; ".join(str(w.message) for w in caught) or "non-finite allocation"
            logger.warning("%s: no compute-optimal allocation to draw (%s)", name, reason)
            return None
        return out

    def _curves(self) -> list[tuple[str, float, np.ndarray, np.ndarray]]:
        """(id, N, FLOPs, loss) of every plotted run with a loss curve; FLOPs = tokens * C / D, as Approach 1."""
        if "curve" not in self._points.columns:
            return []
        out = []
        for row in self._points.itertuples(index=False):
            curve = row.curve
            if not isinstance(curve, (list, tuple, np.ndarray)) or len(curve) == 0:
                continue
            try:
                arr = np.asarray(list(curve), dtype=float)  # list of pairs, or an array of arrays (Parquet)
            except (TypeError, ValueError):
                arr = np.zeros((0, 0))
            if arr.ndim != 2 or arr.shape[1] != 2:
                logger.debug(
                    "run %s: curve is not a list of (tokens, loss) pairs; not drawn", row.experiment_id
                )
                continue
            arr = arr[np.all(np.isfinite(arr) & (arr > 0), axis=1)]
            arr = arr[np.argsort(arr[:, 0], kind="stable")]
            if len(arr):
                fpt = row.compute_budget / row.num_tokens
                out.append((str(row.experiment_id), float(row.num_params), arr[:, 0] * fpt, arr[:, 1]))
        return out

    # ------------------------------------------------------------------------------------------------
    # 1. IsoFLOP profiles

    def _windows(self, iso: IsoFLOPFit) -> tuple[np.ndarray, dict[int, Any]]:
        """(in_window, row_of_bucket): whether each plotted run lies in its budget's parabola window, and
        the ``minima`` row matched to each bucket. Runs of a bucket without a parabola count as inside."""
        pts = self._points
        n = pts["num_params"].to_numpy(float)
        bucket = pts["bucket"].to_numpy()
        inside = np.ones(len(pts), dtype=bool)
        rows: dict[int, Any] = {}
        for row in iso.minima.itertuples(index=False):
            k = self._bucket_of(row.compute_budget)
            if k < 0:
                continue
            rows[k] = row
            if np.all(np.isfinite(np.asarray(row.coef, dtype=float))):
                member = bucket == k
                lo, hi = row.fit_n_lo * (1 - 1e-9), row.fit_n_hi * (1 + 1e-9)
                inside[member] = (n[member] >= lo) & (n[member] <= hi)
        return inside, rows

    def plot_isoflop(self) -> Figure:
        """Loss vs N (parameters) per budget bucket with each budget's fitted parabola and its minimum.

        Parabolas are drawn over the window they were fitted on; runs outside it are faded. Budgets flagged
        by the fit (minimum not bracketed, too few sizes, flat) have a dashed parabola, a hollow minimum and
        the flag's advice in a legend; runs the fit excluded as outliers are crosses. When the far tails of
        the profiles would squeeze the minima, the loss axis is cut above the fit windows and the runs
        beyond it are triangles on the top edge.
        """
        self._require("isoflop")
        iso: IsoFLOPFit = self.fits["isoflop"]
        pts = self._points
        excluded = self._excluded_mask(iso)
        inside, _ = self._windows(iso)
        minima = iso.minima
        norm = self._budget_norm(minima["compute_budget"].to_numpy(float))
        n, loss = pts["num_params"].to_numpy(float), pts["final_loss"].to_numpy(float)
        bucket = pts["bucket"].to_numpy()
        parabolas: list[tuple[np.ndarray, np.ndarray, Any, bool]] = []
        for row in minima.itertuples(index=False):
            coef = np.asarray(row.coef, dtype=float)
            if np.all(np.isfinite(coef)):
                x = np.linspace(math.log(row.fit_n_lo), math.log(row.fit_n_hi), 100)
                parabolas.append((np.exp(x), np.polyval(coef, x), row.compute_budget, bool(row.used)))
        # loss range: the fit windows, unless the whole profiles fit without squeezing them
        core = np.concatenate(
            [loss[inside & ~excluded], minima["optimal_loss"].to_numpy(float), *(p[1] for p in parabolas)]
        )
        bottom, core_top = float(core.min()), float(core.max())
        top = float(loss.max())
        if top > core_top + 0.3 * (core_top - bottom):
            top = core_top + 0.08 * (core_top - bottom)
        off_scale = loss > top
        with mpl.rc_context(_STYLE):
            fig = Figure(figsize=(SINGLE_COLUMN_IN, 3.1), layout="constrained")
            ax = fig.add_subplot()
            for k, centre in enumerate(self.budgets):
                colour = BUDGET_CMAP(norm(centre))
                member = (bucket == k) & ~off_scale
                sel = member & ~excluded & inside
                ax.scatter(n[sel], loss[sel], s=9, color=colour, linewidths=0, zorder=3, gid=f"profile-{k}")
                sel = member & ~excluded & ~inside
                if sel.any():
                    ax.scatter(
                        n[sel],
                        loss[sel],
                        s=9,
                        color=colour,
                        alpha=0.35,
                        linewidths=0,
                        zorder=3,
                        gid=f"profile-{k}-outside",
                    )
                sel = member & excluded
                if sel.any():
                    ax.scatter(
                        n[sel],
                        loss[sel],
                        s=18,
                        marker="x",
                        color=colour,
                        linewidths=0.9,
                        zorder=3,
                        gid=f"profile-{k}-excluded",
                    )
                sel = (bucket == k) & off_scale
                if sel.any():
                    ax.scatter(
                        n[sel],
                        np.ones(sel.sum()),
                        s=12,
                        marker="^",
                        color=colour,
                        alpha=0.6,
                        linewidths=0,
                        transform=ax.get_xaxis_transform(),
                        clip_on=False,
                        zorder=3,
                        gid=f"profile-{k}-off-scale",
                    )
            for x, y, budget, used in parabolas:
                ax.plot(x, y, color=BUDGET_CMAP(norm(budget)), lw=1.0, ls="-" if used else "--", zorder=2)
            flag_handles: list[Any] = []
            for row in minima.itertuples(index=False):
                colour = BUDGET_CMAP(norm(row.compute_budget))
                used = bool(row.used)
                ax.plot(
                    row.optimal_params,
                    row.optimal_loss,
                    marker="o",
                    ms=4.5,
                    mfc=colour if used else "white",
                    mec="black" if used else colour,
                    mew=0.8 if used else 1.3,
                    ls="none",
                    zorder=4,
                )
                if not used:
                    advice = "; ".join(FLAG_ADVICE.get(f, f) for f in str(row.flags).split(",") if f)
                    flag_handles.append(
                        Line2D(
                            [],
                            [],
                            color=colour,
                            lw=1.0,
                            ls="--",
                            marker="o",
                            ms=4,
                            mfc="white",
                            mew=1.3,
                            label=f"C = {_sci(row.compute_budget)}: {advice}",
                        )
                    )
            ax.set_xscale("log")
            span = top - bottom if top > bottom else max(abs(top), 1.0) * 0.1
            # room above the profiles for the legend of flagged budgets (a fraction of the axes height)
            room = min(0.45, 0.06 + 0.065 * (len(flag_handles) + 1)) if flag_handles else 0.0
            ax.set_ylim(bottom - 0.05 * span, top + (top - bottom + 0.05 * span) * room / (1 - room))
            ax.set_xlabel("model size N (parameters)")
            ax.set_ylabel("final loss")
            ax.set_title("IsoFLOP profiles (Approach 2)")
            if flag_handles:
                ax.legend(
                    handles=flag_handles,
                    loc="upper center",
                    title="flagged, left out of the laws",
                    title_fontsize=6,
                    fontsize=6,
                    frameon=True,
                    framealpha=0.9,
                    edgecolor="none",
                    handlelength=1.8,
                )
            handles = [
                Line2D([], [], color="0.35", marker="o", ms=3, ls="none", label="run"),
                Line2D([], [], color="0.35", lw=1.0, label="parabola fit"),
                Line2D([], [], marker="o", ms=4.5, mfc="0.35", mec="black", ls="none", label="minimum"),
            ]
            if not inside.all():
                handles.append(
                    Line2D(
                        [],
                        [],
                        color="0.35",
                        alpha=0.35,
                        marker="o",
                        ms=3,
                        ls="none",
                        label="outside fit window",
                    )
                )
            if excluded.any():
                handles.append(Line2D([], [], color="0.35", marker="x", ls="none", label="excluded outlier"))
            if off_scale.any():
                handles.append(
                    Line2D(
                        [], [], color="0.35", alpha=0.6, marker="^", ms=3.5, ls="none", label="loss off scale"
                    )
                )
            fig.legend(handles=handles, loc="outside lower center", ncols=3, columnspacing=1.2)
            self._budget_colorbar(fig, ax, norm)
            _tidy_log_axes(fig)
        return fig

    # ------------------------------------------------------------------------------------------------
    # 2. Compute-optimal laws

    def plot_optimal(self) -> Figure:
        """N_opt, D_opt and L_opt vs C: per-budget optima and each approach's law with its 95% band.

        Points are the IsoFLOP minima when an IsoFLOPFit is present (hollow: flagged, left out of the
        laws), otherwise the lowest-loss run of each budget that has an IsoFLOP profile (3 or more runs);
        an EnvelopeFit adds its envelope points. The range beyond the largest observed budget is shaded
        (extrapolation); target budgets are dotted lines with each approach's prediction as a star.
        """
        c_lo, c_max, c_hi = self._c_range()
        grid = np.geomspace(c_lo, c_hi, 300)
        keys = ("optimal_params", "optimal_tokens", "optimal_loss")
        ylabels = ("$N_{opt}$ (parameters)", "$D_{opt}$ (tokens)", "$L_{opt}$ (loss)")
        targets = np.asarray(self.target_budgets, dtype=float)
        with mpl.rc_context(_STYLE):
            fig = Figure(figsize=(DOUBLE_COLUMN_IN, 2.75), layout="constrained")
            axes = fig.subplots(1, 3, sharex=True)
            handles: list[Any] = []
            any_band = False
            for name in self.fits:
                out = self._optimal(name, np.concatenate([grid, targets]))
                if out is None:
                    continue
                style = APPROACH_STYLE[name]
                fit = self.fits[name]
                for ax, key in zip(axes, keys, strict=True):
                    y = np.asarray(out[key], dtype=float)
                    ci = _finite_ci(out[f"{key}_ci"])
                    if ci is not None:
                        any_band = True
                        lo, hi = (v[: grid.size] for v in ci)
                        ax.fill_between(grid, lo, hi, color=style["color"], alpha=0.18, lw=0, zorder=1)
                    ax.plot(grid, y[: grid.size], color=style["color"], ls=style["linestyle"], zorder=2)
                    if targets.size:
                        ax.plot(
                            targets,
                            y[grid.size :],
                            marker="*",
                            ms=7,
                            color=style["color"],
                            mec="black",
                            mew=0.4,
                            ls="none",
                            zorder=5,
                        )
                label = f"{style['name']}: a = {fit.a:.3f}, b = {fit.b:.3f}"
                handles.append(Line2D([], [], color=style["color"], ls=style["linestyle"], label=label))
            if any_band:
                handles.append(_patch("0.55", "95% interval", alpha=0.3))
            handles += self._draw_optima(axes, keys)
            for ax in axes:
                ax.axvspan(c_max, c_hi, color="0.93", lw=0, zorder=0)
                for t in targets:
                    ax.axvline(t, color="0.3", ls=":", lw=0.9, zorder=1)
            handles.append(_patch("0.93", "extrapolation (C > largest run)"))
            if targets.size:
                handles.append(
                    Line2D(
                        [],
                        [],
                        color="0.3",
                        ls=":",
                        lw=0.9,
                        marker="*",
                        mfc="0.6",
                        mec="black",
                        label="target budget",
                    )
                )
            for ax, ylabel in zip(axes, ylabels, strict=True):
                ax.set_xscale("log")
                ax.set_xlabel("compute C (FLOPs)")
                ax.set_ylabel(ylabel)
                ax.set_xlim(c_lo, c_hi)
            axes[0].set_yscale("log")
            axes[1].set_yscale("log")
            fig.legend(handles=handles, loc="outside upper center", ncols=3, columnspacing=1.5)
            _tidy_log_axes(fig)
        return fig

    def _draw_optima(self, axes: Any, keys: tuple[str, ...]) -> list[Any]:
        """Per-budget optima (and envelope points) on the three panels; returns legend handles."""
        handles: list[Any] = []
        env = self.fits.get("envelope")
        if isinstance(env, EnvelopeFit) and len(env.envelope):
            pts = env.envelope.iloc[:: max(1, len(env.envelope) // 120)]
            colour = APPROACH_STYLE["envelope"]["color"]
            for ax, key in zip(axes, keys, strict=True):
                ax.plot(pts["compute"], pts[key], "o", ms=1.6, color=colour, alpha=0.5, mew=0, zorder=3)
            handles.append(
                Line2D(
                    [], [], marker="o", ms=2.5, color=colour, alpha=0.6, ls="none", label="envelope points"
                )
            )
        iso = self.fits.get("isoflop")
        if isinstance(iso, IsoFLOPFit):
            pts = iso.minima
            used = pts["used"].astype(bool).to_numpy()
            label = "IsoFLOP minimum per budget"
        else:
            pts = lowest_loss_per_budget(self._points, self.budget_rtol)
            if not len(pts):
                return handles
            used = np.ones(len(pts), dtype=bool)
            label = "lowest-loss run per budget"
        c = pts["compute_budget"].to_numpy(float)
        for ax, key in zip(axes, keys, strict=True):
            y = pts[key].to_numpy(float)
            ax.plot(c[used], y[used], "o", ms=3.5, color="black", zorder=4)
            if (~used).any():
                ax.plot(c[~used], y[~used], "o", ms=3.5, mfc="white", mec="black", mew=0.8, zorder=4)
        handles.append(Line2D([], [], marker="o", ms=3.5, color="black", ls="none", label=label))
        if (~used).any():
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="o",
                    ms=3.5,
                    mfc="white",
                    mec="black",
                    ls="none",
                    label="flagged, not fitted",
                )
            )
        return handles

    # ------------------------------------------------------------------------------------------------
    # 3. Parametric loss surface

    def plot_parametric(self) -> Figure:
        """Contours of Approach 3's L(N, D) over the (N, D) plane, with the runs, the IsoFLOP lines
        N D = C / 6 of the observed budgets and the efficient frontier (N_opt(C), D_opt(C)).

        Contour levels are log-spaced in the reducible loss L - E across the range of the runs (and the
        frontier), so they are dense where the data are. With more than :data:`MAX_ISOFLOP_LINES` budgets,
        that many IsoFLOP lines, evenly spaced in log C, are drawn. Runs the fit excluded are crosses.
        """
        self._require("parametric")
        fit: ParametricFit = self.fits["parametric"]
        pts = self._points
        n, d = pts["num_params"].to_numpy(float), pts["num_tokens"].to_numpy(float)
        c_lo, c_max, c_hi = self._c_range()
        frontier_c = np.geomspace(c_lo, c_hi, 200)
        front = self._optimal("parametric", frontier_c)
        n_span, d_span = n, d
        if front is not None:
            n_span = np.concatenate([n, front["optimal_params"]])
            d_span = np.concatenate([d, front["optimal_tokens"]])
        n_grid = np.geomspace(n_span.min() / 2, n_span.max() * 2, 160)
        d_grid = np.geomspace(d_span.min() / 2, d_span.max() * 2, 160)
        nn, dd = np.meshgrid(n_grid, d_grid)
        surface = fit.predict_loss(nn, dd)
        # levels log-spaced in the reducible loss L - E over the range the runs (and targets) span
        at_data = fit.predict_loss(n_span, d_span) - fit.E
        lo = max(float(at_data.min()) * 0.7, float((surface - fit.E).min()))
        hi = min(float(np.quantile(at_data, 0.95)) * 1.5, float((surface - fit.E).max()))
        levels = fit.E + np.geomspace(lo, max(hi, lo * 1.01), N_CONTOUR_LEVELS)
        budgets = self.budgets
        if budgets.size > MAX_ISOFLOP_LINES:
            budgets = budgets[
                np.unique(np.round(np.linspace(0, budgets.size - 1, MAX_ISOFLOP_LINES)).astype(int))
            ]
        with mpl.rc_context({**_STYLE, "axes.grid": False}):
            fig = Figure(figsize=(SINGLE_COLUMN_IN, 3.5), layout="constrained")
            ax = fig.add_subplot()
            filled = ax.contourf(nn, dd, surface, levels=levels, cmap="cividis_r", extend="both", zorder=0)
            ax.contour(nn, dd, surface, levels=levels, colors="white", linewidths=0.3, alpha=0.5, zorder=1)
            bar = fig.colorbar(filled, ax=ax, pad=0.02, aspect=30, format="{x:.3g}")
            bar.set_label("predicted loss L(N, D)")
            bar.ax.tick_params(labelsize=6)
            for centre in budgets:
                ax.plot(
                    n_grid,
                    centre / (FLOPS_PER_PARAM_TOKEN * n_grid),
                    color="0.1",
                    lw=0.6,
                    ls=(0, (3, 2)),
                    alpha=0.8,
                    zorder=2,
                )
            iso_label = "IsoFLOP lines ND = C/6"
            if budgets.size < self.budgets.size:
                iso_label += f" ({budgets.size} of {self.budgets.size})"
            handles: list[Any] = [Line2D([], [], color="0.1", lw=0.6, ls=(0, (3, 2)), label=iso_label)]
            excluded = self._excluded_mask(fit)
            ax.scatter(
                n[~excluded], d[~excluded], s=9, color="white", edgecolors="black", linewidths=0.5, zorder=4
            )
            handles.append(
                Line2D([], [], marker="o", ms=3, mfc="white", mec="black", mew=0.5, ls="none", label="run")
            )
            if excluded.any():
                ax.scatter(
                    n[excluded], d[excluded], s=16, marker="x", color="black", linewidths=0.8, zorder=4
                )
                handles.append(Line2D([], [], color="black", marker="x", ls="none", label="excluded run"))
            if front is not None:
                colour = APPROACH_STYLE["parametric"]["color"]
                fn, fd = front["optimal_params"], front["optimal_tokens"]
                inside = frontier_c <= c_max
                ax.plot(fn[inside], fd[inside], color=colour, lw=1.8, zorder=3)
                ax.plot(fn[~inside], fd[~inside], color=colour, lw=1.8, ls=(0, (2, 1.2)), zorder=3)
                handles.append(Line2D([], [], color=colour, lw=1.8, label="efficient frontier"))
                handles.append(Line2D([], [], color=colour, lw=1.8, ls=(0, (2, 1.2)), label="extrapolated"))
                if self.target_budgets:
                    at = self._optimal("parametric", np.asarray(self.target_budgets))
                    assert at is not None  # the frontier exists, so the allocation is finite
                    ax.plot(
                        np.atleast_1d(at["optimal_params"]),
                        np.atleast_1d(at["optimal_tokens"]),
                        "*",
                        ms=9,
                        color=colour,
                        mec="black",
                        mew=0.5,
                        zorder=5,
                    )
                    handles.append(
                        Line2D(
                            [],
                            [],
                            marker="*",
                            ms=7,
                            color=colour,
                            mec="black",
                            ls="none",
                            label="target budget",
                        )
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(n_grid[0], n_grid[-1])
            ax.set_ylim(d_grid[0], d_grid[-1])
            ax.set_xlabel("model size N (parameters)")
            ax.set_ylabel("training data D (tokens)")
            ax.set_title(
                f"$L = {fit.E:.3g} + {_tex_sci(fit.A)}/N^{{{fit.alpha:.3f}}} + {_tex_sci(fit.B)}/D^{{{fit.beta:.3f}}}$",
                fontsize=7,
            )
            fig.legend(handles=handles, loc="outside lower center", ncols=2, columnspacing=1.0)
            _tidy_log_axes(fig)
        return fig

    # ------------------------------------------------------------------------------------------------
    # 4. Residuals

    def plot_residuals(self) -> Figure:
        """Residuals of each approach, with a zero line; panel titles give their root mean square.

        IsoFLOP: loss minus the budget's parabola, for runs inside each fit window (squares: flagged
        budgets). Parametric: log L - log L(N, D) for every run. Envelope: log of the envelope loss minus
        log of the L_opt(C) law. Crosses: runs the fit excluded as outliers.
        """
        self._require("residuals")
        panels = [name for name in APPROACHES if name in self.fits]
        norm = self._budget_norm()
        width = SINGLE_COLUMN_IN if len(panels) == 1 else DOUBLE_COLUMN_IN
        drawers = {
            "isoflop": self._residuals_isoflop,
            "parametric": self._residuals_parametric,
            "envelope": self._residuals_envelope,
        }
        with mpl.rc_context(_STYLE):
            fig = Figure(figsize=(width, 2.5), layout="constrained")
            axes = np.atleast_1d(fig.subplots(1, len(panels)))
            coloured: list[Any] = []
            handles: dict[str, Any] = {}
            for ax, name in zip(axes, panels, strict=True):
                resid = drawers[name](ax, norm, handles)
                ax.axhline(0.0, color="0.3", lw=0.8, zorder=1)
                resid = resid[np.isfinite(resid)]
                rms = f", RMS {float(np.sqrt(np.mean(resid**2))):.2g}" if resid.size else ""
                ax.set_title(APPROACH_STYLE[name]["name"] + rms)
                if name != "envelope":
                    coloured.append(ax)
            if coloured:
                self._budget_colorbar(fig, coloured, norm)
            if handles:
                fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=len(handles))
            _tidy_log_axes(fig)
        return fig

    def _residuals_isoflop(self, ax: Any, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
        iso: IsoFLOPFit = self.fits["isoflop"]
        pts = self._points
        excluded = self._excluded_mask(iso)
        inside, rows = self._windows(iso)
        n, loss = pts["num_params"].to_numpy(float), pts["final_loss"].to_numpy(float)
        bucket = pts["bucket"].to_numpy()
        kept = []
        for k, row in rows.items():
            coef = np.asarray(row.coef, dtype=float)
            if not np.all(np.isfinite(coef)):
                continue
            sel = (bucket == k) & inside
            resid = loss[sel] - np.polyval(coef, np.log(n[sel]))
            out = excluded[sel]
            colour = BUDGET_CMAP(norm(self.budgets[k]))
            marker = "o" if row.used else "s"
            ax.scatter(n[sel][~out], resid[~out], s=9, color=colour, marker=marker, linewidths=0, zorder=3)
            if out.any():
                ax.scatter(n[sel][out], resid[out], s=18, marker="x", color=colour, linewidths=0.9, zorder=3)
                handles["x"] = Line2D([], [], color="0.35", marker="x", ls="none", label="excluded outlier")
            if not row.used:
                handles["s"] = Line2D(
                    [], [], color="0.35", marker="s", ms=3, ls="none", label="flagged budget"
                )
            kept.append(resid[~out])
        ax.set_xscale("log")
        ax.set_xlabel("model size N (parameters)")
        ax.set_ylabel("loss − parabola")
        return np.concatenate(kept) if kept else np.zeros(0)

    def _residuals_parametric(self, ax: Any, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
        fit: ParametricFit = self.fits["parametric"]
        pts = self._points
        excluded = self._excluded_mask(fit)
        n, d, loss = (pts[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss"))
        resid = np.log(loss) - np.log(fit.predict_loss(n, d))
        colours = BUDGET_CMAP(norm(self.budgets[pts["bucket"].to_numpy()]))
        ax.scatter(n[~excluded], resid[~excluded], s=9, c=colours[~excluded], linewidths=0, zorder=3)
        if excluded.any():
            ax.scatter(
                n[excluded], resid[excluded], s=18, marker="x", c=colours[excluded], linewidths=0.9, zorder=3
            )
            handles["x"] = Line2D([], [], color="0.35", marker="x", ls="none", label="excluded outlier")
        ax.set_xscale("log")
        ax.set_xlabel("model size N (parameters)")
        ax.set_ylabel(r"$\log L - \log \hat L(N, D)$")
        return resid[~excluded]

    def _residuals_envelope(self, ax: Any, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
        fit: EnvelopeFit = self.fits["envelope"]
        c = fit.envelope["compute"].to_numpy(float)
        resid = np.log(fit.envelope["optimal_loss"].to_numpy(float)) - np.log(fit.l_opt_fit.predict(c))
        ax.plot(c, resid, color=APPROACH_STYLE["envelope"]["color"], lw=1.0, zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(r"$\log L_{env} - \log \hat L_{opt}(C)$")
        return resid

    # ------------------------------------------------------------------------------------------------
    # 5. Training-curve envelope

    def plot_envelope(self) -> Figure:
        """Every run's loss curve vs FLOPs (coloured by N), the envelope of Approach 1 and its L_opt(C) law.

        A curve's FLOPs are its tokens times the run's FLOPs per token (compute_budget / num_tokens), as in
        the fit. The view starts a decade before the envelope and the loss axis is cut at the curves' 99th
        percentile there, so the first steps of training do not hide the envelope.
        """
        self._require("envelope")
        fit: EnvelopeFit = self.fits["envelope"]
        curves = self._curves()
        excluded = self._excluded_mask(fit)
        ids = set(self._points.loc[excluded, "experiment_id"]) if excluded.any() else set()
        env_c = fit.envelope["compute"].to_numpy(float)
        env_l = fit.envelope["optimal_loss"].to_numpy(float)
        sizes = np.array([cv[1] for cv in curves])
        lo_n, hi_n = float(sizes.min()), float(sizes.max())
        norm = LogNorm(lo_n, hi_n) if hi_n > lo_n * 1.0001 else LogNorm(lo_n / 2, hi_n * 2)
        x_lo = float(env_c.min()) / 10 if env_c.size else min(float(cv[2][0]) for cv in curves)
        x_hi = max(float(cv[2][-1]) for cv in curves) * 1.1
        with mpl.rc_context(_STYLE):
            fig = Figure(figsize=(SINGLE_COLUMN_IN, 2.9), layout="constrained")
            ax = fig.add_subplot()
            seen = [env_l]
            for run_id, n, flops, loss in curves:
                out = run_id in ids
                ax.plot(
                    flops,
                    loss,
                    color="0.6" if out else BUDGET_CMAP(norm(n)),
                    lw=0.8,
                    ls=":" if out else "-",
                    alpha=0.85,
                    zorder=2,
                )
                seen.append(loss[flops >= x_lo])
            ax.plot(env_c, env_l, color="black", lw=3.5, alpha=0.3, zorder=3, solid_capstyle="round")
            law_c = np.geomspace(env_c.min(), env_c.max(), 100)
            ax.plot(law_c, fit.l_opt_fit.predict(law_c), color="black", ls="--", lw=1.0, zorder=4)
            shown = np.concatenate(seen)
            lo, hi = float(shown.min()), float(np.quantile(shown, 0.99))
            hi = max(hi, float(env_l.max()))
            ax.set_ylim(lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))
            ax.set_xscale("log")
            ax.set_xlim(x_lo, x_hi)
            ax.set_xlabel("compute C (FLOPs)")
            ax.set_ylabel("loss")
            ax.set_title("Training curves and envelope (Approach 1)")
            handles = [
                Line2D([], [], color="0.45", lw=0.8, label="run (loss curve)"),
                Line2D([], [], color="black", lw=3.5, alpha=0.3, label="envelope (lowest loss at C)"),
                Line2D([], [], color="black", ls="--", lw=1.0, label=r"$L_{opt}(C)$ fit"),
            ]
            if ids:
                handles.append(Line2D([], [], color="0.6", lw=0.8, ls=":", label="excluded run"))
            ax.legend(handles=handles, loc="best", frameon=True, framealpha=0.85, edgecolor="none")
            bar = fig.colorbar(ScalarMappable(norm=norm, cmap=BUDGET_CMAP), ax=ax, pad=0.02, aspect=30)
            bar.set_label("model size N (parameters)")
            bar.ax.tick_params(labelsize=6.5)
            _tidy_log_axes(fig)
        return fig

    # ------------------------------------------------------------------------------------------------
    # Saving

    def save_all(
        self,
        output_dir: str | os.PathLike[str],
        formats: Iterable[str] | str = ("png", "svg"),
        dpi: float = 150,
    ) -> list[Path]:
        """Write every figure the fits support as ``output_dir/<name>.<format>``; returns the paths written.

        Figures whose fit is absent are skipped with a log line. Files are written atomically (a temporary
        file in ``output_dir``, then ``os.replace``).
        """
        fmts = _check_formats(formats)
        if (
            isinstance(dpi, bool)
            or not isinstance(dpi, (int, float, np.integer, np.floating))
            or not (math.isfinite(dpi) and dpi > 0)
        ):
            raise ValueError(f"dpi must be a positive number (dots per inch), got {dpi!r}")
        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in FIGURES:
            why = self._missing(name)
            if why is not None:
                logger.info("skipping figure %r: it %s", name, why)
                continue
            fig = self.figure(name)
            with mpl.rc_context(_STYLE):
                for fmt in fmts:
                    path = out_dir / f"{name}.{fmt}"
                    _save_atomic(fig, path, fmt, float(dpi))
                    written.append(path)
            logger.info("wrote %s figure (%s) to %s", name, ", ".join(fmts), out_dir)
        return written


def _check_formats(formats: Iterable[str] | str) -> list[str]:
    if isinstance(formats, str):
        formats = (formats,)
    try:
        fmts = [str(f).lower().lstrip(".") for f in formats]
    except TypeError:
        raise TypeError(
            f"formats must be a sequence of file formats such as ('png', 'svg'), got {formats!r}"
        ) from None
    supported = Figure().canvas.get_supported_filetypes()
    unknown = [f for f in fmts if f not in supported]
    if unknown or not fmts:
        raise ValueError(f"formats must name at least one of {sorted(supported)}, got {list(formats)}")
    return list(dict.fromkeys(fmts))


def _save_atomic(fig: Figure, path: Path, fmt: str, dpi: float) -> None:
    """Save the figure to ``path`` atomically (never a half-written file; see :mod:`flops_fit.core.io`)."""
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi, metadata=metadata))


def _patch(colour: str, label: str, alpha: float = 1.0) -> Patch:
    return Patch(facecolor=colour, edgecolor="none", alpha=alpha, label=label)


def _tex_sci(x: float) -> str:
    """``x`` for use inside mathtext: ``2.1\\times10^{4}`` (plain below 1000)."""
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    return _sci(x, digits=2).strip("$")


class _MinorLogFormatter(Formatter):
    """Minor-tick labels of a log axis: none when two or more decades are in view, else at 2 and 5
    (every integer multiple below half a decade), so a narrow log axis still has readable labels."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        assert self.axis is not None
        vmin, vmax = sorted(self.axis.get_view_interval())
        if not (vmin > 0 and x > 0):
            return ""
        lmin, lmax = math.log10(vmin), math.log10(vmax)
        if math.floor(lmax) - math.floor(math.nextafter(lmin, -math.inf)) >= 2:
            return ""
        mant = x / 10 ** math.floor(math.log10(x) + 1e-9)
        keep = (2, 5) if lmax - lmin > 0.5 else range(1, 10)
        if any(abs(mant - m) < 1e-6 * m for m in keep):
            return _sci(x)
        return ""


def _tidy_log_axes(fig: Figure) -> None:
    """Readable tick labels on every log axis of ``fig`` (colour bars included)."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_minor_formatter(_MinorLogFormatter())
