"""``Result``: the outcome of a compute-optimal study, and everything you do with it afterwards.

A :class:`Result` holds the runs table (:mod:`flops_fit.core.runs`) and the fitted approaches (Hoffmann et al.
2022: Approach 1 ``envelope``, 2 ``isoflop``, 3 ``parametric``). It predicts the compute-optimal model size
N (parameters), data D (tokens) and loss at any budget C (FLOPs) with 95% intervals, tabulates them, draws
the figures, back-tests the extrapolation on the largest budget, calls out approaches that disagree beyond
their intervals, and saves to / loads from a directory of JSON, CSV, Markdown and image files (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import (
    APPROACH_LABELS,
    APPROACHES,
    PRIMARY_ORDER,
    Fit,
    resolve_approaches,
    run_approach,
    run_approaches,
)
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets, lowest_loss_per_budget
from flops_fit.analysis.envelope import EnvelopeFit
from flops_fit.analysis.isoflop import (
    MIN_POINTS_PER_BUDGET,
    IsoFLOPFit,
    describe_flagged,
    fit_profile,
)
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.analysis.table import chinchilla_table as _chinchilla_table
from flops_fit.analysis.table import to_latex, to_markdown
from flops_fit.core.io import atomic_write_json, atomic_write_text
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, load_runs, usable_mask, validate_runs
from flops_fit.core.validate import check_bootstrap, check_flag, check_seed
from flops_fit.plan.planning import PLAN_FILE as SWEEP_FILE
from flops_fit.plan.planning import SweepPlan, load_plan_runs
from flops_fit.report.analyzer import SCALING_LAWS_FILE, ScalingAnalysis, laws_of
from flops_fit.report.html_parts import result_html_fragment

logger = logging.getLogger(__name__)

RESULT_VERSION = 1
RESULT_FILE = "result.json"
RUNS_FILE = "runs.json"
RUNS_CSV_FILE = "runs.csv"
TABLE_FILE = "chinchilla_table.md"
PLAN_FILE = "plan.json"

#: The default Chinchilla table runs over the decades from the smallest observed budget to this factor
#: beyond the largest.
TABLE_REACH = 100.0
#: Budgets (C) whose median C / (6 N D) is off 1 by more than this use another FLOP convention than the
#: C = 6 N D that Approach 3's allocation assumes.
SIX_ND_RTOL = 0.05

_FIT_TYPES: dict[str, type] = {"envelope": EnvelopeFit, "isoflop": IsoFLOPFit, "parametric": ParametricFit}
_RUN_KEYS = ("compute_budget", "num_params", "num_tokens", "final_loss")


def _ci_pair(ci: Any) -> tuple[float, float]:
    if ci is None:
        return math.nan, math.nan
    lo, hi = float(ci[0]), float(ci[1])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (math.nan, math.nan)


def _exponent_ci(fit: Fit, which: str) -> tuple[float, float]:
    """95% interval of the exponent ``a`` (N_opt ∝ C^a) or ``b`` (D_opt ∝ C^b) of any fit."""
    if isinstance(fit, ParametricFit):
        return _ci_pair(fit.ci.get(which))
    law = fit.n_opt_fit if which == "a" else fit.d_opt_fit
    return _ci_pair(law.a_ci)


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def _fmt_ci(value: float, lo: float, hi: float, digits: int = 4) -> str:
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{_fmt(value, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    return _fmt(value, digits)


def _plain(value: Any) -> Any:
    """A JSON value for one table cell: NaN/inf -> None, NumPy scalars and arrays -> Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # timestamps and other objects: their text


def runs_to_records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The runs table as JSON-ready dicts, exactly (floats keep all their digits; NaN becomes null)."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in runs.to_dict(orient="records")]


