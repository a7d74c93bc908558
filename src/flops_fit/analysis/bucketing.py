"""The one rule for grouping runs into compute-budget buckets, and for the lowest-loss run of each.

Analysis, outlier detection and plots all call :func:`bucket_budgets`; nothing else groups budgets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from flops_fit.core.validate import Real, check

#: Budgets within this relative distance of the smallest budget of their bucket share the bucket.
DEFAULT_BUDGET_RTOL = 0.05
_RTOL = Real(0)


def bucket_budgets(compute: Any, rtol: float = DEFAULT_BUDGET_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Group compute budgets (FLOPs) that lie within ``rtol`` of each other.

    Budgets are sorted; a bucket starts at its smallest budget and takes every following budget no more
    than ``(1 + rtol)`` times that one (anchoring on the first member prevents chains of slowly growing
    budgets from merging). Returns ``(labels, centers)``: ``labels[i]`` is the bucket index of point ``i``
    (buckets numbered in increasing budget) and ``centers[k]`` the geometric mean budget of bucket ``k``.
    """
    c = np.asarray(compute, dtype=float).reshape(-1)
    if c.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    if not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError("compute budgets must be positive and finite to be bucketed")
    rtol = check("rtol", rtol, _RTOL)
    order = np.argsort(c, kind="stable")
    labels = np.empty(c.size, dtype=int)
    limit = np.log1p(rtol)
    log_c = np.log(c)
    bucket, anchor = 0, log_c[order[0]]
    for idx in order:
        if log_c[idx] - anchor > limit + 1e-12:
            bucket += 1
            anchor = log_c[idx]
        labels[idx] = bucket
    centers = np.exp(np.bincount(labels, weights=log_c) / np.bincount(labels))
    return labels, centers


#: A bucket's lowest-loss run is its optimum only when the bucket holds an IsoFLOP profile: this many sizes.
MIN_PROFILE_SIZES = 3


def lowest_loss_per_budget(
    runs: pd.DataFrame, rtol: float = DEFAULT_BUDGET_RTOL, min_sizes: int = MIN_PROFILE_SIZES
) -> pd.DataFrame:
    """The lowest-loss run of each budget bucket holding at least ``min_sizes`` model sizes (without an
    IsoFLOP fit, the per-budget optima that analyses, results and plots show).

    ``runs``: completed runs with positive finite ``compute_budget``, ``num_params``, ``num_tokens`` and
    ``final_loss``. Returns ``compute_budget`` (the bucket's geometric mean, FLOPs), ``optimal_params``,
    ``optimal_tokens``, ``optimal_loss`` and ``n_sizes``, in increasing budget.
    """
    columns = ["compute_budget", "optimal_params", "optimal_tokens", "optimal_loss", "n_sizes"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    labels, centers = bucket_budgets(runs["compute_budget"].to_numpy(float), rtol=rtol)
    work = runs.assign(_bucket=labels)
    sizes = work.groupby("_bucket")["num_params"].nunique()
    work = work[work["_bucket"].isin(sizes.index[sizes >= min_sizes])]
    best = work.loc[work.groupby("_bucket")["final_loss"].idxmin()].sort_values("_bucket")
    return pd.DataFrame(
        {
            "compute_budget": centers[best["_bucket"].to_numpy()],
            "optimal_params": best["num_params"].to_numpy(float),
            "optimal_tokens": best["num_tokens"].to_numpy(float),
            "optimal_loss": best["final_loss"].to_numpy(float),
            "n_sizes": sizes.loc[best["_bucket"]].to_numpy(int),
        },
        columns=columns,
    )
