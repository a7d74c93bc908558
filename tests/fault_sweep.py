"""A fork server for ``tests/test_faults.py``: import torch once, then run sweep sessions in forked children.

Starting a fresh interpreter costs seconds (importing torch); forking one that has already imported it
costs milliseconds, so a test can SIGKILL a real sweep many times. Each child is an ordinary process
running ``TrainingRunner.run_sweep()`` on a tiny model; a SIGKILL gives it no chance to clean up.

Usage: ``python fault_sweep.py``. Protocol, one line each way:

* the server prints ``ready`` once its imports are done;
* ``run SESSION OUTPUT_DIR TRACE_FILE [OPTION=VALUE ...]`` on stdin forks a child that runs the sweep of
  :func:`soak_plan` into ``OUTPUT_DIR`` and prints ``pid PID``, then ``exit CODE`` when the child ends
  (``CODE`` is ``-9`` after a SIGKILL; the child's log is ``session<SESSION>.log`` beside
  ``TRACE_FILE``); EOF or ``quit`` stops the server.

Options: ``experiments=N`` runs only the first N experiments of the plan; ``kill-in-save=K`` kills the
child half-way through writing its K-th checkpoint; ``kill-in-append=K`` half-way through writing its
K-th ledger line.

The children append one line per event to ``TRACE_FILE``: ``SESSION start|step|ckpt|end EXPERIMENT VALUE``
(value: the start step, the step done, the step checkpointed, the status).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)  # before any torch op: the forked children then share no thread pool
sys.path.insert(0, str(Path(__file__).parent))

import flops_fit.core.io as io_mod  # noqa: E402
import flops_fit.core.ledger as ledger_mod  # noqa: E402
from flops_fit.training import Callback, TrainConfig  # noqa: E402
from test_runner import CountingLM, local_runner, make_plan  # noqa: E402

WIDTHS = (8, 16, 24, 32)
STEPS = 32
"""Steps per experiment."""
INTERVAL = 4
"""Checkpoint interval in steps."""
PACE_S = 0.0005
"""Seconds slept per sample read, so that a step lasts a few milliseconds (numerics unchanged)."""

SOAK_CFG = TrainConfig(
    lr=3e-2,
    eval_batches=2,
    log_every=1,
    eval_every=8,
    checkpoint_every_s=None,
    checkpoint_every_steps=INTERVAL,
)


def soak_plan(experiments: int = len(WIDTHS)):
    """The sweep the sessions run: (the first ``experiments`` of) four tiny language models of ``STEPS``
    steps each; an experiment's id, hence its numbers, do not depend on the others."""
    return make_plan(widths=WIDTHS[:experiments], steps=STEPS)


class PacedCountingLM(CountingLM):
    """:class:`CountingLM` that sleeps a little per sample: the same items, read more slowly."""

    def __getitem__(self, i: int):
        time.sleep(PACE_S)
        return super().__getitem__(i)


class OsProxy:
    """The ``os`` module with some functions replaced (to inject faults into one module's ``os``)."""

    def __init__(self, **overrides: Any):
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class Trace(Callback):
    """Append one line per training event to a trace file (one ``write`` per line, ``O_APPEND``)."""

    def __init__(self, path: str | os.PathLike[str], session: int):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.session = session
        self.eid = "?"

    def _write(self, event: str, value: Any) -> None:
        os.write(self.fd, f"{self.session} {event} {self.eid} {value}\n".encode())

    def on_experiment_start(self, experiment: Any) -> None:
        self.eid = experiment.experiment_id

    def on_train_start(self, info: Any) -> None:
        self._write("start", info.start_step)

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        self._write("step", step)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._write("ckpt", step)

    def on_train_end(self, outcome: Any) -> None:
        self._write("end", outcome.status)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_save(k: int) -> None:
    """Kill this process half-way through writing its ``k``-th checkpoint (a torn temporary file)."""
    real_open = open
    count = 0

    class Torn:
        def __init__(self, fh: Any):
            self.fh = fh

        def write(self, data: Any) -> int:
            view = memoryview(data).cast("B")
            self.fh.write(view[: len(view) // 2])
            self.fh.flush()
            _kill_self()
            return 0  # not reached

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.fh.close()

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp") and ".pt." in str(file):
            count += 1
            if count == k:
                return Torn(fh)
        return fh

    io_mod.open = faulty_open  # the module global shadows the builtin inside flops_fit.core.io


def _kill_in_append(k: int) -> None:
    """Kill this process half-way through writing its ``k``-th ledger line (a torn last line)."""
    count = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal count
        count += 1
        if count == k:
            os.write(fd, data[: len(data) // 2])
            _kill_self()
        return os.write(fd, data)

    ledger_mod.os = OsProxy(write=write)


def run_session(out: Path, trace: Path, session: int, options: dict[str, int]) -> None:
    """One sweep session (in the forked child)."""
    if "kill-in-save" in options:
        _kill_in_save(options["kill-in-save"])
    if "kill-in-append" in options:
        _kill_in_append(options["kill-in-append"])
    local_runner(
        out,
        soak_plan(options.get("experiments", len(WIDTHS))),
        dataset=PacedCountingLM(),
        train_config=SOAK_CFG,
        callbacks=[Trace(trace, session)],
    ).run_sweep()


def warm_up() -> None:
    """Import what the first training step imports lazily (``torch._dynamo``, via the optimiser: seconds),
    so that the children start training at once."""
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def main() -> None:
    warm_up()
    print("ready", flush=True)
    while True:
        line = sys.stdin.readline().split()
        if not line or line[0] == "quit":
            return
        session, out, trace = int(line[1]), Path(line[2]), Path(line[3])
        options = {key: int(value) for key, _, value in (option.partition("=") for option in line[4:])}
        pid = os.fork()
        if pid == 0:  # the child: one sweep session, its output in a log file of its own
            code = 1
            try:
                log = os.open(trace.with_name(f"session{session}.log"), os.O_WRONLY | os.O_CREAT, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
                run_session(out, trace, session, options)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
