"""Figure ``isoflop``: loss vs N per budget bucket, each budget's fitted parabola and its minimum (Approach 2).

Parabolas are drawn over the window they were fitted on; runs outside it are faded. Budgets flagged by the
fit (minimum not bracketed, too few sizes, flat) have a dashed parabola, a hollow minimum and the flag's
advice in a legend; runs the fit excluded as outliers are crosses. When the far tails of the profiles would
squeeze the minima, the loss axis is cut above the fit windows and the runs beyond it are triangles on the
top edge.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.report.plots.context import PlotContext
from flops_fit.report.plots.style import (
    BUDGET_CMAP,
    EXCLUDED_CROSS,
    FADED_ALPHA,
    FLAG_ADVICE,
    LABEL_N,
    LEGEND_GREY,
    OFF_SCALE_TRIANGLE,
    RUN_DOT,
    colorbar,
    excluded_handle,
    handle,
    sci,
    styled_figure,
)

#: Beyond this many flagged budgets, their legend gives one entry per kind of advice instead of per budget.
MAX_FLAGGED_ENTRIES = 6
#: Characters per line of those entries, so the legend stays inside a one-column figure.
SUMMARY_WIDTH = 44


@dataclass(frozen=True)
class Parabola:
    """One budget's fitted parabola in ln N, sampled over its fit window; ``used``: not flagged."""

    n: np.ndarray
    loss: np.ndarray
    budget: float
    used: bool

    @classmethod
    def of(cls, row: Any) -> Parabola:
        """The parabola of one row of ``IsoFLOPFit.minima``."""
        x = np.linspace(math.log(row.fit_n_lo), math.log(row.fit_n_hi), 100)
        coef = np.asarray(row.coef, dtype=float)
        return cls(np.exp(x), np.polyval(coef, x), float(row.compute_budget), bool(row.used))


@dataclass(frozen=True)
class _Profiles:
    """What the figure shows of each run (``excluded``, ``inside`` its fit window, ``off_scale`` above the
    loss axis), the parabolas, the loss range and the budgets' colour scale."""

    excluded: np.ndarray
    inside: np.ndarray
    off_scale: np.ndarray
    parabolas: tuple[Parabola, ...]
    bottom: float
    top: float
    norm: LogNorm


def _profiles(ctx: PlotContext, iso: IsoFLOPFit) -> _Profiles:
    """Sort the runs into what is drawn how, and choose the loss range."""
    excluded = ctx.excluded_mask(iso)
    inside, _ = ctx.windows(iso)
    minima = iso.minima
    parabolas = tuple(
        Parabola.of(row)
        for row in minima.itertuples(index=False)
        if np.all(np.isfinite(np.asarray(row.coef, dtype=float)))
    )
    loss = ctx.loss
    # loss range: the fit windows, unless the whole profiles fit without squeezing them
    core = np.concatenate(
        [loss[inside & ~excluded], minima["optimal_loss"].to_numpy(float), *(p.loss for p in parabolas)]
    )
    bottom, core_top = float(core.min()), float(core.max())
    top = float(loss.max())
    if top > core_top + 0.3 * (core_top - bottom):
        top = core_top + 0.08 * (core_top - bottom)
    norm = ctx.budget_norm(minima["compute_budget"].to_numpy(float))
    return _Profiles(excluded, inside, loss > top, parabolas, bottom, top, norm)


def _draw_runs(ax: Any, ctx: PlotContext, p: _Profiles) -> None:
    """Each budget's runs: dots (faded outside the fit window), crosses (excluded), triangles (off scale)."""
    n, loss, bucket = ctx.n, ctx.loss, ctx.bucket
    for k, centre in enumerate(ctx.budgets):
        colour = BUDGET_CMAP(p.norm(centre))
        member = (bucket == k) & ~p.off_scale
        sel = member & ~p.excluded & p.inside
        ax.scatter(n[sel], loss[sel], color=colour, gid=f"profile-{k}", **RUN_DOT)
        kinds = (
            ("outside", member & ~p.excluded & ~p.inside, {**RUN_DOT, "alpha": FADED_ALPHA}),
            ("excluded", member & p.excluded, EXCLUDED_CROSS),
        )
        for kind, sel, style in kinds:
            if sel.any():
                ax.scatter(n[sel], loss[sel], color=colour, gid=f"profile-{k}-{kind}", **style)
        sel = (bucket == k) & p.off_scale
        if sel.any():
            ax.scatter(
                n[sel],
                np.ones(sel.sum()),
                color=colour,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                gid=f"profile-{k}-off-scale",
                **OFF_SCALE_TRIANGLE,
            )


