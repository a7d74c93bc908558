"""What a run of :func:`~flops_fit.training.loop.train` is, and the checkpoints it starts from or leaves.

A run's fingerprint (:func:`run_fingerprint`) says which checkpoints it may resume. Beyond its own
checkpoint, a run can leave *branch points* and start from a *trunk*, for WSD sweeps (Hägele et al. 2024):
one constant-learning-rate trunk is trained once and writes full checkpoints at chosen steps
(``train(branch_points={step: path})``); each cooldown branch starts from one of them
(``train(init_checkpoint=path)``) and trains only its cooldown. A branch may differ from its trunk only in
its horizon and cooldown (:data:`HORIZON_KEYS`, :data:`HORIZON_CONFIG_KEYS`), and its learning rate must
equal the trunk's at every step before the branch point, so it ends exactly where the same run trained
from scratch would.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from flops_fit.core.schedule import lr_multiplier
from flops_fit.core.train_config import LATER_FIELDS, TRAJECTORY_FIELDS, TrainConfig, result_settings
from flops_fit.training.checkpoint import (
    CHECKPOINT_FORMAT,
    LoopState,
    fingerprint,
    fingerprint_mismatch,
    load_checkpoint,
    model_signature,
    restore_rng,
    save_checkpoint,
)
from flops_fit.training.distributed import SingleProcess

logger = logging.getLogger(__name__)

#: Fingerprint keys that depend on a run's horizon: a branch may differ from its trunk in them.
HORIZON_KEYS: tuple[str, ...] = ("num_tokens", "total_steps", "eval_every")
#: Keys of the fingerprint's ``config`` that shape the horizon or the cooldown: a branch may differ in them
#: (its learning rate before the branch point is checked step by step instead).
HORIZON_CONFIG_KEYS: tuple[str, ...] = (
    "schedule",
    "decay_steps",
    "decay_frac",
    "decay_shape",
    "min_lr_ratio",
    "eval_every",
)
_SCHEDULE_KEYS = ("schedule", "warmup_frac", "min_lr_ratio", "decay_frac", "warmup_steps", "decay_steps")


def run_fingerprint(
    model: nn.Module,
    optimizer: Any,
    config: TrainConfig,
    data: list[Any],
    **horizon: Any,
) -> dict[str, Any]:
    """What a run is: ``horizon`` (num_tokens, total_steps, tokens_per_step, eval_every, precision), the
    trajectory fields of ``config`` (:data:`LATER_FIELDS` only when set), model and optimiser shapes and
    ``data`` (kind, tokens per sample, training and validation samples)."""
    return fingerprint(
        format=CHECKPOINT_FORMAT,
        config=result_settings(config.to_dict(), TRAJECTORY_FIELDS),
        model=model_signature(model),
        optimizer=[type(optimizer).__name__, [len(g["params"]) for g in optimizer.param_groups]],
        data=data,
        **horizon,
    )


def matching_checkpoint(
    path: Path | None, current: Mapping[str, Any], is_main: bool
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is this run's (same fingerprint), else None (warned)."""
    if path is None:
        return None
    saved = load_checkpoint(path, discard_corrupt=is_main)
    if saved is None:
        return None
    differing = fingerprint_mismatch(saved["fingerprint"], current)
    if differing:
        logger.warning(
            "checkpoint %s belongs to a different run (differs in %s); ignoring it and starting from scratch",
            path,
            ", ".join(differing),
        )
        return None
    return saved


def restore_run(
    saved: Mapping[str, Any], path: Path, model: nn.Module, optimizer: Any, scaler: Any, procs: SingleProcess
) -> LoopState:
    """Load the model, optimiser, scaler and random streams of a checkpoint; returns its counters."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise RuntimeError(
            f"checkpoint {path} matches this run's fingerprint but could not be loaded ({exc}); "
            "delete it to start the experiment from scratch"
        ) from exc
    rng = saved["rng"]
    if len(rng) == procs.world_size:
        restore_rng(rng[procs.rank])
    else:
        logger.warning(
            "checkpoint was written by %d process(es), now %d: random streams (dropout) restart from the seed",
            len(rng),
            procs.world_size,
        )
    return LoopState.from_state(saved["step"], saved["loop"])


# ---------------------------------------------------------------------------------------------- trunks


def prefix_mismatch(trunk: Mapping[str, Any], branch: Mapping[str, Any]) -> list[str]:
    """Fingerprint keys (``config.<field>`` inside the config) in which a branch differs from its trunk,
    other than the horizon and cooldown ones (empty when the branch may start from the trunk)."""
    outer = [k for k in fingerprint_mismatch(trunk, branch) if k not in (*HORIZON_KEYS, "config")]
    mine, theirs = trunk.get("config", {}), branch.get("config", {})
    inner = [
        f"config.{k}"
        for k in sorted(set(mine) | set(theirs))
        if k not in HORIZON_CONFIG_KEYS
        and mine.get(k, LATER_FIELDS.get(k)) != theirs.get(k, LATER_FIELDS.get(k))
    ]
    return sorted(outer + inner)


def _multiplier(print_: Mapping[str, Any], step: int) -> float:
    """The learning-rate multiplier at ``step`` of the run with fingerprint ``print_``."""
    config = {**LATER_FIELDS, **print_["config"]}
    shape = {k: config[k] for k in _SCHEDULE_KEYS}
    return lr_multiplier(step, int(print_["total_steps"]), decay_shape=config["decay_shape"], **shape)


def _first_lr_difference(trunk: Mapping[str, Any], branch: Mapping[str, Any], steps: int) -> int | None:
    """The first step before ``steps`` where the two runs' learning rates differ (None: none does)."""
    for step in range(steps):
        if not math.isclose(_multiplier(trunk, step), _multiplier(branch, step), rel_tol=1e-12):
            return step
    return None


