"""What a training run reports: :class:`RunInfo` before the first step, :class:`TrainOutcome` at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STATUSES: tuple[str, ...] = ("completed", "failed", "diverged")


@dataclass(frozen=True)
class RunInfo:
    """Facts about a run that are fixed before its first step (handed to callbacks).

    Attributes:
        total_steps: optimiser steps of the whole run.
        start_step: first step this process runs (non-zero when resuming a checkpoint).
        num_tokens: tokens the caller asked for.
        tokens_per_step: tokens per global batch; the run trains ``total_steps * tokens_per_step`` tokens.
        device: where the model lives, e.g. ``"cuda:0"``.
        precision: resolved precision (``"fp32"``, ``"bf16"``, ``"fp16"``).
        compiled: whether the model runs under ``torch.compile``.
        world_size: data-parallel processes.
        num_params: parameters outside ``nn.Embedding`` modules (the N of the default 6 N FLOPs per token).
    """

    total_steps: int
    start_step: int
    num_tokens: int
    tokens_per_step: int
    device: str
    precision: str
    compiled: bool
    world_size: int
    num_params: int

    @property
    def planned_tokens(self) -> int:
        """Tokens the run trains on: ``total_steps * tokens_per_step`` (at least ``num_tokens``)."""
        return self.total_steps * self.tokens_per_step


@dataclass(frozen=True)
class TrainOutcome:
    """The result of :func:`~flops_fit.training.train`.

    Attributes:
        status: ``"completed"``, ``"failed"`` (an exception in user code, recorded in ``error``) or
            ``"diverged"`` (non-finite or exploding loss, the step is in ``error``).
        final_loss: mean validation loss over the evaluation batches after the last step (NaN unless
            completed).
        train_loss: mean training loss over the last ``log_every`` steps (NaN if none were read).
        tokens_seen: training tokens consumed (summed over processes).
        steps: optimiser steps taken.
        flops: training FLOPs spent: ``flops_per_token * tokens_seen``.
        wall_time_s: wall-clock seconds of training, evaluation and checkpointing, summed over resumes.
        tokens_per_s: ``tokens_seen / wall_time_s``.
        curve: ``(tokens_seen, validation loss)`` at every evaluation, the last one included.
        error: what went wrong (``None`` when completed).
        num_params: parameters outside ``nn.Embedding`` modules.
        flops_per_token: the FLOPs-per-token convention used for ``flops``.
        resumed_from_step: the checkpoint step this run resumed from, or ``None``.
    """

    status: str
    final_loss: float
    train_loss: float
    tokens_seen: int
    steps: int
    flops: float
    wall_time_s: float
    tokens_per_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    num_params: int = 0
    flops_per_token: float = math.nan
    resumed_from_step: int | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """True when the run completed."""
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a ledger record (the curve as a list of ``[tokens, loss]`` pairs)."""
        return {
            "status": self.status,
            "final_loss": self.final_loss,
            "train_loss": self.train_loss,
            "tokens_seen": self.tokens_seen,
            "steps": self.steps,
            "flops": self.flops,
            "wall_time_s": self.wall_time_s,
            "tokens_per_s": self.tokens_per_s,
            "curve": [[int(t), float(v)] for t, v in self.curve],
            "error": self.error,
            "num_params": self.num_params,
            "flops_per_token": self.flops_per_token,
            "resumed_from_step": self.resumed_from_step,
        }
