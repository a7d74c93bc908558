"""``Result``: the outcome of a compute-optimal study, and everything you do with it afterwards.

A :class:`Result` holds the runs table (:mod:`flops_fit.core.runs`) and the fitted approaches (Hoffmann et al.
2022: Approach 1 ``envelope``, 2 ``isoflop``, 3 ``parametric``). It predicts the compute-optimal model size
N (parameters), data D (tokens) and loss at any budget C (FLOPs) with 95% intervals, tabulates them, draws
the figures, back-tests the extrapolation on the largest budget, calls out approaches that disagree beyond
their intervals, and saves to / loads from a folder of JSON, CSV, Markdown and image files (no pickle).

A Result never changes: :meth:`backtest` returns its table, and :meth:`with_backtest` a new Result that
carries one into :meth:`summary`, :meth:`save` and the report. The diagnostics live in
:mod:`flops_fit.report.diagnostics`, the back-test in :mod:`flops_fit.report.backtest`, the files in
:mod:`flops_fit.report.folder`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import (
    APPROACH_LABELS,
    APPROACHES,
    FIT_TYPES,
    PRIMARY_ORDER,
    Fit,
    resolve_approaches,
    run_approaches,
)
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.analysis.table import chinchilla_table as _chinchilla_table
from flops_fit.analysis.table import to_latex, to_markdown
from flops_fit.core import sweepdir
from flops_fit.core.runs import load_runs, usable_mask, validate_runs
from flops_fit.core.validate import (
    POSITIVE,
    Flag,
    Instance,
    Nullable,
    check,
    check_bootstrap,
    check_budget_rtol,
    check_flag,
    check_seed,
)
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report import backtest as _backtest
from flops_fit.report import diagnostics
from flops_fit.report.diagnostics import SIX_ND_RTOL, ci_pair, exponent_ci, fmt, fmt_ci
from flops_fit.report.folder import RESULT_VERSION, read_result, runs_to_records, write_result
from flops_fit.report.html_parts import result_html_fragment
from flops_fit.report.laws import ScalingAnalysis, laws_of, prediction

__all__ = [
    "PLAN_FILE",
    "RESULT_FILE",
    "RESULT_VERSION",
    "RUNS_CSV_FILE",
    "RUNS_FILE",
    "SIX_ND_RTOL",
    "TABLE_FILE",
    "TABLE_REACH",
    "Result",
    "default_budgets",
    "runs_to_records",
]

logger = logging.getLogger(__name__)

#: File names of a saved Result, as :mod:`flops_fit.core.sweepdir` names them (the names of 0.1.0, kept for
#: callers; ``PLAN_FILE`` here is the plan's export ``plan.json``, not the sweep's ``sweep.json``).
RESULT_FILE = sweepdir.RESULT_FILE
RUNS_FILE = sweepdir.RUNS_FILE
RUNS_CSV_FILE = sweepdir.RUNS_CSV_FILE
TABLE_FILE = sweepdir.TABLE_FILE
PLAN_FILE = sweepdir.LEGACY_PLAN_FILE

#: The default Chinchilla table runs over the decades from the smallest observed budget to this factor
#: beyond the largest.
TABLE_REACH = 100.0


def default_budgets(compute: Any, reach: float = TABLE_REACH) -> list[float]:
    """Powers of ten from the smallest observed budget up to ``reach`` times the largest (FLOPs)."""
    c = np.asarray(compute, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    if c.size == 0:
        raise ValueError("no positive finite compute budgets to build a table from")
    lo = math.ceil(math.log10(float(c.min())) - 1e-9)
    hi = math.floor(math.log10(float(c.max()) * reach) + 1e-9)
    return [10.0**k for k in range(lo, max(hi, lo) + 1)]


def _canonical_fits(fits: Any) -> dict[str, Fit]:
    """``fits`` keyed by canonical approach name in the order of APPROACHES, each of its approach's type."""
    if not isinstance(fits, Mapping):
        raise TypeError(
            f"fits must be a mapping of approach name to fit, e.g. {{'isoflop': fit}}, got {type(fits).__name__}"
        )
    out: dict[str, Fit] = {}
    for key, fit in fits.items():
        (name,) = resolve_approaches(str(key))
        if not isinstance(fit, FIT_TYPES[name]):
            raise TypeError(f"fits[{key!r}] must be a {FIT_TYPES[name].__name__}, got {type(fit).__name__}")
        out[name] = fit
    return {name: out[name] for name in APPROACHES if name in out}


