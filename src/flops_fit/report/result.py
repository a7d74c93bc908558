"""``Result``: the outcome of a compute-optimal study, and everything you do with it afterwards.

A :class:`Result` holds the runs table (:mod:`flops_fit.core.runs`) and the fitted approaches (Hoffmann et al.
2022: Approach 1 ``envelope``, 2 ``isoflop``, 3 ``parametric``). It predicts the compute-optimal model size
N (parameters), data D (tokens) and loss at any budget C (FLOPs) with 95% intervals, tabulates them, draws
the figures, says what design the runs come from (:attr:`Result.layout`), back-tests the extrapolation of
every candidate with a rolling origin and lets that choose the primary answer (:attr:`Result.selection`),
calls out approaches that disagree beyond their intervals, and saves to / loads from a folder of JSON, CSV,
Markdown and image files (no pickle).

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
    APPROACHES,
    FIT_TYPES,
    VARIANTS,
    Fit,
    available_variants,
    base_approach,
    label,
    resolve_approaches,
    run_approach,
    run_approaches,
)
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.layout import Layout, classify_runs
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
from flops_fit.report.backtest import Selection, choose_primary
from flops_fit.report.diagnostics import SIX_ND_RTOL, ci_pair, exponent_ci, fmt, fmt_ci, fmt_exponent
from flops_fit.report.folder import RESULT_VERSION, SavedResult, read_result, runs_to_records, write_result
from flops_fit.report.html_parts import result_html_fragment
from flops_fit.report.laws import MALFORMED, ScalingAnalysis, laws_of, prediction

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
        if name not in FIT_TYPES:
            raise ValueError(f"fits[{key!r}]: fits are keyed by approach; pass a variant's fit in variants=")
        if not isinstance(fit, FIT_TYPES[name]):
            raise TypeError(f"fits[{key!r}] must be a {FIT_TYPES[name].__name__}, got {type(fit).__name__}")
        out[name] = fit
    return {name: out[name] for name in APPROACHES if name in out}


def _variant_fits(variants: Any) -> dict[str, Fit]:
    """``variants`` checked: variant names of :data:`VARIANTS` (not the approaches themselves) to fits of
    their approach's type."""
    if not isinstance(variants, Mapping):
        raise TypeError(f"variants must be a mapping of variant name to fit, got {type(variants).__name__}")
    for key, fit in variants.items():
        if key not in VARIANTS or VARIANTS[key].approach == key:
            known = [v for v in VARIANTS if VARIANTS[v].approach != v]
            raise ValueError(
                f"variants has unknown variant {key!r}; use one of {known} (approaches go in fits)"
            )
        kind = FIT_TYPES[VARIANTS[key].approach]
        if not isinstance(fit, kind):
            raise TypeError(f"variants[{key!r}] must be a {kind.__name__}, got {type(fit).__name__}")
    return dict(variants)


