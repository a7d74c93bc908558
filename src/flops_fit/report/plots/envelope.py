"""Figure ``envelope``: every run's loss curve vs FLOPs (coloured by N), the envelope of Approach 1 and its
L_opt(C) law.

A curve's FLOPs are its tokens times the run's FLOPs per token (compute_budget / num_tokens), as in the fit.
The view starts a decade before the envelope and the loss axis is cut at the curves' 99th percentile
there, so the first steps of training do not hide the envelope.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from flops_fit.analysis.envelope import EnvelopeFit
from flops_fit.report.plots.context import Curve, PlotContext
from flops_fit.report.plots.style import (
    BUDGET_CMAP,
    LABEL_C,
    LABEL_N,
    colorbar,
    handle,
    log_norm,
    styled_figure,
)

#: The envelope: a thick translucent black line.
_ENVELOPE = {"color": "black", "lw": 3.5, "alpha": 0.3}
_LAW = {"color": "black", "ls": "--", "lw": 1.0}
_EXCLUDED_CURVE = {"color": "0.6", "lw": 0.8, "ls": ":"}


def _draw_curves(
    ax: Any, curves: tuple[Curve, ...], norm: LogNorm, excluded_ids: set[str], x_lo: float
) -> list[np.ndarray]:
    """Each run's curve, coloured by its size (grey and dotted if excluded); returns the losses in view."""
    seen = []
    for curve in curves:
        if curve.run_id in excluded_ids:
            style = dict(_EXCLUDED_CURVE)
        else:
            style = {"color": BUDGET_CMAP(norm(curve.num_params)), "lw": 0.8, "ls": "-"}
        ax.plot(curve.flops, curve.loss, alpha=0.85, zorder=2, **style)
        seen.append(curve.loss[curve.flops >= x_lo])
    return seen


def _set_loss_axis(ax: Any, seen: list[np.ndarray], env_loss: np.ndarray) -> None:
    """From the lowest loss in view to the 99th percentile (at least the envelope's top), padded 3%."""
    shown = np.concatenate([env_loss, *seen])
    lo, hi = float(shown.min()), float(np.quantile(shown, 0.99))
    hi = max(hi, float(env_loss.max()))
    ax.set_ylim(lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))


def _legend(ax: Any, any_excluded: bool) -> None:
    handles = [
        handle("run (loss curve)", color="0.45", lw=0.8),
        handle("envelope (lowest loss at C)", **_ENVELOPE),
        handle(r"$L_{opt}(C)$ fit", **_LAW),
    ]
    if any_excluded:
        handles.append(handle("excluded run", **_EXCLUDED_CURVE))
    ax.legend(handles=handles, loc="best", frameon=True, framealpha=0.85, edgecolor="none")


def draw(ctx: PlotContext) -> Figure:
    """The loss curves and the envelope of ``ctx.fits['envelope']`` (see the module docstring)."""
    fit: EnvelopeFit = ctx.fits["envelope"]
    curves = ctx.curves
    excluded = ctx.excluded_mask(fit)
    ids = set(ctx.points.loc[excluded, "experiment_id"]) if excluded.any() else set()
    env_c = fit.envelope["compute"].to_numpy(float)
    env_l = fit.envelope["optimal_loss"].to_numpy(float)
    x_lo = float(env_c.min()) / 10 if env_c.size else min(float(c.flops[0]) for c in curves)
    x_hi = max(float(c.flops[-1]) for c in curves) * 1.1
    norm = log_norm([c.num_params for c in curves])
    with styled_figure("envelope") as fig:
        ax = fig.add_subplot()
        seen = _draw_curves(ax, curves, norm, ids, x_lo)
        ax.plot(env_c, env_l, zorder=3, solid_capstyle="round", **_ENVELOPE)
        law_c = np.geomspace(env_c.min(), env_c.max(), 100)
        ax.plot(law_c, fit.l_opt_fit.predict(law_c), zorder=4, **_LAW)
        _set_loss_axis(ax, seen, env_l)
        ax.set_xscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_xlabel(LABEL_C)
        ax.set_ylabel("loss")
        ax.set_title("Training curves and envelope (Approach 1)")
        _legend(ax, bool(ids))
        colorbar(fig, ax, norm, label=LABEL_N)
    return fig
