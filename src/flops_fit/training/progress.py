"""The progress of a sweep: experiments and FLOPs done, throughput, ETA, one bar per experiment in flight.

:class:`SweepProgress` is fed by the runner (an experiment starts, reports the tokens it has seen, finishes
or is forgotten) whatever executes the experiments: this process (the local executor) or Ray workers (their
progress arrives through the driver). It shows rich bars on a terminal and writes ``logging`` lines either
way.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from flops_fit.core.experiment import Experiment
from flops_fit.core.outcome import RunInfo
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.callbacks import Callback, ProgressCallback, format_count

logger = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_S", "ExperimentFlops", "SweepProgress", "format_duration"]

#: Seconds between the summary lines logged while experiments run elsewhere and no live display shows them.
HEARTBEAT_S = 60.0


def format_duration(seconds: float) -> str:
    """``seconds`` as a short human duration (s, min, h or days); ``?`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class ExperimentFlops(Callback):
    """Feeds an experiment's token count into the sweep display."""

    def __init__(self, display: SweepProgress, experiment: Experiment):
        self.display = display
        self.experiment = experiment
        self.tokens0 = 0

    def on_train_start(self, info: RunInfo) -> None:
        self.tokens0 = info.start_step * info.tokens_per_step
        self.display.in_flight(self.experiment, 0, 0)

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        self.display.in_flight(self.experiment, tokens, tokens - self.tokens0)


class SweepProgress:
    """Sweep-level progress: experiments and FLOPs done, throughput measured in this session, ETA.

    Several experiments may be in flight at once (the Ray executor); each reports the tokens it has seen,
    and the ETA is the planned FLOPs left divided by the FLOPs per second trained in this session (finished
    experiments and the ones in flight together, so it reflects the whole cluster). A rich display (sweep
    bar above one bar per experiment in flight) when ``bars`` and stderr is a terminal; otherwise one
    ``logging`` line when each experiment starts and ends, and a heartbeat line while several run.
    """

    def __init__(self, plan: SweepPlan, done_ids: set[str], bars: bool, verbose: bool = True):
        self.total = len(plan)
        self.cost = plan.training_flops  # what each experiment costs to train (a WSD branch: its share)
        self.total_flops = math.fsum(self.cost.values())
        self.done = sum(e.experiment_id in done_ids for e in plan)
        self.done_flops = math.fsum(self.cost[e.experiment_id] for e in plan if e.experiment_id in done_ids)
        self.bars = bars
        self.verbose = verbose
        self.live: Any = None
        self.sweep_bar: Any = None
        self.exp_bar: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._session_flops = 0.0  # FLOPs trained by this session in finished experiments
        # experiment id -> (planned FLOPs of it done so far, FLOPs of it trained in this session)
        self._flight: dict[str, tuple[float, float]] = {}
        self._remote_bars: dict[str, Any] = {}  # experiment id -> rich task of an experiment on a worker
        self._remote_t0: dict[str, tuple[float, int]] = {}  # experiment id -> (time, tokens) first reported
        self._beat = time.monotonic()

    # -- display ---------------------------------------------------------------------------------------

    def __enter__(self) -> SweepProgress:
        self._t0 = time.perf_counter()
        if not (self.bars and sys.stderr.isatty()):
            return self
        try:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return self
        self.sweep_bar = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[experiments]} experiments"),
            TextColumn("{task.fields[flops]} FLOPs"),
            TextColumn("{task.fields[rate]} FLOP/s"),
            TextColumn("ETA {task.fields[eta]}"),
        )
        self.exp_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[tokens]} tok"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self.sweep_bar.add_task("sweep", total=max(self.total_flops, 1.0), **self._fields())
        self.sweep_bar.update(self._task, completed=self.done_flops)
        self.live = Live(
            Group(self.sweep_bar, self.exp_bar), console=Console(stderr=True), refresh_per_second=4
        )
        self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- numbers ---------------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Experiments in flight."""
        return len(self._flight)

    def _flight_done(self) -> float:
        return math.fsum(done for done, _ in self._flight.values())

    def rate(self) -> float:
        """FLOPs per second trained in this session, all experiments in flight included (NaN before any)."""
        elapsed = time.perf_counter() - self._t0
        flops = self._session_flops + math.fsum(new for _, new in self._flight.values())
        return flops / elapsed if elapsed > 0 and flops > 0 else math.nan

    def eta(self) -> float:
        """Seconds until every planned FLOP is trained at the session's rate (NaN before any)."""
        remaining = max(self.total_flops - self.done_flops - self._flight_done(), 0.0)
        rate = self.rate()
        return remaining / rate if math.isfinite(rate) else math.nan

    def _fields(self) -> dict[str, str]:
        done = self.done_flops + self._flight_done()
        rate = self.rate()
        return {
            "experiments": f"{self.done}/{self.total}",
            "flops": f"{done:.3g}/{self.total_flops:.3g}",
            "rate": f"{rate:.3g}" if math.isfinite(rate) else "-",
            "eta": format_duration(self.eta()),
        }

    def _refresh(self) -> None:
        if self._task is not None:
            self.sweep_bar.update(
                self._task, completed=self.done_flops + self._flight_done(), **self._fields()
            )

    def summary(self) -> str:
        """One line: experiments and FLOPs done, experiments running, rate and ETA."""
        rate = self.rate()
        done = self.done_flops + self._flight_done()
        return (
            f"sweep: {self.done}/{self.total} experiments done, {self.running} running, {done:.3g} of "
            f"{self.total_flops:.3g} FLOPs ({100.0 * done / self.total_flops if self.total_flops > 0 else 100.0:.1f}%), "
            f"{f'{rate:.3g}' if math.isfinite(rate) else '-'} FLOP/s, ETA {format_duration(self.eta())}"
        )

    def heartbeat(self) -> None:
        """Log :meth:`summary` every :data:`HEARTBEAT_S` seconds, unless a live display shows it."""
        if self.live is None and self.verbose and time.monotonic() - self._beat >= HEARTBEAT_S:
            self._beat = time.monotonic()
            logger.info("%s", self.summary())

    # -- events ----------------------------------------------------------------------------------------

    def start(self, index: int, todo: int, e: Experiment) -> list[Callback]:
        """Log the experiment and return the callbacks that report its progress (local executor)."""
        self._flight[e.experiment_id] = (0.0, 0.0)
        if not self.verbose:
            return []
        logger.info(
            "[%d/%d] experiment %s: C=%.3g FLOPs, N=%s params, D=%s tokens (%d steps)%s",
            index,
            todo,
            e.experiment_id,
            e.compute_budget,
            format_count(e.num_params),
            format_count(e.num_tokens),
            e.num_steps,
            "" if e.size_value is None else f", size {e.size_value:g}",
        )
        if not self.bars:
            return []
        return [ProgressCallback(self.exp_bar, description=e.experiment_id), ExperimentFlops(self, e)]

    def started_remote(self, e: Experiment, where: str, restarted: bool) -> None:
        """An experiment began on a worker (again, after a retry, when ``restarted``)."""
        self._flight.setdefault(e.experiment_id, (0.0, 0.0))
        if self.verbose:
            logger.info(
                "experiment %s %s on %s: C=%.3g FLOPs, N=%s params, D=%s tokens (%d steps)",
                e.experiment_id,
                "restarted (its previous worker died)" if restarted else "started",
                where,
                e.compute_budget,
                format_count(e.num_params),
                format_count(e.num_tokens),
                e.num_steps,
            )

    def in_flight(self, e: Experiment, tokens: int, new_tokens: int) -> None:
        """Experiment ``e`` has seen ``tokens`` tokens, ``new_tokens`` of them in this session."""
        previous = self._flight.get(e.experiment_id, (0.0, 0.0))[1]
        new = max(e.flops_per_token * max(new_tokens, 0), previous)  # a retried run does not undo work
        cost = self.cost.get(e.experiment_id, e.planned_flops)
        own = tokens - (e.branch_step or 0) * e.tokens_per_step  # a branch counts its cooldown here
        self._flight[e.experiment_id] = (min(e.flops_per_token * max(own, 0), cost), new)
        self._refresh()

    def remote_progress(
        self, e: Experiment, tokens: int, tokens0: int, where: str, loss: float | None = None
    ) -> None:
        """Progress reported from elsewhere (a Ray worker, a training service): ``tokens`` seen, ``tokens0``
        of them before this attempt, and the last training ``loss`` when known."""
        self.in_flight(e, tokens, tokens - tokens0)
        if self.exp_bar is None:
            return
        task = self._remote_bars.get(e.experiment_id)
        if task is None:
            task = self.exp_bar.add_task(
                f"{e.experiment_id} @ {where}", total=max(e.num_tokens, 1), tokens="0", loss="-", rate="-"
            )
            self._remote_bars[e.experiment_id] = task
            self._remote_t0[e.experiment_id] = (time.perf_counter(), tokens)
        t0, first = self._remote_t0[e.experiment_id]
        elapsed = time.perf_counter() - t0
        rate = (tokens - first) / elapsed if elapsed > 0 and tokens > first else math.nan
        self.exp_bar.update(
            task,
            completed=min(tokens, e.num_tokens),
            tokens=format_count(tokens),
            loss="-" if loss is None or not math.isfinite(loss) else f"{loss:.4g}",
            rate="-" if not math.isfinite(rate) else format_count(int(rate)),
        )

    def finish(self, e: Experiment, record: Mapping[str, Any], trained_flops: float) -> None:
        """Experiment ``e`` ended with ``record``, ``trained_flops`` FLOPs of it trained in this session."""
        self.done += 1
        self.done_flops += self.cost.get(e.experiment_id, e.planned_flops)
        flight = self._flight.pop(e.experiment_id, (0.0, 0.0))[1]
        self._session_flops += max(trained_flops, flight)
        self._remote_t0.pop(e.experiment_id, None)
        task = self._remote_bars.pop(e.experiment_id, None)
        if task is not None:
            self.exp_bar.remove_task(task)
        self._refresh()
        if not self.verbose:
            return
        loss = record.get("final_loss")
        what = (
            f"loss {loss:.4g}"
            if record["status"] == "completed" and loss is not None
            else f"{record['status']}: {record.get('error')}"
        )
        rate = self.rate()
        logger.info(
            "experiment %s %s; sweep: %d/%d experiments, %.3g of %.3g FLOPs (%.1f%%), %s FLOP/s, ETA %s",
            e.experiment_id,
            what,
            self.done,
            self.total,
            self.done_flops,
            self.total_flops,
            100.0 * self.done_flops / self.total_flops if self.total_flops > 0 else 100.0,
            f"{rate:.3g}" if math.isfinite(rate) else "-",
            format_duration(self.eta()),
        )

    def forget(self, e: Experiment) -> None:
        """Drop an experiment that left the flight without a result (cancelled, or its worker lost)."""
        self._flight.pop(e.experiment_id, None)
        self._remote_t0.pop(e.experiment_id, None)
        task = self._remote_bars.pop(e.experiment_id, None)
        if task is not None:
            self.exp_bar.remove_task(task)
        self._refresh()


#: The name the tests and earlier code use.
_SweepProgress = SweepProgress
