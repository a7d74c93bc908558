"""Figures of a scaling-law analysis: IsoFLOP profiles, compute-optimal laws, L(N, D), residuals, envelope,
back-test.

:class:`ScalingVisualizer` takes the runs table (:mod:`flops_fit.core.runs`) and the fitted approaches
(``EnvelopeFit``, ``IsoFLOPFit``, ``ParametricFit``), builds one :class:`~.context.PlotContext` from them
and draws each figure from it as a standalone :class:`matplotlib.figure.Figure` (no pyplot, so no global
figure state). One module per figure (:mod:`.isoflop`, :mod:`.optimal`, :mod:`.parametric`,
:mod:`.residuals`, :mod:`.envelope`, :mod:`.backtest`), each with a ``draw(context)``; the look of all of them is
:mod:`.style`. Units: C in FLOPs, N in parameters, D in tokens, loss as given by the runs (nats for
cross-entropy).

Budgets are grouped by :func:`flops_fit.analysis.bucketing.bucket_budgets`, the rule the fits use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.core.sweepdir import SweepDir
from flops_fit.core.validate import POSITIVE, check
from flops_fit.report.plots import backtest, envelope, isoflop, optimal, parametric, residuals
from flops_fit.report.plots.context import EXTRAPOLATION_FACTOR, Curve, PlotContext
from flops_fit.report.plots.files import check_formats, read_analysis, save_atomic
from flops_fit.report.plots.parametric import MAX_ISOFLOP_LINES, N_CONTOUR_LEVELS
from flops_fit.report.plots.style import (
    APPROACH_STYLE,
    BUDGET_CMAP,
    DOUBLE_COLUMN_IN,
    DPI,
    FLAG_ADVICE,
    OKABE_ITO,
    SINGLE_COLUMN_IN,
    house_style,
)

__all__ = [
    "APPROACH_STYLE",
    "BUDGET_CMAP",
    "DOUBLE_COLUMN_IN",
    "EXTRAPOLATION_FACTOR",
    "FIGURES",
    "FLAG_ADVICE",
    "MAX_ISOFLOP_LINES",
    "N_CONTOUR_LEVELS",
    "OKABE_ITO",
    "SINGLE_COLUMN_IN",
    "PlotContext",
    "ScalingVisualizer",
]

logger = logging.getLogger(__name__)

#: How each figure is drawn from the context, in the order :meth:`ScalingVisualizer.save_all` writes them.
DRAW: dict[str, Callable[[PlotContext], Figure]] = {
    "isoflop": isoflop.draw,
    "optimal": optimal.draw,
    "parametric": parametric.draw,
    "residuals": residuals.draw,
    "envelope": envelope.draw,
    "backtest": backtest.draw,
}
#: Every figure, in the order :meth:`ScalingVisualizer.save_all` writes them (file ``<name>.<format>``).
FIGURES: tuple[str, ...] = tuple(DRAW)


class ScalingVisualizer:
    """Draw the figures of a scaling-law analysis.

    Args:
        runs: the runs table (see :mod:`flops_fit.core.runs`); completed runs with finite values are drawn.
        fits: one fit, or a mapping of approach name (``"envelope"``, ``"isoflop"``, ``"parametric"``) to
            the fits to draw (any subset).
        budget_rtol: budgets within this relative distance form one bucket
            (:func:`~flops_fit.analysis.bucketing.bucket_budgets`); use the value the fits used.
        target_budgets: compute budgets (FLOPs) to mark on the laws, e.g. the run you are planning.
        backtest: a rolling back-test table (:meth:`Result.backtest`) for the ``backtest`` figure.

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
        backtest: pd.DataFrame | None = None,
    ) -> None:
        # bucket_budgets as this package names it: the one grouping rule, replaceable in one place
        #: What every figure is drawn from.
        self.context = PlotContext.build(
            runs, fits, budget_rtol, target_budgets, group=bucket_budgets, backtest=backtest
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
        """Visualizer for a results file (read by :func:`flops_fit.core.runs.load_runs`) and the scaling-laws
        file written by :meth:`ScalingLawAnalyzer.analyze`.

        ``budget_rtol`` defaults to the IsoFLOP fit's own (else the library default). ``plan`` (a plan file
        path or a SweepPlan) keeps only that plan's runs, as the analyzer's ``plan`` does.
        """
        runs, fits, rtol = read_analysis(
            results_path, scaling_laws_path, columns=columns, budget_rtol=budget_rtol, plan=plan
        )
        return cls(runs, fits, budget_rtol=rtol, target_budgets=target_budgets)

    @property
    def runs(self) -> pd.DataFrame:
        """The runs table (checked by :func:`~flops_fit.core.runs.validate_runs`)."""
        return self.context.runs

    @property
    def fits(self) -> dict[str, Any]:
        """The fits drawn, by approach name, in the order of the approaches."""
        return dict(self.context.fits)

    @property
    def budget_rtol(self) -> float:
        return self.context.budget_rtol

    @property
    def target_budgets(self) -> tuple[float, ...]:
        return self.context.target_budgets

    @property
    def budgets(self) -> np.ndarray:
        """Geometric-mean budget (FLOPs) of each bucket, increasing."""
        return self.context.budgets

    def __repr__(self) -> str:
        return (
            f"ScalingVisualizer(runs={len(self.context.points)}, budgets={len(self.budgets)}, "
            f"fits={list(self.fits)}, figures={list(self.available_figures())})"
        )

    def available_figures(self) -> tuple[str, ...]:
        """Names of the figures the given fits support, in :data:`FIGURES` order."""
        return tuple(name for name in FIGURES if self.context.missing(name) is None)

    def figure(self, name: str) -> Figure:
        """Figure ``name`` (one of :data:`FIGURES`)."""
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}; choose one of {list(FIGURES)}")
        why = self.context.missing(name)
        if why is not None:
            raise ValueError(f"plot_{name} {why}; available figures: {list(self.available_figures())}")
        return DRAW[name](self.context)

    def plot_isoflop(self) -> Figure:
        """Loss vs N per budget with each budget's fitted parabola and minimum (see :mod:`.isoflop`)."""
        return self.figure("isoflop")

    def plot_optimal(self) -> Figure:
        """N_opt, D_opt and L_opt vs C: the optima and each approach's law and band (see :mod:`.optimal`)."""
        return self.figure("optimal")

    def plot_parametric(self) -> Figure:
        """Contours of Approach 3's L(N, D), the runs and the efficient frontier (see :mod:`.parametric`)."""
        return self.figure("parametric")

    def plot_residuals(self) -> Figure:
        """Residuals of each approach, with their root mean square (see :mod:`.residuals`)."""
        return self.figure("residuals")

    def plot_envelope(self) -> Figure:
        """Every run's loss curve, the envelope of Approach 1 and its L_opt(C) (see :mod:`.envelope`)."""
        return self.figure("envelope")

    def plot_backtest(self) -> Figure:
        """Each candidate's back-test error against extrapolation distance (see :mod:`.backtest`)."""
        return self.figure("backtest")

    def save_all(
        self,
        output_dir: str | os.PathLike[str],
        formats: Iterable[str] | str = ("png", "svg"),
        dpi: float = DPI,
    ) -> list[Path]:
        """Write every figure the fits support as ``output_dir/<name>.<format>``; returns the paths written.

        Figures whose fit is absent are skipped with a log line. Files are written atomically (a temporary
        file in ``output_dir``, then ``os.replace``).
        """
        fmts = check_formats(formats)
        dpi = check("dpi", dpi, POSITIVE, "dots per inch")
        out = SweepDir(output_dir)
        out.root.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in FIGURES:
            why = self.context.missing(name)
            if why is not None:
                logger.info("skipping figure %r: it %s", name, why)
                continue
            fig = self.figure(name)
            with house_style():
                for fmt in fmts:
                    save_atomic(fig, out.figure(name, fmt), fmt, dpi)
                    written.append(out.figure(name, fmt))
            logger.info("wrote %s figure (%s) to %s", name, ", ".join(fmts), out.root)
        return written

    # The context's answers under the names earlier releases gave them
    def _excluded_mask(self, fit: Any) -> np.ndarray:
        return self.context.excluded_mask(fit)

    def _curves(self) -> list[Curve]:
        return list(self.context.curves)
