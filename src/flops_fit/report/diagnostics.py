"""What a careful reader of a Result should check: approaches side by side, where they disagree beyond
their 95% intervals, flagged budgets, excluded runs and fits that did not converge.

Functions of the fits and the runs table (a Result is read through its public attributes only), plus the
number formats the Result's text shares.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.annealing import held_out_branches
from flops_fit.analysis.approaches import APPROACH_LABELS, Fit, label
from flops_fit.analysis.isoflop import MIN_POINTS_PER_BUDGET, IsoFLOPFit, describe_flagged, fit_profile
from flops_fit.analysis.layout import DESIGN_LABELS
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.report.view import ResultView

#: Budgets (C) whose median C / (6 N D) is off 1 by more than this use another FLOP convention than the
#: C = 6 N D that Approach 3's allocation assumes.
SIX_ND_RTOL = 0.05
RUN_KEYS = ("compute_budget", "num_params", "num_tokens", "final_loss")
#: Outlier reasons that are not outliers: runs no fit could use anyway.
_NOT_OUTLIERS = ("failed", "diverged", "non_finite")


def ci_pair(ci: Any) -> tuple[float, float]:
    """A 95% interval as two finite floats, or (nan, nan) when it is missing or not finite."""
    if ci is None:
        return math.nan, math.nan
    lo, hi = float(ci[0]), float(ci[1])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (math.nan, math.nan)


def exponent_ci(fit: Fit, which: str) -> tuple[float, float]:
    """95% interval of the exponent ``a`` (N_opt ∝ C^a) or ``b`` (D_opt ∝ C^b) of any fit."""
    return ci_pair(fit.a_ci if which == "a" else fit.b_ci)


def fmt(x: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def fmt_exponent(value: float, lo: float, hi: float) -> str:
    """An exponent with its 95% interval; one a constraint fixes (interval of zero width) says so."""
    if lo == hi == value:
        return f"{fmt(value)} (fixed by the constraint)"
    return fmt_ci(value, lo, hi)


def fmt_ci(value: float, lo: float, hi: float, digits: int = 4) -> str:
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{fmt(value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
    return fmt(value, digits)


def compare_approaches(fits: Mapping[str, Fit], c: float) -> pd.DataFrame:
    """One row per (quantity, approach): the exponents ``a``, ``b`` and N_opt, D_opt, L_opt at ``c`` FLOPs,
    with 95% bounds ``lo``/``hi`` (NaN when unknown); ``attrs["compute_budget"]`` is ``c``."""
    rows = []
    for name, fit in fits.items():
        drawn = getattr(fit, "samples", None) is not None and len(fit.samples) > 0  # bootstrapped or drawn
        for q in ("a", "b"):
            lo, hi = exponent_ci(fit, q)
            rows.append(
                {
                    "quantity": q,
                    "approach": name,
                    "value": float(getattr(fit, q)),
                    "lo": lo,
                    "hi": hi,
                    "drawn": drawn,
                }
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = fit.optimal(c)
        for q, key in (("N_opt", "optimal_params"), ("D_opt", "optimal_tokens"), ("L_opt", "optimal_loss")):
            lo, hi = ci_pair(opt.get(f"{key}_ci"))
            rows.append(
                {
                    "quantity": q,
                    "approach": name,
                    "value": float(opt[key]),
                    "lo": lo,
                    "hi": hi,
                    "drawn": drawn,
                }
            )
    out = pd.DataFrame(rows, columns=["quantity", "approach", "value", "lo", "hi", "drawn"])
    out.attrs["compute_budget"] = c
    return out


def agreement_notes(table: pd.DataFrame, names: list[str]) -> list[str]:
    """Pairs of approaches whose 95% intervals of a, N_opt or L_opt (in the :func:`compare_approaches`
    ``table``) do not overlap, and the approaches that could not be judged for want of intervals."""
    if len(names) < 2:
        return []
    c = table.attrs["compute_budget"]
    notes: list[str] = []
    unjudged: dict[str, list[str]] = {}  # approach -> the quantities it has no interval on
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
                    for n, r in ((first, r1), (second, r2)):
                        if not np.isfinite(r.lo) and q not in unjudged.setdefault(n, []):
                            unjudged[n].append(q)
                    continue
                if r1.hi < r2.lo or r2.hi < r1.lo:
                    notes.append(
                        f"{APPROACH_LABELS[first]} and {APPROACH_LABELS[second]} disagree on {what}: "
                        f"{fmt_ci(r1.value, r1.lo, r1.hi)} vs {fmt_ci(r2.value, r2.lo, r2.hi)} "
                        "(95% intervals do not overlap); check the IsoFLOP and residual figures before "
                        "trusting either"
                    )
    drawn = table.groupby("approach")["drawn"].first().to_dict() if "drawn" in table else {}
    undrawn = [n for n in names if n in unjudged and not drawn.get(n, False)]
    if undrawn:
        notes.append(
            f"agreement between approaches not judged for {', '.join(APPROACH_LABELS[n] for n in undrawn)}: "
            "no 95% intervals (refit with 200 bootstrap resamples for intervals on every approach: "
            "--bootstrap 200 on the command line, bootstrap=200 in Python)"
        )
    for n in names:  # resampled, yet without an interval: the data give none (each fit says why)
        if n in unjudged and drawn.get(n, False):
            notes.append(
                f"agreement with {APPROACH_LABELS[n]} not judged on {', '.join(unjudged[n])}: its fit has no "
                "95% interval there (see its own warning for why)"
            )
    return notes


def _fit_notes(name: str, fit: Fit) -> list[str]:
    """Flagged IsoFLOP budgets, a degenerate or unconverged parametric fit, and excluded outliers of one fit."""
    name_ = label(name)
    notes = []
    if isinstance(fit, IsoFLOPFit):
        flagged = describe_flagged(fit.minima)
        if flagged:
            notes.append(
                f"{name_}: budget(s) left out of the laws, {'; '.join(flagged)} (edge_small/edge_large: "
                "extend the sweep to smaller/larger models; too_few_points: train at least "
                f"{MIN_POINTS_PER_BUDGET} sizes; flat/no_curvature: widen the size span)"
            )
    if isinstance(fit, ParametricFit):
        if fit.degeneracy is not None:
            notes.append(f"{name_} is degenerate: {fit.degeneracy}")
        elif fit.floor_collapsed is not None:
            notes.append(f"{name_}: {fit.floor_collapsed}")
        if not fit.converged:
            notes.append(f"{name_}: the optimiser did not converge; treat its estimates with care")
    excluded = getattr(fit, "excluded", None)
    if isinstance(excluded, pd.DataFrame) and len(excluded) and "outlier_reason" in excluded:
        reasons = excluded["outlier_reason"]
        reasons = reasons[~reasons.isin(_NOT_OUTLIERS)]
        if len(reasons):
            counts = ", ".join(f"{n} {r}" for r, n in reasons.value_counts().items())
            notes.append(
                f"{name_} excluded {len(reasons)} run(s) as outliers ({counts}); see excluded_runs()"
            )
    return notes


def _six_nd_note(usable: pd.DataFrame) -> list[str]:
    """A note when the runs' budgets C (FLOPs) are not 6 N D, the convention Approach 3's allocation assumes."""
    ratio = float(
        np.median(
            usable["compute_budget"] / (FLOPS_PER_PARAM_TOKEN * usable["num_params"] * usable["num_tokens"])
        )
    )
    if abs(ratio - 1.0) <= SIX_ND_RTOL:
        return []
    return [
        f"the runs' budgets are not 6ND FLOPs (median C / (6 N D) = {ratio:.3g}); Approach 3's "
        "allocation assumes C = 6ND, so it reads every C on that scale, not on your budgets' "
        "(its N_opt(C) is not comparable with Approaches 1 and 2 as is)"
    ]


def warning_notes(result: ResultView) -> list[str]:
    """What to check before trusting ``result``'s numbers (see :attr:`Result.warnings`)."""
    notes = [f"{label(k)} not fitted: {v}" for k, v in result.skipped.items()]
    design = result.layout.design
    if "isoflop" in result.fits and design not in ("isoflop", "mixed"):
        notes.append(
            f"Approach 2 was fitted to {DESIGN_LABELS[design]}: its budget buckets hold several sizes only by "
            "coincidence, so its minima are not IsoFLOP optima; prefer Approach 3"
        )
    status = result.runs["status"].value_counts()
    bad = {s: int(status.get(s, 0)) for s in ("failed", "diverged") if status.get(s, 0)}
    if bad:
        parts = ", ".join(f"{n} {s}" for s, n in bad.items())
        notes.append(f"{sum(bad.values())} run(s) did not complete ({parts}); no fit uses them")
    for name, fit in result.candidates.items():
        if name in result.fits or name == result.primary:  # a variant's notes matter when it is the answer
            notes += _fit_notes(name, fit)
    if "parametric" in result.fits:
        notes += _six_nd_note(result.usable_runs)
    if len(result.fits) > 1:
        notes += agreement_notes(result.compare_approaches(), list(result.fits))
    return notes


