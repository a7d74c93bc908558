"""Flag runs that should not enter a scaling-law fit, and say why."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.layout import classify
from flops_fit.core.runs import list_ids, validate_runs
from flops_fit.core.validate import check_budget_rtol, check_positive

logger = logging.getLogger(__name__)

#: A point is a profile outlier when its log-loss residual from the robust IsoFLOP parabola exceeds this many
#: robust standard deviations ...
RESIDUAL_Z = 5.0
#: ... and the residual is larger than this (relative loss error): ordinary seed noise is never flagged.
MIN_RELATIVE_RESIDUAL = 0.02
#: ... and larger than this fraction of the log-loss step to its neighbouring sizes (steep tails vary a lot).
LOCAL_SPREAD_FRACTION = 0.5
#: Profiles with fewer points than this are too small to tell an outlier from curvature.
MIN_PROFILE_POINTS = 6

_KEY_COLUMNS = ("compute_budget", "num_params", "num_tokens", "final_loss")


def _profile_residuals(log_n: np.ndarray, log_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of log-loss from a robust cubic in ln N, and each point's local spread.

    The cubic (Tukey-biweight iteratively reweighted least squares, so an outlier gets no weight) follows the
    asymmetric shape of a wide IsoFLOP profile. The local spread is the range of log-loss over the point's
    two neighbours in N: steep tails vary a lot between sizes, so only breaks larger than that count.
    """
    order = np.argsort(log_n, kind="stable")
    x = log_n[order] - log_n.mean()
    y = log_l[order]
    design = np.vander(x, 4)  # cubic in ln N (centred)
    w = np.ones_like(x)
    resid = np.zeros_like(x)
    for _ in range(30):
        # weighted least squares by its normal equations: 4 unknowns, ln N centred, so well conditioned
        wd = design * w[:, None]
        coef = np.linalg.solve(wd.T @ design, wd.T @ y)
        resid = y - design @ coef
        scale = 1.4826 * np.median(np.abs(resid))
        if scale <= 1e-12:
            break
        u = resid / (4.685 * scale)
        w_new = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if np.count_nonzero(w_new) < 5 or np.allclose(w_new, w, atol=1e-6):
            break
        w = w_new
    padded = np.concatenate([y[:1], y, y[-1:]])
    spread = np.maximum(np.abs(padded[2:] - padded[1:-1]), np.abs(padded[:-2] - padded[1:-1]))
    out_r, out_s = np.empty_like(resid), np.empty_like(spread)
    out_r[order], out_s[order] = resid, spread
    return out_r, out_s


def _profile_outliers(
    log_n: np.ndarray, log_l: np.ndarray, z: float, min_rel: float, members: np.ndarray
) -> np.ndarray:
    """Indices (into ``members``' values) of profile outliers, removed one at a time, worst first.

    One bad run also pulls the fit near it; taking out the worst point and re-checking keeps its neighbours
    from being flagged with it. At most a third of a profile can be flagged.
    """
    keep = np.ones(log_n.size, dtype=bool)
    flagged: list[int] = []
    while keep.sum() >= MIN_PROFILE_POINTS and len(flagged) < log_n.size // 3:
        idx = np.flatnonzero(keep)
        resid, spread = _profile_residuals(log_n[idx], log_l[idx])
        scale = 1.4826 * np.median(np.abs(resid))
        size = np.abs(resid)
        far = (size > z * scale) & (size > np.log1p(min_rel)) & (size > LOCAL_SPREAD_FRACTION * spread)
        if not far.any():
            break
        worst = idx[np.argmax(np.where(far, size, -np.inf))]
        keep[worst] = False
        flagged.append(int(worst))
    return members[flagged] if flagged else members[:0]


def detect_outliers(
    runs: pd.DataFrame,
    *,
    residual_z: float = RESIDUAL_Z,
    min_relative_residual: float = MIN_RELATIVE_RESIDUAL,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
) -> pd.DataFrame:
    """Return ``runs`` with two added columns: ``outlier`` (bool) and ``outlier_reason`` (str, '' if kept).

    Reasons, checked in this order: ``failed`` / ``diverged`` (status), ``non_finite`` (loss, N, D or C not
    positive and finite), ``duplicate`` (a later exact copy of an earlier row's C, N, D and loss), and
    ``profile_residual``: within a designed IsoFLOP profile (:mod:`flops_fit.analysis.layout`: a bucket of a
    grid or of scattered runs holds several sizes only by coincidence and is never read as a profile) of at
    least ``MIN_PROFILE_POINTS`` runs, the loss is further than ``residual_z`` robust standard deviations, more
    than ``min_relative_residual`` and more than half the step to its neighbouring sizes from a robust cubic of
    log-loss in ln N; flagged one at a time, worst first.
    """
    residual_z = check_positive("residual_z", residual_z, f"default {RESIDUAL_Z}")
    min_relative_residual = check_positive(
        "min_relative_residual", min_relative_residual, f"default {MIN_RELATIVE_RESIDUAL}"
    )
    budget_rtol = check_budget_rtol(budget_rtol)
    df = validate_runs(runs)
    reason = np.array([""] * len(df), dtype=object)
    status = df["status"].to_numpy()
    reason[status != "completed"] = status[status != "completed"]

    vals = df[list(_KEY_COLUMNS)].to_numpy(dtype=float)
    bad_value = ~np.all(np.isfinite(vals) & (vals > 0), axis=1)
    reason[(reason == "") & bad_value] = "non_finite"

    dup = df.duplicated(subset=list(_KEY_COLUMNS), keep="first").to_numpy()
    reason[(reason == "") & dup] = "duplicate"

    ok = reason == ""
    if ok.sum() >= MIN_PROFILE_POINTS:
        idx = np.flatnonzero(ok)
        n, d, l, c = (vals[idx, k] for k in (1, 2, 3, 0))
        layout = classify(n, d, l, c, budget_rtol=budget_rtol)
        for bucket in np.flatnonzero(layout.buckets["designed"].to_numpy(bool)):
            members = idx[layout.labels == bucket]
            if members.size < MIN_PROFILE_POINTS or np.unique(vals[members, 1]).size < 4:
                continue
            reason[
                _profile_outliers(
                    np.log(vals[members, 1]),
                    np.log(vals[members, 3]),
                    residual_z,
                    min_relative_residual,
                    members,
                )
            ] = "profile_residual"

    out = df.copy()
    out["outlier"] = reason != ""
    out["outlier_reason"] = reason.astype(str)
    return out


def exclude_outliers(
    runs: pd.DataFrame, *, what: str = "fit", **kwargs: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``runs`` into (kept, excluded) using :func:`detect_outliers`; log a warning naming the excluded."""
    flagged = detect_outliers(runs, **kwargs)
    excluded = flagged[flagged["outlier"]].reset_index(drop=True)
    kept = flagged[~flagged["outlier"]].drop(columns=["outlier", "outlier_reason"]).reset_index(drop=True)
    report_excluded(excluded, what)
    return kept, excluded


def report_excluded(excluded: pd.DataFrame, what: str) -> None:
    """Log a warning naming the runs ``what`` (a fit's name) leaves out, and why (``outlier_reason``)."""
    if not len(excluded):
        return
    logger.warning(
        "%s: excluded %d run(s) %s: %s (pass exclude=False to keep them)",
        what,
        len(excluded),
        excluded["outlier_reason"].value_counts().to_dict(),
        list_ids(excluded["experiment_id"]),
    )
