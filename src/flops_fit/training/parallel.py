"""What the executors that run experiments outside this process share (Ray tasks, local worker processes).

The order experiments are handed out in (:func:`submission_order`), the bundle of job and callbacks each
worker receives once (:class:`Work`), the worker-side run of one experiment (:func:`run_experiment`), its
progress reports (:class:`TokenReporter`), the worker's log set-up, and the error for experiments whose
worker died (:class:`WorkersLostError`). Workers never write the ledger: they return each record to the
process that runs the sweep, which appends it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flops_fit.core.experiment import Experiment
from flops_fit.core.outcome import RunInfo
from flops_fit.training.callbacks import Callback
from flops_fit.training.jobs import Job

logger = logging.getLogger(__name__)

__all__ = [
    "TokenReporter",
    "Work",
    "WorkersLostError",
    "check_sendable",
    "run_experiment",
    "submission_order",
    "worker_logging",
]


class WorkersLostError(RuntimeError):
    """Experiments whose worker process died (more than ``max_retries`` times on Ray); every other
    experiment is recorded, their checkpoints are kept, and running the sweep again resumes them."""


@dataclasses.dataclass(frozen=True)
class Work:
    """What every experiment of a sweep shares, sent to each worker once: the job and the callbacks."""

    job: Job
    callbacks: tuple[Callback, ...] = ()


def submission_order(experiments: Iterable[Experiment]) -> list[Experiment]:
    """Largest planned FLOPs first (the longest runs start first: a shorter makespan); ties by id. The
    branches of one trunk (WSD design) go in the order they leave it (branch points ascending), after
    their trunk's longest run would have gone, since each waits for the one before."""
    runs = list(experiments)
    chains: dict[str, list[Experiment]] = {}
    for e in runs:
        if e.trunk_id is not None:
            chains.setdefault(e.trunk_id, []).append(e)
    lead = {tid: max(c, key=lambda e: e.planned_flops).planned_flops for tid, c in chains.items()}
    return sorted(
        runs,
        key=lambda e: (
            (-lead[e.trunk_id], e.trunk_id, e.branch_step, e.experiment_id)
            if e.trunk_id is not None
            else (-e.planned_flops, "", 0, e.experiment_id)
        ),
    )


def check_sendable(work: Work, dumps: Callable[[Any], Any], where: str) -> None:
    """Raise a TypeError naming the part of ``work`` (a field of a dataclass job, or the callbacks) that
    ``dumps`` cannot serialise for ``where`` (e.g. "Ray workers"); return when each part alone can."""
    job = work.job
    fields = dataclasses.fields(job) if dataclasses.is_dataclass(job) and not isinstance(job, type) else ()
    for name, value in [*((f.name, getattr(job, f.name)) for f in fields), ("callbacks", work.callbacks)]:
        try:
            dumps(value)
        except Exception as inner:
            raise TypeError(
                f"{name} cannot be sent to {where} ({type(inner).__name__}: {inner}); make it picklable: "
                "define classes and functions at module level, and open files or connections lazily (in "
                "__getitem__ / forward), not in __init__"
            ) from inner


def worker_logging(level: int, prefix: str = "") -> None:
    """Send the library's log lines to the worker's stderr (each line led by ``prefix``)."""
    lib = logging.getLogger("flops_fit")
    lib.setLevel(level)
    if not any(getattr(h, "_flops_fit_worker", False) for h in lib.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(name)s: %(message)s"))
        handler._flops_fit_worker = True  # type: ignore[attr-defined]
        lib.addHandler(handler)
        lib.propagate = False


class TokenReporter(Callback):
    """Worker side: calls ``report(tokens seen, tokens seen before this attempt)`` when training starts and
    then at most every ``every_s`` seconds; a failing report never fails the run."""

    def __init__(self, report: Callable[[int, int], Any], every_s: float) -> None:
        self.report, self.every_s = report, every_s
        self.tokens0 = 0
        self._last = -math.inf

    def send(self, tokens: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        try:  # fire and forget: progress display must never fail a run
            self.report(tokens, self.tokens0)
        except Exception:
            logger.debug("progress report failed", exc_info=True)

    def on_train_start(self, info: RunInfo) -> None:
        self.tokens0 = info.start_step * info.tokens_per_step
        self.send(self.tokens0, force=True)

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        self.send(tokens)


def run_experiment(
    work: Work, e: Experiment, checkpoint_path: str | None, extra: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Worker side: run ``e`` with the sweep's job in this process (its own single process), the sweep's
    callbacks and ``extra`` ones told; return ``{"record", "trained_flops"}`` (never touches the ledger)."""
    for cb in work.callbacks:
        cb.on_experiment_start(e)
    path = None
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
        path.parent.mkdir(parents=True, exist_ok=True)
    record, trained = work.job.run(e, path, [*work.callbacks, *extra], None)
    return {"record": record, "trained_flops": trained}