def excluded_runs(usable: pd.DataFrame, fits: Mapping[str, Fit]) -> pd.DataFrame:
    """Rows of ``usable`` that a fit left out as outliers: ``experiment_id``, C, N, D, loss, ``reason`` and
    the ``approaches`` that excluded them (see :meth:`Result.excluded_runs`)."""
    key = usable[["num_params", "num_tokens", "final_loss"]].to_numpy(float)
    hits: dict[int, dict[str, Any]] = {}
    for name, fit in fits.items():
        ex = getattr(fit, "excluded", None)
        if not isinstance(ex, pd.DataFrame) or ex.empty or "outlier_reason" not in ex:
            continue
        ex = ex[~ex["outlier_reason"].isin(_NOT_OUTLIERS)]
        for row in ex.itertuples(index=False):
            target = np.array([row.num_params, row.num_tokens, row.final_loss], dtype=float)
            for i in np.flatnonzero(np.all(np.isclose(key, target, rtol=1e-9, atol=0.0), axis=1)):
                entry = hits.setdefault(int(i), {"reason": row.outlier_reason, "approaches": []})
                if name not in entry["approaches"]:
                    entry["approaches"].append(name)
    cols = ["experiment_id", *RUN_KEYS, "reason", "approaches"]
    rows = [
        {
            **usable.loc[i, ["experiment_id", *RUN_KEYS]].to_dict(),
            "reason": e["reason"],
            "approaches": ",".join(e["approaches"]),
        }
        for i, e in sorted(hits.items())
    ]
    return pd.DataFrame(rows, columns=cols)