def _fit_variants(
    fits: Mapping[str, Fit],
    runs: pd.DataFrame,
    options: dict[str, Any],
    names: Sequence[str] | None = None,
) -> dict[str, Fit]:
    """The variants ``names`` (default: those of the fitted approaches that the installed fit functions
    accept), each fitted the way the approaches were; one that cannot be fitted is left out (logged), unless
    it was asked for by name (its ValueError is raised). An Approach 3 variant starts from
    its approach's optimum, and from the whole start grid when that fit is not sound (unconverged,
    degenerate or E collapsed): on Porian et al.'s 15 configurations, Chinchilla, Marin, the (Mis)Fitting
    grid and the OLMo ladder this finds the whole grid's alpha = beta optimum every time, 3x faster."""
    out: dict[str, Fit] = {}
    for name in available_variants(fits) if names is None else names:
        warm = _backtest.warm_grid(fits[base_approach(name)], spread=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the approach's own fit has warned about the data already
                fit = run_approach(
                    name, runs, **options, options=None if warm is None else {"init_grid": warm}
                )
                if warm is not None and not _backtest.sound(fit):
                    fit = run_approach(name, runs, **options)
            out[name] = fit
        except ValueError as exc:
            if names is not None:
                raise
            logger.info("variant %s not fitted: %s", name, exc)
    return out


def _choose(
    runs: pd.DataFrame, candidates: Mapping[str, Fit], rtol: float, exclude: bool, seed: int
) -> tuple[pd.DataFrame | None, Selection]:
    """The rolling back-test of ``candidates`` on ``runs`` (None when there are too few budgets) and the
    primary answer it chooses."""
    usable = runs[usable_mask(runs)].reset_index(drop=True)
    design = classify_runs(usable, rtol).design
    try:
        table = _backtest.rolling_backtest(usable, candidates, budget_rtol=rtol, exclude=exclude, seed=seed)
    except ValueError as exc:
        return None, choose_primary(None, list(candidates), design, no_table=str(exc))
    return table, choose_primary(table, list(candidates), design)


@dataclass(frozen=True, eq=False)
class Result:
    """Runs, fits and everything derived from them.

    Args:
        runs: the runs table (every run, failed ones included; see :mod:`flops_fit.core.runs`).
        fits: fitted approaches by name (``"envelope"``, ``"isoflop"``, ``"parametric"``), any subset.
        plan: the :class:`~flops_fit.plan.sweep.SweepPlan` the runs came from; with a model spec,
            :meth:`predict` also names the size value of your model closest to N_opt.
        primary: the approach or variant :meth:`predict` and the table use by default (default: the one
            ``selection`` names, else the first fitted in the order of the runs' design: Approach 2, 3, 1
            for an IsoFLOP sweep, 3, 1, 2 otherwise; :meth:`from_runs` chooses by back-test).
        output_dir: where :meth:`save` and the report write when given no directory.
        budget_rtol: budgets within this relative distance are one budget (default: the IsoFLOP fit's).
        skipped: approaches that were asked for but could not be fitted, with the reason.
        fit_options: how the fits were made (``bootstrap``, ``seed``, ``exclude_outliers``); the
            back-test refits the same way.
        backtest_table: a :meth:`backtest` table this Result carries into :meth:`summary`, :meth:`save` and
            the report (see :meth:`with_backtest`; :meth:`load` restores a saved one).
        trust_plan: whether :meth:`predict` may import the plan's model class to name the closest size
            (:meth:`load` sets False unless asked, so loading a result someone sent you runs no code).
        variants: further candidates by variant name (``"isoflop:shared"``, ``"parametric:alpha=beta"``,
            see :data:`flops_fit.analysis.approaches.VARIANTS`); any may be primary.
        selection: why the primary answer is primary (:class:`~flops_fit.report.backtest.Selection`).

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
    variants: Mapping[str, Fit] = field(default_factory=dict)
    selection: Selection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "runs", validate_runs(self.runs))
        fits = _canonical_fits(self.fits)
        if not fits:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none given"
            raise ValueError(f"a Result needs at least one fitted approach ({why})")
        set_(self, "fits", MappingProxyType(dict(fits)))  # read-only: a Result never changes
        set_(self, "variants", MappingProxyType(_variant_fits(self.variants)))
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
        set_(self, "selection", self._selection_of())
        set_(self, "primary", self.selection.primary)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle and deep-copy through the constructor (the read-only mappings are given as plain dicts)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("fits", "skipped", "fit_options", "variants"):
            values[name] = dict(values[name])
        return (_rebuild, (type(self), values))

    def _candidate_name(self, name: str, what: str) -> str:
        """The canonical name of a fitted approach or variant, or a ValueError naming ``what``."""
        if name in self.variants:
            return name
        (canonical,) = resolve_approaches(name)
        if canonical not in self.fits:
            why = f" ({self.skipped[canonical]})" if canonical in self.skipped else ""
            raise ValueError(f"{what}={name!r} was not fitted{why}; choose one of {list(self.candidates)}")
        return canonical

    def _selection_of(self) -> Selection:
        """The primary answer and why: the one asked for, else the given selection's, else the first fitted
        in the order of the runs' design (no back-test is run here)."""
        sel = check("selection", self.selection, Nullable(Instance(Selection)))
        if self.primary is not None:
            primary = self._candidate_name(str(self.primary), "primary")
            if sel is not None and sel.primary == primary:
                return sel
            return Selection(primary, "asked", f"{label(primary)}, as given (primary={self.primary!r})")
        if sel is not None:
            self._candidate_name(sel.primary, "selection.primary")
            return sel
        return choose_primary(
            None, list(self.candidates), self.layout.design, no_table="no back-test was run"
        )

    @property
    def candidates(self) -> dict[str, Fit]:
        """Every fitted answer by name: the approaches (:attr:`fits`) and their :attr:`variants`."""
        return {**self.fits, **self.variants}

    @cached_property
    def layout(self) -> Layout:
        """The design of the usable runs (IsoFLOP sweep, grid, ...; :mod:`flops_fit.analysis.layout`)."""
        assert self.budget_rtol is not None
        return classify_runs(self.usable_runs, self.budget_rtol)

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
        variants: bool | None = None,
        trust_plan: bool = True,
    ) -> Result:
        """Fit ``approach`` (a name, a list, or ``"all"``) to ``runs`` (a table or a results file). A
        variant's name (``"parametric:alpha=beta"``, see :data:`~flops_fit.analysis.approaches.VARIANTS`)
        fits its approach and the variant; asked for alone, the variant is the primary answer.

        ``bootstrap=B`` gives 95% percentile intervals from B resamples (seeded by ``seed``). With more
        than one approach requested, one the data cannot support (no loss curves for Approach 1, no designed
        IsoFLOP profiles for Approach 2, too few budgets, ...) is skipped and the reason kept in
        :attr:`skipped` and :attr:`warnings`; a single requested approach that fails raises its ValueError.
        ``budget_rtol``: budgets within this relative distance are one budget (default: the fits' own, 5%).

        Unless ``primary`` names one, the primary answer is chosen by evidence: every fitted candidate (the
        approaches, and with ``variants`` their variants the installed fit functions accept; default: when
        more than one approach is requested and ``primary`` is not given) goes through the rolling back-test (no bootstrap), which the
        Result carries, and :func:`~flops_fit.report.backtest.choose_primary` picks the one that
        extrapolated best; :attr:`selection` says why.
        """
        names = resolve_approaches(approach)
        bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
        exclude_outliers = check_flag("exclude_outliers", exclude_outliers)
        variants = check("variants", variants, Nullable(Flag()))
        rtol = DEFAULT_BUDGET_RTOL if budget_rtol is None else check_budget_rtol(budget_rtol)
        if isinstance(runs, (str, os.PathLike)):
            runs = load_runs(runs)
        runs = validate_runs(runs)
        options = {"bootstrap": bootstrap, "seed": seed, "exclude": exclude_outliers, "budget_rtol": rtol}
        asked = [n for n in names if n not in APPROACHES]  # variants named in ``approach`` or ``primary``
        if asked and primary is None and len(names) == 1:
            primary = asked[0]
        if isinstance(primary, str) and primary in VARIANTS and primary not in (*APPROACHES, *asked):
            if base_approach(primary) not in names:
                raise ValueError(
                    f"primary={primary!r} is a variant of {base_approach(primary)!r}, which approach={approach!r} "
                    "does not fit; add it to approach"
                )
            asked.append(primary)
        bases = list(dict.fromkeys(base_approach(n) for n in names))
        fits, skipped = run_approaches(bases, runs, **options)
        extra = (
            _fit_variants(fits, runs, options)
            if (len(bases) > 1 and primary is None if variants is None else variants)
            else {}
        )
        missing = [n for n in asked if n not in extra and base_approach(n) in fits]
        extra.update(_fit_variants(fits, runs, options, missing) if missing else {})
        table, selection = None, None
        if primary is None and len(fits) + len(extra) > 1:
            table, selection = _choose(runs, {**fits, **extra}, rtol, exclude_outliers, seed)
        return cls(
            runs,
            fits,
            plan=plan,
            trust_plan=trust_plan,
            primary=primary,
            output_dir=output_dir,
            budget_rtol=budget_rtol,
            skipped=skipped,
            fit_options={"bootstrap": bootstrap, "seed": seed, "exclude_outliers": exclude_outliers},
            backtest_table=table,
            variants=extra,
            selection=selection,
        )

    # ------------------------------------------------------------------------------------------------
    # Basic facts

    def _fit(self, approach: str | None) -> tuple[str, Fit]:
        if approach is None:
            assert self.primary is not None
            return self.primary, self.candidates[self.primary]
        if isinstance(approach, str) and approach in self.variants:
            return approach, self.variants[approach]
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
            f"## {label(name)}\n\n{self.table_markdown(budgets, approach=name)}\n" for name in self.candidates
        ]
        banner = f"**{self.synthetic_banner}**\n\n" if self.synthetic_banner else ""
        return "# Compute-optimal allocation (95% intervals)\n\n" + banner + "\n".join(tables)

    def table_latex(self, budgets: Sequence[float] | None = None, approach: str | None = None) -> str:
        """:meth:`chinchilla_table` as a booktabs LaTeX table."""
        name, _ = self._fit(approach)
        caption = f"Compute-optimal model size and data ({label(name)}; 95% intervals in brackets)."
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
        """The rolling-origin back-test of every candidate (:attr:`candidates`): how well each extrapolates.

        For each origin C_k from the third budget on (at most 6 origins), every candidate is refitted on the
        runs at or below C_k and asked for each later budget C_target: one ``kind == "optimum"`` row per
        (candidate, origin, target) with predicted and measured N_opt, D_opt and L_opt, ``*_log_error`` =
        ln(predicted / measured), ``*_rel_error`` = predicted / measured - 1, whether the measurement lies in
        the 95% interval (None without one) and the ``distance`` C_target / C_k. The measured optimum is
        the budget's IsoFLOP vertex where its profile brackets a minimum, else its lowest-loss run
        (``measured_from`` says which). Approach 3 also gets ``kind == "runs"`` rows: the mean
        |ln(predicted / measured)| of the loss of the runs at each later budget. Budgets are the designed
        IsoFLOP profiles (:attr:`layout`); runs without any (a checkpoint grid) are cut into levels a factor
        2 apart and give ``runs`` rows only. ``error`` says why a refit failed. Refits start from the full
        fit (Approach 3) and run without bootstrap unless ``bootstrap`` asks for intervals; ``seed``
        defaults to :attr:`fit_options`'. Needs usable runs at 4 or more budgets.

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
        lines.append(f"N_opt = {fmt(n_law.k)} C^a, a = {fmt_exponent(fit.a, a_lo, a_hi)}")
        lines.append(f"D_opt = {fmt(d_law.k)} C^b, b = {fmt_exponent(fit.b, b_lo, b_hi)}")
        c = fmt_exponent(l_law.a, *ci_pair(l_law.a_ci))
        e_lo, e_hi = ci_pair(l_law.offset_ci)
        if l_law.offset or math.isfinite(e_lo):  # a law with an irreducible loss E (it may be fitted as 0)
            lines.append(f"L_opt = E + {fmt(l_law.k)} C^c, E = {fmt_ci(l_law.offset, e_lo, e_hi)}, c = {c}")
        else:
            lines.append(f"L_opt = {fmt(l_law.k)} C^c, c = {c}")
        return lines

    @property
    def synthetic_banner(self) -> str | None:
        """A line saying the losses are synthetic when runs of ``mode="mock"`` are in the table (their losses
        come from a law, not from training), else None. Every view of a Result shows it first."""
        if "mode" not in self.runs.columns:
            return None
        mock = int((self.runs["mode"].astype(str) == "mock").sum())
        if not mock:
            return None
        share = "all" if mock == len(self.runs) else f"{mock} of {len(self.runs)}"
        return (
            f"MOCK RESULTS: {share} runs have synthetic losses (mode='mock': drawn from a Chinchilla-style law, "
            "nothing was trained). They test the pipeline; the laws below say nothing about your model."
        )

    def summary(self) -> str:
        """Laws per approach with 95% intervals, the comparison, the table, the back-test and warnings."""
        runs = self.runs
        status = runs["status"].value_counts()
        done = ", ".join(f"{int(status[s])} {s}" for s in ("completed", "failed", "diverged") if s in status)
        b = self.budgets
        boot = int(self.fit_options.get("bootstrap", 0))
        assert self.selection is not None
        banner = self.synthetic_banner
        lines = [*([banner, ""] if banner else [])]
        lines += [
            f"flops-fit result: {len(runs)} runs ({done}) at {len(b)} compute budget(s), "
            f"{b[0]:.3g} to {b[-1]:.3g} FLOPs",
            f"Design: {self.layout.describe()}",
            *diagnostics.wsd_lines(self.plan, runs),
            f"Primary approach: {label(self.primary)}. Intervals: 95%, "
            + (f"{boot} bootstrap resamples" if boot else "regression-based where available (no bootstrap)"),
            f"  chosen {_backtest.RULE_WORDS.get(self.selection.rule, '')}: {self.selection.reason}",
            "",
            "Laws (N in parameters, D in tokens, C in FLOPs):",
        ]
        for name in self.candidates:
            lines.append(f"  {label(name)}")
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
        lines += ["", f"Chinchilla table ({label(self.primary)}):", self.table_markdown()]
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
            self.runs,
            self.fits,
            budget_rtol=self.budget_rtol,
            target_budgets=target_budgets,
            backtest=self.backtest_table,
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
        fits = {**self.fits, self.primary: self.candidates[self.primary]}  # a variant primary rides along
        return ScalingAnalysis.of(fits, self.primary, self.runs, self.usable_runs, self.budget_rtol)

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
        fits = {k: f for k, f in analysis.fits.items() if k not in VARIANTS or VARIANTS[k].approach == k}
        try:
            return cls._from_saved(saved, fits, Path(directory), trust_plan)
        except (ValueError, *MALFORMED) as exc:  # files that parse but do not make a Result
            folder = sweepdir.SweepDir(directory)
            files = folder.scaling_laws.name + (f" / {folder.result.name}" if meta else "")
            raise ValueError(
                f"{folder.root}: {files} does not make a Result ({type(exc).__name__}: {exc}); write them "
                "again (flops-fit analyze, or Result.save)"
            ) from None

    @classmethod
    def _from_saved(
        cls, saved: SavedResult, fits: dict[str, Fit], directory: Path, trust_plan: bool
    ) -> Result:
        """The Result of what :func:`read_result` read (``fits``: its approaches, without the variants)."""
        meta, analysis = saved.meta, saved.analysis
        return cls(
            saved.runs,
            fits,
            variants={**{k: f for k, f in analysis.fits.items() if k not in fits}, **saved.variants},
            selection=saved.selection,
            plan=saved.plan,
            primary=meta.get("primary", analysis.approach),
            output_dir=directory,
            budget_rtol=meta.get("budget_rtol", analysis.budget_rtol),
            skipped=meta.get("skipped") or {},
            fit_options=meta.get("fit_options") or {},
            backtest_table=saved.backtest,
            trust_plan=trust_plan,
        )


def _rebuild(cls: type[Result], values: dict[str, Any]) -> Result:
    """A Result from its field values (:meth:`Result.__reduce__`)."""
    return cls(**values)