@dataclass(frozen=True, eq=False)
class Result:
    """Runs, fits and everything derived from them.

    Args:
        runs: the runs table (every run, failed ones included; see :mod:`flops_fit.core.runs`).
        fits: fitted approaches by name (``"envelope"``, ``"isoflop"``, ``"parametric"``), any subset.
        plan: the :class:`~flops_fit.plan.sweep.SweepPlan` the runs came from; with a model spec,
            :meth:`predict` also names the size value of your model closest to N_opt.
        primary: the approach :meth:`predict` and the table use by default (default: isoflop if fitted,
            else parametric, else envelope).
        output_dir: where :meth:`save` and the report write when given no directory.
        budget_rtol: budgets within this relative distance are one budget (default: the IsoFLOP fit's).
        skipped: approaches that were asked for but could not be fitted, with the reason.
        fit_options: how the fits were made (``bootstrap``, ``seed``, ``exclude_outliers``); the
            back-test refits the same way.
        backtest_table: a :meth:`backtest` table this Result carries into :meth:`summary`, :meth:`save` and
            the report (see :meth:`with_backtest`; :meth:`load` restores a saved one).
        trust_plan: whether :meth:`predict` may import the plan's model class to name the closest size
            (:meth:`load` sets False unless asked, so loading a result someone sent you runs no code).

    ``warnings`` lists what a careful reader should check: approaches that disagree beyond their 95%
    intervals, flagged IsoFLOP budgets, excluded outliers, runs that did not complete, degenerate fits.
    A Result is immutable; derived values (budgets, warnings) are computed once, on first use.
    """

    runs: pd.DataFrame
    fits: Mapping[str, Fit]
    _: KW_ONLY
    plan: SweepPlan | None = None
    primary: str | None = None
    output_dir: str | os.PathLike[str] | None = None
    budget_rtol: float | None = None
    skipped: Mapping[str, str] = field(default_factory=dict)
    fit_options: Mapping[str, Any] = field(default_factory=dict)
    backtest_table: pd.DataFrame | None = field(default=None, repr=False)
    trust_plan: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "runs", validate_runs(self.runs))
        fits = _canonical_fits(self.fits)
        if not fits:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none given"
            raise ValueError(f"a Result needs at least one fitted approach ({why})")
        set_(self, "fits", MappingProxyType(dict(fits)))  # read-only: a Result never changes
        set_(self, "primary", self._primary_of(fits))
        check("plan", self.plan, Nullable(Instance(SweepPlan)))
        if self.output_dir is not None:
            set_(self, "output_dir", Path(self.output_dir))
        rtol = self.budget_rtol
        if rtol is None:
            iso = fits.get("isoflop")
            rtol = iso.budget_rtol if isinstance(iso, IsoFLOPFit) else DEFAULT_BUDGET_RTOL
        set_(self, "budget_rtol", check_budget_rtol(rtol))
        set_(self, "skipped", MappingProxyType({str(k): str(v) for k, v in self.skipped.items()}))
        set_(self, "fit_options", MappingProxyType(dict(self.fit_options)))
        table = check("backtest_table", self.backtest_table, Nullable(Instance(pd.DataFrame)))
        set_(self, "backtest_table", None if table is None else table.copy())
        set_(self, "trust_plan", check("trust_plan", self.trust_plan, Flag()))
        if not usable_mask(self.runs).any():
            raise ValueError("runs holds no completed run with positive finite C, N, D and loss")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle and deep-copy through the constructor (the read-only mappings are given as plain dicts)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("fits", "skipped", "fit_options"):
            values[name] = dict(values[name])
        return (_rebuild, (type(self), values))

    def _primary_of(self, fits: Mapping[str, Fit]) -> str:
        """The canonical name of the primary approach: the one asked for, else the first of PRIMARY_ORDER."""
        if self.primary is None:
            return next(n for n in PRIMARY_ORDER if n in fits)
        (primary,) = resolve_approaches(self.primary)
        if primary not in fits:
            raise ValueError(f"primary={self.primary!r} was not fitted; choose one of {list(fits)}")
        return primary

    # ------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_runs(
        cls,
        runs: pd.DataFrame | str | os.PathLike[str],
        approach: str | Sequence[str] = "all",
        *,
        bootstrap: int = 0,
        seed: int = 0,
        exclude_outliers: bool = True,
        plan: SweepPlan | None = None,
        primary: str | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        budget_rtol: float | None = None,
    ) -> Result:
        """Fit ``approach`` (a name, a list, or ``"all"``) to ``runs`` (a table or a results file).

        ``bootstrap=B`` gives 95% percentile intervals from B resamples (seeded by ``seed``). With more
        than one approach requested, one the data cannot support (no loss curves for Approach 1, too few
        budgets, ...) is skipped and the reason kept in :attr:`skipped` and :attr:`warnings`; a single
        requested approach that fails raises its ValueError. ``budget_rtol``: budgets within this relative
        distance are one budget (default: the fits' own, 5%).
        """
        names = resolve_approaches(approach)
        bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
        exclude_outliers = check_flag("exclude_outliers", exclude_outliers)
        rtol = {} if budget_rtol is None else {"budget_rtol": check_budget_rtol(budget_rtol)}
        if isinstance(runs, (str, os.PathLike)):
            runs = load_runs(runs)
        runs = validate_runs(runs)
        fits, skipped = run_approaches(
            names, runs, bootstrap=bootstrap, seed=seed, exclude=exclude_outliers, **rtol
        )
        options = {"bootstrap": bootstrap, "seed": seed, "exclude_outliers": exclude_outliers}
        return cls(
            runs,
            fits,
            plan=plan,
            primary=primary,
            output_dir=output_dir,
            budget_rtol=budget_rtol,
            skipped=skipped,
            fit_options=options,
        )

    # ------------------------------------------------------------------------------------------------
    # Basic facts

    def _fit(self, approach: str | None) -> tuple[str, Fit]:
        if approach is None:
            assert self.primary is not None
            return self.primary, self.fits[self.primary]
        names = resolve_approaches(approach)
        if len(names) != 1:
            raise ValueError(
                f"approach must name one fitted approach, got {approach!r}; use one of {list(self.fits)} "
                "(or None for the primary one)"
            )
        (name,) = names
        if name not in self.fits:
            why = f" ({self.skipped[name]})" if name in self.skipped else ""
            raise ValueError(f"approach {name!r} was not fitted{why}; fitted: {list(self.fits)}")
        return name, self.fits[name]

    @property
    def usable_runs(self) -> pd.DataFrame:
        """Completed runs with positive finite C, N, D and loss."""
        return self.runs[usable_mask(self.runs)].reset_index(drop=True)

    @cached_property
    def budgets(self) -> np.ndarray:
        """Geometric-mean compute budget (FLOPs) of each bucket of usable runs, increasing."""
        c = self.usable_runs["compute_budget"].to_numpy(float)
        budgets = bucket_budgets(c, rtol=self.budget_rtol)[1]
        budgets.flags.writeable = False  # cached: a caller must not change it in place
        return budgets

    @property
    def table_budgets(self) -> list[float]:
        """Default budgets of :meth:`chinchilla_table`: decades from the smallest observed budget to 100x
        beyond the largest (FLOPs)."""
        return default_budgets(self.budgets)

    # ------------------------------------------------------------------------------------------------
    # Predictions and tables

    def predict(self, C: float, approach: str | None = None) -> dict[str, Any]:
        """Compute-optimal allocation at ``C`` FLOPs from the primary approach (or ``approach``).

        Returns ``target_compute`` (FLOPs), ``optimal_params`` (N), ``optimal_tokens`` (D),
        ``expected_loss``, ``tokens_per_param``, their 95% intervals ``optimal_params_ci``,
        ``optimal_tokens_ci``, ``expected_loss_ci`` (None when the fit has none), ``approach``, and
        ``size_value`` / ``size_value_params``: the value of the plan's size parameter whose model comes
        closest to N_opt in log space, and its parameter count (None without a plan with a model spec).
        """
        if not (POSITIVE.is_kind(C) and POSITIVE.accepts(C)):  # a ValueError whatever the kind, as ever
            raise ValueError(f"C must be a positive finite number of FLOPs (e.g. 1e21), got {C!r}")
        name, fit = self._fit(approach)
        out = prediction(fit.optimal(float(C)), float(C), name)
        closest = self.closest_size(out["optimal_params"])
        size_value, size_params = (None, None) if closest is None else closest
        return {**out, "size_value": size_value, "size_value_params": size_params}

    def closest_size(self, num_params: float) -> tuple[int | float, int] | None:
        """``(size_value, N)`` of the plan's model size nearest ``num_params`` in log space, or None.

        Parameters are counted as the planner counts them (models built on the meta device, no memory);
        with an explicit ``size_values`` list the answer stays within it. None without a plan model, for a
        non-finite ``num_params``, or when the model class cannot be imported (logged).
        """
        if self.plan is None or self.plan.model is None or not (math.isfinite(num_params) and num_params > 0):
            return None
        if not self.trust_plan:
            logger.info(
                "not importing %s from a saved plan; use Result.load(..., trust_plan=True) to name the closest "
                "model size",
                self.plan.model.model_path,
            )
            return None
        try:
            size = self._size_grid.nearest_size(float(num_params))
        except (ImportError, TypeError, ValueError, RuntimeError) as exc:
            logger.warning("cannot probe sizes of %s: %s", self.plan.model.model_path, exc)
            return None
        assert size.value is not None
        return size.value, int(size.num_params)

    @cached_property
    def _size_grid(self) -> Any:
        """The planner's own size search over the plan's model (:class:`~flops_fit.plan.search.SizeGrid`);
        only parameter counts are read, which do not depend on the FLOP convention."""
        from flops_fit.plan.search import SizeGrid, SizeProber  # builds models: torch only when asked

        assert self.plan is not None and self.plan.model is not None
        return SizeGrid(self.plan.model, SizeProber(self.plan.model, "6nd", None, None))

    def chinchilla_table(
        self, budgets: Sequence[float] | None = None, approach: str | None = None
    ) -> pd.DataFrame:
        """N_opt, D_opt, D/N and L_opt with 95% bounds at ``budgets`` (FLOPs; default :attr:`table_budgets`).

        Render with :meth:`table_markdown` / :meth:`table_latex` (or :func:`flops_fit.analysis.to_markdown`).
        """
        _, fit = self._fit(approach)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate parametric fit warns per call; see self.warnings
            return _chinchilla_table(fit, self.table_budgets if budgets is None else budgets)

    def table_markdown(self, budgets: Sequence[float] | None = None, approach: str | None = None) -> str:
        """:meth:`chinchilla_table` as a GitHub-flavoured Markdown table."""
        return to_markdown(self.chinchilla_table(budgets, approach))

    def tables_markdown(self, budgets: Sequence[float] | None = None) -> str:
        """Every fitted approach's table (default budgets: see :meth:`chinchilla_table`): the text of
        ``chinchilla_table.md``."""
        tables = [
            f"## {APPROACH_LABELS[name]}\n\n{self.table_markdown(budgets, approach=name)}\n"
            for name in self.fits
        ]
        return "# Compute-optimal allocation (95% intervals)\n\n" + "\n".join(tables)

    def table_latex(self, budgets: Sequence[float] | None = None, approach: str | None = None) -> str:
        """:meth:`chinchilla_table` as a booktabs LaTeX table."""
        name, _ = self._fit(approach)
        caption = f"Compute-optimal model size and data ({APPROACH_LABELS[name]}; 95% intervals in brackets)."
        return to_latex(self.chinchilla_table(budgets, approach), caption=caption)

    # ------------------------------------------------------------------------------------------------
    # Do the approaches agree? What should a reader check?

    def compare_approaches(self, C: float | None = None) -> pd.DataFrame:
        """One row per (quantity, approach): the exponents ``a``, ``b`` and N_opt, D_opt, L_opt at ``C``.

        ``C`` defaults to the largest observed budget, where the approaches should agree best. Columns:
        ``quantity``, ``approach``, ``value``, ``lo``, ``hi`` (95% bounds, NaN when unknown).
        """
        return diagnostics.compare_approaches(self.fits, float(self.budgets[-1]) if C is None else float(C))

    @property
    def warnings(self) -> list[str]:
        """What to check before trusting the numbers (empty when nothing stands out)."""
        return list(self._warnings)

    @cached_property
    def _warnings(self) -> tuple[str, ...]:
        return tuple(diagnostics.warning_notes(self))

    def excluded_runs(self) -> pd.DataFrame:
        """Completed runs that a fit left out as outliers: ``experiment_id``, C, N, D, loss, ``reason`` and
        the ``approaches`` that excluded them (failed and diverged runs are in :attr:`runs`)."""
        return diagnostics.excluded_runs(self.usable_runs, self.fits)

    # ------------------------------------------------------------------------------------------------
    # Back-test

    def backtest(self, *, bootstrap: int | None = None, seed: int | None = None) -> pd.DataFrame:
        """Refit every approach without the largest budget and check its prediction there.

        The held-out budget is the largest one whose IsoFLOP profile brackets a minimum (a parabola
        vertex, as Approach 2 finds it): that minimum is the measured optimum, and every run at that budget
        or above is left out of the refit, so the check is a true extrapolation. When no budget above the
        two smallest has a bracketed profile, the largest budget is held out and its lowest-loss run stands
        in for the optimum (``measured_from`` says which). One row per approach: predicted and measured
        N_opt and L_opt, relative errors (predicted / measured - 1), whether the measured value lies in the
        predicted 95% interval (None without one), and ``error`` when the approach could not be refitted.
        ``bootstrap``/``seed`` default to :attr:`fit_options`. Needs usable runs at 3 or more budgets.

        The Result is left as it is; :meth:`with_backtest` gives one that carries the table.
        """
        return _backtest.backtest(self, bootstrap=bootstrap, seed=seed)

    def with_backtest(
        self, table: pd.DataFrame | None = None, *, bootstrap: int | None = None, seed: int | None = None
    ) -> Result:
        """A new Result carrying a back-test into :meth:`summary`, :meth:`save` and the report: ``table``
        (from :meth:`backtest`), or one run here with ``bootstrap``/``seed``."""
        if table is None:
            table = self.backtest(bootstrap=bootstrap, seed=seed)
        return dataclasses.replace(self, backtest_table=table)

    @property
    def last_backtest(self) -> pd.DataFrame | None:
        """The back-test this Result carries (:meth:`with_backtest`, or restored by :meth:`load`), or None."""
        return None if self.backtest_table is None else self.backtest_table.copy()

    # ------------------------------------------------------------------------------------------------
    # Text and HTML

    def law_lines(self, approach: str) -> list[str]:
        """The fitted laws of one approach with 95% intervals, one per line (N params, D tokens, C FLOPs)."""
        _, fit = self._fit(approach)
        a_lo, a_hi = exponent_ci(fit, "a")
        b_lo, b_hi = exponent_ci(fit, "b")
        lines = []
        if isinstance(fit, ParametricFit):
            ci = fit.ci
            terms = {
                k: fmt_ci(getattr(fit, k), *ci_pair(ci.get(k))) for k in ("E", "A", "B", "alpha", "beta")
            }
            lines.append(
                f"L(N, D) = E + A / N^alpha + B / D^beta with E = {terms['E']}, A = {terms['A']}, "
                f"B = {terms['B']}, alpha = {terms['alpha']}, beta = {terms['beta']}"
            )
        n_law, d_law, l_law = laws_of(fit)
        lines.append(f"N_opt = {fmt(n_law.k)} C^a, a = {fmt_ci(fit.a, a_lo, a_hi)}")
        lines.append(f"D_opt = {fmt(d_law.k)} C^b, b = {fmt_ci(fit.b, b_lo, b_hi)}")
        if l_law.offset:
            e_lo, e_hi = ci_pair(l_law.offset_ci)
            lines.append(f"L_opt = {fmt_ci(l_law.offset, e_lo, e_hi)} + {fmt(l_law.k)} C^{fmt(l_law.a)}")
        else:
            lines.append(f"L_opt = {fmt(l_law.k)} C^{fmt(l_law.a)}")
        return lines

    def summary(self) -> str:
        """Laws per approach with 95% intervals, the comparison, the table, the back-test and warnings."""
        runs = self.runs
        status = runs["status"].value_counts()
        done = ", ".join(f"{int(status[s])} {s}" for s in ("completed", "failed", "diverged") if s in status)
        b = self.budgets
        boot = int(self.fit_options.get("bootstrap", 0))
        lines = [
            f"flops-fit result: {len(runs)} runs ({done}) at {len(b)} compute budget(s), "
            f"{b[0]:.3g} to {b[-1]:.3g} FLOPs",
            f"Primary approach: {APPROACH_LABELS[self.primary]}. Intervals: 95%, "
            + (f"{boot} bootstrap resamples" if boot else "regression-based where available (no bootstrap)"),
            "",
            "Laws (N in parameters, D in tokens, C in FLOPs):",
        ]
        for name in self.fits:
            lines.append(f"  {APPROACH_LABELS[name]}")
            lines += [f"    {line}" for line in self.law_lines(name)]
        if len(self.fits) > 1:
            cmp = self.compare_approaches()
            lines += ["", f"At the largest observed budget, C = {cmp.attrs['compute_budget']:.3g} FLOPs:"]
            for q in ("N_opt", "D_opt", "L_opt"):
                part = cmp[cmp["quantity"] == q]
                cells = [
                    f"{r.approach} {fmt_ci(r.value, r.lo, r.hi, 3)}" for r in part.itertuples(index=False)
                ]
                lines.append(f"  {q}: " + "; ".join(cells))
        lines += ["", f"Chinchilla table ({APPROACH_LABELS[self.primary]}):", self.table_markdown()]
        backtest = _backtest.backtest_lines(self.backtest_table)
        if backtest:
            lines += ["", *backtest]
        notes = self.warnings
        lines += ["", "Warnings:" if notes else "Warnings: none"]
        lines += [f"  - {n}" for n in notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        usable = int(usable_mask(self.runs).sum())
        return (
            f"Result(runs={len(self.runs)}, usable={usable}, budgets={len(self.budgets)}, "
            f"fits={list(self.fits)}, primary={self.primary!r}, warnings={len(self.warnings)})"
        )

    def _repr_html_(self) -> str:
        return result_html_fragment(self)

    # ------------------------------------------------------------------------------------------------
    # Figures

    def plot(
        self,
        show: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        *,
        formats: Sequence[str] | str = ("png", "svg"),
        target_budgets: Sequence[float] | float | None = None,
    ) -> dict[str, Any]:
        """Every figure the fits support, as ``{name: matplotlib Figure}`` (see :mod:`flops_fit.report.plots`).

        ``save_dir`` also writes them as ``<name>.<format>``; ``show=True`` displays them through pyplot
        (inline in a notebook).
        """
        from flops_fit.report.plots import ScalingVisualizer  # matplotlib only when figures are drawn

        viz = ScalingVisualizer(
            self.runs, self.fits, budget_rtol=self.budget_rtol, target_budgets=target_budgets
        )
        figures = {name: viz.figure(name) for name in viz.available_figures()}
        if save_dir is not None:
            viz.save_all(save_dir, formats=formats)
        if show:
            import matplotlib.pyplot as plt

            for fig in figures.values():
                plt.figure(fig)  # hand the pyplot-free figure to pyplot's current backend
            plt.show()
        return figures

    # ------------------------------------------------------------------------------------------------
    # Files

    def to_analysis(self) -> ScalingAnalysis:
        """The primary approach's laws and the per-budget optima as a :class:`ScalingAnalysis`."""
        assert self.primary is not None and self.budget_rtol is not None
        return ScalingAnalysis.of(self.fits, self.primary, self.runs, self.usable_runs, self.budget_rtol)

    def save(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        plots: bool = True,
        export_runs: bool | None = None,
    ) -> Path:
        """Write the result to ``directory`` (default :attr:`output_dir`); :meth:`load` reads it back.

        Files: ``scaling_laws.json`` (the :class:`ScalingAnalysis` format, so ``ScalingLawAnalyzer`` and
        ``ScalingVisualizer.from_files`` read it), ``result.json`` (primary approach, settings, skipped
        approaches, the back-test it carries, warnings), ``chinchilla_table.md`` and, with ``plots=True``,
        every figure as PNG and SVG. The runs stay in the folder's ledger (``results.jsonl``) and the plan in
        its ``sweep.json``; ``export_runs=True`` also writes ``runs.json`` (the runs table, loss curves
        included), ``runs.csv`` (the same without curves, for spreadsheets) and ``plan.json`` (with a plan).
        By default (None) those exports are written only where the folder has no ledger (the runs) or no
        ``sweep.json`` (the plan) of its own, so the folder always loads; False never writes them. Each file
        is written atomically.
        """
        if directory is None:
            if self.output_dir is None:
                raise ValueError(
                    "save() needs a directory: pass save(dir) or build the Result with output_dir="
                )
            directory = self.output_dir
        plots = check_flag("plots", plots)
        export_runs = check("export_runs", export_runs, Nullable(Flag()))
        return write_result(self, directory, plots=plots, export_runs=export_runs)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        runs: pd.DataFrame | str | os.PathLike[str] | None = None,
        trust_plan: bool = False,
    ) -> Result:
        """Read a folder written by :meth:`save`, ``flops-fit analyze`` / ``find_optimal`` (a sweep folder:
        its ``sweep.json``, ledger and laws) or ``ScalingLawAnalyzer`` elsewhere (then pass ``runs=``: the
        results file or table the laws were fitted to). Folders of flops-fit 0.1.0 load too.

        A saved plan names its model class by import path; it is imported (to name the closest model size in
        :meth:`predict`) only with ``trust_plan=True``, so loading a result someone sent you runs no code.
        """
        trust_plan = check_flag("trust_plan", trust_plan)
        saved = read_result(directory, runs)
        meta, analysis = saved.meta, saved.analysis
        return cls(
            saved.runs,
            analysis.fits,
            plan=saved.plan,
            primary=meta.get("primary", analysis.approach),
            output_dir=Path(directory),
            budget_rtol=meta.get("budget_rtol", analysis.budget_rtol),
            skipped=meta.get("skipped") or {},
            fit_options=meta.get("fit_options") or {},
            backtest_table=saved.backtest,
            trust_plan=trust_plan,
        )


def _rebuild(cls: type[Result], values: dict[str, Any]) -> Result:
    """A Result from its field values (:meth:`Result.__reduce__`)."""
    return cls(**values)