def wsd_lines(plan: Any, runs: pd.DataFrame) -> list[str]:
    """What a WSD sweep (a plan with trunks) trained against the same runs from scratch, and how well the
    annealing law (Tissue et al. 2024) fitted on two branches of each trunk predicts its other branches'
    final losses; nothing for other designs."""
    if plan is None or not getattr(plan, "trunks", ()):
        return []
    lines = [
        f"WSD design: {sum(e.is_branch for e in plan)} cooldown branches of {len(plan.trunks)} "
        "constant-learning-rate trunks, "
        f"{plan.total_flops:.3g} FLOPs trained ({plan.total_flops / plan.equivalent_flops:.0%} of the "
        f"{plan.equivalent_flops:.3g} the same runs cost from scratch)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            held = held_out_branches(runs.to_dict("records"))
        except ValueError:  # a record without a usable curve (e.g. a mock sweep's)
            held = []
    lines += validation_lines(runs)
    if held:
        err = np.abs([r["rel_error"] for r in held])
        lines.append(
            f"  annealing law on each trunk's longest and shortest branch predicts its {len(held)} other branch "
            f"endpoint(s) within {err.mean():.2%} on average (largest {err.max():.2%})"
        )
    return lines


def validation_lines(runs: pd.DataFrame) -> list[str]:
    """Per validation run of a WSD sweep (``validates`` a branch): its loss trained from scratch against the
    branch's, and how far the budget's IsoFLOP minimum moves when it replaces the branch."""
    if "validates" not in runs:
        return []
    done = runs[runs["status"] == "completed"]
    by_id = done.set_index("experiment_id")
    out = []
    for v in done[done["validates"].map(lambda x: isinstance(x, str))].itertuples(index=False):
        if v.validates not in by_id.index:
            continue
        branch = by_id.loc[v.validates]
        slice_ = done[
            (done["compute_budget"] == v.compute_budget) & done["trunk_id"].map(lambda x: isinstance(x, str))
        ]
        n, loss = slice_["num_params"].to_numpy(float), slice_["final_loss"].to_numpy(float)
        swapped = np.where(slice_["experiment_id"].to_numpy() == v.validates, v.final_loss, loss)
        moved = ""
        if len(n) >= MIN_POINTS_PER_BUDGET:
            a, b = fit_profile(n, loss), fit_profile(n, swapped)
            moved = (
                f"; the budget's IsoFLOP minimum moves {b.optimal_params / a.optimal_params - 1:+.1%} with it"
            )
        out.append(
            f"  validation at C = {v.compute_budget:.3g}, N = {v.num_params:.3g}: trained from scratch "
            f"{v.final_loss:.4f} vs branch {float(branch['final_loss']):.4f} "
            f"({float(branch['final_loss']) / v.final_loss - 1:+.2%}){moved}"
        )
    return out
