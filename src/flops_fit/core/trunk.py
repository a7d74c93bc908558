"""Trunks of the WSD design, torch-free: one constant-learning-rate run per model size, shared by branches.

A trunk (Hägele et al. 2024) trains a model of one size at a constant learning rate after ``warmup_steps``
of linear warm-up. Each cooldown **branch** (an :class:`~flops_fit.core.experiment.Experiment` with
``trunk_id`` and ``branch_step``) starts from the trunk's state after ``branch_step`` optimiser steps and
decays the learning rate over its remaining steps, so k token counts of one size cost about the longest
run plus the cooldowns instead of k full runs. A branch ends exactly where the same warm-up, stable, decay
run trained from scratch would end (same seed, data order and schedule), which is what makes it valid.

What a sweep spends is split over its experiments by :func:`training_flops`: a branch is charged its
cooldown and the stretch of trunk since the previous branch point, so the shares add up to the trunk
plus the cooldowns and follow the order the work is done in (branch points ascending).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from flops_fit.core.experiment import SAFE_EXPERIMENT_ID, Experiment, experiment_id
from flops_fit.core.validate import NON_NEGATIVE_INT, POSITIVE_INT, Options, check

#: Cooldown shapes of a branch: linear (Hägele et al.'s default) or 1 - sqrt (their best).
DECAY_SHAPES: tuple[str, ...] = ("linear", "1-sqrt")


@dataclass(frozen=True)
class Trunk:
    """One constant-learning-rate run of the WSD design.

    ``trunk_id`` names its checkpoints; ``size_value``/``num_params`` the model, trained at
    ``learning_rate`` (None: the runner's) with ``warmup_steps`` optimiser steps of warm-up, for
    ``num_steps`` steps (the last branch point) of ``batch_size`` x ``tokens_per_sample`` tokens.
    ``branch_steps`` are the optimiser steps its branches leave it at, ascending; ``decay_shape`` the
    branches' cooldown shape.
    """

    trunk_id: str
    size_value: int | float | None
    num_params: int
    flops_per_token: float
    learning_rate: float | None
    batch_size: int
    tokens_per_sample: int
    seed: int
    warmup_steps: int
    num_steps: int
    branch_steps: tuple[int, ...]
    decay_shape: str = "linear"

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimiser step sees."""
        return self.batch_size * self.tokens_per_sample

    @property
    def planned_flops(self) -> float:
        """FLOPs of the whole trunk: flops_per_token x its tokens."""
        return self.flops_per_token * self.num_steps * self.tokens_per_step

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["branch_steps"] = list(self.branch_steps)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trunk:
        """Rebuild from :meth:`to_dict` (a plan file), checking the fields a checkpoint name or a loop reads."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a trunk record must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing, unknown = [n for n in names if n not in d], sorted(set(d) - set(names))
        if missing or unknown:
            raise ValueError(f"trunk record: missing field(s) {missing}, unknown field(s) {unknown}")
        tid = d["trunk_id"]
        if not isinstance(tid, str) or not SAFE_EXPERIMENT_ID.fullmatch(tid):
            raise ValueError(f"trunk_id {tid!r} is not a safe file name (it names checkpoint files)")
        for name, rule in (
            ("num_params", POSITIVE_INT),
            ("batch_size", POSITIVE_INT),
            ("tokens_per_sample", POSITIVE_INT),
            ("seed", NON_NEGATIVE_INT),
            ("warmup_steps", NON_NEGATIVE_INT),
            ("num_steps", POSITIVE_INT),
            ("decay_shape", Options(DECAY_SHAPES)),
        ):
            try:
                check(f"trunk {tid}: field {name!r}", d[name], rule)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(str(exc)) from None
        steps = d["branch_steps"]
        if not isinstance(steps, list) or not steps or any(type(s) is not int or s < 1 for s in steps):
            raise ValueError(f"trunk {tid}: branch_steps must be a non-empty list of positive steps")
        if sorted(set(steps)) != steps or steps[-1] != d["num_steps"]:
            raise ValueError(f"trunk {tid}: branch_steps must ascend and end at num_steps")
        return cls(**{**{n: d[n] for n in names}, "branch_steps": tuple(steps)})


def trunk_id(
    shared: Mapping[str, Any], size_value: Any, num_params: int, lr: float | None, warmup: int
) -> str:
    """The id of the trunk of one size: the plan's shared id fields, the size, learning rate and warm-up.

    Its length is left out on purpose: a sweep extended to larger budgets keeps its trunks and branch ids.
    """
    return "t" + experiment_id(
        {**shared, "trunk": True, "size_value": size_value, "num_params": num_params,
         "learning_rate": lr, "warmup_steps": warmup}
    )[1:]  # fmt: skip


def training_flops(experiments: Iterable[Experiment], trunks: Iterable[Trunk] = ()) -> dict[str, float]:
    """The FLOPs each experiment costs to train: a run from scratch its own; a branch its cooldown plus the
    trunk's steps since the previous branch point (so the shares add up to trunks plus cooldowns)."""
    runs = list(experiments)
    by_trunk: dict[str, list[Experiment]] = {}
    out: dict[str, float] = {}
    for e in runs:
        if e.trunk_id is None:
            out[e.experiment_id] = e.planned_flops
        else:
            by_trunk.setdefault(e.trunk_id, []).append(e)
    known = {t.trunk_id for t in trunks}
    for tid, branches in by_trunk.items():
        if known and tid not in known:
            raise ValueError(
                f"branch {branches[0].experiment_id} names trunk {tid}, which the plan does not hold"
            )
        previous = 0
        for e in sorted(branches, key=lambda b: (b.branch_step, b.num_steps)):
            assert e.branch_step is not None
            steps = max(e.branch_step - previous, 0) + (e.num_steps - e.branch_step)
            out[e.experiment_id] = e.flops_per_token * steps * e.tokens_per_step
            previous = max(previous, e.branch_step)
    return out


def cooldown_steps(num_steps: int, cooldown: float) -> int:
    """Optimiser steps of a branch's cooldown: ``ceil(cooldown * num_steps)``, at least 1."""
    return max(1, math.ceil(cooldown * num_steps))
