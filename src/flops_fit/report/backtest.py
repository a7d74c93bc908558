"""The back-test of a Result: refit every approach without the largest budget and check its prediction there.

:func:`backtest` returns a table and changes nothing; a Result carries one only when built with it
(:meth:`Result.with_backtest <flops_fit.report.result.Result.with_backtest>`). :func:`backtest_lines` is its
text for the summary.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import APPROACH_LABELS, run_approach
from flops_fit.analysis.bucketing import bucket_budgets
from flops_fit.analysis.isoflop import fit_profile
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.core.validate import check_bootstrap, check_seed
from flops_fit.report.diagnostics import ci_pair
from flops_fit.report.view import ResultView

#: The columns of a back-test table, in order.
BACKTEST_COLUMNS = (
    "approach", "held_out_budget", "fit_budgets", "measured_from",
    "predicted_params", "predicted_params_lo", "predicted_params_hi", "measured_params",
    "params_rel_error", "params_within_ci",
    "predicted_loss", "predicted_loss_lo", "predicted_loss_hi", "measured_loss",
    "loss_rel_error", "loss_within_ci", "error",
)  # fmt: skip


@dataclass(frozen=True)
class HeldOut:
    """The budget a back-test predicts: its bucket ``index`` (also the number of budgets refitted on), its
    centre ``budget`` and the smallest run ``cut`` (FLOPs; runs at or above it are left out), the measured
    optimum ``params`` (parameters) and ``loss``, and where that optimum came from (``source``)."""

    index: int
    budget: float
    cut: float
    params: float
    loss: float
    source: str


def held_out_budget(usable: pd.DataFrame, budget_rtol: float, exclude: bool) -> HeldOut:
    """The largest budget of the ``usable`` runs whose IsoFLOP profile brackets a minimum (its vertex is the
    measured optimum), else the largest budget with its lowest-loss run; needs 3 or more budgets."""
    labels, centers = bucket_budgets(usable["compute_budget"].to_numpy(float), rtol=budget_rtol)
    if len(centers) < 3:
        raise ValueError(
            f"backtest needs usable runs at 3 or more compute budgets (it refits on all but the largest, "
            f"and the fits need 2); these runs have {len(centers)}: train more budgets"
        )
    top = len(centers) - 1
    measured: tuple[int, float, float, str] | None = None
    for k in range(top, 1, -1):  # keep at least 2 budgets to refit on
        held = usable[labels == k]
        if exclude and len(held):
            held = held[~detect_outliers(held, budget_rtol=budget_rtol)["outlier"].to_numpy()]
        n, l = held["num_params"].to_numpy(float), held["final_loss"].to_numpy(float)
        prof = fit_profile(n, l)
        if k == top:
            best = int(np.argmin(l))
            measured = (
                k,
                float(n[best]),
                float(l[best]),
                f"lowest-loss run (profile: {', '.join(prof.flags)})",
            )
        if not prof.flags:
            above = top - k
            source = "IsoFLOP minimum" + (
                f" ({above} larger budget(s) without a bracketed profile left out too)" if above else ""
            )
            measured = (k, prof.optimal_params, prof.optimal_loss, source)
            break
    assert measured is not None
    k, params, loss, source = measured
    cut = float(usable["compute_budget"][labels == k].min())  # buckets start at their smallest budget
    return HeldOut(k, float(centers[k]), cut, params, loss, source)


def _refit_row(name: str, train: pd.DataFrame, held: HeldOut, options: dict[str, Any]) -> dict[str, Any]:
    """One approach refitted on ``train`` and asked for the optimum at the held-out budget (FLOPs)."""
    row: dict[str, Any] = {
        "approach": name,
        "held_out_budget": held.budget,
        "fit_budgets": held.index,
        "measured_from": held.source,
        "measured_params": held.params,
        "measured_loss": held.loss,
        "error": None,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = run_approach(name, train, **options).optimal(held.budget)
    except ValueError as exc:
        row["error"] = str(exc)
        return row
    for key, meas, short in (("optimal_params", held.params, "params"), ("optimal_loss", held.loss, "loss")):
        pred = float(opt[key])
        lo, hi = ci_pair(opt.get(f"{key}_ci"))
        row[f"predicted_{short}"] = pred
        row[f"predicted_{short}_lo"], row[f"predicted_{short}_hi"] = lo, hi
        row[f"{short}_rel_error"] = pred / meas - 1.0
        row[f"{short}_within_ci"] = bool(lo <= meas <= hi) if math.isfinite(lo) else None
    return row


def backtest(result: ResultView, *, bootstrap: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """The back-test table of ``result`` (see :meth:`Result.backtest`); ``result`` is left as it is."""
    options = result.fit_options
    boot = check_bootstrap(options.get("bootstrap", 0) if bootstrap is None else bootstrap)
    seed_ = check_seed(options.get("seed", 0) if seed is None else seed)
    exclude = bool(options.get("exclude_outliers", True))
    held = held_out_budget(result.usable_runs, result.budget_rtol, exclude)
    train = result.runs[~(result.runs["compute_budget"] >= held.cut)].reset_index(drop=True)
    refit = {"bootstrap": boot, "seed": seed_, "exclude": exclude}
    rows = [_refit_row(name, train, held, refit) for name in result.fits]
    return pd.DataFrame(rows).reindex(columns=list(BACKTEST_COLUMNS))


def _inside(flag: Any) -> str:
    if flag is None or pd.isna(flag):
        return ""
    return " (inside 95% interval)" if flag else " (outside 95% interval)"


def backtest_lines(table: pd.DataFrame | None) -> list[str]:
    """The back-test ``table`` as summary lines (none without a table)."""
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
        lines.append(
            f"  {label}: N_opt {r.predicted_params:.3g} vs {r.measured_params:.3g} measured "
            f"({r.params_rel_error:+.1%}){_inside(r.params_within_ci)}; L_opt {r.predicted_loss:.4g} vs "
            f"{r.measured_loss:.4g} ({r.loss_rel_error:+.2%}){_inside(r.loss_within_ci)}"
        )
    return lines
