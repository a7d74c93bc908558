"""Figure ``backtest``: how each candidate's extrapolation error grows with the distance C_target / C_k.

One panel per quantity the rolling back-test measured (:mod:`flops_fit.report.backtest`): N_opt and L_opt
at each later budget's measured optimum (predicted / measured - 1; filled: the budget's IsoFLOP minimum,
hollow: its lowest-loss run, which is not an optimum), and Approach 3's mean |ln(predicted / measured)| of
the loss of the later runs. The dotted line marks the distance from which the primary answer is judged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from flops_fit.analysis.approaches import base_approach, label
from flops_fit.report.backtest import FAR_DISTANCE, MEASURED_VERTEX
from flops_fit.report.plots.context import PlotContext
from flops_fit.report.plots.style import (
    APPROACH_STYLE,
    LEGEND_GREY,
    MinorLogFormatter,
    handle,
    styled_figure,
)

#: Markers of an approach's candidates in registry order: the approach itself, then its variants.
_MARKERS = ("o", "s", "^", "D")
_PANELS = (
    ("optimum", "params_rel_error", "N_opt: predicted / measured - 1"),
    ("optimum", "loss_rel_error", "L_opt: predicted / measured - 1"),
    ("runs", "loss_log_error", "loss of later runs: mean |ln error|"),
)


def _style(name: str, names: list[str]) -> dict[str, Any]:
    """Colour of the candidate's approach; a marker per candidate of that approach."""
    base = base_approach(name)
    same = [n for n in names if base_approach(n) == base]
    return {"color": APPROACH_STYLE[base]["color"], "marker": _MARKERS[same.index(name) % len(_MARKERS)]}


def _valid(table: pd.DataFrame, kind: str, column: str) -> pd.DataFrame:
    rows = table[(table["kind"] == kind) & (table["error"].isna() | (table["error"].astype(str) == ""))]
    return rows[np.isfinite(rows[column].astype(float))]


def _panel(ax: Any, rows: pd.DataFrame, column: str, names: list[str]) -> None:
    """Each candidate's errors against distance, with a line through its mean per distance."""
    for name in names:
        mine = rows[rows["approach"] == name]
        if mine.empty:
            continue
        style = _style(name, names)
        dist = mine["distance"].to_numpy(float)
        err = mine[column].to_numpy(float)
        bracketed = (mine["measured_from"] == MEASURED_VERTEX).to_numpy() | (
            mine["kind"] == "runs"
        ).to_numpy()
        ax.scatter(
            dist[bracketed], err[bracketed], s=14, color=style["color"], marker=style["marker"], zorder=3
        )
        ax.scatter(
            dist[~bracketed], err[~bracketed], s=14, facecolors="none", edgecolors=style["color"],
            marker=style["marker"], zorder=3,
        )  # fmt: skip
        means = pd.Series(err).groupby(np.round(np.log(dist), 6)).mean()
        ax.plot(np.exp(means.index.to_numpy()), means.to_numpy(), color=style["color"], lw=0.8, alpha=0.8)
    ax.axvline(FAR_DISTANCE, color=LEGEND_GREY, ls=":", lw=0.9)
    ax.set_xscale("log")
    times = lambda v: f"{v:g}x"  # noqa: E731  (2x, 3x, 10x: not 2 x 10^0 on a short log axis)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: times(v)))
    ax.xaxis.set_minor_formatter(MinorLogFormatter(times))
    ax.set_xlabel("distance C_target / C_k")
    ax.yaxis.set_major_formatter(lambda y, _pos: f"{y:.0%}" if abs(y) >= 0.1 else f"{y:.1%}")


def draw(ctx: PlotContext) -> Figure:
    """The back-test errors of every candidate against extrapolation distance (see the module)."""
    table = ctx.backtest
    assert table is not None
    names = list(dict.fromkeys(table["approach"]))
    panels = [(kind, col, title) for kind, col, title in _PANELS if not _valid(table, kind, col).empty]
    with styled_figure("backtest") as fig:
        axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
        for ax, (kind, col, title) in zip(axes, panels, strict=False):
            _panel(ax, _valid(table, kind, col), col, names)
            if kind == "optimum":
                ax.axhline(0.0, color="0.3", lw=0.6)
            ax.set_title(title)
        if not panels:
            axes[0].text(
                0.5, 0.5, "no refit succeeded", ha="center", va="center", transform=axes[0].transAxes
            )
        handles = [handle(label(n), ls="none", **_style(n, names)) for n in names]
        handles.append(handle(f"judged from {FAR_DISTANCE:g}x", color=LEGEND_GREY, ls=":"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
        fig.suptitle("Rolling back-test: error against extrapolation distance")
    return fig
