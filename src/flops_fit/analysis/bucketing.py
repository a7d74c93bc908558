"""The one rule for grouping runs into compute-budget buckets.

Analysis, outlier detection and plots all call :func:`bucket_budgets`; nothing else groups budgets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Budgets within this relative distance of the smallest budget of their bucket share the bucket.
DEFAULT_BUDGET_RTOL = 0.05


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
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
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
