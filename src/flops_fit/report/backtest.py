"""The back-test of a Result: a rolling-origin refit of every candidate, and the primary answer it chooses.

For each origin k, from the third budget on, every candidate (an approach or a variant of one, see
:data:`flops_fit.analysis.approaches.VARIANTS`) is refitted on the runs at or below budget C_k and asked for
every later budget: its compute-optimal N_opt (parameters), D_opt (tokens) and L_opt there, against the
measured optimum of that budget (the vertex of its IsoFLOP profile where the profile brackets a minimum,
else its lowest-loss run; ``measured_from`` says which), and, for Approach 3, the loss of every later run
(``kind == "runs"``). Errors are ln(predicted / measured) and are reported by extrapolation distance
C_target / C_k. Budgets are the designed IsoFLOP profiles of the runs (:mod:`flops_fit.analysis.layout`);
a table without designed profiles (a checkpoint grid, scattered runs) is cut into levels a factor
:data:`LEVEL_FACTOR` apart in C and back-tested on its runs' losses only (it has no measured optimum).

:func:`backtest` returns the table and changes nothing; :func:`choose_primary` reads one and says which
candidate extrapolated best (the rule is in ``docs/analysis.md``, "Which answer is primary").
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import base_approach, candidate_order, label, run_approach
from flops_fit.analysis.isoflop import fit_profile
from flops_fit.analysis.layout import Layout, classify_runs
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.core.validate import check_bootstrap, check_seed
from flops_fit.report.diagnostics import ci_pair
from flops_fit.report.view import ResultView

#: The first origin fits this many budgets (so a back-test needs one more).
MIN_FIT_BUDGETS = 3
#: At most this many origins are refitted (evenly spread over the possible ones, the first and last kept).
MAX_ORIGINS = 6
#: Budget levels of runs without designed profiles: bins of this factor in C.
LEVEL_FACTOR = 2.0
#: The primary answer is judged on predictions at least this far out (C_target / C_k) ...
FAR_DISTANCE = 3.0
#: ... and candidates whose scores differ by less than this (summed mean |log error|) are tied.
TIE = 0.01
#: Distance bands of the summaries (C_target / C_k).
DISTANCE_BANDS = ((1.0, 3.0), (3.0, 10.0), (10.0, math.inf))

#: The columns of a back-test table, in order.
BACKTEST_COLUMNS = (
    "approach", "kind", "origin_budget", "fit_budgets", "held_out_budget", "distance", "measured_from",
    "n_runs", "predicted_params", "predicted_params_lo", "predicted_params_hi", "measured_params",
    "params_rel_error", "params_log_error", "params_within_ci", "predicted_tokens", "measured_tokens",
    "tokens_log_error", "predicted_loss", "predicted_loss_lo", "predicted_loss_hi", "measured_loss",
    "loss_rel_error", "loss_log_error", "loss_within_ci", "error",
)  # fmt: skip
MEASURED_VERTEX = "IsoFLOP minimum"
#: The loggers a refit would repeat its full fit's notes on (silenced during the back-test's refits).
_REFIT_LOGGERS = ("flops_fit.analysis.outliers", "flops_fit.analysis.approaches", "flops_fit.analysis")


@dataclass(frozen=True, eq=False)
class Level:
    """One budget of the back-test: its ``budget`` (FLOPs), the smallest and largest budget of its runs
    (``start``, ``cut``), which usable runs belong to it (``members``) and whether it is a designed profile."""

    budget: float
    start: float
    cut: float
    members: np.ndarray
    designed: bool


@dataclass(frozen=True)
class Measured:
    """The measured optimum of one budget: N (parameters), D (tokens), loss, where it came from."""

    params: float
    tokens: float
    loss: float
    source: str

    @property
    def bracketed(self) -> bool:
        return self.source == MEASURED_VERTEX


def levels_of(usable: pd.DataFrame, layout: Layout) -> list[Level]:
    """The budgets of a back-test: the designed profiles, or bins a factor LEVEL_FACTOR apart without any."""
    c = usable["compute_budget"].to_numpy(float)
    if layout.supports_profiles:
        b = layout.buckets
        groups = [(layout.labels == k, True) for k in np.flatnonzero(b["designed"].to_numpy(bool))]
    else:
        bins = np.floor(np.log(c / c.min()) / math.log(LEVEL_FACTOR) + 1e-9).astype(int)
        groups = [(bins == k, False) for k in np.unique(bins)]
    out = []
    for mask, designed in groups:
        cm = c[mask]
        out.append(Level(float(np.exp(np.log(cm).mean())), float(cm.min()), float(cm.max()), mask, designed))
    return sorted(out, key=lambda lv: lv.budget)


def origins_of(n_levels: int) -> list[int]:
    """Indices of the origins: every level from the MIN_FIT_BUDGETS-th that has a later one, at most
    MAX_ORIGINS of them, evenly spread (first and last kept)."""
    possible = list(range(MIN_FIT_BUDGETS - 1, n_levels - 1))
    if len(possible) <= MAX_ORIGINS:
        return possible
    picks = np.unique(np.round(np.linspace(0, len(possible) - 1, MAX_ORIGINS)).astype(int))
    return [possible[i] for i in picks]


def _tokens_at(n: np.ndarray, d: np.ndarray, n_star: float) -> float:
    """D at N = n_star along the budget's (N, D) relation in log-log (exact for C = k N D)."""
    if np.unique(n).size < 2:
        return float(np.exp(np.mean(np.log(d)) - (math.log(n_star) - np.mean(np.log(n)))))
    slope, icpt = np.polyfit(np.log(n), np.log(d), 1)
    return float(math.exp(icpt + slope * math.log(n_star)))


