"""Training the trunks of a WSD sweep (:class:`~flops_fit.plan.wsd.WSDDesign`) for their branches.

A branch (an experiment with ``trunk_id`` and ``branch_step``) starts from its trunk's checkpoint at its
branch point ``checkpoints/<trunk>.b<step>.pt``. :class:`TrunkTrainer` makes that file when it is missing:
it trains the trunk from its latest branch point below (or from scratch) up to the step needed, at a
constant learning rate after the trunk's warm-up, writing the new branch point atomically. The trunk
therefore advances in segments, in the order its branches run (plan order: token counts ascending), and a
crash anywhere resumes from the trunk's own checkpoint or the last branch point: no finished work is lost.

A branch whose trunk fails is recorded as failed with the trunk's reason; later branches of that trunk in
the same sweep fail at once with the same reason instead of training it again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from flops_fit.core.experiment import Experiment
from flops_fit.core.outcome import TrainOutcome
from flops_fit.core.sweepdir import branch_point_file, checkpoint_file
from flops_fit.core.train_config import TrainConfig
from flops_fit.core.trunk import Trunk
from flops_fit.training.loop import train

logger = logging.getLogger(__name__)


def branch_config(base: TrainConfig, e: Experiment, trunk: Trunk) -> TrainConfig:
    """The TrainConfig of branch ``e``: warm-up, stable, and a cooldown over its steps after the branch point."""
    assert e.branch_step is not None
    return dataclasses.replace(
        base,
        schedule="wsd",
        warmup_steps=trunk.warmup_steps,
        decay_steps=e.num_steps - e.branch_step,
        decay_shape=trunk.decay_shape,
    )


def trunk_config(branch: TrainConfig) -> TrainConfig:
    """The TrainConfig of a branch's trunk: the same run at a constant learning rate after the warm-up."""
    return dataclasses.replace(branch, schedule="constant", decay_steps=None)


@dataclass
class TrunkTrainer:
    """Makes the branch points of a plan's trunks (one per LocalJob; see the module docstring).

    ``trunks``: the plan's trunks by id. ``train_kwargs``: the keywords of :func:`~flops_fit.training.train`
    every segment shares (dataset, loss, validation data, device). ``failed``: trunk id -> reason.
    """

    trunks: Mapping[str, Trunk]
    train_kwargs: Mapping[str, object]
    failed: dict[str, str] = field(default_factory=dict)

    def start(
        self,
        e: Experiment,
        config: TrainConfig,
        checkpoint_dir: Path,
        build: Callable[[], nn.Module],
    ) -> tuple[Path | None, float, str | None]:
        """Where branch ``e`` starts: (its branch point, FLOPs trained now for it, None), or (None, FLOPs,
        reason) when its trunk failed."""
        assert e.trunk_id is not None and e.branch_step is not None
        point = branch_point_file(checkpoint_dir, e.trunk_id, e.branch_step)
        if point.exists():
            return point, 0.0, None
        if e.trunk_id in self.failed:
            return None, 0.0, self.failed[e.trunk_id]
        trunk = self.trunks[e.trunk_id]
        outcome, start = self._segment(trunk, e.branch_step, trunk_config(config), checkpoint_dir, build)
        spent = trunk.flops_per_token * max(outcome.tokens_seen - start * trunk.tokens_per_step, 0)
        if outcome.status != "completed" or not point.exists():
            reason = (
                f"its trunk {trunk.trunk_id} (N={trunk.num_params:.3g}) {outcome.status} on the way to step "
                f"{e.branch_step}: {outcome.error or 'no branch point was written'}"
            )
            self.failed[trunk.trunk_id] = reason
            return None, spent, reason
        return point, spent, None

    def _segment(
        self,
        trunk: Trunk,
        step: int,
        config: TrainConfig,
        checkpoint_dir: Path,
        build: Callable[[], nn.Module],
    ) -> tuple[TrainOutcome, int]:
        """Train ``trunk`` from its latest branch point below ``step`` (or from scratch) up to ``step``."""
        below = [
            s
            for s in trunk.branch_steps
            if s < step and branch_point_file(checkpoint_dir, trunk.trunk_id, s).exists()
        ]
        start = max(below, default=0)
        logger.info(
            "trunk %s (N=%.3g): training steps %d..%d at a constant learning rate for its branch at step %d",
            trunk.trunk_id,
            trunk.num_params,
            start,
            step,
            step,
        )
        outcome = train(
            build(),
            num_tokens=step * trunk.tokens_per_step,
            config=config,
            checkpoint_path=checkpoint_file(checkpoint_dir, trunk.trunk_id),
            init_checkpoint=branch_point_file(checkpoint_dir, trunk.trunk_id, start) if start else None,
            branch_points={step: branch_point_file(checkpoint_dir, trunk.trunk_id, step)},
            flops_per_token=trunk.flops_per_token,
            progress=False,
            **self.train_kwargs,  # type: ignore[arg-type]
        )
        return outcome, start
