"""The look of every figure, in one place: palette, approach styles, markers, fonts, sizes, DPI, log axes.

Figures are sized for a paper column (3.5 in) or a full page width (7 in) and use colour-blind-safe colours:
budgets on a truncated viridis scale, approaches in the Okabe–Ito palette, each with its own line style.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Formatter

from flops_fit.analysis.isoflop import FLAG_CONCAVE, FLAG_EDGE_LARGE, FLAG_EDGE_SMALL, FLAG_FLAT, FLAG_TOO_FEW

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
#: (width, height) in inches of each figure; the residuals take one column when they have one panel.
FIGURE_SIZE_IN: dict[str, tuple[float, float]] = {
    "isoflop": (SINGLE_COLUMN_IN, 3.1),
    "optimal": (DOUBLE_COLUMN_IN, 2.75),
    "parametric": (SINGLE_COLUMN_IN, 3.5),
    "residuals": (DOUBLE_COLUMN_IN, 2.5),
    "envelope": (SINGLE_COLUMN_IN, 2.9),
    "backtest": (DOUBLE_COLUMN_IN, 2.7),
}
#: Dots per inch on screen and in saved raster files.
DPI = 150

#: matplotlib settings every figure is drawn and saved under (restored afterwards: no global state).
RC_PARAMS: dict[str, Any] = {
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
    "figure.dpi": DPI,
    "svg.hashsalt": "flops-fit",
    "svg.fonttype": "path",
}

#: viridis without its pale yellow end, which vanishes on white.
BUDGET_CMAP: Colormap = ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.85, 256)), "budget")
#: Colour map of the parametric loss surface.
SURFACE_CMAP = "cividis_r"
#: Grey of legend entries that stand for every budget's colour.
LEGEND_GREY = "0.35"
#: Grey band of the compute range beyond the largest run.
EXTRAPOLATION_GREY = "0.93"

#: Axis labels shared by the figures.
LABEL_N = "model size N (parameters)"
LABEL_D = "training data D (tokens)"
LABEL_C = "compute C (FLOPs)"
LABEL_BUDGET = "compute budget C (FLOPs)"

#: Scatter styles of a run: drawn, faded (outside its fit window), excluded by the fit, or off the loss scale.
RUN_DOT: dict[str, Any] = {"s": 9, "linewidths": 0, "zorder": 3}
FADED_ALPHA = 0.35
EXCLUDED_CROSS: dict[str, Any] = {"s": 18, "marker": "x", "linewidths": 0.9, "zorder": 3}
OFF_SCALE_TRIANGLE: dict[str, Any] = {"s": 12, "marker": "^", "alpha": 0.6, "linewidths": 0, "zorder": 3}
#: Target budgets: a dotted vertical line and a star per prediction.
TARGET_LINE: dict[str, Any] = {"color": "0.3", "ls": ":", "lw": 0.9}
TARGET_STAR: dict[str, Any] = {"marker": "*", "ms": 7, "mec": "black", "mew": 0.4}
#: Parametric figure: the dashed IsoFLOP lines, the frontier's width and its dashes where it extrapolates.
ISOFLOP_LINE: dict[str, Any] = {"color": "0.1", "lw": 0.6, "ls": (0, (3, 2))}
FRONTIER_LW = 1.8
EXTRAPOLATED_DASHES = (0, (2, 1.2))


@contextmanager
def styled_figure(
    name: str, width: float | None = None, rc: Mapping[str, Any] | None = None
) -> Iterator[Figure]:
    """A new constrained-layout Figure of figure ``name``'s size, drawn under :data:`RC_PARAMS` (and
    ``rc``); on leaving, every log axis gets readable minor tick labels."""
    default_width, height = FIGURE_SIZE_IN[name]
    with mpl.rc_context({**RC_PARAMS, **(rc or {})}):
        fig = Figure(figsize=(width or default_width, height), layout="constrained")
        yield fig
        tidy_log_axes(fig)


def house_style() -> AbstractContextManager[Any]:
    """A context in which matplotlib uses :data:`RC_PARAMS` (for saving a figure as it was drawn)."""
    return mpl.rc_context(RC_PARAMS)


def handle(label: str, **style: Any) -> Line2D:
    """A legend entry drawn as a line and/or marker of ``style``."""
    return Line2D([], [], label=label, **style)


def excluded_handle(label: str = "excluded outlier", color: str = LEGEND_GREY) -> Line2D:
    return handle(label, color=color, marker="x", ls="none")


def patch(colour: str, label: str, alpha: float = 1.0) -> Patch:
    """A legend entry drawn as a filled box (a band or a shaded range)."""
    return Patch(facecolor=colour, edgecolor="none", alpha=alpha, label=label)


def log_norm(values: Iterable[float]) -> LogNorm:
    """A log colour scale over ``values``, widened to a factor of 2 each side when they are all equal."""
    arr = np.asarray(list(values), dtype=float)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo * 1.0001:
        lo, hi = lo / 2, hi * 2
    return LogNorm(lo, hi)


def colorbar(fig: Figure, ax: Any, norm: LogNorm, label: str = LABEL_BUDGET) -> None:
    """A slim colour bar of :data:`BUDGET_CMAP` beside ``ax``."""
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=BUDGET_CMAP), ax=ax, pad=0.02, aspect=30)
    bar.set_label(label)
    bar.ax.tick_params(labelsize=6.5)


def sci(x: float, digits: int = 2) -> str:
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


def tex_sci(x: float) -> str:
    """``x`` for use inside mathtext: ``2.1\\times10^{4}`` (plain below 1000)."""
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    return sci(x, digits=2).strip("$")


class MinorLogFormatter(Formatter):
    """Minor-tick labels of a log axis: none when two or more decades are in view, else at 2 and 5
    (every integer multiple below half a decade), so a narrow log axis still has readable labels.
    ``fmt`` writes a label (default: ``2x10^3`` style)."""

    def __init__(self, fmt: Callable[[float], str] | None = None) -> None:
        self.fmt = fmt

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
            return sci(x) if self.fmt is None else self.fmt(x)
        return ""


def tidy_log_axes(fig: Figure) -> None:
    """Readable tick labels on every log axis of ``fig`` (colour bars included)."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and not isinstance(axis.get_minor_formatter(), MinorLogFormatter):
                axis.set_minor_formatter(MinorLogFormatter())
