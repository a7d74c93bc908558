"""Run a sweep's experiments in several worker processes on this machine: ``TrainingRunner(workers=k)``.

A small model (the demo's have under 400k parameters) is bound by the overhead of each step (Python,
optimiser, kernel launches), not by its matmuls, so one training process keeps about one CPU core busy and
extra threads only spin. ``workers=k`` trains k experiments at once, each in a worker process of its own
started with ``spawn``, each with ``cores // k`` torch threads (or ``TrainConfig.threads`` when that is a
number).

What runs where:

this process (the one that called :meth:`TrainingRunner.run_sweep`)
    hands the pending experiments out largest first (:func:`~flops_fit.training.parallel.submission_order`;
    the next cooldown branch of a WSD trunk only once the branch before it finished, as each trains its
    trunk on to where the next one starts), appends each returned record to ``results.jsonl`` (the
    ledger's only writer), deletes the finished run's checkpoint, and shows progress.
the workers
    receive the job and callbacks once (pickled: what they hold must be importable by module), then run
    the experiments they are sent one at a time and return each record. Callbacks run in the workers.

Ctrl-C (SIGINT to this process) interrupts each busy worker once: it finishes its step, checkpoints and
stops, as a local run does; then this process raises KeyboardInterrupt saying how to resume. A worker that
dies (``kill -9``, out of memory) loses its experiment: nothing is recorded for it, its checkpoint is kept,
the other experiments go on in a new worker, and at the end :class:`WorkersLostError` lists the lost ones;
running the same command again resumes them. An error the job raises for bad input (TypeError,
ValueError) stops the sweep with its message, as it does in the local executor.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import multiprocessing
import numbers
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

from flops_fit.core.experiment import Experiment
from flops_fit.training.callbacks import Callback
from flops_fit.training.distributed import launched_world_size
from flops_fit.training.jobs import Job
from flops_fit.training.parallel import (
    TokenReporter,
    Work,
    WorkersLostError,
    check_sendable,
    run_experiment,
    submission_order,
    worker_logging,
)

logger = logging.getLogger(__name__)

__all__ = ["WorkersLostError", "check_workers", "run_in_workers", "worker_threads"]

#: How often (seconds) this process wakes to read the workers' progress while it waits for results.
POLL_S = 0.5
#: A worker reports the tokens its experiment has seen at most this often (seconds).
REPORT_EVERY_S = 0.5
#: After Ctrl-C or an error, how long (seconds) interrupted experiments get to checkpoint and stop.
CANCEL_GRACE_S = 30.0
#: How long (seconds) idle workers get to exit when the sweep ends, before they are terminated.
STOP_GRACE_S = 5.0


def check_workers(
    workers: Any, executor: str = "local", mode: str = "local", concurrent: bool = False
) -> int:
    """``workers`` checked: an int from 1 to this machine's cores; more than one only for the local
    executor, a job that runs here (not ``mode="api"`` or another job that keeps experiments in flight
    itself: ``concurrent``) and a plain ``python`` process (not under torchrun / accelerate launch)."""
    cores = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
        raise TypeError(f"workers must be an int number of processes, e.g. workers=2, got {workers!r}")
    workers = int(workers)
    if not 1 <= workers <= cores:
        raise ValueError(
            f"workers must be between 1 and {cores} (this machine's CPU cores), got {workers}; pass "
            f"workers=1 to run the experiments one after another in this process"
        )
    if workers == 1:
        return 1
    if executor != "local":
        raise ValueError(
            f"workers={workers} applies to executor='local' only; with executor={executor!r} the cluster runs "
            "experiments at once (resources= sets each one's share): drop workers"
        )
    if mode == "api" or concurrent:
        raise ValueError(
            f"workers={workers} runs experiments in processes here, but mode={mode!r} trains them on a service "
            "that keeps several in flight itself (max_in_flight=): drop workers"
        )
    if launched_world_size() > 1:
        raise ValueError(
            f"workers={workers} cannot run under torchrun/accelerate launch (WORLD_SIZE={launched_world_size()}): "
            "the launched processes already train each experiment together; run with plain `python` for "
            "workers, or drop workers"
        )
    return workers


def worker_threads(workers: int, threads: int | str = "auto") -> int:
    """The torch threads each of ``workers`` processes starts with: ``threads`` when it is a number
    (``TrainConfig.threads``), else an equal share of this machine's cores (at least one)."""
    if threads != "auto":
        return int(threads)
    return max(1, (os.cpu_count() or 1) // workers)


# --------------------------------------------------------------------------------------------------
# worker side


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _send(conn: mp_connection.Connection, message: Any) -> bool:
    """Send ``message`` through ``conn``; False when the process at its other end is gone."""
    try:
        conn.send(message)
    except (OSError, EOFError):
        return False
    return True


def _stop_with_parent() -> None:
    """Interrupt this worker (it checkpoints and stops, as on Ctrl-C) if the sweep's process dies."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="flops-fit-parent-watch", daemon=True).start()


def _worker_main(
    conn: mp_connection.Connection, payload: bytes, threads: int, log_level: int, name: str
) -> None:
    """A worker process: load the sweep's work once, then run each experiment it is sent, one at a time,
    until it is sent None, is interrupted, or the sweep's process dies."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # a terminal's Ctrl-C reaches the sweep's process only, which interrupts us once
    _stop_with_parent()
    worker_logging(log_level, prefix=f"[{name}] ")
    import torch

    torch.set_num_threads(threads)
    try:
        work = pickle.loads(payload)
    except Exception as exc:
        _send(conn, ("fatal", "", _portable(exc)))
        return
    if not _send(conn, ("ready", "", os.getpid())):
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None or not _run_task(conn, work, *task):
            return


def _run_task(conn: mp_connection.Connection, work: Work, e: Experiment, path: str | None) -> bool:
    """Run ``e`` and send how it ended; False when this worker should stop (interrupted, or an error)."""
    eid = e.experiment_id

    def report(tokens: int, tokens0: int) -> None:
        conn.send(("progress", eid, (tokens, tokens0)))

    try:
        out = run_experiment(work, e, path, [TokenReporter(report, REPORT_EVERY_S)])
    except KeyboardInterrupt as exc:
        _send(conn, ("interrupted", eid, str(exc)))
        return False
    except BaseException as exc:
        _send(conn, ("error", eid, (_portable(exc), traceback.format_exc())))
        return False
    return _send(conn, ("done", eid, out))


# --------------------------------------------------------------------------------------------------
# the sweep's side


@dataclasses.dataclass(eq=False)
class _Worker:
    """A worker process, the pipe to it, and the experiment it runs (None: idle)."""

    name: str
    process: Any
    conn: mp_connection.Connection
    ready: bool = False
    task: Experiment | None = None
    last_trunk: str | None = None  # the trunk of the last branch it ran (it goes on with the next one)

    @property
    def where(self) -> str:
        return f"{self.name} (pid {self.process.pid})"


class _Schedule:
    """The experiments not started yet: those free to start, in submission order, and the later branches
    of each trunk, freed one at a time as the branch before them finishes."""

    def __init__(self, order: Sequence[Experiment]) -> None:
        self.rank = {e.experiment_id: i for i, e in enumerate(order)}
        self.free: list[Experiment] = []
        self.chains: dict[str, deque[Experiment]] = {}
        for e in order:
            if e.trunk_id is not None and e.trunk_id in self.chains:
                self.chains[e.trunk_id].append(e)
                continue
            if e.trunk_id is not None:
                self.chains[e.trunk_id] = deque()
            self.free.append(e)

    def take(self, trunk: str | None) -> Experiment | None:
        """The next experiment to start: a free branch of ``trunk`` (the worker's last) first, else the
        first free one; None when none is free."""
        pick = next((e for e in self.free if trunk is not None and e.trunk_id == trunk), None)
        pick = pick or (self.free[0] if self.free else None)
        if pick is not None:
            self.free.remove(pick)
        return pick

    def finished(self, e: Experiment) -> None:
        """``e`` ended and is recorded: free the next branch of its trunk."""
        chain = self.chains.get(e.trunk_id) if e.trunk_id is not None else None
        if chain:
            bisect.insort(self.free, chain.popleft(), key=lambda x: self.rank[x.experiment_id])

    def drop_chain(self, e: Experiment) -> list[Experiment]:
        """``e`` was lost: the later branches of its trunk, which wait for it, do not run now."""
        return list(self.chains.pop(e.trunk_id, ())) if e.trunk_id is not None else []


class _Driver:
    """This process's loop: start workers, hand out experiments, record results, note lost workers."""

    def __init__(
        self,
        spawn: Callable[[int], _Worker],
        size: int,
        schedule: _Schedule,
        checkpoint_path: Callable[[str], Path] | None,
        display: Any,
        record: Callable[[Experiment, dict[str, Any], float], None],
    ) -> None:
        self.spawn, self.size, self.schedule = spawn, size, schedule
        self.checkpoint_path, self.display, self.record = checkpoint_path, display, record
        self.workers: list[_Worker] = []
        self.started = 0
        self.stopping = False  # interrupting: what ends now is recorded or forgotten, never raised
        self.lost: list[tuple[Experiment, str]] = []

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def loop(self) -> None:
        while True:
            self.dispatch()
            if not self.busy():
                return  # nothing in flight and nothing free to start
            self.wait(POLL_S)
            self.display.heartbeat()

    def dispatch(self) -> None:
        """Start the workers needed (up to ``size``) and give each idle one the next experiment."""
        while len(self.workers) < min(self.size, len(self.busy()) + len(self.schedule.free)):
            self.workers.append(self.spawn(self.started))
            self.started += 1
        for w in self.workers:
            if w.task is None:
                e = self.schedule.take(w.last_trunk)
                if e is None:
                    return
                path = None if self.checkpoint_path is None else str(self.checkpoint_path(e.experiment_id))
                w.task, w.last_trunk = e, e.trunk_id
                _send(w.conn, (e, path))  # to a worker that just died: its exit says what it costs
                self.display.started_remote(e, w.where, restarted=False)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages or exits of the workers and handle them."""
        handles: dict[Any, _Worker] = {}
        for w in self.workers:
            handles[w.conn] = handles[w.process.sentinel] = w
        ready = mp_connection.wait(list(handles), timeout)
        for w in dict.fromkeys(handles[h] for h in ready):
            self.drain(w)
            if not w.process.is_alive():
                self.bury(w)

    def drain(self, w: _Worker) -> None:
        try:
            while w.conn.poll():
                kind, eid, payload = w.conn.recv()
                self.handle(w, kind, eid, payload)
        except (EOFError, OSError):
            pass  # the worker is gone: bury() says what that costs

    def handle(self, w: _Worker, kind: str, eid: str, payload: Any) -> None:
        """One message of worker ``w``."""
        if kind == "ready":
            w.ready = True
            return
        if kind == "fatal":
            raise _load_error(payload)
        e = w.task
        if e is None or e.experiment_id != eid:
            return
        if kind == "progress":
            self.display.remote_progress(e, *payload, w.where)
            return
        w.task = None
        if kind == "done":
            self.record(e, payload["record"], payload["trained_flops"])
            self.schedule.finished(e)
        elif kind == "interrupted":
            self.display.forget(e)
            if not self.stopping:
                self.lose(e, f"interrupted on {w.where} (SIGINT)")
        elif kind == "error":
            error, trace = payload
            self.display.forget(e)
            logger.debug("experiment %s raised on %s:\n%s", eid, w.where, trace)
            if not self.stopping:
                raise error
            logger.error("experiment %s raised on %s while stopping: %s", eid, w.where, error)

    def bury(self, w: _Worker) -> None:
        """Worker ``w`` exited: drop it; its experiment, if any, is lost (its checkpoint kept)."""
        self.workers.remove(w)
        w.conn.close()
        code = w.process.exitcode
        if not w.ready and not self.stopping:
            raise RuntimeError(
                f"worker process {w.name} exited ({_exit_reason(code)}) before it could load the sweep; "
                "its log lines above say why"
            )
        e, w.task = w.task, None
        if e is not None and self.stopping:
            self.display.forget(e)
        elif e is not None:
            self.lose(e, f"its worker process {w.where} died ({_exit_reason(code)})")

    def lose(self, e: Experiment, why: str) -> None:
        logger.error("experiment %s was lost: %s; its checkpoint is kept", e.experiment_id, why)
        self.display.forget(e)
        self.lost.append((e, why))
        for later in self.schedule.drop_chain(e):
            self.lost.append((later, f"waits for branch {e.experiment_id} of its trunk, which was lost"))

    def stop(self) -> int:
        """Interrupt the experiments in flight (each checkpoints and stops, as on Ctrl-C) and wait up to
        CANCEL_GRACE_S seconds, recording those that finish meanwhile (a second Ctrl-C stops the wait);
        return how many were in flight."""
        self.stopping = True
        busy = self.busy()
        for w in busy:
            if not w.ready:  # still loading the sweep: nothing trained yet, nothing to save
                w.process.terminate()
                continue
            with contextlib.suppress(OSError):
                os.kill(w.process.pid, signal.SIGINT)
        deadline = time.monotonic() + CANCEL_GRACE_S
        try:
            while self.busy() and (left := deadline - time.monotonic()) > 0:
                self.wait(min(POLL_S, left))
        except KeyboardInterrupt:
            logger.warning("second Ctrl-C: stopping %d experiment(s) without waiting", len(self.busy()))
        for w in self.busy():
            self.display.forget(w.task)
            w.task = None
        return len(busy)

    def close(self) -> None:
        """End every worker: idle ones exit when told; any still running after STOP_GRACE_S is terminated
        (its last checkpoint is kept)."""
        for w in self.workers:
            _send(w.conn, None)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            for end in (w.process.terminate, w.process.kill):
                if w.process.is_alive():
                    end()
                    w.process.join(2.0)
            w.conn.close()
        self.workers.clear()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _load_error(exc: BaseException) -> BaseException:
    """The error to raise here when a worker could not load the sweep's job and callbacks."""
    text = (
        f"a worker process could not load the sweep ({type(exc).__name__}: {exc}); the job's model, data, "
        "loss and the callbacks must be importable by module in a new process: define them in a module "
        "(not in a notebook cell), and guard a script's own code with `if __name__ == '__main__':`"
    )
    return ImportError(text) if isinstance(exc, (ImportError, AttributeError)) else RuntimeError(text)


def _payload(work: Work) -> bytes:
    """The job and callbacks, pickled once for every worker; a TypeError names a part that cannot be."""
    try:
        return pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        check_sendable(work, pickle.dumps, "worker processes")
        raise TypeError(f"the sweep cannot be sent to worker processes: {type(exc).__name__}: {exc}") from exc


def run_in_workers(
    job: Job,
    todo: list[Experiment],
    checkpoint_path: Callable[[str], Path],
    workers: int,
    display: Any,
    record: Callable[[Experiment, dict[str, Any], float], None],
    callbacks: Sequence[Callback] = (),
    threads: int | str = "auto",
) -> None:
    """Run ``job`` on each experiment of ``todo`` in ``workers`` processes; call ``record(experiment,
    record, trained_flops)`` here as each result arrives (the caller appends it to the ledger).
    ``threads``: ``TrainConfig.threads`` (see :func:`worker_threads`).

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the experiments in flight checkpointed and stopped.
        WorkersLostError: after every other experiment finished, for those whose worker process died.
        TypeError, ValueError: what an experiment raised for bad input (the others are interrupted first),
            or a job or callbacks that cannot be pickled.
    """
    payload = _payload(Work(job, tuple(callbacks)))
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("flops_fit").getEffectiveLevel()
    per_worker = worker_threads(workers, threads)

    def spawn(number: int) -> _Worker:
        name = f"worker-{number + 1}"
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(theirs, payload, per_worker, level, name), name=f"flops-fit {name}"
        )
        process.start()
        theirs.close()
        return _Worker(name, process, ours)

    order = submission_order(todo)
    driver = _Driver(
        spawn,
        min(workers, len(order)),
        _Schedule(order),
        checkpoint_path if job.trains else None,
        display,
        record,
    )
    logger.info(
        "running %d experiment(s) in %d worker processes (%d torch thread(s) each), largest first",
        len(order),
        driver.size,
        per_worker,
    )
    try:
        driver.loop()
    except KeyboardInterrupt:
        running = driver.stop()
        raise KeyboardInterrupt(
            f"interrupted with {running} experiment(s) running ({display.done} of {display.total} experiments "
            "done); their checkpoints are kept: run the same command again to resume"
        ) from None
    except BaseException:
        driver.stop()  # the others checkpoint and stop; what finishes meanwhile is recorded
        raise
    finally:
        driver.close()
    if driver.lost:
        ids = ", ".join(f"{e.experiment_id} ({why})" for e, why in driver.lost)
        raise WorkersLostError(
            f"{len(driver.lost)} experiment(s) lost their worker process: {ids}. Every other experiment is "
            "recorded; their checkpoints are kept: run the same command again to resume them"
        )
