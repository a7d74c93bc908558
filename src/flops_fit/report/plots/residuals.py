"""Figure ``residuals``: one panel per approach, with a zero line; panel titles give their root mean square.

Every panel is in the same unit, the natural log of the loss, so their RMS values compare (0.01 is a 1%
misfit). IsoFLOP: log L minus log of the budget's parabola, for runs inside each fit window (squares:
flagged budgets). Parametric: log L - log L(N, D) for every run. Envelope: log of the envelope loss minus
log of the L_opt(C) law. Crosses: runs the fit excluded as outliers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from flops_fit.analysis.envelope import EnvelopeFit
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.report.plots.context import PlotContext
from flops_fit.report.plots.style import (
    APPROACH_STYLE,
    BUDGET_CMAP,
    EXCLUDED_CROSS,
    LABEL_C,
    LABEL_N,
    LEGEND_GREY,
    RUN_DOT,
    SINGLE_COLUMN_IN,
    colorbar,
    excluded_handle,
    handle,
    styled_figure,
)

#: A panel draws one approach's residuals on an axes, adds legend entries by key, returns the residuals.
Panel = Callable[[Any, PlotContext, LogNorm, dict[str, Any]], np.ndarray]


def _isoflop(ax: Any, ctx: PlotContext, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
    """log L minus log of the budget's parabola, for the runs inside each fit window."""
    iso: IsoFLOPFit = ctx.fits["isoflop"]
    excluded = ctx.excluded_mask(iso)
    inside, rows = ctx.windows(iso)
    n, loss, bucket = ctx.n, ctx.loss, ctx.bucket
    kept = []
    for k, row in rows.items():
        coef = np.asarray(row.coef, dtype=float)
        if not np.all(np.isfinite(coef)):
            continue
        sel = (bucket == k) & inside
        with np.errstate(invalid="ignore", divide="ignore"):  # a parabola below 0 far out: no residual
            resid = np.log(loss[sel]) - np.log(np.polyval(coef, np.log(n[sel])))
        out = excluded[sel]
        colour = BUDGET_CMAP(norm(ctx.budgets[k]))
        marker = "o" if row.used else "s"
        ax.scatter(n[sel][~out], resid[~out], color=colour, marker=marker, **RUN_DOT)
        if out.any():
            ax.scatter(n[sel][out], resid[out], color=colour, **EXCLUDED_CROSS)
            handles["x"] = excluded_handle()
        if not row.used:
            handles["s"] = handle("flagged budget", color=LEGEND_GREY, marker="s", ms=3, ls="none")
        kept.append(resid[~out])
    ax.set_xscale("log")
    ax.set_xlabel(LABEL_N)
    ax.set_ylabel(r"$\log L - \log \hat L_{parabola}(N)$")
    return np.concatenate(kept) if kept else np.zeros(0)


def _parametric(ax: Any, ctx: PlotContext, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
    """log L - log L(N, D) for every run."""
    fit: ParametricFit = ctx.fits["parametric"]
    excluded = ctx.excluded_mask(fit)
    n, d, loss = ctx.n, ctx.d, ctx.loss
    resid = np.log(loss) - np.log(fit.predict_loss(n, d))
    colours = BUDGET_CMAP(norm(ctx.budgets[ctx.bucket]))
    ax.scatter(n[~excluded], resid[~excluded], c=colours[~excluded], **RUN_DOT)
    if excluded.any():
        ax.scatter(n[excluded], resid[excluded], c=colours[excluded], **EXCLUDED_CROSS)
        handles["x"] = excluded_handle()
    ax.set_xscale("log")
    ax.set_xlabel(LABEL_N)
    ax.set_ylabel(r"$\log L - \log \hat L(N, D)$")
    return resid[~excluded]


def _envelope(ax: Any, ctx: PlotContext, norm: LogNorm, handles: dict[str, Any]) -> np.ndarray:
    """log of the envelope loss minus log of the L_opt(C) law, along the envelope."""
    fit: EnvelopeFit = ctx.fits["envelope"]
    c = fit.envelope["compute"].to_numpy(float)
    resid = np.log(fit.envelope["optimal_loss"].to_numpy(float)) - np.log(fit.l_opt_fit.predict(c))
    ax.plot(c, resid, color=APPROACH_STYLE["envelope"]["color"], lw=1.0, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel(LABEL_C)
    ax.set_ylabel(r"$\log L_{env} - \log \hat L_{opt}(C)$")
    return resid


PANELS: dict[str, Panel] = {"envelope": _envelope, "isoflop": _isoflop, "parametric": _parametric}


def _rms_text(resid: np.ndarray) -> str:
    """``"\nRMS <value> (log loss)"`` of the finite residuals (a second title line, so titles of panels side
    by side do not run into each other), or nothing when there are none."""
    resid = resid[np.isfinite(resid)]
    return f"\nRMS {float(np.sqrt(np.mean(resid**2))):.2g} (log loss)" if resid.size else ""


def draw(ctx: PlotContext) -> Figure:
    """The residuals of every fit in ``ctx`` (see the module docstring)."""
    names = list(ctx.fits)
    norm = ctx.budget_norm()
    width = SINGLE_COLUMN_IN if len(names) == 1 else None
    with styled_figure("residuals", width) as fig:
        axes = np.atleast_1d(fig.subplots(1, len(names)))
        handles: dict[str, Any] = {}
        for ax, name in zip(axes, names, strict=True):
            resid = PANELS[name](ax, ctx, norm, handles)
            ax.axhline(0.0, color="0.3", lw=0.8, zorder=1)
            ax.set_title(APPROACH_STYLE[name]["name"] + _rms_text(resid))
        coloured = [ax for ax, name in zip(axes, names, strict=True) if name != "envelope"]
        if coloured:
            colorbar(fig, coloured, norm)
        if handles:
            fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=len(handles))
    return fig
