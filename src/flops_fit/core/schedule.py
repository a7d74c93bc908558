"""Learning-rate schedules as pure functions of the step.

Convention: ``lr_multiplier(step, total_steps, ...)`` is the factor applied to the peak learning rate for
the update made at 0-based ``step`` of a run of ``total_steps`` updates. The schedule's horizon is exactly
the run: the last update (``step = total_steps - 1``) uses ``min_lr_ratio`` for ``cosine`` and ``wsd``.
Because the multiplier depends on the step alone, a resumed run needs only the step to restore it.

With an absolute warm-up (``warmup_steps``) and cooldown (``decay_steps``), a ``wsd`` run of ``S`` steps
whose cooldown takes its last ``S - b`` steps has, at every step before ``b``, the multiplier of a
``constant`` run of any length with the same warm-up: a cooldown branch can start from step ``b`` of a
constant-LR trunk (Hägele et al. 2024) and continue the schedule it would have had from scratch.
"""

from __future__ import annotations

import math

DECAY_SHAPES: tuple[str, ...] = ("linear", "1-sqrt")


def warmup_steps(total_steps: int, warmup_frac: float, *, fixed: int | None = None) -> int:
    """Number of linear warm-up steps: ``fixed`` when given (whatever the run's length), else
    ``ceil(warmup_frac * total_steps)``, at most ``total_steps - 1``."""
    if fixed is not None:
        return fixed
    if warmup_frac <= 0 or total_steps <= 1:
        return 0
    return min(math.ceil(warmup_frac * total_steps), total_steps - 1)


def _cooldown(progress: float, min_lr_ratio: float, shape: str) -> float:
    """The multiplier at ``progress`` in [0, 1] through the final decay: ``linear`` ``1 + (r - 1) p``, or
    ``1-sqrt`` ``r + (1 - r) (1 - sqrt(p))`` (Hägele et al. 2024)."""
    if shape == "linear":
        return 1.0 + (min_lr_ratio - 1.0) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - math.sqrt(progress))


def _check_lengths(warmup_steps: int | None, decay_steps: int | None, decay_shape: str) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("decay_steps", decay_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be None or an int >= 0 (optimiser steps), got {value!r}")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape must be 'linear' or '1-sqrt', got {decay_shape!r}")


def lr_multiplier(
    step: int,
    total_steps: int,
    *,
    schedule: str = "cosine",
    warmup_frac: float = 0.0,
    min_lr_ratio: float = 0.1,
    decay_frac: float = 0.2,
    warmup_steps: int | None = None,
    decay_steps: int | None = None,
    decay_shape: str = "linear",
) -> float:
    """Learning-rate factor in ``[min_lr_ratio, 1]`` (warm-up: ``(step + 1) / warmup``) for one update.

    The warm-up lasts ``warmup_steps`` steps when given (not shortened for a short run, so it does not
    depend on ``total_steps``), else ``ceil(warmup_frac * total_steps)``. ``cosine``: ``r + (1 - r) *
    (1 + cos(pi * p)) / 2`` with ``p`` going from 0 at the end of warm-up to 1 at the last step. ``wsd``
    (warm-up, stable, decay): 1 until the last ``decay_steps`` steps (default ``ceil(decay_frac *
    total_steps)``; at most the steps after warm-up), then ``decay_shape`` from 1 at the first of them to
    ``r`` at the last: ``linear`` ``1 + (r - 1) p``, ``1-sqrt`` ``r + (1 - r) (1 - sqrt(p))``.
    ``constant``: 1 after warm-up.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    _check_lengths(warmup_steps, decay_steps, decay_shape)
    warm = _warmup_length(total_steps, warmup_frac, fixed=warmup_steps)
    if step < warm:
        return (step + 1) / warm
    last = total_steps - 1
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = last - warm
        progress = 1.0 if span <= 0 else (step - warm) / span
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "wsd":
        wanted = math.ceil(decay_frac * total_steps) if decay_steps is None else decay_steps
        decay = min(wanted, total_steps - warm)
        start = total_steps - decay
        if decay <= 0 or step < start:
            return 1.0
        span = last - start
        return _cooldown(1.0 if span <= 0 else (step - start) / span, min_lr_ratio, decay_shape)
    raise ValueError(f"schedule must be 'cosine', 'wsd' or 'constant', got {schedule!r}")


_warmup_length = warmup_steps  # ``lr_multiplier``'s argument of that name hides the function there
