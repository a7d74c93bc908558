"""Input checks shared by the fits: turn bad arrays into errors that say what to do."""

from __future__ import annotations

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
