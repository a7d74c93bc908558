"""The WSD sweep design: one constant-learning-rate trunk per model size, a cooldown branch per point.

Hägele et al. (2024) found that a constant learning rate followed by a short cooldown (10-20% of the steps,
linear or 1 - sqrt) ends where a cosine run of the same length ends, or lower. So the points of an IsoFLOP
grid that share a model size can share one trunk: each branch leaves it at ``(1 - cooldown)`` of its own
steps and cools down to its own token count. :class:`WSDDesign` chooses the same kind of IsoFLOP slices as
:class:`~flops_fit.plan.design.IsoFLOPDesign`, but on one geometric size grid shared by every budget, so
that a size serves several budgets and its trunk is paid once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flops_fit.core.experiment import Experiment
from flops_fit.core.schedule import warmup_steps
from flops_fit.core.train_config import TrainConfig
from flops_fit.core.trunk import DECAY_SHAPES, Trunk, cooldown_steps, trunk_id
from flops_fit.core.validate import NON_NEGATIVE_INT, Options, Real, check
from flops_fit.plan.design import DesignContext, DesignedSweep, ExperimentFactory, IsoFLOPDesign
from flops_fit.plan.search import Size

#: Default cooldown: the last 20% of a branch's steps (Hägele et al. found 10-20% matches cosine).
DEFAULT_COOLDOWN = 0.2
_COOLDOWN = Real(
    0, 0.5, lo_open=True, range_label="a fraction of a branch's steps in (0, 0.5]; 0.1-0.2 is usual"
)
#: train_config fields the design sets for every trunk and branch, with the value meaning "left to it".
_DESIGN_SETS: dict[str, Any] = {"warmup_steps": None, "decay_steps": None}


@dataclass(frozen=True)
class WSDDesign(IsoFLOPDesign):
    """IsoFLOP slices trained as cooldown branches of shared trunks.

    At each budget, ``num_model_sizes`` sizes of a geometric grid common to all budgets (spacing
    ``(hi / lo) ** (1 / (num_model_sizes - 1))`` for ``size_span=(lo, hi)``) around the expected optimum;
    a size's runs share one constant-learning-rate trunk, and each run is a branch whose last
    ``cooldown`` fraction of steps decays the learning rate (``decay_shape`` "linear" or "1-sqrt") to
    ``min_lr_ratio`` of its peak. Warm-up: the train_config's ``warmup_frac`` of the trunk's shortest run.

    ``validate=K`` also trains K runs from scratch with the train_config's own schedule (e.g. cosine) at the
    (N, D) of a branch: at each of the K largest budgets, the branch nearest the expected optimum. They are
    not fitted; the result reports each one's loss against its branch's and how far Approach 2's minimum of
    that budget moves when it replaces the branch.
    """

    cooldown: float = DEFAULT_COOLDOWN
    decay_shape: str = "linear"
    validate: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "cooldown", check("cooldown", self.cooldown, _COOLDOWN))
        check("decay_shape", self.decay_shape, Options(DECAY_SHAPES))
        check("validate", self.validate, NON_NEGATIVE_INT)

    def targets(self, centre: float) -> np.ndarray:
        """Target sizes (parameters): ``num_model_sizes`` consecutive points of the shared grid, starting
        at the grid point nearest ``centre * lo``."""
        lo, hi = self.size_span  # type: ignore[misc]
        ratio = math.log(hi / lo) / (self.num_model_sizes - 1)
        first = round(math.log(centre * lo) / ratio)
        return np.exp(ratio * (first + np.arange(self.num_model_sizes)))

    def config(self) -> dict[str, Any]:
        """The design as plain JSON (``SweepPlanner`` records it; :func:`design_from_config` reads it)."""
        out = {"kind": "wsd", "cooldown": self.cooldown, "decay_shape": self.decay_shape}
        return {**out, "validate": self.validate} if self.validate else out

    def experiments(self, context: DesignContext) -> DesignedSweep:
        """The IsoFLOP runs on the shared grid, turned into branches of one trunk per size."""
        _check_train_config(context.train_config, self.decay_shape)
        grid = super().experiments(context)
        warmup_frac = float(context.train_config.get("warmup_frac", TrainConfig.warmup_frac))
        by_size: dict[tuple[Any, int], list[Experiment]] = {}
        for e in grid.experiments:
            by_size.setdefault((e.size_value, e.num_params), []).append(e)
        trunks, branches = [], {}
        for runs in by_size.values():
            trunk, made = self._trunk(runs, context.experiment, warmup_frac)
            trunks.append(trunk)
            branches.update(made)
        out = tuple(branches[e.experiment_id] for e in grid.experiments)
        checks = self._validation_runs(grid, branches)
        return DesignedSweep(out + checks, grid.expected_optimum, tuple(trunks))

    def _validation_runs(
        self, grid: DesignedSweep, branches: Mapping[str, Experiment]
    ) -> tuple[Experiment, ...]:
        """The IsoFLOP run (from scratch) of the branch nearest N* at each of the ``validate`` largest budgets."""
        centres = sorted(grid.expected_optimum, reverse=True)
        if self.validate > len(centres):
            raise ValueError(
                f"validate={self.validate} asks for more validation runs than the {len(centres)} budgets "
                "(one per budget, from the largest down)"
            )
        out = []
        for budget, centre in centres[: self.validate]:
            runs = [e for e in grid.experiments if e.compute_budget == budget]
            run = min(runs, key=lambda e: abs(math.log(e.num_params / centre)))
            out.append(dataclasses.replace(run, validates=branches[run.experiment_id].experiment_id))
        return tuple(out)

    def _trunk(
        self, runs: list[Experiment], make: ExperimentFactory, warmup_frac: float
    ) -> tuple[Trunk, dict[str, Experiment]]:
        """The trunk of one size's runs and each run as its branch (keyed by the run's IsoFLOP id)."""
        first = runs[0]
        warm = warmup_steps(min(e.num_steps for e in runs), warmup_frac)
        tid = trunk_id(make.id_fields, first.size_value, first.num_params, first.learning_rate, warm)
        made: dict[str, Experiment] = {}
        for e in runs:
            start = e.num_steps - cooldown_steps(e.num_steps, self.cooldown)
            if start <= warm:
                raise ValueError(
                    f"at C={e.compute_budget:.3g}, N={e.num_params:.3g} the run has {e.num_steps} optimiser steps: "
                    f"too few for {warm} warm-up steps, a stable phase and a cooldown of {self.cooldown:g}. "
                    "Raise the smallest budget (min_flops) or lower batch_size"
                )
            extra = {"design": "wsd", "trunk_id": tid, "branch_step": start, "decay_shape": self.decay_shape}
            size = Size(e.size_value, e.num_params, e.flops_per_token)
            branch = make(e.compute_budget, size, e.num_steps, extra_id_fields=extra)
            made[e.experiment_id] = dataclasses.replace(branch, trunk_id=tid, branch_step=start)
        steps = sorted({b.branch_step for b in made.values() if b.branch_step is not None})
        trunk = Trunk(
            trunk_id=tid,
            size_value=first.size_value,
            num_params=first.num_params,
            flops_per_token=first.flops_per_token,
            learning_rate=first.learning_rate,
            batch_size=first.batch_size,
            tokens_per_sample=first.tokens_per_sample,
            seed=first.seed,
            warmup_steps=warm,
            num_steps=steps[-1],
            branch_steps=tuple(steps),
            decay_shape=self.decay_shape,
        )
        return trunk, made


def _check_train_config(train_config: Mapping[str, Any], decay_shape: str) -> None:
    """The WSD design sets every run's schedule (its ``schedule``/``decay_frac`` are not used); a train_config
    asking for its own warm-up or cooldown length, or another cooldown shape, is an error."""
    clash = sorted(k for k, free in _DESIGN_SETS.items() if train_config.get(k, free) != free)
    if train_config.get("decay_shape", decay_shape) != decay_shape:
        clash.append("decay_shape")
    if clash:
        raise ValueError(
            f"train_config sets {clash}, which the WSD design sets for every trunk and branch (warm-up from "
            "warmup_frac, a cooldown over the design's `cooldown` fraction in its `decay_shape`); leave them out "
            "and pass WSDDesign(cooldown=..., decay_shape=...) instead"
        )


def design_from_config(value: Any, num_model_sizes: Any, size_span: Any) -> IsoFLOPDesign:
    """A design named in a configuration: None or ``"isoflop"`` (the IsoFLOP grid), ``"wsd"``, or a mapping
    ``{"kind": "wsd", "cooldown": ..., "decay_shape": ..., "validate": ...}``; sizes and span from the planner's keys."""
    if value is None or value == "isoflop":
        return IsoFLOPDesign(num_model_sizes, size_span)
    if value == "wsd":
        value = {"kind": "wsd"}
    if isinstance(value, Mapping) and value.get("kind") == "wsd":
        unknown = sorted(set(value) - {"kind", "cooldown", "decay_shape", "validate"})
        if unknown:
            raise ValueError(
                f"design has unknown key(s) {unknown}; the WSD design takes cooldown, decay_shape and validate"
            )
        options = {k: v for k, v in value.items() if k != "kind"}
        return WSDDesign(num_model_sizes, size_span, **options)
    raise ValueError(f"design must be 'isoflop', 'wsd' or a mapping with kind 'wsd', got {value!r}")
