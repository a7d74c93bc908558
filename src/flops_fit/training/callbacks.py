"""Hooks into a training run, and the progress display built on them.

A callback subclasses :class:`Callback` and overrides the events it needs. Callbacks run on the main
process only, synchronously; an exception raised in one fails the run like any other user code. Losses
reach callbacks every ``TrainConfig.log_every`` steps (the loop reads them from the device only then).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from flops_fit.core.outcome import RunInfo, TrainOutcome

logger = logging.getLogger(__name__)


class Callback:
    """Base class of training hooks; every method is a no-op.

    Events, in order: ``on_train_start`` once; ``on_log`` every ``log_every`` steps and after the last;
    ``on_eval`` after each validation pass; ``on_checkpoint`` after each checkpoint is written; then
    either ``on_train_end`` with the outcome (completed, failed or diverged runs) or, on Ctrl-C,
    ``on_interrupt``.
    """

    def on_experiment_start(self, experiment: Any) -> None:
        """Called by the sweep runner before each experiment (a :class:`flops_fit.core.experiment.Experiment`)."""

    def on_train_start(self, info: RunInfo) -> None:
        """Called before the first step (``info.start_step > 0`` when resuming)."""

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        """``step`` steps done, ``tokens`` seen; ``train_loss`` is the mean over the steps since the last call
        and ``lr`` the learning rate of the first parameter group at the last of those steps."""

    def on_eval(self, step: int, tokens: int, val_loss: float) -> None:
        """A validation pass after ``step`` steps and ``tokens`` tokens gave ``val_loss``."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint of the state after ``step`` steps was written to ``path``."""

    def on_train_end(self, outcome: TrainOutcome) -> None:
        """The run ended with ``outcome``."""

    def on_interrupt(self, step: int) -> None:
        """Ctrl-C stopped the run after ``step`` steps (``KeyboardInterrupt`` is re-raised next)."""


def format_count(value: float) -> str:
    """``1234567`` -> ``"1.23M"``: a count with an SI suffix and three significant digits."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class ProgressCallback(Callback):
    """Experiment-level progress: a rich bar on a terminal, plain log lines otherwise.

    Args:
        progress: an existing ``rich.progress.Progress`` to add this run's bar to (e.g. the sweep's); if
            ``None``, one is created when stderr is a terminal and rich is installed.
        description: the bar's label (e.g. the experiment id).
        log_interval_s: without a terminal, at most one ``logging`` line per this many seconds (evaluations
            and the end of the run are always logged).
    """

    def __init__(self, progress: Any = None, *, description: str = "train", log_interval_s: float = 30.0):
        self.progress = progress
        self.description = description
        self.log_interval_s = log_interval_s
        self._owned = False
        self._task: Any = None
        self._info: RunInfo | None = None
        self._t0 = 0.0
        self._tokens0 = 0
        self._last_log = -float("inf")

    def _make_progress(self) -> Any:
        if not sys.stderr.isatty():
            return None
        try:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return None
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[tokens]} tok"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )

    def on_train_start(self, info: RunInfo) -> None:
        self._info = info
        self._t0 = time.perf_counter()
        self._tokens0 = info.start_step * info.tokens_per_step
        if self.progress is None:
            self.progress = self._make_progress()
            self._owned = self.progress is not None
            if self._owned:
                self.progress.start()
        if self.progress is not None:
            self._task = self.progress.add_task(
                self.description,
                total=info.total_steps,
                completed=info.start_step,
                tokens=format_count(self._tokens0),
                loss="-",
                rate="-",
            )
        resumed = f", resuming at step {info.start_step}" if info.start_step else ""
        logger.info(
            "%s: %d steps x %s tokens = %s tokens on %s (%s%s, %d process%s, N=%s)%s",
            self.description,
            info.total_steps,
            format_count(info.tokens_per_step),
            format_count(info.planned_tokens),
            info.device,
            info.precision,
            ", compiled" if info.compiled else "",
            info.world_size,
            "" if info.world_size == 1 else "es",
            format_count(info.num_params),
            resumed,
        )

    def _rate(self, tokens: int) -> float:
        elapsed = time.perf_counter() - self._t0
        return (tokens - self._tokens0) / elapsed if elapsed > 0 else float("nan")

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        rate = self._rate(tokens)
        if self._task is not None:
            self.progress.update(
                self._task,
                completed=step,
                tokens=format_count(tokens),
                loss=f"{train_loss:.4g}",
                rate=format_count(rate),
            )
            return
        now = time.perf_counter()
        total = self._info.total_steps if self._info else step
        if now - self._last_log >= self.log_interval_s or step >= total:
            self._last_log = now
            logger.info(
                "%s: step %d/%d (%.0f%%), %s tokens, train loss %.4g, lr %.3g, %s tok/s",
                self.description,
                step,
                total,
                100.0 * step / max(total, 1),
                format_count(tokens),
                train_loss,
                lr,
                format_count(rate),
            )

    def on_eval(self, step: int, tokens: int, val_loss: float) -> None:
        if self._task is None:
            logger.info(
                "%s: step %d, %s tokens, validation loss %.4g",
                self.description,
                step,
                format_count(tokens),
                val_loss,
            )

    def _close(self) -> None:
        if self._task is not None:
            if self._owned:
                self.progress.stop()
                self.progress = None
            else:
                self.progress.remove_task(self._task)
            self._task = None

    def on_interrupt(self, step: int) -> None:
        self._close()

    def on_train_end(self, outcome: TrainOutcome) -> None:
        self._close()
        if outcome.status == "completed":
            logger.info(
                "%s: completed, validation loss %.4g after %s tokens in %.1f s (%s tok/s)",
                self.description,
                outcome.final_loss,
                format_count(outcome.tokens_seen),
                outcome.wall_time_s,
                format_count(outcome.tokens_per_s),
            )
        else:
            logger.warning("%s: %s: %s", self.description, outcome.status, outcome.error)
