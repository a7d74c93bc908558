"""Fault injection: SIGKILLs at random moments of a real sweep, torn ledger lines, damaged checkpoints, a
read-only or full output folder, a dataset that raises mid-epoch, a loss that turns non-finite mid-run.

Each fault is checked for what happens (nothing finished lost or recorded twice, the right status, resume
from the right step) and for the message. docs/faults.md tabulates them.

The SIGKILL tests drive ``tests/fault_sweep.py``, a fork server that has imported torch once and forks one
real process per sweep session, so that a test can kill many sessions in a few seconds.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import queue
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import flops_fit.core.io as io_mod
import flops_fit.core.ledger as ledger_mod
from fault_sweep import INTERVAL, SOAK_CFG, STEPS, OsProxy, soak_plan
from flops_fit.core.ledger import read_records
from flops_fit.training import Callback, TrainingRunner, load_checkpoint
from test_runner import (
    CFG,
    CountingLM,
    Crash,
    RaiseAt,
    TinyLM,
    local_runner,
    make_plan,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

TESTS = Path(__file__).parent
MOCK_PLAN = make_plan(widths=(8, 16, 24, 32))


def checkpoint_files(out: Path) -> list[str]:
    """Everything in the runner's checkpoint folder (checkpoints and temporaries alike)."""
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def same_numbers(record: dict[str, Any], ref: dict[str, Any]) -> None:
    """``record`` trained exactly like the uninterrupted ``ref`` (losses to 1e-6)."""
    assert record["experiment_id"] == ref["experiment_id"]
    assert record["status"] == ref["status"] == "completed"
    assert record["num_tokens"] == ref["num_tokens"] and record["steps"] == ref["steps"]
    assert record["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
    assert [v for _, v in record["curve"]] == pytest.approx([v for _, v in ref["curve"]], abs=1e-6)


# ================================================================================ SIGKILL, in real processes


class ForkServer:
    """Drives ``tests/fault_sweep.py``: each :meth:`run` forks one sweep session that can be SIGKILLed."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.deadline = time.monotonic() + 120  # imports; each test sets its own cap with start_clock()
        self.child: int | None = None
        self.logs: list[Path] = []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("WORLD_SIZE", None)
        self.stderr = open(workdir / "server.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "fault_sweep.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = False  # waited for at the first run, so that the imports overlap other set-up

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def start_clock(self, seconds: float) -> None:
        """Fail the current test loudly if it is not done within ``seconds``."""
        self.deadline = time.monotonic() + seconds

    def fail(self, why: str) -> None:
        self._kill_child()
        tails = [f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs[-3:] if p.exists()]
        server = (self.workdir / "server.err").read_text(errors="replace")[-2000:]
        pytest.fail("\n".join([why, *tails, f"--- server stderr\n{server}"]), pytrace=False)

    def _expect(self, word: str) -> str:
        try:
            line = self.lines.get(timeout=max(self.deadline - time.monotonic(), 0.01))
        except queue.Empty:
            self.fail(f"wall-clock cap exceeded waiting for {word!r} from the fork server")
        if line is None or line.split()[0] != word:
            self.fail(f"expected {word!r} from the fork server, got {line!r}")
        return line.partition(" ")[2]

    def run(self, session: int, out: Path, trace: Path, options: str = "") -> None:
        """Fork session ``session`` of the soak sweep into ``out`` (options: see fault_sweep.py)."""
        assert self.child is None and self.proc.stdin is not None
        if not self.ready:
            self._expect("ready")
            self.ready = True
        self.logs.append(trace.with_name(f"session{session}.log"))
        self.proc.stdin.write(f"run {session} {out} {trace} {options}\n")
        self.proc.stdin.flush()
        self.child = int(self._expect("pid"))

    def ended(self) -> int | None:
        """The session's exit code if it has ended on its own, else None (does not wait)."""
        try:
            line = self.lines.get_nowait()
        except queue.Empty:
            return None
        if line is None or not line.startswith("exit "):
            self.fail(f"expected 'exit' from the fork server, got {line!r}")
        self.child = None
        return int(line.split()[1])

    def wait(self) -> int:
        code = int(self._expect("exit"))
        self.child = None
        return code

    def kill(self) -> int:
        """SIGKILL the session in flight and return its exit code (0: it finished just before)."""
        assert self.child is not None
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:  # ended, and reaped by the server, in the instant before
            pass
        return self.wait()

    def _kill_child(self) -> None:
        """Kill the session in flight, if any, and read the server's report of its end."""
        if self.child is None:
            return
        try:
            os.kill(self.child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.child = None
        try:
            self.lines.get(timeout=10)
        except queue.Empty:
            pass

    def close(self) -> None:
        self._kill_child()
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("fork_server"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def soak_reference(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """The soak sweep run once without interruption (in this process): the numbers every resume must give."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("soak_reference")
    local_runner(out, soak_plan(), train_config=SOAK_CFG).run_sweep()
    return {r["experiment_id"]: r for r in read_records(out / "results.jsonl")}


@dataclasses.dataclass(frozen=True)
class Event:
    session: int
    kind: str  # start | step | ckpt | end
    eid: str
    value: str


def read_trace(path: Path) -> list[Event]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):  # a line being written when the process died is ignored
            session, kind, eid, value = line.split()
            events.append(Event(int(session), kind, eid, value))
    return events


@dataclasses.dataclass(frozen=True)
class Kill:
    """What the files said right after one SIGKILL."""

    session: int
    eid: str | None  # the experiment in flight (None: killed between experiments or while starting)
    last_step: int  # its last step reported done
    reported_ckpt: int  # its last checkpoint reported written (or the step it had resumed from)
    ckpt_step: int | None  # the step of the checkpoint on disk (None: no checkpoint)


def inspect_kill(out: Path, trace: Path, session: int) -> Kill:
    events = [e for e in read_trace(trace) if e.session == session]
    ledger = out / "results.jsonl"
    recorded = {r["experiment_id"] for r in read_records(ledger)} if ledger.exists() else set()
    starts = [e for e in events if e.kind == "start"]
    if not starts or starts[-1].eid in recorded:
        return Kill(session, None, 0, 0, None)
    eid, start = starts[-1].eid, int(starts[-1].value)
    steps = [int(e.value) for e in events if e.eid == eid and e.kind == "step"]
    ckpts = [int(e.value) for e in events if e.eid == eid and e.kind == "ckpt"]
    path = out / "checkpoints" / f"{eid}.pt"
    saved = load_checkpoint(path, discard_corrupt=False)
    assert (saved is None) == (not path.exists()), f"session {session} left an unreadable checkpoint"
    return Kill(session, eid, max(steps, default=start), max(ckpts, default=start), saved and saved["step"])


@pytest.mark.parametrize(
    "kills, cap_s",
    [pytest.param(8, 90, id="8-kills"), pytest.param(40, 240, id="40-kills", marks=pytest.mark.slow)],
)
def test_random_sigkills_lose_nothing_and_resume_from_the_last_checkpoint(
    tmp_path, fork_server, soak_reference, kills, cap_s
):
    """SIGKILL a real sweep at seeded random moments, restart it each time, and check the wreckage."""
    fork_server.start_clock(cap_s)
    out, trace = tmp_path / "sweep", tmp_path / "trace.log"
    ids = [e.experiment_id for e in soak_plan()]
    index = {eid: i for i, eid in enumerate(ids)}
    rng = random.Random(20240 + kills)
    # Kill points: a position in the whole sweep's steps (experiment * STEPS + step) to reach, then a
    # random delay of up to a few steps, so kills land in steps, evaluations, checkpoint writes, appends.
    targets = sorted(rng.sample(range(len(ids) * STEPS), kills))

    def position(session: int) -> int:
        done = [
            index[e.eid] * STEPS + int(e.value)
            for e in read_trace(trace)
            if e.session == session and e.kind == "step"
        ]
        return max(done, default=-1)

    report: list[Kill] = []
    for session, target in enumerate(targets):
        fork_server.run(session, out, trace)
        while position(session) < target:
            code = fork_server.ended()
            if code is not None:
                fork_server.fail(f"session {session} ended with {code} before its kill point {target}")
            if time.monotonic() > fork_server.deadline:
                fork_server.fail(f"wall-clock cap of {cap_s} s exceeded waiting for kill point {target}")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        code = fork_server.kill()
        if code == 0 and session == len(targets) - 1:
            break  # the last kill point is a few steps from the end: the sweep finished during the delay
        if code != -signal.SIGKILL:
            fork_server.fail(f"session {session} ended with {code} instead of being killed")
        report.append(inspect_kill(out, trace, session))
    fork_server.run(len(targets), out, trace)
    if fork_server.wait() != 0:
        fork_server.fail("the last session did not finish the sweep")

    # The ledger: every line parses, each experiment exactly once, completed, with the uninterrupted numbers.
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["experiment_id"] for r in records] == ids
    for r in records:
        same_numbers(r, soak_reference[r["experiment_id"]])
    assert checkpoint_files(out) == []  # no checkpoint and no torn temporary left behind

    # Each kill: the next session resumed the experiment in flight from the checkpoint on disk, which is
    # the last one reported written, so the steps redone are at most one checkpoint interval.
    events = read_trace(trace)
    in_flight = [k for k in report if k.eid is not None]
    assert len(in_flight) >= kills // 2 and any(k.ckpt_step for k in in_flight)
    for k in in_flight:
        resumed = next(
            int(e.value) for e in events if e.session > k.session and e.eid == k.eid and e.kind == "start"
        )
        if k.ckpt_step is None:
            # No checkpoint yet: killed before the first one was written. (A finished run's checkpoint is
            # deleted only after its ledger line is written, so a kill in between resumes from it.)
            assert resumed == 0
            assert k.last_step <= INTERVAL, k
        else:
            assert resumed == k.ckpt_step > 0, k
            assert k.reported_ckpt <= k.ckpt_step <= k.last_step, k
            assert k.last_step - resumed <= INTERVAL, k  # compute wasted: at most one checkpoint interval
    for r in records:
        last_start = [int(e.value) for e in events if e.eid == r["experiment_id"] and e.kind == "start"][-1]
        assert r["resumed_from_step"] == (last_start or None)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, fork_server, soak_reference):
    fork_server.start_clock(60)
    out, trace = tmp_path / "sweep", tmp_path / "trace.log"
    first = soak_plan().experiments[0].experiment_id
    fork_server.run(0, out, trace, "experiments=1 kill-in-save=3")  # half the 3rd checkpoint, then SIGKILL
    assert fork_server.wait() == -signal.SIGKILL
    assert load_checkpoint(out / "checkpoints" / f"{first}.pt", discard_corrupt=False)["step"] == 2 * INTERVAL
    assert any(name.endswith(".tmp") for name in checkpoint_files(out))  # the torn temporary file

    fork_server.run(1, out, trace, "experiments=1")
    assert fork_server.wait() == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["resumed_from_step"] == 2 * INTERVAL
    for r in records:
        same_numbers(r, soak_reference[r["experiment_id"]])
    assert checkpoint_files(out) == []  # the temporary was removed with the finished run's checkpoint


def test_sigkill_while_appending_to_the_ledger_leaves_one_torn_line(tmp_path, fork_server, soak_reference):
    fork_server.start_clock(60)
    out, trace = tmp_path / "sweep", tmp_path / "trace.log"
    ids = [e.experiment_id for e in soak_plan(2)]
    fork_server.run(0, out, trace, "experiments=2 kill-in-append=2")  # half the 2nd record, then SIGKILL
    assert fork_server.wait() == -signal.SIGKILL
    torn = (out / "results.jsonl").read_bytes().split(b"\n")
    assert len(torn) == 2 and json.loads(torn[0])["experiment_id"] == ids[0]

    fork_server.run(1, out, trace, "experiments=2")
    assert fork_server.wait() == 0
    assert "skipping a line that is not valid JSON (torn write?)" in (tmp_path / "session1.log").read_text()
    lines = (out / "results.jsonl").read_bytes().splitlines()
    assert lines[1] == torn[1]  # append-only: the fragment stays, on a line of its own
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])
    records = [json.loads(line) for i, line in enumerate(lines) if i != 1]
    assert [r["experiment_id"] for r in records] == ids  # the torn experiment once, after a rerun
    for r in records:
        same_numbers(r, soak_reference[r["experiment_id"]])
    # the finished run's checkpoint is deleted only after its ledger line is written, so the rerun
    # resumes from it instead of training from step 0
    assert records[1]["resumed_from_step"] is not None and records[1]["resumed_from_step"] > 0


# ================================================================================ the ledger


def mock_runner(out: Path, **kwargs: Any) -> TrainingRunner:
    return TrainingRunner("mock", plan=MOCK_PLAN, output_dir=out, progress=False, **kwargs)


@pytest.mark.parametrize(
    "where, damage",
    [(where, damage) for where in ("last", "middle") for damage in ("half", "one-byte", "zeros")]
    + [("last", "no-newline")],
)
def test_a_torn_ledger_line_is_skipped_and_its_experiment_rerun_once(tmp_path, caplog, where, damage):
    """A line that does not parse is skipped with a warning wherever it is: after a crash and a resume the
    torn line is followed by newer ones, so a damaged middle line is normal. Its experiment has no record,
    so it runs again (once); nothing is rewritten."""
    mock_runner(tmp_path).run_sweep()
    ledger = tmp_path / "results.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    n = len(lines) - 1 if where == "last" else 1
    line = lines[n]
    broken = {
        "half": line[: len(line) // 2],
        "one-byte": line[:1],
        "zeros": b"\0" * (len(line) - 1),  # what a file system can leave of an unsynced block
        "no-newline": line[:-1],  # the whole record, killed before its newline
    }[damage]
    if where == "middle":
        broken += b"\n"  # later appends started on a fresh line
    ledger.write_bytes(b"".join([*lines[:n], broken, *lines[n + 1 :]]))

    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        runs = mock_runner(tmp_path).run_sweep()
    after = ledger.read_bytes()
    if damage == "no-newline":  # the record is complete: nothing to redo, and nothing is written
        assert after == b"".join(lines[:n]) + broken and "not valid JSON" not in caplog.text
        assert len(read_records(ledger)) == len(lines) == len(runs)
        return
    assert f"results.jsonl:{n + 1}: skipping a line that is not valid JSON (torn write?)" in caplog.text
    # the rerun appends the lost record (mock results are byte-identical) after the untouched fragment
    fragment = broken if broken.endswith(b"\n") else broken + b"\n"
    assert after == b"".join([*lines[:n], fragment, *lines[n + 1 :], line])
    ids = [r["experiment_id"] for r in read_records(ledger)]
    assert sorted(ids) == sorted(e.experiment_id for e in MOCK_PLAN) and len(ids) == len(set(ids))
    assert len(runs) == len(MOCK_PLAN) and set(runs["status"]) == {"completed"}


# ================================================================================ damaged checkpoints

ONE = make_plan(widths=(16,), steps=16)  # one experiment: checkpoints at steps 4, 8, 12


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> dict[str, Any]:
    """The single-experiment plan run uninterrupted, and the bytes of its checkpoint at step 8."""
    torch.set_num_threads(1)
    ref = tmp_path_factory.mktemp("one_reference")
    local_runner(ref, ONE).run_sweep()
    crashed = tmp_path_factory.mktemp("one_crashed")
    with pytest.raises(Crash):
        local_runner(crashed, ONE, callbacks=[RaiseAt(experiment=1, step=10)]).run_sweep()
    checkpoint = crashed / "checkpoints" / f"{ONE.experiments[0].experiment_id}.pt"
    assert load_checkpoint(checkpoint)["step"] == 8
    return {"record": read_records(ref / "results.jsonl")[0], "checkpoint": checkpoint.read_bytes()}


def _payload_offset(data: bytes) -> int:
    """Offset of the middle of the largest tensor's bytes in a checkpoint (a zip archive)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        tensors = [i for i in archive.infolist() if re.search(r"/data/\d+$", i.filename)]
        info = max(tensors, key=lambda i: i.file_size)
    # the local file header: 30 bytes, then the name and the extra field, whose lengths end the header
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def _damage(data: bytes, how: str) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "last-byte-missing":
        return data[:-1]
    if how == "random-bytes":
        return random.Random(0).randbytes(len(data))
    assert how == "bit-flip"  # same size, valid zip structure, one tensor value changed
    flipped = bytearray(data)
    flipped[_payload_offset(data)] ^= 0x10
    return bytes(flipped)


@pytest.mark.parametrize(
    "how, reason",
    [
        ("empty", "BadZipFile: File is not a zip file"),
        ("truncated", "BadZipFile: File is not a zip file"),
        ("last-byte-missing", "BadZipFile: File is not a zip file"),
        ("random-bytes", "BadZipFile: File is not a zip file"),
        ("bit-flip", r"ValueError: entry '\S+/data/\d+' fails its CRC-32 check"),
    ],
)
def test_a_damaged_checkpoint_is_discarded_and_the_experiment_restarts(
    tmp_path, caplog, one_run, how, reason
):
    path = tmp_path / "checkpoints" / f"{ONE.experiments[0].experiment_id}.pt"
    path.parent.mkdir()
    path.write_bytes(_damage(one_run["checkpoint"], how))
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        local_runner(tmp_path, ONE).run_sweep()
    warning = rf"discarding corrupt checkpoint {re.escape(str(path))} \({reason}\); the experiment restarts"
    assert len(re.findall(warning, caplog.text)) == 1
    [record] = read_records(tmp_path / "results.jsonl")
    assert record["resumed_from_step"] is None  # from scratch, not from damaged weights
    same_numbers(record, one_run["record"])
    assert checkpoint_files(tmp_path) == []


# ================================================================================ full disk, read-only folder


class FailingWrites:
    """Make flops-fit's file writes fail with ``code`` while ``active``, as a full disk (``ENOSPC``) or a
    read-only mount (``EROFS``) would: the temporary files of atomic writes (checkpoints, ``sweep.json``)
    and the ledger's appends.

    A read-only folder refuses to open the file (and, with ``read_only``, to delete an existing file in
    it); a full disk opens it and fails the first write, or with ``file_ok`` the first write past that
    many bytes (torch's zip writer then reports a RuntimeError). With ``ledger_ok``, the fault switches itself
    on after that many ledger writes, and the first failing one first writes half of its bytes (a disk
    filling up mid-write returns a short count, the next write fails).
    """

    def __init__(
        self,
        monkeypatch,
        code: int,
        *,
        atomic: bool = True,
        ledger: bool = True,
        ledger_ok: int | None = None,
        read_only: Path | None = None,
        file_ok: int = 0,
    ):
        self.code, self.active, self.ledger_ok = code, False, ledger_ok
        self.failures: list[str] = []
        full = code == errno.ENOSPC
        real_open = open

        def fail(what: str) -> None:
            self.failures.append(what)
            raise OSError(code, os.strerror(code))

        class FullFile:
            def __init__(self, fh: Any):
                self.fh, self.room = fh, file_ok

            def write(self, data: Any) -> int:
                if len(data) > self.room:
                    fail("checkpoint write")
                self.room -= len(data)
                return self.fh.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.fh, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.fh.close()

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            writing = self.active and "w" in mode
            if writing and not full:
                fail(f"open {Path(file).name}")
            fh = real_open(file, mode, *args, **kwargs)
            return FullFile(fh) if writing else fh

        def os_open(path: Any, flags: int, *args: Any) -> int:
            if self.active and flags & os.O_WRONLY and not full:
                fail("open ledger")
            return os.open(path, flags, *args)

        def os_write(fd: int, data: Any) -> int:
            if self.ledger_ok is not None and not self.active:
                if self.ledger_ok == 0:
                    self.active = True
                    return os.write(fd, bytes(data)[: len(data) // 2])  # the short write
                self.ledger_ok -= 1
            if self.active:
                fail("ledger write")
            return os.write(fd, data)

        real_unlink = os.unlink

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if self.active and read_only in Path(path).parents and os.path.lexists(path):
                self.failures.append(f"unlink {Path(path).name}")
                raise OSError(code, os.strerror(code), str(path))
            real_unlink(path, *args, **kwargs)

        if atomic:
            monkeypatch.setattr(io_mod, "open", open_, raising=False)
        if ledger:
            monkeypatch.setattr(ledger_mod, "os", OsProxy(open=os_open, write=os_write))
        if read_only is not None:
            monkeypatch.setattr(os, "unlink", unlink)


class ActivateAt(Callback):
    """Switch a fault on when the ``experiment``-th run (1-based) starts or reaches ``step``."""

    def __init__(self, fault: FailingWrites, experiment: int, step: int = 0):
        self.fault, self.experiment, self.step, self.count = fault, experiment, step, 0

    def on_train_start(self, info):
        self.count += 1
        if self.count == self.experiment and self.step == 0:
            self.fault.active = True

    def on_log(self, step, tokens, train_loss, lr):
        if self.count == self.experiment and step == self.step:
            self.fault.active = True


def test_disk_full_during_a_ledger_append_raises_and_keeps_finished_records(tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    mock_runner(clean).run_sweep()
    expected = (clean / "results.jsonl").read_bytes().splitlines(keepends=True)

    out = tmp_path / "sweep"
    disk = FailingWrites(monkeypatch, errno.ENOSPC, atomic=False, ledger_ok=2)  # full after two records
    with pytest.raises(OSError, match=r"could not append a record to the ledger \S+results\.jsonl") as info:
        mock_runner(out).run_sweep()
    assert info.value.errno == errno.ENOSPC and disk.failures == ["ledger write"]
    assert "(No space left on device); the records already in it are kept" in str(info.value)
    ledger = out / "results.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    assert lines[:2] == expected[:2]  # the finished records, intact
    assert lines[2] == expected[2][: len(expected[2]) // 2]  # the half line the disk took
    assert len(read_records(ledger)) == 2

    monkeypatch.undo()  # space freed
    runs = mock_runner(out).run_sweep()
    assert read_records(ledger) == [json.loads(line) for line in expected]
    assert len(runs) == len(expected)


@pytest.mark.parametrize("room", [0, 4096], ids=["at-the-first-write", "part-way"])
def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, caplog, one_run, room
):
    disk = FailingWrites(monkeypatch, errno.ENOSPC, file_ok=room)
    eid = ONE.experiments[0].experiment_id
    path = tmp_path / "checkpoints" / f"{eid}.pt"
    callbacks = [ActivateAt(disk, experiment=1, step=6), RaiseAt(experiment=1, step=14)]  # full, then crash
    with caplog.at_level(logging.WARNING, logger="flops_fit"), pytest.raises(Crash):
        local_runner(tmp_path, ONE, callbacks=callbacks).run_sweep()
    assert set(disk.failures) == {"checkpoint write"}
    assert (  # the saves at steps 8 and 12
        caplog.text.count(
            f"could not write checkpoint {path} ([Errno 28] No space left on device: '{path}'); training continues"
        )
        == 2
    )
    assert load_checkpoint(path)["step"] == 4  # the last good one, untouched
    assert checkpoint_files(tmp_path) == [path.name]  # no temporary left behind

    monkeypatch.undo()
    local_runner(tmp_path, ONE).run_sweep()
    [record] = read_records(tmp_path / "results.jsonl")
    assert record["resumed_from_step"] == 4
    same_numbers(record, one_run["record"])


def _deny_writes(monkeypatch, folder: Path) -> None:
    """Make ``folder`` read-only: chmod, and where that does not deny (root), ``os.access`` says so too."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permission bits
        real_access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode, **kw: False if Path(p) == folder.resolve() else real_access(p, mode, **kw),
        )


def test_a_read_only_output_dir_is_refused_before_anything_runs(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    ONE.save(folder / "sweep.json")
    before = sorted(p.name for p in folder.rglob("*"))
    _deny_writes(monkeypatch, folder)
    try:
        with pytest.raises(
            ValueError, match=r"output_dir '.*ro' (is not writable|cannot be created).*pass a writable folder"
        ):
            local_runner(folder, ONE)
    finally:
        folder.chmod(0o755)
    assert set(p.name for p in folder.rglob("*")) - set(before) <= {"checkpoints"}  # nothing written


@pytest.fixture(scope="module")
def three_reference(tmp_path_factory) -> list[dict[str, Any]]:
    """The default three-experiment plan run without faults."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("three_reference")
    local_runner(out, make_plan()).run_sweep()
    return read_records(out / "results.jsonl")


def test_an_output_dir_turning_read_only_mid_run_stops_at_the_ledger(
    tmp_path, monkeypatch, caplog, three_reference
):
    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    out = tmp_path / "sweep"
    checkpoint = out / "checkpoints" / f"{ids[1]}.pt"
    readonly = FailingWrites(monkeypatch, errno.EROFS, read_only=out / "checkpoints")
    callbacks = [ActivateAt(readonly, experiment=2, step=6)]  # after the 2nd run's checkpoint at step 4
    with caplog.at_level(logging.WARNING, logger="flops_fit"), pytest.raises(OSError) as info:
        local_runner(out, plan, callbacks=callbacks).run_sweep()
    assert info.value.errno == errno.EROFS
    assert re.fullmatch(
        r"\[Errno 30\] could not append a record to the ledger \S+/results\.jsonl \(Read-only file system\); "
        r"the records already in it are kept: free space or make the folder writable, then run again",
        str(info.value),
    )
    ro = f"[Errno 30] Read-only file system: '{checkpoint}'"
    assert caplog.text.count(f"could not write checkpoint {checkpoint} ({ro}); training continues") == 2
    # the completed run's checkpoint is deleted only after its ledger line, which failed: never tried
    assert "could not delete checkpoint" not in caplog.text
    assert [
        json.loads(line)["experiment_id"] for line in (out / "results.jsonl").read_text().splitlines()
    ] == [ids[0]]
    assert load_checkpoint(checkpoint)["step"] == 4  # what was saved before is still there

    monkeypatch.undo()  # writable again
    local_runner(out, plan).run_sweep()
    records = read_records(out / "results.jsonl")
    assert [r["experiment_id"] for r in records] == ids
    assert [r["resumed_from_step"] for r in records] == [None, 4, None]
    for r, ref in zip(records, three_reference, strict=True):
        same_numbers(r, ref)
    assert checkpoint_files(out) == []


def test_read_only_checkpoint_storage_does_not_fail_a_finished_run(
    tmp_path, monkeypatch, caplog, three_reference
):
    """Checkpoints may live on other storage than the ledger; a run that finished stays finished even if
    its checkpoint can be neither updated nor deleted."""
    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    checkpoint = tmp_path / "checkpoints" / f"{ids[1]}.pt"
    readonly = FailingWrites(monkeypatch, errno.EROFS, ledger=False, read_only=tmp_path / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        runs = local_runner(
            tmp_path, plan, callbacks=[ActivateAt(readonly, experiment=2, step=6)]
        ).run_sweep()
    assert list(runs["status"]) == ["completed"] * 3
    assert "could not delete checkpoint" in caplog.text and f"unlink {checkpoint.name}" in readonly.failures
    records = read_records(tmp_path / "results.jsonl")
    for r, ref in zip(records, three_reference, strict=True):
        same_numbers(r, ref)
    assert checkpoint_files(tmp_path) == [checkpoint.name]  # left behind, at step 4

    monkeypatch.undo()
    before = (tmp_path / "results.jsonl").read_bytes()
    local_runner(tmp_path, plan).run_sweep()  # nothing to run; the leftover is cleared
    assert (tmp_path / "results.jsonl").read_bytes() == before
    assert checkpoint_files(tmp_path) == []


# ================================================================================ data and numerics


class FlakyData(CountingLM):
    """:class:`CountingLM` whose next read fails once while ``marker`` exists (a storage hiccup); works in
    DataLoader worker processes too, since the marker is a file."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = marker

    def __getitem__(self, i: int):
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return super().__getitem__(i)
        raise OSError(errno.EIO, "Input/output error reading shard 3")


class TouchAt(Callback):
    def __init__(self, marker: Path, experiment: int, step: int):
        self.marker, self.experiment, self.step, self.count = marker, experiment, step, 0

    def on_train_start(self, info):
        self.count += 1

    def on_log(self, step, tokens, train_loss, lr):
        if self.count == self.experiment and step == self.step:
            self.marker.touch()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataset_raising_mid_epoch_fails_that_run_and_a_retry_resumes(tmp_path, three_reference, workers):
    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    marker = tmp_path / "fail-next-read"
    config = dataclasses.replace(CFG, num_workers=workers)
    runner = local_runner(
        tmp_path / "sweep",
        plan,
        dataset=FlakyData(marker),
        train_config=config,
        callbacks=[TouchAt(marker, experiment=2, step=10)],
        retry_failed=True,
    )
    runs = runner.run_sweep()
    assert list(runs["status"]) == ["completed", "failed", "completed"]  # the sweep went on
    failed = read_records(runner.results_path)[1]
    step = int(re.search(r"\(at step (\d+) of 16\)$", failed["error"]).group(1))
    assert failed["error"].startswith("OSError: ") and "Input/output error reading shard 3" in failed["error"]
    assert failed["final_loss"] is None and failed["steps"] == step - 1
    if workers == 0:
        assert step == 11  # the read right after the fault appeared
    kept = load_checkpoint(runner.checkpoint_dir / f"{ids[1]}.pt")
    assert kept is not None and 0 < kept["step"] < step  # kept for the retry

    runs = local_runner(tmp_path / "sweep", plan, train_config=config, retry_failed=True).run_sweep()
    assert list(runs["status"]) == ["completed"] * 3
    records = read_records(runner.results_path)
    assert [r["experiment_id"] for r in records] == [*ids, ids[1]]  # the retry's record supersedes
    assert records[-1]["resumed_from_step"] == kept["step"]
    for r, ref in zip([records[0], records[3], records[2]], three_reference, strict=True):
        same_numbers(r, ref)  # the resumed run equals an uninterrupted one
    assert checkpoint_files(tmp_path / "sweep") == []


class PoisonAfter(TinyLM):
    """Logits that turn NaN (or give an infinite loss) after ``after`` training steps, in training or
    only in validation."""

    def __init__(self, width: int, kind: str, after: int = 9):
        super().__init__(width)
        self.kind, self.after, self.steps = kind, after, 0

    def forward(self, x):
        out = super().forward(x)
        self.steps += self.training
        if self.steps <= self.after or (self.kind == "eval-nan") == self.training:
            return out
        if self.kind == "inf":  # logits -inf but for token 0: the loss of every other target is +inf
            mask = torch.full(out.shape[-1:], -float("inf")).index_fill(0, torch.tensor([0]), 0.0)
            return out + mask
        return out * float("nan")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("nan", "training loss became nan at step 10 of 16"),
        ("inf", "training loss became inf at step 10 of 16"),
        ("eval-nan", "validation loss became nan at step 12 of 16"),
    ],
)
def test_a_loss_turning_non_finite_mid_run_is_diverged(tmp_path, kind, message):
    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    saved: list[tuple[str, int]] = []

    class Saved(Callback):
        def on_checkpoint(self, step, path):
            saved.append((path.stem, step))

    def models(width):
        return PoisonAfter(width, kind) if width == 16 else TinyLM(width)

    runs = local_runner(tmp_path, plan, model=models, callbacks=[Saved()]).run_sweep()
    assert list(runs["status"]) == ["completed", "diverged", "completed"]  # the sweep went on
    record = read_records(tmp_path / "results.jsonl")[1]
    assert record["error"] == message and record["final_loss"] is None
    assert (ids[1], 8) in saved and checkpoint_files(tmp_path) == []  # it had a checkpoint, now deleted
    # a diverged run is final: with the same seed it would diverge again, so a retry leaves it alone
    assert local_runner(tmp_path, plan, model=models, retry_failed=True).pending() == []