def measured_optimum(runs: pd.DataFrame) -> Measured:
    """The optimum of one budget's runs: the IsoFLOP vertex where the profile brackets a minimum, else the
    lowest-loss run (its source says so, with the profile's flags)."""
    n, d, l = (runs[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss"))
    prof = fit_profile(n, l)
    if not prof.flags:
        n_star = prof.optimal_params
        return Measured(n_star, _tokens_at(n, d, n_star), prof.optimal_loss, MEASURED_VERTEX)
    best = int(np.argmin(l))
    return Measured(n[best], d[best], l[best], f"lowest-loss run (profile: {', '.join(prof.flags)})")


def warm_grid(fit: Any, spread: bool) -> dict[str, list[float]] | None:
    """Start values of an Approach 3 refit (None for other fits): the full fit's optimum, and with
    ``spread`` one value of Hoffmann et al.'s grid beside it on every axis (32 starts), so the refit can
    leave the full fit's basin."""
    if not isinstance(fit, ParametricFit) or not all(
        math.isfinite(v) and v > 0 for v in (fit.E, fit.A, fit.B, fit.alpha, fit.beta)
    ):
        return None
    warm = {
        "e": math.log(fit.E),
        "a": math.log(fit.A),
        "b": math.log(fit.B),
        "alpha": fit.alpha,
        "beta": fit.beta,
    }
    coarse = {"e": 0.0, "a": 10.0, "b": 10.0, "alpha": 0.5, "beta": 0.5}
    return {k: [v, coarse[k]] if spread else [v] for k, v in warm.items()}


def sound(fit: Any) -> bool:
    """Whether an Approach 3 refit from one start is to be kept: converged, not degenerate, E not 0."""
    return bool(fit.converged) and fit.degeneracy is None and fit.floor_collapsed is None


@contextmanager
def _quiet() -> Iterator[None]:
    """Refits log nothing below ERROR: the full fits have said it about the same runs already."""
    loggers = [logging.getLogger(name) for name in _REFIT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _refit(name: str, train: pd.DataFrame, options: dict[str, Any], full: Any, bootstrap: bool) -> Any:
    """Candidate ``name`` refitted on ``train``, or the error text when it cannot be. Approach 3 (without
    bootstrap) starts from the full fit's optimum alone, and again from 32 starts around it when that refit
    is not :func:`sound`: on Porian et al.'s 15 configurations, Chinchilla, Marin, the (Mis)Fitting grid and
    the OLMo ladder this reproduces refits from the whole 4,500-start grid to 3e-5 in ln N_opt, except at
    two early origins where the whole grid's refit is itself degenerate (alpha < 0)."""
    try:
        with _quiet():
            warm = None if bootstrap else warm_grid(full, spread=False)
            fit = run_approach(name, train, **options, options=None if warm is None else {"init_grid": warm})
            if warm is not None and not sound(fit):
                fit = run_approach(
                    name, train, **options, options={"init_grid": warm_grid(full, spread=True)}
                )
            return fit
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
        return str(exc)


def _optimum_row(fit: Any, level: Level, measured: Measured) -> dict[str, Any]:
    """The prediction of a refitted ``fit`` at ``level``'s budget against its measured optimum."""
    row: dict[str, Any] = {"measured_from": measured.source, "measured_params": measured.params}
    row.update(measured_tokens=measured.tokens, measured_loss=measured.loss, n_runs=int(level.members.sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = fit.optimal(level.budget)
    for key, short, meas in (
        ("optimal_params", "params", measured.params),
        ("optimal_tokens", "tokens", measured.tokens),
        ("optimal_loss", "loss", measured.loss),
    ):
        pred = float(opt[key])
        row[f"predicted_{short}"] = pred
        row[f"{short}_log_error"] = math.log(pred / meas) if pred > 0 else math.nan
        if short != "tokens":
            lo, hi = ci_pair(opt.get(f"{key}_ci"))
            row[f"predicted_{short}_lo"], row[f"predicted_{short}_hi"] = lo, hi
            row[f"{short}_rel_error"] = pred / meas - 1.0
            row[f"{short}_within_ci"] = bool(lo <= meas <= hi) if math.isfinite(lo) else None
    return row


def _runs_row(fit: ParametricFit, targets: pd.DataFrame) -> dict[str, Any]:
    """Approach 3's loss of each run in ``targets`` against the measured final losses: the mean absolute
    ln(predicted / measured) as ``loss_log_error``, the geometric means as predicted and measured loss."""
    n, d, l = (targets[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss"))
    pred = np.asarray(fit.predict_loss(n, d), dtype=float)
    err = np.log(pred / l)
    return {
        "measured_from": f"{l.size} run(s)",
        "n_runs": int(l.size),
        "predicted_loss": float(np.exp(np.log(pred).mean())),
        "measured_loss": float(np.exp(np.log(l).mean())),
        "loss_rel_error": float(np.exp(err.mean()) - 1.0),
        "loss_log_error": float(np.abs(err).mean()),
    }


def _origin_rows(
    name: str,
    fit: Any,
    k: int,
    levels: list[Level],
    measured: dict[int, Measured],
    targets: list[pd.DataFrame],
) -> list[dict[str, Any]]:
    """The rows of one candidate refitted at origin ``k``: each later level's optimum and runs."""
    rows = []
    for j in range(k + 1, len(levels)):
        base = {
            "approach": name,
            "origin_budget": levels[k].budget,
            "fit_budgets": k + 1,
            "held_out_budget": levels[j].budget,
            "distance": levels[j].budget / levels[k].budget,
            "error": fit if isinstance(fit, str) else None,
        }
        if j in measured:
            row = {**base, "kind": "optimum"}
            if not isinstance(fit, str):
                row.update(_optimum_row(fit, levels[j], measured[j]))
            rows.append(row)
        if base_approach(name) == "parametric" and len(targets[j]):
            row = {**base, "kind": "runs", "n_runs": len(targets[j])}
            if not isinstance(fit, str):
                row.update(_runs_row(fit, targets[j]))
            rows.append(row)
    return rows


def _plan(
    usable: pd.DataFrame, kept: pd.DataFrame, budget_rtol: float
) -> tuple[list[Level], dict[int, Measured], list[pd.DataFrame]]:
    """The levels of the back-test, the measured optimum of each designed one, and each level's target runs
    (those of ``kept``, the usable runs less outliers, from its smallest budget up to the next level's)."""
    levels = levels_of(usable, classify_runs(usable, budget_rtol))
    c = kept["compute_budget"].to_numpy(float)
    measured: dict[int, Measured] = {}
    targets: list[pd.DataFrame] = []
    for j, lv in enumerate(levels):
        end = levels[j + 1].start if j + 1 < len(levels) else math.inf
        targets.append(kept[(c >= lv.start) & (c < end)])
        if lv.designed:
            own = usable[lv.members]
            own = own[own.index.isin(kept.index)]
            if len(own):
                measured[j] = measured_optimum(own)
    return levels, measured, targets


def rolling_backtest(
    usable: pd.DataFrame,
    candidates: Mapping[str, Any],
    *,
    budget_rtol: float,
    exclude: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """The rolling-origin back-test table of ``candidates`` (name -> full fit, used as warm start) on the
    ``usable`` runs; a ValueError when they hold fewer than MIN_FIT_BUDGETS + 1 budgets. With ``exclude``
    the outliers of all runs are left out once (as the full fits left them out) and the refits take the
    rest as they are."""
    kept = usable
    if exclude:
        kept = usable[~detect_outliers(usable, budget_rtol=budget_rtol)["outlier"].to_numpy()]
    levels, measured, targets = _plan(usable, kept, budget_rtol)
    if len(levels) < MIN_FIT_BUDGETS + 1:
        raise ValueError(
            f"backtest needs usable runs at {MIN_FIT_BUDGETS + 1} or more compute budgets (each origin refits "
            f"on {MIN_FIT_BUDGETS} or more and predicts a later one); these runs have {len(levels)}: train "
            "more budgets"
        )
    if not measured:  # no measured optimum (a grid): only Approach 3's run losses can be checked
        candidates = {n: f for n, f in candidates.items() if base_approach(n) == "parametric"}
    c = kept["compute_budget"].to_numpy(float)
    options = {"bootstrap": bootstrap, "seed": seed, "exclude": False, "budget_rtol": budget_rtol}
    rows: list[dict[str, Any]] = []
    for k in origins_of(len(levels)):
        train = kept[c <= levels[k].cut].reset_index(drop=True)
        for name, full in candidates.items():
            fit = _refit(name, train, options, full, bootstrap > 0)
            rows += _origin_rows(name, fit, k, levels, measured, targets)
    table = pd.DataFrame(rows).reindex(columns=list(BACKTEST_COLUMNS))
    for col in (
        "params_within_ci",
        "loss_within_ci",
        "error",
    ):  # missing is None, as a saved table reads back
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    return table


def backtest(result: ResultView, *, bootstrap: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """The back-test table of ``result`` (see :meth:`Result.backtest`); ``result`` is left as it is."""
    options = result.fit_options
    boot = check_bootstrap(0 if bootstrap is None else bootstrap)
    seed_ = check_seed(options.get("seed", 0) if seed is None else seed)
    exclude = bool(options.get("exclude_outliers", True))
    assert result.budget_rtol is not None
    return rolling_backtest(
        result.usable_runs,
        result.candidates,
        budget_rtol=result.budget_rtol,
        exclude=exclude,
        bootstrap=boot,
        seed=seed_,
    )


# ----------------------------------------------------------------------------------------------------
# Choosing the primary answer

#: How summaries and reports say the way the primary answer was chosen (``Selection.rule``).
RULE_WORDS: Mapping[str, str] = MappingProxyType(
    {"backtest": "by back-test", "order": "by order", "only": "as the only one", "asked": "as asked"}
)


@dataclass(frozen=True)
class Selection:
    """Which candidate is the primary answer and why: ``rule`` is ``"backtest"`` (the smallest back-test
    error far out), ``"order"`` (no usable back-test: the documented order), ``"only"`` (one candidate) or
    ``"asked"`` (the user's choice); ``scores``: each scored candidate's error (summed mean |ln error|)."""

    primary: str
    rule: str
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", {str(k): float(v) for k, v in self.scores.items()})

    def to_dict(self) -> dict[str, Any]:
        scores = {k: (v if math.isfinite(v) else None) for k, v in self.scores.items()}
        return {"primary": self.primary, "rule": self.rule, "reason": self.reason, "scores": scores}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        scores = {k: math.nan if v is None else float(v) for k, v in (d.get("scores") or {}).items()}
        return cls(str(d["primary"]), str(d.get("rule", "order")), str(d.get("reason", "")), scores)


@dataclass(frozen=True)
class _Evidence:
    """The far predictions candidates are scored on: ``kind`` ("optimum" or "runs"), per candidate the
    mean |ln error| of N_opt and of the loss (``params``, ``loss``), how many, and the distance range."""

    kind: str
    params: dict[str, float]
    loss: dict[str, float]
    count: int
    lo: float
    hi: float


def _far_rows(table: pd.DataFrame, names: Sequence[str]) -> tuple[str, pd.DataFrame]:
    """The rows candidates are judged on: bracketed optima (else Approach 3's run losses) of ``names``,
    predicted at least FAR_DISTANCE out (else at the median distance or more)."""
    ok = table["error"].isna() | (table["error"].astype(str) == "")
    ok &= table["approach"].isin(list(names)) & np.isfinite(table["loss_log_error"].astype(float))
    kind, rows = "optimum", table[ok & (table["kind"] == "optimum")]
    rows = rows[
        (rows["measured_from"] == MEASURED_VERTEX) & np.isfinite(rows["params_log_error"].astype(float))
    ]
    if rows.empty:
        kind, rows = "runs", table[ok & (table["kind"] == "runs")]
    if rows.empty:
        return kind, rows
    dist = rows["distance"].astype(float)
    far = dist >= FAR_DISTANCE if (dist >= FAR_DISTANCE).any() else dist >= float(dist.median())
    return kind, rows[far]


def _evidence(table: pd.DataFrame, names: Sequence[str]) -> _Evidence | None:
    """Per candidate, its mean |ln error| on the far predictions every judged candidate made (a candidate
    with fewer than half of them is not judged); None without any."""
    kind, rows = _far_rows(table, names)
    if rows.empty:
        return None
    pairs = {
        n: set(zip(g["origin_budget"], g["held_out_budget"], strict=True))
        for n, g in rows.groupby("approach")
    }
    every = set().union(*pairs.values())
    judged = [n for n in names if len(pairs.get(n, ())) * 2 >= len(every)]
    common = set.intersection(*(pairs[n] for n in judged)) if judged else set()
    if not common:
        return None
    key = list(zip(rows["origin_budget"], rows["held_out_budget"], strict=True))
    rows = rows[[k in common for k in key]]
    groups = rows.groupby("approach")
    loss = groups["loss_log_error"].apply(lambda v: float(np.abs(v.astype(float)).mean())).to_dict()
    params = (
        groups["params_log_error"].apply(lambda v: float(np.abs(v.astype(float)).mean())).to_dict()
        if kind == "optimum"
        else {n: 0.0 for n in loss}
    )
    dist = rows["distance"].astype(float)
    return _Evidence(kind, params, loss, len(common), float(dist.min()), float(dist.max()))


def choose_primary(
    table: pd.DataFrame | None, candidates: Sequence[str], design: str, *, no_table: str = ""
) -> Selection:
    """The primary answer among ``candidates`` (approach and variant names) by the back-test ``table``.

    Approach 2 is a candidate only where the runs have designed profiles (``design`` "isoflop" or
    "mixed"). The score of a candidate is its mean |ln(predicted / measured)| of N_opt plus that of L_opt
    over the predictions at least FAR_DISTANCE out (else the farther half) that every judged candidate made,
    measured at bracketed IsoFLOP minima (without any: Approach 3's loss of the later runs). The smallest
    score wins; scores within TIE of it are tied and the first of them in :func:`candidate_order` wins.
    Without evidence (``no_table`` says why) the first candidate in that order is primary.
    """
    allowed = [n for n in candidates if base_approach(n) != "isoflop" or design in ("isoflop", "mixed")]
    ordered = candidate_order(allowed or list(candidates), design)
    if len(ordered) == 1:
        return Selection(ordered[0], "only", f"{label(ordered[0])} is the only answer fitted")
    ev = None if table is None or table.empty or "distance" not in table else _evidence(table, ordered)
    if ev is None:
        why = no_table or "the back-test has no prediction to judge them by"
        return Selection(
            ordered[0],
            "order",
            f"{label(ordered[0])}, the first fitted in the order {', '.join(ordered)} for {design} runs "
            f"({why})",
        )
    scores = {n: ev.params[n] + ev.loss[n] for n in ordered if n in ev.loss}
    best = min(scores.values())
    tied = [n for n in ordered if n in scores and scores[n] - best <= TIE]
    reason = _reason(tied, ev, scores)
    unjudged = [label(n) for n in ordered if n not in scores]
    if unjudged:
        why = (
            "their refits failed at most of those budgets"
            if ev.kind == "optimum"
            else "no bracketed optimum to compare with, and only Approach 3 predicts each run's loss"
        )
        reason += f"; not judged ({why}): {', '.join(unjudged)}"
    return Selection(tied[0], "backtest", reason, scores)


def _reason(tied: list[str], ev: _Evidence, scores: Mapping[str, float]) -> str:
    """Why ``tied[0]`` was chosen, in words, with every scored candidate's numbers."""
    span = f"{ev.lo:.3g}x" if math.isclose(ev.lo, ev.hi) else f"{ev.lo:.3g}x-{ev.hi:.3g}x"

    def numbers(n: str) -> str:
        if ev.kind == "optimum":
            return f"{ev.params[n]:.1%} in N_opt and {ev.loss[n]:.2%} in L_opt"
        return f"{ev.loss[n]:.2%} in the loss of later runs"

    first, best = tied[0], min(scores, key=lambda n: scores[n])
    text = (
        f"{label(first)}, because its back-test error at {span} extrapolation was {numbers(first)} "
        f"(mean |ln(predicted / measured)| over {ev.count} prediction(s) per candidate)"
    )
    if first != best:
        text += (
            f", within {TIE:g} of the smallest ({label(best)}), and the documented order puts it first among "
            f"the tied ({', '.join(label(n) for n in tied)})"
        )
    others = [f"{label(n)} {numbers(n)}" for n in scores if n != first]
    return text + ("; " + "; ".join(others) if others else "")


# ----------------------------------------------------------------------------------------------------
# The table in words


def band_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean |ln(predicted / measured)| per candidate and distance band (DISTANCE_BANDS): ``params_error``
    and ``loss_error`` at measured optima (``n_optimum`` predictions, ``n_bracketed`` of them at IsoFLOP
    minima), ``runs_loss_error`` of Approach 3's run losses, ``failed`` refits."""
    out = []
    for name in dict.fromkeys(table["approach"]):
        mine = table[table["approach"] == name]
        for lo, hi in DISTANCE_BANDS:
            band = mine[(mine["distance"] >= lo) & (mine["distance"] < hi)]
            if band.empty:
                continue
            failed = band["error"].notna() & (band["error"].astype(str) != "")
            opt = band[(band["kind"] == "optimum") & ~failed]
            runs = band[(band["kind"] == "runs") & ~failed]
            out.append(
                {
                    "approach": name,
                    "band": f"{lo:g}-{hi:g}x" if math.isfinite(hi) else f">={lo:g}x",
                    "n_optimum": len(opt),
                    "n_bracketed": int((opt["measured_from"] == MEASURED_VERTEX).sum()),
                    "params_error": _mean_abs(opt["params_log_error"]),
                    "loss_error": _mean_abs(opt["loss_log_error"]),
                    "runs_loss_error": _mean_abs(runs["loss_log_error"]),
                    "failed": int(failed.sum()),
                }
            )
    return pd.DataFrame(out)


def _mean_abs(values: pd.Series) -> float:
    v = np.abs(values.astype(float).to_numpy())
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _pct(x: float, digits: int) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}%}"


def backtest_lines(table: pd.DataFrame | None) -> list[str]:
    """The back-test ``table`` as summary lines (none without a table); tables saved by flops-fit before
    the rolling back-test (one held-out budget) keep their old wording."""
    if table is None or table.empty:
        return []
    if "distance" not in table.columns:
        return _single_holdout_lines(table)
    origins = table["origin_budget"].nunique()
    lines = [
        f"Backtest (rolling origin: refitted on the budgets up to each of {origins} origin(s) C_k and asked for "
        "every later budget; mean |ln(predicted / measured)| by distance C_target / C_k):"
    ]
    for r in band_summary(table).itertuples(index=False):
        parts = []
        if r.n_optimum:
            parts.append(
                f"N_opt {_pct(r.params_error, 1)}, L_opt {_pct(r.loss_error, 2)} "
                f"({r.n_optimum} optima, {r.n_bracketed} at IsoFLOP minima)"
            )
        if math.isfinite(r.runs_loss_error):
            parts.append(f"loss of later runs {_pct(r.runs_loss_error, 2)}")
        if r.failed:
            parts.append(f"{r.failed} refit(s) failed")
        lines.append(f"  {label(r.approach)} at {r.band}: " + "; ".join(parts))
    return lines


def _inside(flag: Any) -> str:
    if flag is None or pd.isna(flag):
        return ""
    return " (inside 95% interval)" if flag else " (outside 95% interval)"


def _single_holdout_lines(table: pd.DataFrame) -> list[str]:
    """A back-test table of flops-fit before the rolling back-test: one held-out budget per approach."""
    first = table.iloc[0]
    lines = [
        f"Backtest: refitted on the {int(first.fit_budgets)} budgets below C = {first.held_out_budget:.3g} FLOPs "
        f"and predicted there; measured optimum: {first.measured_from}"
    ]
    for r in table.itertuples(index=False):
        if isinstance(r.error, str) and r.error:
            lines.append(f"  {label(r.approach)}: could not be refitted ({r.error})")
            continue
        lines.append(
            f"  {label(r.approach)}: N_opt {r.predicted_params:.3g} vs {r.measured_params:.3g} measured "
            f"({r.params_rel_error:+.1%}){_inside(r.params_within_ci)}; L_opt {r.predicted_loss:.4g} vs "
            f"{r.measured_loss:.4g} ({r.loss_rel_error:+.2%}){_inside(r.loss_within_ci)}"
        )
    return lines
