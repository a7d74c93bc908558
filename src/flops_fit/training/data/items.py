"""The item contract: ``(inputs, targets)`` pairs, the tokens they hold, and moving them to a device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from flops_fit.core.validate import POSITIVE_INT, check

Batch = tuple[Any, Any]
"""One collated ``(inputs, targets)`` pair."""


def split_item(item: Any, where: str) -> Batch:
    """Check that ``item`` is an ``(inputs, targets)`` pair and return it."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = f"a {type(item).__name__}" + (
            f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
        )
        raise TypeError(
            f"{where} must be an (inputs, targets) pair so that loss_fn(model(inputs), targets) works; got {got}. "
            "Return `return x, y` from __getitem__/__iter__ (or wrap the dataset)."
        )
    return item[0], item[1]


def count_elements(targets: Any) -> int:
    """Number of target elements: ``numel`` of a tensor or array, 1 for a Python number."""
    if isinstance(targets, torch.Tensor):
        return targets.numel()
    if isinstance(targets, np.ndarray):
        return int(targets.size)
    if isinstance(targets, (int, float, np.number)) and not isinstance(targets, bool):
        return 1
    try:
        return torch.as_tensor(targets).numel()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"cannot count the tokens of targets of type {type(targets).__name__}; return a tensor, "
            "or set a `tokens_per_sample` attribute on the dataset"
        ) from exc


def leading_length(targets: Any) -> int:
    """Samples in a collated batch: the first dimension of its targets."""
    if isinstance(targets, (torch.Tensor, np.ndarray)) and targets.ndim >= 1:
        return int(targets.shape[0])
    if isinstance(targets, (list, tuple)):
        return len(targets)
    raise TypeError(
        f"cannot tell the batch size of targets of type {type(targets).__name__}; return a tensor"
    )


def declared_tokens_per_sample(dataset: Any) -> int | None:
    """``dataset.tokens_per_sample`` if the dataset sets it (checked to be a positive integer)."""
    value = getattr(dataset, "tokens_per_sample", None)
    if value is None:
        return None
    return check("dataset.tokens_per_sample", value, POSITIVE_INT)


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside (nested tuples, lists, dicts of) ``obj`` to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    return obj


def same_item(a: Any, b: Any) -> bool:
    """Exact equality of two dataset items (tensors, arrays, numbers, or tuples/lists/dicts of them)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_item(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_item(a[k], b[k]) for k in a)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return False


def dataset_length(dataset: Any, name: str) -> int:
    """``len(dataset)`` of an indexable dataset (``name`` in the errors): a TypeError without one, a
    ValueError when it is 0."""
    try:
        n = len(dataset)
    except TypeError as exc:
        raise TypeError(
            f"{name} is indexable but has no len(); make it a map-style Dataset with __len__, "
            "or an IterableDataset"
        ) from exc
    if n == 0:
        raise ValueError(f"{name} is empty")
    return n