def default_budgets(compute: Any, reach: float = TABLE_REACH) -> list[float]:
    """Powers of ten from the smallest observed budget up to ``reach`` times the largest (FLOPs)."""
    c = np.asarray(compute, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    if c.size == 0:
        raise ValueError("no positive finite compute budgets to build a table from")
    lo = math.ceil(math.log10(float(c.min())) - 1e-9)
    hi = math.floor(math.log10(float(c.max()) * reach) + 1e-9)
    return [10.0**k for k in range(lo, max(hi, lo) + 1)]


@dataclass(frozen=True, eq=False)
class Result:
    """Runs, fits and everything derived from them.

    Args:
        runs: the runs table (every run, failed ones included; see :mod:`flops_fit.core.runs`).
        fits: fitted approaches by name (``"envelope"``, ``"isoflop"``, ``"parametric"``), any subset.
        plan: the :class:`~flops_fit.plan.planning.SweepPlan` the runs came from; with a model spec,
            :meth:`predict` also names the size value of your model closest to N_opt.
        primary: the approach :meth:`predict` and the table use by default (default: isoflop if fitted,
            else parametric, else envelope).
        output_dir: where :meth:`save` and the report write when given no directory.
        budget_rtol: budgets within this relative distance are one budget (default: the IsoFLOP fit's).
        skipped: approaches that were asked for but could not be fitted, with the reason.
        fit_options: how the fits were made (``bootstrap``, ``seed``, ``exclude_outliers``); the
            back-test refits the same way.

    ``warnings`` lists what a careful reader should check: approaches that disagree beyond their 95%
    intervals, flagged IsoFLOP budgets, excluded outliers, runs that did not complete, degenerate fits.
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
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "runs", validate_runs(self.runs))
        if not isinstance(self.fits, Mapping):
            raise TypeError(
                f"fits must be a mapping of approach name to fit, e.g. {{'isoflop': fit}}, got {type(self.fits).__name__}"
            )
        fits: dict[str, Fit] = {}
        for key, fit in self.fits.items():
            (name,) = resolve_approaches(str(key))
            if not isinstance(fit, _FIT_TYPES[name]):
                raise TypeError(
                    f"fits[{key!r}] must be a {_FIT_TYPES[name].__name__}, got {type(fit).__name__}"
                )
            fits[name] = fit
        if not fits:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none given"
            raise ValueError(f"a Result needs at least one fitted approach ({why})")
        set_(self, "fits", {name: fits[name] for name in APPROACHES if name in fits})
        if self.primary is None:
            set_(self, "primary", next(n for n in PRIMARY_ORDER if n in fits))
        else:
            (primary,) = resolve_approaches(self.primary)
            if primary not in fits:
                raise ValueError(f"primary={self.primary!r} was not fitted; choose one of {list(self.fits)}")
            set_(self, "primary", primary)
        if self.plan is not None and not isinstance(self.plan, SweepPlan):
            raise TypeError(f"plan must be a SweepPlan or None, got {type(self.plan).__name__}")
        if self.output_dir is not None:
            set_(self, "output_dir", Path(self.output_dir))
        rtol = self.budget_rtol
        if rtol is None:
            iso = fits.get("isoflop")
            rtol = iso.budget_rtol if isinstance(iso, IsoFLOPFit) else DEFAULT_BUDGET_RTOL
        if (
            isinstance(rtol, bool)
            or not isinstance(rtol, numbers.Real)
            or not (math.isfinite(rtol) and rtol >= 0)
        ):
            raise ValueError(f"budget_rtol must be a finite number >= 0 (e.g. 0.05 for 5%), got {rtol!r}")
        set_(self, "budget_rtol", float(rtol))
        set_(self, "skipped", {str(k): str(v) for k, v in self.skipped.items()})
        set_(self, "fit_options", dict(self.fit_options))
        if not usable_mask(self.runs).any():
            raise ValueError("runs holds no completed run with positive finite C, N, D and loss")

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
    ) -> Result:
        """Fit ``approach`` (a name, a list, or ``"all"``) to ``runs`` (a table or a results file).

        ``bootstrap=B`` gives 95% percentile intervals from B resamples (seeded by ``seed``). With more
        than one approach requested, one the data cannot support (no loss curves for Approach 1, too few
        budgets, ...) is skipped and the reason kept in :attr:`skipped` and :attr:`warnings`; a single
        requested approach that fails raises its ValueError.
        """
        names = resolve_approaches(approach)
        bootstrap, seed = check_bootstrap(bootstrap), check_seed(seed)
        exclude_outliers = check_flag("exclude_outliers", exclude_outliers)
        if isinstance(runs, (str, os.PathLike)):
            runs = load_runs(runs)
        runs = validate_runs(runs)
        fits, skipped = run_approaches(names, runs, bootstrap=bootstrap, seed=seed, exclude=exclude_outliers)
        options = {"bootstrap": bootstrap, "seed": seed, "exclude_outliers": exclude_outliers}
        return cls(
            runs,
            fits,
            plan=plan,
            primary=primary,
            output_dir=output_dir,
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

    @property
    def budgets(self) -> np.ndarray:
        """Geometric-mean compute budget (FLOPs) of each bucket of usable runs, increasing."""
        if "budgets" not in self._cache:
            c = self.usable_runs["compute_budget"].to_numpy(float)
            self._cache["budgets"] = bucket_budgets(c, rtol=self.budget_rtol)[1]
        return self._cache["budgets"]

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
        if isinstance(C, bool) or not isinstance(C, numbers.Real) or not (math.isfinite(C) and C > 0):
            raise ValueError(f"C must be a positive finite number of FLOPs (e.g. 1e21), got {C!r}")
        name, fit = self._fit(approach)
        opt = fit.optimal(float(C))
        out = {
            "target_compute": float(C),
            "optimal_params": float(opt["optimal_params"]),
            "optimal_tokens": float(opt["optimal_tokens"]),
            "expected_loss": float(opt["optimal_loss"]),
            "tokens_per_param": float(opt["tokens_per_param"]),
            "optimal_params_ci": opt.get("optimal_params_ci"),
            "optimal_tokens_ci": opt.get("optimal_tokens_ci"),
            "expected_loss_ci": opt.get("optimal_loss_ci"),
            "approach": name,
            "size_value": None,
            "size_value_params": None,
        }
        closest = self.closest_size(out["optimal_params"])
        if closest is not None:
            out["size_value"], out["size_value_params"] = closest
        return out

    def closest_size(self, num_params: float) -> tuple[int | float, int] | None:
        """``(size_value, N)`` of the plan's model size nearest ``num_params`` in log space, or None.

        Parameters are counted as the planner counts them (models built on the meta device, no memory);
        with an explicit ``size_values`` list the answer stays within it. None without a plan model, for a
        non-finite ``num_params``, or when the model class cannot be imported (logged).
        """
        if self.plan is None or self.plan.model is None or not (math.isfinite(num_params) and num_params > 0):
            return None
        if not self._cache.get("plan_trusted", True):
            logger.info(
                "not importing %s from a saved plan; use Result.load(..., trust_plan=True) to name the closest "
                "model size",
                self.plan.model.model_path,
            )
            return None
        from flops_fit.plan.planning import _Grid, _Prober  # the planner's own size search, reused

        grid = self._cache.get("size_grid")
        if grid is None:
            # Only parameter counts are read, which do not depend on the FLOP convention.
            grid = _Grid(self.plan.model, _Prober(self.plan.model, "6nd", None, None))
            self._cache["size_grid"] = grid
        try:
            i = grid.nearest(float(num_params))
            return grid.value(i), int(grid.n(i))
        except (ImportError, TypeError, ValueError, RuntimeError) as exc:
            logger.warning("cannot probe sizes of %s: %s", self.plan.model.model_path, exc)
            return None

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
    # Do the approaches agree?

    def compare_approaches(self, C: float | None = None) -> pd.DataFrame:
        """One row per (quantity, approach): the exponents ``a``, ``b`` and N_opt, D_opt, L_opt at ``C``.

        ``C`` defaults to the largest observed budget, where the approaches should agree best. Columns:
        ``quantity``, ``approach``, ``value``, ``lo``, ``hi`` (95% bounds, NaN when unknown).
        """
        c = float(self.budgets[-1]) if C is None else float(C)
        rows = []
        for name, fit in self.fits.items():
            for q in ("a", "b"):
                lo, hi = _exponent_ci(fit, q)
                rows.append(
                    {"quantity": q, "approach": name, "value": float(getattr(fit, q)), "lo": lo, "hi": hi}
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = fit.optimal(c)
            for q, key in (
                ("N_opt", "optimal_params"),
                ("D_opt", "optimal_tokens"),
                ("L_opt", "optimal_loss"),
            ):
                lo, hi = _ci_pair(opt.get(f"{key}_ci"))
                rows.append({"quantity": q, "approach": name, "value": float(opt[key]), "lo": lo, "hi": hi})
        out = pd.DataFrame(rows, columns=["quantity", "approach", "value", "lo", "hi"])
        out.attrs["compute_budget"] = c
        return out

    def _agreement_notes(self) -> list[str]:
        """Pairs of approaches whose 95% intervals of a, N_opt or L_opt (at the largest budget) do not overlap."""
        if len(self.fits) < 2:
            return []
        table = self.compare_approaches()
        c = table.attrs["compute_budget"]
        notes: list[str] = []
        unjudged: set[str] = set()
        names = list(self.fits)
        quantities = (
            ("a", "the exponent a of N_opt ∝ C^a"),
            ("N_opt", f"N_opt at C = {c:.3g} FLOPs"),
            ("L_opt", f"the loss L_opt at C = {c:.3g} FLOPs"),
        )
        for q, what in quantities:
            rows = table[table["quantity"] == q].set_index("approach")
            for i, first in enumerate(names):
                for second in names[i + 1 :]:
                    r1, r2 = rows.loc[first], rows.loc[second]
                    if not (np.isfinite([r1.lo, r1.hi, r2.lo, r2.hi]).all()):
                        unjudged.update(n for n, r in ((first, r1), (second, r2)) if not np.isfinite(r.lo))
                        continue
                    if r1.hi < r2.lo or r2.hi < r1.lo:
                        notes.append(
                            f"{APPROACH_LABELS[first]} and {APPROACH_LABELS[second]} disagree on {what}: "
                            f"{_fmt_ci(r1.value, r1.lo, r1.hi)} vs {_fmt_ci(r2.value, r2.lo, r2.hi)} "
                            "(95% intervals do not overlap); check the IsoFLOP and residual figures before "
                            "trusting either"
                        )
        if unjudged:
            listed = ", ".join(APPROACH_LABELS[n] for n in names if n in unjudged)
            notes.append(
                f"agreement between approaches not judged for {listed}: no 95% intervals (fit with "
                "bootstrap=200 or so for intervals on every approach)"
            )
        return notes

    @property
    def warnings(self) -> list[str]:
        """What to check before trusting the numbers (empty when nothing stands out)."""
        if "warnings" in self._cache:
            return list(self._cache["warnings"])
        notes = [f"{APPROACH_LABELS[k]} not fitted: {v}" for k, v in self.skipped.items()]
        status = self.runs["status"].value_counts()
        bad = {s: int(status.get(s, 0)) for s in ("failed", "diverged") if status.get(s, 0)}
        if bad:
            parts = ", ".join(f"{n} {s}" for s, n in bad.items())
            notes.append(f"{sum(bad.values())} run(s) did not complete ({parts}); no fit uses them")
        for name, fit in self.fits.items():
            label = APPROACH_LABELS[name]
            if isinstance(fit, IsoFLOPFit):
                flagged = describe_flagged(fit.minima)
                if flagged:
                    notes.append(
                        f"{label}: budget(s) left out of the laws, {'; '.join(flagged)} (edge_small/edge_large: "
                        "extend the sweep to smaller/larger models; too_few_points: train at least "
                        f"{MIN_POINTS_PER_BUDGET} sizes; flat/no_curvature: widen the size span)"
                    )
            if isinstance(fit, ParametricFit):
                if fit.degeneracy is not None:
                    notes.append(f"{label} is degenerate: {fit.degeneracy}")
                elif fit.floor_collapsed is not None:
                    notes.append(f"{label}: {fit.floor_collapsed}")
                if not fit.converged:
                    notes.append(f"{label}: the optimiser did not converge; treat its estimates with care")
            excluded = getattr(fit, "excluded", None)
            if isinstance(excluded, pd.DataFrame) and len(excluded) and "outlier_reason" in excluded:
                reasons = excluded["outlier_reason"]
                reasons = reasons[~reasons.isin(["failed", "diverged", "non_finite"])]
                if len(reasons):
                    counts = ", ".join(f"{n} {r}" for r, n in reasons.value_counts().items())
                    notes.append(
                        f"{label} excluded {len(reasons)} run(s) as outliers ({counts}); see excluded_runs()"
                    )
        if "parametric" in self.fits:
            usable = self.usable_runs
            ratio = float(
                np.median(
                    usable["compute_budget"]
                    / (FLOPS_PER_PARAM_TOKEN * usable["num_params"] * usable["num_tokens"])
                )
            )
            if abs(ratio - 1.0) > SIX_ND_RTOL:
                notes.append(
                    f"the runs' budgets are not 6ND FLOPs (median C / (6 N D) = {ratio:.3g}); Approach 3's "
                    "allocation assumes C = 6ND, so it reads every C on that scale, not on your budgets' "
                    "(its N_opt(C) is not comparable with Approaches 1 and 2 as is)"
                )
        notes += self._agreement_notes()
        self._cache["warnings"] = tuple(notes)
        return notes

    def excluded_runs(self) -> pd.DataFrame:
        """Completed runs that a fit left out as outliers: ``experiment_id``, C, N, D, loss, ``reason`` and
        the ``approaches`` that excluded them (failed and diverged runs are in :attr:`runs`)."""
        usable = self.usable_runs
        key = usable[["num_params", "num_tokens", "final_loss"]].to_numpy(float)
        hits: dict[int, dict[str, Any]] = {}
        for name, fit in self.fits.items():
            ex = getattr(fit, "excluded", None)
            if not isinstance(ex, pd.DataFrame) or ex.empty or "outlier_reason" not in ex:
                continue
            ex = ex[~ex["outlier_reason"].isin(["failed", "diverged", "non_finite"])]
            for row in ex.itertuples(index=False):
                target = np.array([row.num_params, row.num_tokens, row.final_loss], dtype=float)
                for i in np.flatnonzero(np.all(np.isclose(key, target, rtol=1e-9, atol=0.0), axis=1)):
                    entry = hits.setdefault(int(i), {"reason": row.outlier_reason, "approaches": []})
                    if name not in entry["approaches"]:
                        entry["approaches"].append(name)
        cols = ["experiment_id", *_RUN_KEYS, "reason", "approaches"]
        rows = [
            {
                **usable.loc[i, ["experiment_id", *_RUN_KEYS]].to_dict(),
                "reason": e["reason"],
                "approaches": ",".join(e["approaches"]),
            }
            for i, e in sorted(hits.items())
        ]
        return pd.DataFrame(rows, columns=cols)

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
        """
        boot = int(self.fit_options.get("bootstrap", 0) if bootstrap is None else bootstrap)
        seed_ = int(self.fit_options.get("seed", 0) if seed is None else seed)
        if boot < 0:
            raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
        exclude = bool(self.fit_options.get("exclude_outliers", True))
        usable = self.usable_runs
        labels, centers = bucket_budgets(usable["compute_budget"].to_numpy(float), rtol=self.budget_rtol)
        if len(centers) < 3:
            raise ValueError(
                f"backtest needs usable runs at 3 or more compute budgets (it refits on all but the largest, "
                f"and the fits need 2); these runs have {len(centers)}: train more budgets"
            )
        measured = None
        for k in range(len(centers) - 1, 1, -1):  # keep at least 2 budgets to refit on
            held = usable[labels == k]
            if exclude and len(held):
                held = held[~detect_outliers(held, budget_rtol=self.budget_rtol)["outlier"].to_numpy()]
            n, l = held["num_params"].to_numpy(float), held["final_loss"].to_numpy(float)
            prof = fit_profile(n, l)
            if k == len(centers) - 1:
                best = int(np.argmin(l))
                measured = (
                    k,
                    float(n[best]),
                    float(l[best]),
                    f"lowest-loss run (profile: {', '.join(prof.flags)})",
                )
            if not prof.flags:
                above = len(centers) - 1 - k
                source = "IsoFLOP minimum" + (
                    f" ({above} larger budget(s) without a bracketed profile left out too)" if above else ""
                )
                measured = (k, prof.optimal_params, prof.optimal_loss, source)
                break
        assert measured is not None
        held_k, meas_n, meas_l, source = measured
        c_held = float(centers[held_k])
        c_cut = float(
            usable["compute_budget"][labels == held_k].min()
        )  # buckets start at their smallest budget
        train = self.runs[~(self.runs["compute_budget"] >= c_cut)].reset_index(drop=True)
        rows = []
        for name in self.fits:
            row: dict[str, Any] = {
                "approach": name,
                "held_out_budget": c_held,
                "fit_budgets": held_k,
                "measured_from": source,
                "measured_params": meas_n,
                "measured_loss": meas_l,
                "error": None,
            }
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = run_approach(name, train, bootstrap=boot, seed=seed_, exclude=exclude)
                    opt = fit.optimal(c_held)
            except ValueError as exc:
                row["error"] = str(exc)
                rows.append(row)
                continue
            for key, meas, short in (("optimal_params", meas_n, "params"), ("optimal_loss", meas_l, "loss")):
                pred = float(opt[key])
                lo, hi = _ci_pair(opt.get(f"{key}_ci"))
                row[f"predicted_{short}"] = pred
                row[f"predicted_{short}_lo"], row[f"predicted_{short}_hi"] = lo, hi
                row[f"{short}_rel_error"] = pred / meas - 1.0
                row[f"{short}_within_ci"] = bool(lo <= meas <= hi) if math.isfinite(lo) else None
            rows.append(row)
        cols = [
            "approach", "held_out_budget", "fit_budgets", "measured_from",
            "predicted_params", "predicted_params_lo", "predicted_params_hi", "measured_params",
            "params_rel_error", "params_within_ci",
            "predicted_loss", "predicted_loss_lo", "predicted_loss_hi", "measured_loss",
            "loss_rel_error", "loss_within_ci", "error",
        ]  # fmt: skip
        table = pd.DataFrame(rows).reindex(columns=cols)
        self._cache["backtest"] = table
        return table.copy()

    @property
    def last_backtest(self) -> pd.DataFrame | None:
        """The most recent :meth:`backtest` table (also restored by :meth:`load`), or None."""
        table = self._cache.get("backtest")
        return None if table is None else table.copy()

    def _backtest_lines(self) -> list[str]:
        table = self._cache.get("backtest")
        if table is None or table.empty:
            return []
        first = table.iloc[0]
        lines = [
            f"Backtest: refitted on the {int(first.fit_budgets)} budgets below C = {first.held_out_budget:.3g} FLOPs "
            f"and predicted there; measured optimum: {first.measured_from}"
        ]
        for r in table.itertuples(index=False):
            label = APPROACH_LABELS[r.approach]
            if isinstance(r.error, str) and r.error:
                lines.append(f"  {label}: could not be refitted ({r.error})")
                continue

            def inside(flag: Any) -> str:
                return (
                    ""
                    if flag is None or pd.isna(flag)
                    else (" (inside 95% interval)" if flag else " (outside 95% interval)")
                )

            lines.append(
                f"  {label}: N_opt {r.predicted_params:.3g} vs {r.measured_params:.3g} measured "
                f"({r.params_rel_error:+.1%}){inside(r.params_within_ci)}; L_opt {r.predicted_loss:.4g} vs "
                f"{r.measured_loss:.4g} ({r.loss_rel_error:+.2%}){inside(r.loss_within_ci)}"
            )
        return lines

    # ------------------------------------------------------------------------------------------------
    # Text and HTML

    def law_lines(self, approach: str) -> list[str]:
        """The fitted laws of one approach with 95% intervals, one per line (N params, D tokens, C FLOPs)."""
        _, fit = self._fit(approach)
        a_lo, a_hi = _exponent_ci(fit, "a")
        b_lo, b_hi = _exponent_ci(fit, "b")
        lines = []
        if isinstance(fit, ParametricFit):
            ci = fit.ci
            terms = {
                k: _fmt_ci(getattr(fit, k), *_ci_pair(ci.get(k))) for k in ("E", "A", "B", "alpha", "beta")
            }
            lines.append(
                f"L(N, D) = E + A / N^alpha + B / D^beta with E = {terms['E']}, A = {terms['A']}, "
                f"B = {terms['B']}, alpha = {terms['alpha']}, beta = {terms['beta']}"
            )
        n_law, d_law, l_law = laws_of(fit)
        lines.append(f"N_opt = {_fmt(n_law.k)} C^a, a = {_fmt_ci(fit.a, a_lo, a_hi)}")
        lines.append(f"D_opt = {_fmt(d_law.k)} C^b, b = {_fmt_ci(fit.b, b_lo, b_hi)}")
        if l_law.offset:
            e_lo, e_hi = _ci_pair(l_law.offset_ci)
            lines.append(f"L_opt = {_fmt_ci(l_law.offset, e_lo, e_hi)} + {_fmt(l_law.k)} C^{_fmt(l_law.a)}")
        else:
            lines.append(f"L_opt = {_fmt(l_law.k)} C^{_fmt(l_law.a)}")
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
                    f"{r.approach} {_fmt_ci(r.value, r.lo, r.hi, 3)}" for r in part.itertuples(index=False)
                ]
                lines.append(f"  {q}: " + "; ".join(cells))
        lines += ["", f"Chinchilla table ({APPROACH_LABELS[self.primary]}):", self.table_markdown()]
        backtest = self._backtest_lines()
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
        assert self.primary is not None
        n_fit, d_fit, l_fit = laws_of(self.fits[self.primary])
        iso = self.fits.get("isoflop")
        if isinstance(iso, IsoFLOPFit):
            points = iso.minima[iso.minima["used"]].reset_index(drop=True)
        else:
            points = lowest_loss_per_budget(self.usable_runs, self.budget_rtol)
        ratio = (
            float(np.median(points["optimal_tokens"] / points["optimal_params"])) if len(points) else math.nan
        )
        return ScalingAnalysis(
            n_fit,
            d_fit,
            l_fit,
            points,
            ratio,
            self.primary,
            dict(self.fits),
            run_ids=tuple(self.runs["experiment_id"].astype(str)),
            budget_rtol=self.budget_rtol,
        )

    def save(self, directory: str | os.PathLike[str] | None = None, *, plots: bool = True) -> Path:
        """Write the result to ``directory`` (default :attr:`output_dir`); :meth:`load` reads it back.

        Files: ``scaling_laws.json`` (the :class:`ScalingAnalysis` format, so ``ScalingLawAnalyzer`` and
        ``ScalingVisualizer.from_files`` read it), ``result.json`` (primary approach, settings, skipped
        approaches, last back-test, warnings), ``runs.json`` (the runs table, loss curves included),
        ``runs.csv`` (the same without curves, for spreadsheets), ``chinchilla_table.md``, ``plan.json``
        (with a plan) and, with ``plots=True``, every figure as PNG and SVG. Each file is written atomically.
        """
        if directory is None:
            if self.output_dir is None:
                raise ValueError(
                    "save() needs a directory: pass save(dir) or build the Result with output_dir="
                )
            directory = self.output_dir
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        laws = atomic_write_json(out / SCALING_LAWS_FILE, self.to_analysis().to_dict())
        backtest = self._cache.get("backtest")
        meta = {
            "version": RESULT_VERSION,
            "laws_sha256": _sha256(laws),  # which scaling_laws.json these notes belong to
            "primary": self.primary,
            "budget_rtol": self.budget_rtol,
            "skipped": dict(self.skipped),
            "fit_options": dict(self.fit_options),
            "backtest": None if backtest is None else runs_to_records(backtest),
            "warnings": self.warnings,
        }
        atomic_write_json(out / RESULT_FILE, meta, allow_nan=False)
        atomic_write_json(out / RUNS_FILE, runs_to_records(self.runs), allow_nan=False)
        flat = self.runs.drop(columns=[c for c in ("curve",) if c in self.runs.columns])
        atomic_write_text(out / RUNS_CSV_FILE, flat.to_csv(index=False, float_format="%.17g"))
        atomic_write_text(out / TABLE_FILE, self.tables_markdown())
        if self.plan is not None:
            self.plan.save(out / PLAN_FILE)
        if plots:
            self.plot(save_dir=out)
        logger.info("saved the result to %s", out)
        return out

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        runs: pd.DataFrame | str | os.PathLike[str] | None = None,
        trust_plan: bool = False,
    ) -> Result:
        """Read a directory written by :meth:`save` (or by ``ScalingLawAnalyzer``, then pass ``runs=``:
        the results file or table the laws were fitted to).

        A saved plan names its model class by import path; it is imported (to name the closest model size in
        :meth:`predict`) only with ``trust_plan=True``, so loading a result someone sent you runs no code.
        """
        d = Path(directory)
        laws_path = d / SCALING_LAWS_FILE
        if not laws_path.is_file():
            raise FileNotFoundError(f"{laws_path} does not exist; write it with Result.save({str(d)!r})")
        try:
            laws = json.loads(laws_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{laws_path} is not valid JSON ({exc})") from exc
        analysis = ScalingAnalysis.from_dict(laws)
        meta: dict[str, Any] = {}
        stale = False
        if (d / RESULT_FILE).is_file():
            meta = json.loads((d / RESULT_FILE).read_text(encoding="utf-8"))
            if int(meta.get("version", RESULT_VERSION)) > RESULT_VERSION:
                raise ValueError(
                    f"{d / RESULT_FILE} is newer than this flops-fit understands; upgrade flops-fit"
                )
            recorded = meta.get("laws_sha256")
            stale = (recorded is not None and recorded != _sha256(laws_path)) or (
                meta.get("primary") is not None and meta["primary"] not in analysis.fits
            )
            if stale:  # the laws were refitted since (e.g. by flops-fit analyze): its notes are not theirs
                logger.warning(
                    "%s belongs to an earlier fit than %s; ignoring its primary approach, back-test and options",
                    d / RESULT_FILE,
                    laws_path.name,
                )
                meta = {}
        ledger, saved = d / "results.jsonl", d / RUNS_FILE
        chosen = runs is None  # the folder's own runs: runs.json, unless it is older than the laws
        if runs is None:
            if saved.is_file():
                runs = saved
            elif ledger.is_file():  # a sweep directory analysed by ff-analyze / flops-fit analyze
                runs = ledger
            else:
                raise FileNotFoundError(
                    f"neither {d / RUNS_FILE} nor {ledger} exists; pass runs= (the results file the laws were "
                    "fitted to)"
                )
        table = runs
        if isinstance(runs, (str, os.PathLike)):
            loaded = None
            if chosen and runs == saved and ledger.is_file():
                loaded = load_plan_runs(saved, None)
                # runs.json older than the laws: read the runs they were fitted to
                if stale or not set(analysis.run_ids or ()) <= set(loaded["experiment_id"].astype(str)):
                    runs, loaded = ledger, None
            if analysis.run_ids is not None:  # exactly the runs the analysis read
                table = analysis.runs_of(loaded if loaded is not None else load_plan_runs(runs, None))
            else:  # written before run ids were recorded: the folder's plan, as ff-analyze applies it
                sweep = d / SWEEP_FILE
                table = load_plan_runs(runs, sweep if runs == ledger and sweep.is_file() else None)
        plan = SweepPlan.load(d / PLAN_FILE) if (d / PLAN_FILE).is_file() else None
        result = cls(
            table,
            analysis.fits,
            plan=plan,
            primary=meta.get("primary", analysis.approach),
            output_dir=d,
            budget_rtol=meta.get("budget_rtol", analysis.budget_rtol),
            skipped=meta.get("skipped") or {},
            fit_options=meta.get("fit_options") or {},
        )
        if meta.get("backtest"):
            result._cache["backtest"] = pd.DataFrame.from_records(meta["backtest"])
        result._cache["plan_trusted"] = bool(trust_plan)
        return result


def _sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