def _draw_fits(ax: Any, minima: pd.DataFrame, p: _Profiles) -> list[Any]:
    """The parabolas and minima (dashed and hollow where flagged); returns the flagged budgets' legend
    (see :func:`_summarised`)."""
    for parabola in p.parabolas:
        colour = BUDGET_CMAP(p.norm(parabola.budget))
        ax.plot(parabola.n, parabola.loss, color=colour, lw=1.0, ls="-" if parabola.used else "--", zorder=2)
    flagged: list[tuple[Any, str, str]] = []
    for row in minima.itertuples(index=False):
        colour = BUDGET_CMAP(p.norm(row.compute_budget))
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
            flagged.append((colour, f"C = {sci(row.compute_budget)}: ", advice))
    return _summarised(flagged)


def _flagged_handle(colour: Any, label: str) -> Any:
    return handle(label, color=colour, lw=1.0, ls="--", marker="o", ms=4, mfc="white", mew=1.3)


def _budgets(n: int) -> str:
    return f"{n} budget" if n == 1 else f"{n} budgets"


def _summarised(flagged: list[tuple[Any, str, str]]) -> list[Any]:
    """One legend entry per flagged budget (colour, ``"C = ...: "``, advice), or, beyond
    :data:`MAX_FLAGGED_ENTRIES` budgets, one grey entry per advice with its count of budgets (a legend
    of every budget would not fit in the axes)."""
    if len(flagged) <= MAX_FLAGGED_ENTRIES:
        return [_flagged_handle(colour, budget + advice) for colour, budget, advice in flagged]
    counts = Counter(advice for _, _, advice in flagged).most_common()
    shown = counts if len(counts) <= MAX_FLAGGED_ENTRIES else counts[: MAX_FLAGGED_ENTRIES - 1]
    labels = [f"{_budgets(n)}: {advice}" for advice, n in shown]
    rest = sum(n for _, n in counts[len(shown) :])
    if rest:
        labels.append(f"{_budgets(rest)}: other flags (see the IsoFLOP minima table of the report)")
    return [_flagged_handle(LEGEND_GREY, textwrap.fill(label, SUMMARY_WIDTH)) for label in labels]


def _set_loss_axis(ax: Any, p: _Profiles, n_flagged: int) -> None:
    """The loss range, with room above the profiles for the ``n_flagged`` lines of the flagged legend."""
    bottom, top = p.bottom, p.top
    span = top - bottom if top > bottom else max(abs(top), 1.0) * 0.1
    # the legend's share of the axes height
    room = min(0.45, 0.06 + 0.065 * (n_flagged + 1)) if n_flagged else 0.0
    pad = 0.05 * span  # every marker stays inside the axes, at the top as at the bottom
    ax.set_ylim(bottom - pad, top + pad + (top - bottom + 2 * pad) * room / (1 - room))


def _flagged_legend(ax: Any, flagged: list[Any]) -> None:
    ax.legend(
        handles=flagged,
        loc="upper center",
        title="flagged, left out of the laws",
        title_fontsize=6,
        fontsize=6,
        frameon=True,
        framealpha=0.9,
        edgecolor="none",
        handlelength=1.8,
    )


def _legend(p: _Profiles) -> list[Any]:
    """The figure legend: runs, parabolas, minima and, where present, faded, excluded and off-scale runs."""
    handles = [
        handle("run", color=LEGEND_GREY, marker="o", ms=3, ls="none"),
        handle("parabola fit", color=LEGEND_GREY, lw=1.0),
        handle("minimum", marker="o", ms=4.5, mfc=LEGEND_GREY, mec="black", ls="none"),
    ]
    if not p.inside.all():
        faded = {"color": LEGEND_GREY, "alpha": FADED_ALPHA, "marker": "o", "ms": 3, "ls": "none"}
        handles.append(handle("outside fit window", **faded))
    if p.excluded.any():
        handles.append(excluded_handle())
    if p.off_scale.any():
        off = {"color": LEGEND_GREY, "alpha": OFF_SCALE_TRIANGLE["alpha"], "marker": "^", "ms": 3.5}
        handles.append(handle("loss off scale", ls="none", **off))
    return handles


def draw(ctx: PlotContext) -> Figure:
    """The IsoFLOP profiles of ``ctx.fits['isoflop']`` (see the module docstring)."""
    iso: IsoFLOPFit = ctx.fits["isoflop"]
    profiles = _profiles(ctx, iso)
    with styled_figure("isoflop") as fig:
        ax = fig.add_subplot()
        _draw_runs(ax, ctx, profiles)
        flagged = _draw_fits(ax, iso.minima, profiles)
        ax.set_xscale("log")
        _set_loss_axis(ax, profiles, sum(h.get_label().count("\n") + 1 for h in flagged))
        ax.set_xlabel(LABEL_N)
        ax.set_ylabel("final loss")
        ax.set_title("IsoFLOP profiles (Approach 2)")
        if flagged:
            _flagged_legend(ax, flagged)
        fig.legend(handles=_legend(profiles), loc="outside lower center", ncols=3, columnspacing=1.2)
        colorbar(fig, ax, profiles.norm)
    return fig
