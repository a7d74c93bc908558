"""Input checks shared by the fits: turn bad arrays into errors that say what to do."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def positive_arrays(min_points: int = 1, **arrays: Any) -> list[np.ndarray]:
    """Return each named array as 1-D float, checking equal length, finiteness and positivity.

    Raises ValueError naming the argument, the first offending index and value, and the fix.
    """
    out: list[np.ndarray] = []
    length = None
    for name, value in arrays.items():
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers ({exc})") from None
        if arr.ndim == 0:
            raise ValueError(f"{name} must be a 1-D sequence of numbers, got a scalar")
        arr = arr.reshape(-1) if arr.ndim > 1 and max(arr.shape) == arr.size else arr
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if length is None:
            length = arr.size
        elif arr.size != length:
            sizes = {k: np.size(v) for k, v in arrays.items()}
            raise ValueError(f"arrays must have the same length, got {sizes}")
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite or non-positive value(s) (first: {name}[{i}] = {arr[i]}); "
                "scaling-law fits need positive finite values: drop those runs "
                "(detect_outliers flags them) or fix the data"
            )
        out.append(arr)
    if length is not None and length < min_points:
        raise ValueError(f"Not enough valid points: got {length}, need at least {min_points}")
    return out


#: Most bootstrap resamples a fit accepts. The Monte Carlo error of a 2.5% percentile is already about
#: 0.16 percentage points at 10,000 resamples; far more only costs memory (a weights table per resample).
MAX_BOOTSTRAP = 100_000


def check_bootstrap(bootstrap: Any) -> int:
    """``bootstrap`` as an int number of resamples in [0, MAX_BOOTSTRAP], or a TypeError/ValueError naming it."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)):
        raise TypeError(f"bootstrap must be an int number of resamples (0 for none), got {bootstrap!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    if bootstrap > MAX_BOOTSTRAP:
        raise ValueError(
            f"bootstrap={bootstrap} resamples is more than the {MAX_BOOTSTRAP:,} allowed; 1,000 to 10,000 give "
            "stable 95% intervals"
        )
    return int(bootstrap)


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool, or a TypeError naming ``name`` (a string such as 'no' is not read by truthiness)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_seed(seed: Any) -> int:
    """``seed`` as a non-negative int, or a TypeError/ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return int(seed)


def check_ids(ids: Any, n: int) -> list[str] | None:
    """Run names for the ``n`` points of a fit (None: ``run-0``, ``run-1``, ...), or a ValueError naming ``ids``."""
    if ids is None:
        return None
    if isinstance(ids, str):
        raise TypeError(f"ids must be a sequence of {n} run names, got the string {ids!r}")
    names = [str(i) for i in ids]
    if len(names) != n:
        raise ValueError(f"ids must name each of the {n} points, got {len(names)} name(s)")
    return names


def check_budget_rtol(budget_rtol: Any) -> float:
    """``budget_rtol`` (relative width of a budget bucket) as a finite float >= 0, or an error naming it."""
    if isinstance(budget_rtol, bool) or not isinstance(budget_rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"budget_rtol must be a number such as 0.05, got {budget_rtol!r}")
    if not (np.isfinite(budget_rtol) and budget_rtol >= 0):
        raise ValueError(f"budget_rtol must be a finite number >= 0 (e.g. 0.05), got {budget_rtol}")
    return float(budget_rtol)


def check_positive(name: str, value: Any, hint: str) -> float:
    """``value`` as a positive finite float, or a TypeError/ValueError naming ``name`` (``hint``: e.g. its default)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number ({hint}), got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number ({hint}), got {value}")
    return float(value)


def positive_values(name: str, value: Any, what: str, *, allow_empty: bool = True) -> np.ndarray:
    """``value`` (a number or an array) as a float array of positive finite ``what``, or a ValueError naming it."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be positive finite {what}, got {value!r}") from None
    if (arr.size == 0 and not allow_empty) or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{name} must be positive finite {what}, got {value!r}")
    return arr


def positive_budgets(C: Any) -> np.ndarray:
    """Compute budget(s) C (FLOPs) as a float array, or a ValueError if any is not positive and finite."""
    return positive_values("C", C, "compute budget(s) in FLOPs", allow_empty=False)


def canonical_order(*columns: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``columns`` (the first is the primary key).

    Bootstrap draws pick rows by position, so every fit sorts its rows with this first: its estimates and
    its intervals then do not depend on the order the rows came in.
    """
    return np.lexsort(tuple(reversed(columns)))
