"""Figure ``parametric``: contours of Approach 3's L(N, D) over the (N, D) plane, with the runs, the IsoFLOP
lines N D = C / 6 of the observed budgets and the efficient frontier (N_opt(C), D_opt(C)).

Contour levels are log-spaced in the reducible loss L - E across the range of the runs (and the frontier),
so they are dense where the data are. With more than :data:`MAX_ISOFLOP_LINES` budgets, that many IsoFLOP
lines, evenly spaced in log C, are drawn. Runs the fit excluded are crosses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from flops_fit.analysis.parametric import ParametricFit
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.report.plots.context import PlotContext
from flops_fit.report.plots.style import (
    APPROACH_STYLE,
    EXTRAPOLATED_DASHES,
    FRONTIER_LW,
    ISOFLOP_LINE,
    LABEL_D,
    LABEL_N,
    SURFACE_CMAP,
    excluded_handle,
    handle,
    styled_figure,
    tex_sci,
)

#: Filled contour levels of the parametric loss surface.
N_CONTOUR_LEVELS = 12
#: At most this many IsoFLOP lines are drawn on the parametric contours.
MAX_ISOFLOP_LINES = 12
#: Points of the surface grid along each axis, and of the frontier.
GRID_POINTS = 160
FRONTIER_POINTS = 200


@dataclass(frozen=True)
class _Surface:
    """The predicted loss on a log grid of (N, D) and its contour levels."""

    n_grid: np.ndarray
    d_grid: np.ndarray
    loss: np.ndarray
    levels: np.ndarray

    @classmethod
    def over(cls, fit: ParametricFit, n_span: np.ndarray, d_span: np.ndarray) -> _Surface:
        """The surface a factor 2 beyond the sizes ``n_span`` and data ``d_span`` to show."""
        n_grid = np.geomspace(n_span.min() / 2, n_span.max() * 2, GRID_POINTS)
        d_grid = np.geomspace(d_span.min() / 2, d_span.max() * 2, GRID_POINTS)
        surface = fit.predict_loss(*np.meshgrid(n_grid, d_grid))
        # levels log-spaced in the reducible loss L - E over the range the runs (and targets) span
        at_data = fit.predict_loss(n_span, d_span) - fit.E
        lo = max(float(at_data.min()) * 0.7, float((surface - fit.E).min()))
        hi = min(float(np.quantile(at_data, 0.95)) * 1.5, float((surface - fit.E).max()))
        levels = fit.E + np.geomspace(lo, max(hi, lo * 1.01), N_CONTOUR_LEVELS)
        return cls(n_grid, d_grid, surface, levels)

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        return np.meshgrid(self.n_grid, self.d_grid)


def _draw_surface(fig: Figure, ax: Any, s: _Surface) -> None:
    """Filled contours with thin white edges, and their colour bar."""
    nn, dd = s.mesh()
    filled = ax.contourf(nn, dd, s.loss, levels=s.levels, cmap=SURFACE_CMAP, extend="both", zorder=0)
    ax.contour(nn, dd, s.loss, levels=s.levels, colors="white", linewidths=0.3, alpha=0.5, zorder=1)
    bar = fig.colorbar(filled, ax=ax, pad=0.02, aspect=30, format="{x:.3g}")
    bar.set_label("predicted loss L(N, D)")
    bar.ax.tick_params(labelsize=6)


def _draw_isoflop_lines(ax: Any, budgets: np.ndarray, n_grid: np.ndarray) -> Any:
    """N D = C / 6 for at most :data:`MAX_ISOFLOP_LINES` of the ``budgets``; returns the legend entry."""
    shown = budgets
    if budgets.size > MAX_ISOFLOP_LINES:
        picks = np.round(np.linspace(0, budgets.size - 1, MAX_ISOFLOP_LINES)).astype(int)
        shown = budgets[np.unique(picks)]
    for centre in shown:
        ax.plot(n_grid, centre / (FLOPS_PER_PARAM_TOKEN * n_grid), alpha=0.8, zorder=2, **ISOFLOP_LINE)
    label = "IsoFLOP lines ND = C/6"
    if shown.size < budgets.size:
        label += f" ({shown.size} of {budgets.size})"
    return handle(label, **ISOFLOP_LINE)


def _draw_runs(ax: Any, ctx: PlotContext, fit: ParametricFit) -> list[Any]:
    """The runs as white dots, those the fit excluded as crosses; returns legend entries."""
    n, d = ctx.n, ctx.d
    excluded = ctx.excluded_mask(fit)
    ax.scatter(n[~excluded], d[~excluded], s=9, color="white", edgecolors="black", linewidths=0.5, zorder=4)
    handles = [handle("run", marker="o", ms=3, mfc="white", mec="black", mew=0.5, ls="none")]
    if excluded.any():
        ax.scatter(n[excluded], d[excluded], s=16, marker="x", color="black", linewidths=0.8, zorder=4)
        handles.append(excluded_handle("excluded run", color="black"))
    return handles


def _draw_frontier(ax: Any, ctx: PlotContext, front: dict[str, Any], inside: np.ndarray) -> list[Any]:
    """The efficient frontier (dashed where it extrapolates) and the target budgets on it."""
    colour = APPROACH_STYLE["parametric"]["color"]
    fn, fd = front["optimal_params"], front["optimal_tokens"]
    ax.plot(fn[inside], fd[inside], color=colour, lw=FRONTIER_LW, zorder=3)
    ax.plot(fn[~inside], fd[~inside], color=colour, lw=FRONTIER_LW, ls=EXTRAPOLATED_DASHES, zorder=3)
    handles = [
        handle("efficient frontier", color=colour, lw=FRONTIER_LW),
        handle("extrapolated", color=colour, lw=FRONTIER_LW, ls=EXTRAPOLATED_DASHES),
    ]
    if ctx.target_budgets:
        at = ctx.optimal("parametric", np.asarray(ctx.target_budgets))
        assert at is not None  # the frontier exists, so the allocation is finite
        n_at, d_at = np.atleast_1d(at["optimal_params"]), np.atleast_1d(at["optimal_tokens"])
        ax.plot(n_at, d_at, "*", ms=9, color=colour, mec="black", mew=0.5, zorder=5)
        handles.append(handle("target budget", marker="*", ms=7, color=colour, mec="black", ls="none"))
    return handles


def _title(fit: ParametricFit) -> str:
    """The fitted law in mathtext."""
    reducible = f"{tex_sci(fit.A)}/N^{{{fit.alpha:.3f}}} + {tex_sci(fit.B)}/D^{{{fit.beta:.3f}}}"
    return f"$L = {fit.E:.3g} + {reducible}$"


def draw(ctx: PlotContext) -> Figure:
    """The loss surface of ``ctx.fits['parametric']`` (see the module docstring)."""
    fit: ParametricFit = ctx.fits["parametric"]
    c_lo, c_max, c_hi = ctx.c_range()
    frontier_c = np.geomspace(c_lo, c_hi, FRONTIER_POINTS)
    front = ctx.optimal("parametric", frontier_c)
    n_span, d_span = ctx.n, ctx.d
    if front is not None:
        n_span = np.concatenate([n_span, front["optimal_params"]])
        d_span = np.concatenate([d_span, front["optimal_tokens"]])
    surface = _Surface.over(fit, n_span, d_span)
    with styled_figure("parametric", rc={"axes.grid": False}) as fig:
        ax = fig.add_subplot()
        _draw_surface(fig, ax, surface)
        handles = [_draw_isoflop_lines(ax, ctx.budgets, surface.n_grid)]
        handles += _draw_runs(ax, ctx, fit)
        if front is not None:
            handles += _draw_frontier(ax, ctx, front, frontier_c <= c_max)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(surface.n_grid[0], surface.n_grid[-1])
        ax.set_ylim(surface.d_grid[0], surface.d_grid[-1])
        ax.set_xlabel(LABEL_N)
        ax.set_ylabel(LABEL_D)
        ax.set_title(_title(fit), fontsize=7)
        fig.legend(handles=handles, loc="outside lower center", ncols=2, columnspacing=1.0)
    return fig
