"""Figure ``optimal``: N_opt, D_opt and L_opt vs C, the per-budget optima and each approach's law with its band.

Points are the IsoFLOP minima when an IsoFLOPFit is present (hollow: flagged, left out of the laws),
otherwise the lowest-loss run of each budget that has an IsoFLOP profile (3 or more runs); an EnvelopeFit
adds its envelope points. The range beyond the largest observed budget is shaded (extrapolation); target
budgets are dotted lines with each approach's prediction as a star.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from flops_fit.analysis.bucketing import lowest_loss_per_budget
from flops_fit.analysis.envelope import EnvelopeFit
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.report.plots.context import PlotContext
from flops_fit.report.plots.style import (
    APPROACH_STYLE,
    EXTRAPOLATION_GREY,
    LABEL_C,
    TARGET_LINE,
    TARGET_STAR,
    handle,
    patch,
    styled_figure,
)

#: The three panels: the column of ``optimal(C)`` each shows, and its axis label.
PANELS: tuple[tuple[str, str], ...] = (
    ("optimal_params", "$N_{opt}$ (parameters)"),
    ("optimal_tokens", "$D_{opt}$ (tokens)"),
    ("optimal_loss", "$L_{opt}$ (loss)"),
)
_KEYS = tuple(key for key, _ in PANELS)
#: Points drawn along the compute axis.
GRID_POINTS = 300
#: At most about this many envelope points are drawn.
MAX_ENVELOPE_POINTS = 120


def _finite_ci(ci: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """A (lower, upper) interval with some finite values, or None."""
    if ci is None:
        return None
    lo, hi = (np.asarray(v, dtype=float) for v in ci)
    if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
        return None
    return lo, hi


def _draw_law(axes: Any, name: str, out: dict[str, Any], grid: np.ndarray, targets: np.ndarray) -> bool:
    """One approach's law (with its band and target stars) on the three panels; True if it has a band."""
    style = APPROACH_STYLE[name]
    banded = False
    for ax, key in zip(axes, _KEYS, strict=True):
        y = np.asarray(out[key], dtype=float)
        ci = _finite_ci(out[f"{key}_ci"])
        if ci is not None:
            banded = True
            lo, hi = (v[: grid.size] for v in ci)
            ax.fill_between(grid, lo, hi, color=style["color"], alpha=0.18, lw=0, zorder=1)
        ax.plot(grid, y[: grid.size], color=style["color"], ls=style["linestyle"], zorder=2)
        if targets.size:
            ax.plot(targets, y[grid.size :], color=style["color"], ls="none", zorder=5, **TARGET_STAR)
    return banded


def _draw_laws(axes: Any, ctx: PlotContext, grid: np.ndarray, targets: np.ndarray) -> list[Any]:
    """Every approach's law; returns the legend entries (with the exponents a and b)."""
    handles: list[Any] = []
    banded = False
    for name, fit in ctx.fits.items():
        out = ctx.optimal(name, np.concatenate([grid, targets]))
        if out is None:
            continue
        banded = _draw_law(axes, name, out, grid, targets) or banded
        style = APPROACH_STYLE[name]
        label = f"{style['name']}: a = {fit.a:.3f}, b = {fit.b:.3f}"
        handles.append(handle(label, color=style["color"], ls=style["linestyle"]))
    if banded:
        handles.append(patch("0.55", "95% interval", alpha=0.3))
    return handles


def _draw_envelope_points(axes: Any, env: EnvelopeFit) -> list[Any]:
    """A thinned sample of the envelope's points on the three panels."""
    pts = env.envelope.iloc[:: max(1, len(env.envelope) // MAX_ENVELOPE_POINTS)]
    colour = APPROACH_STYLE["envelope"]["color"]
    for ax, key in zip(axes, _KEYS, strict=True):
        ax.plot(pts["compute"], pts[key], "o", ms=1.6, color=colour, alpha=0.5, mew=0, zorder=3)
    return [handle("envelope points", marker="o", ms=2.5, color=colour, alpha=0.6, ls="none")]


def _draw_optima(axes: Any, ctx: PlotContext) -> list[Any]:
    """Per-budget optima (and envelope points) on the three panels; returns legend entries."""
    handles: list[Any] = []
    env = ctx.fits.get("envelope")
    if isinstance(env, EnvelopeFit) and len(env.envelope):
        handles += _draw_envelope_points(axes, env)
    iso = ctx.fits.get("isoflop")
    if isinstance(iso, IsoFLOPFit):
        pts = iso.minima
        used = pts["used"].astype(bool).to_numpy()
        label = "IsoFLOP minimum per budget"
    else:
        pts = lowest_loss_per_budget(ctx.points, ctx.budget_rtol)
        if not len(pts):
            return handles
        used = np.ones(len(pts), dtype=bool)
        label = "lowest-loss run per budget"
    c = pts["compute_budget"].to_numpy(float)
    for ax, key in zip(axes, _KEYS, strict=True):
        y = pts[key].to_numpy(float)
        ax.plot(c[used], y[used], "o", ms=3.5, color="black", zorder=4)
        if (~used).any():
            ax.plot(c[~used], y[~used], "o", ms=3.5, mfc="white", mec="black", mew=0.8, zorder=4)
    handles.append(handle(label, marker="o", ms=3.5, color="black", ls="none"))
    if (~used).any():
        hollow = {"marker": "o", "ms": 3.5, "mfc": "white", "mec": "black", "ls": "none"}
        handles.append(handle("flagged, not fitted", **hollow))
    return handles


def _draw_compute_marks(axes: Any, c_max: float, c_hi: float, targets: np.ndarray) -> list[Any]:
    """The extrapolation band and the target budgets' lines; returns their legend entries."""
    for ax in axes:
        ax.axvspan(c_max, c_hi, color=EXTRAPOLATION_GREY, lw=0, zorder=0)
        for t in targets:
            ax.axvline(t, zorder=1, **TARGET_LINE)
    handles: list[Any] = [patch(EXTRAPOLATION_GREY, "extrapolation (C > largest run)")]
    if targets.size:
        handles.append(handle("target budget", marker="*", mfc="0.6", mec="black", **TARGET_LINE))
    return handles


def draw(ctx: PlotContext) -> Figure:
    """The compute-optimal laws of every fit in ``ctx`` (see the module docstring)."""
    c_lo, c_max, c_hi = ctx.c_range()
    grid = np.geomspace(c_lo, c_hi, GRID_POINTS)
    targets = np.asarray(ctx.target_budgets, dtype=float)
    with styled_figure("optimal") as fig:
        axes = fig.subplots(1, 3, sharex=True)
        handles = _draw_laws(axes, ctx, grid, targets)
        handles += _draw_optima(axes, ctx)
        handles += _draw_compute_marks(axes, c_max, c_hi, targets)
        for ax, (_, ylabel) in zip(axes, PANELS, strict=True):
            ax.set_xscale("log")
            ax.set_xlabel(LABEL_C)
            ax.set_ylabel(ylabel)
            ax.set_xlim(c_lo, c_hi)
        axes[0].set_yscale("log")
        axes[1].set_yscale("log")
        fig.legend(handles=handles, loc="outside upper center", ncols=3, columnspacing=1.5)
    return fig
