"""Learning-rate schedules as pure functions of the step.

Convention: ``lr_multiplier(step, total_steps, ...)`` is the factor applied to the peak learning rate for
the update made at 0-based ``step`` of a run of ``total_steps`` updates. The schedule's horizon is exactly
the run: the last update (``step = total_steps - 1``) uses ``min_lr_ratio`` for ``cosine`` and ``wsd``.
Because the multiplier depends on the step alone, a resumed run needs only the step to restore it.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_frac: float) -> int:
    """Number of linear warm-up steps: ``ceil(warmup_frac * total_steps)``, at most ``total_steps - 1``."""
    if warmup_frac <= 0 or total_steps <= 1:
        return 0
    return min(math.ceil(warmup_frac * total_steps), total_steps - 1)


def lr_multiplier(
    step: int,
    total_steps: int,
    *,
    schedule: str = "cosine",
    warmup_frac: float = 0.0,
    min_lr_ratio: float = 0.1,
    decay_frac: float = 0.2,
) -> float:
    """Learning-rate factor in ``[min_lr_ratio, 1]`` (warm-up: ``(step + 1) / warmup``) for one update.

    ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p`` going from 0 at the end of warm-up
    to 1 at the last step. ``wsd`` (warm-up, stable, decay): 1 until the last ``ceil(decay_frac *
    total_steps)`` steps, then linear to ``r`` at the last step. ``constant``: 1 after warm-up.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    warm = warmup_steps(total_steps, warmup_frac)
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
        decay = min(math.ceil(decay_frac * total_steps), total_steps - warm)
        start = total_steps - decay
        if decay <= 0 or step < start:
            return 1.0
        span = last - start
        progress = 1.0 if span <= 0 else (step - start) / span
        return 1.0 + (min_lr_ratio - 1.0) * progress
    raise ValueError(f"schedule must be 'cosine', 'wsd' or 'constant', got {schedule!r}")