def load_trunk(path: Path, current: Mapping[str, Any], total_steps: int) -> dict[str, Any]:
    """The trunk checkpoint at ``path`` for a branch with fingerprint ``current`` and ``total_steps`` steps;
    a ValueError when the branch cannot continue it exactly, FileNotFoundError when it cannot be read."""
    saved = load_checkpoint(path, discard_corrupt=False)
    if saved is None:
        raise FileNotFoundError(
            f"init_checkpoint {str(path)!r} is missing or unreadable; train the trunk past its branch point first"
        )
    trunk, step = saved["fingerprint"], int(saved["step"])
    differing = prefix_mismatch(trunk, current)
    if differing:
        raise ValueError(
            f"the trunk checkpoint {str(path)!r} (init_checkpoint) belongs to another run: it differs from "
            f"this one in {', '.join(differing)}; a branch may differ from its trunk only in its horizon and "
            f"cooldown ({', '.join(HORIZON_KEYS + HORIZON_CONFIG_KEYS)})"
        )
    if not 0 <= step < total_steps:
        raise ValueError(
            f"the trunk checkpoint {str(path)!r} (init_checkpoint) is at step {step}, but this run has "
            f"{total_steps} steps: a branch must start before its last step"
        )
    first = _first_lr_difference(trunk, current, step)
    if first is not None:
        raise ValueError(
            f"the trunk checkpoint {str(path)!r} (init_checkpoint) was trained with another learning rate at "
            f"step {first} (x{_multiplier(trunk, first):.6g}, this run x{_multiplier(current, first):.6g}): a "
            f"branch must follow its trunk's schedule up to step {step}; give both the same warmup_steps, a "
            f"'constant' trunk and a 'wsd' branch with decay_steps <= {total_steps - step}"
        )
    return saved


# ---------------------------------------------------------------------------------------------- branch points


def check_branch_points(
    points: Mapping[int, str | os.PathLike[str]] | None, checkpoint_path: str | os.PathLike[str] | None
) -> dict[int, Path]:
    """``train``'s ``branch_points`` as ``{step: Path}``, or a TypeError/ValueError naming the bad entry."""
    if points is None:
        return {}
    if not isinstance(points, Mapping):
        raise TypeError(
            "branch_points must be a mapping of step to path, e.g. {1000: 'trunk_1000.pt'}, got "
            f"{type(points).__name__}"
        )
    out: dict[int, Path] = {}
    for step, path in points.items():
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"branch_points keys must be optimiser steps >= 1, got {step!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"branch_points[{step}] must be a path (str or os.PathLike), got {type(path).__name__}"
            )
        out[step] = Path(path)
    if checkpoint_path is not None and Path(checkpoint_path) in out.values():
        raise ValueError(
            f"branch_points names checkpoint_path {str(checkpoint_path)!r}, which the run overwrites and "
            "deletes; give each branch point a file of its own"
        )
    return out


def check_branch_steps(points: Mapping[int, Path], total_steps: int) -> None:
    """A ValueError for a branch point past the run's last step."""
    late = sorted(step for step in points if step > total_steps)
    if late:
        raise ValueError(
            f"branch_points {late} lie past the run's last step ({total_steps}); train the trunk longer "
            "(num_tokens) or branch earlier"
        )


def write_branch_point(path: Path, state: Mapping[str, Any]) -> bool:
    """Write a trunk checkpoint at a branch point, unless ``path`` already holds the same step of the same
    run (a resumed trunk leaves finished ones alone); True when written. A failed write raises OSError."""
    existing = load_checkpoint(path, discard_corrupt=False) if path.exists() else None
    if (
        existing is not None
        and int(existing["step"]) == state["step"]
        and not fingerprint_mismatch(existing["fingerprint"], state["fingerprint"])
    ):
        logger.info("branch point %s at step %d is already written; keeping it", path, state["step"])
        return False
    save_checkpoint(path, state)
    logger.info("wrote branch point %s at step %d", path, state["step"])
    return True
