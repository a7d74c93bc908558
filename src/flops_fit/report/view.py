"""What the Result's helper modules (back-test, diagnostics, folder I/O, HTML parts) read of a Result.

They take a :class:`~flops_fit.report.result.Result` and read it through these public attributes only, so
they need not import the Result's module (which imports them): the dependency runs one way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import Fit
from flops_fit.analysis.layout import Layout
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.laws import ScalingAnalysis


class ResultView(Protocol):
    """The public face of a Result: its runs (one row per run), fits by approach name, and what they say."""

    runs: pd.DataFrame
    fits: Mapping[str, Fit]
    plan: SweepPlan | None
    primary: str | None
    budget_rtol: float | None
    skipped: Mapping[str, str]
    fit_options: Mapping[str, Any]
    variants: Mapping[str, Fit]
    selection: Any

    @property
    def candidates(self) -> dict[str, Fit]: ...

    @property
    def layout(self) -> Layout: ...

    @property
    def usable_runs(self) -> pd.DataFrame: ...

    @property
    def budgets(self) -> np.ndarray: ...

    @property
    def warnings(self) -> list[str]: ...

    @property
    def synthetic_banner(self) -> str | None: ...

    @property
    def last_backtest(self) -> pd.DataFrame | None: ...

    def law_lines(self, approach: str) -> list[str]: ...

    def chinchilla_table(
        self, budgets: Sequence[float] | None = None, approach: str | None = None
    ) -> pd.DataFrame: ...

    def tables_markdown(self, budgets: Sequence[float] | None = None) -> str: ...

    def compare_approaches(self, C: float | None = None) -> pd.DataFrame: ...

    def to_analysis(self) -> ScalingAnalysis: ...

    def plot(
        self,
        show: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        *,
        formats: Sequence[str] | str = ("png", "svg"),
        target_budgets: Sequence[float] | float | None = None,
    ) -> dict[str, Any]: ...
