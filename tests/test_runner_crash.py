"""The runner in separate processes: ``kill -9`` mid-experiment, and a data-parallel sweep under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flops_fit.core.ledger import read_records
from test_runner import TinyLM, local_runner, make_plan

TESTS = Path(__file__).parent
STEPS = 40  # per experiment; checkpoints every 4 steps (test_runner.CFG)

SWEEP_SCRIPT = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from flops_fit.training import Callback
from test_runner import local_runner, make_plan


class Pace(Callback):
    # Slows the tiny runs down so the parent can kill the process mid-experiment (numerics unchanged).
    def on_log(self, step, tokens, train_loss, lr):
        time.sleep(0.02)


local_runner({out!r}, make_plan(steps={steps}), callbacks=[Pace()]).run_sweep()
"""


def _start(script: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the sweep ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_experiment_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "sweep"
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(SWEEP_SCRIPT.format(tests=str(TESTS), out=str(out), steps=STEPS)))
    plan = make_plan(steps=STEPS)
    ids = [e.experiment_id for e in plan]
    ledger = out / "results.jsonl"

    def finished() -> int:
        return len(read_records(ledger)) if ledger.exists() else 0

    # Kill during the second experiment, then during the third, then let it finish. The experiment can
    # finish (its record appended) in the instant between the check and the kill: then it did not resume.
    mid_run = []
    for killed, eid in ((1, ids[1]), (2, ids[2])):
        checkpoint = out / "checkpoints" / f"{eid}.pt"
        _kill_when(_start(script), lambda c=checkpoint, k=killed: finished() == k and c.exists())
        assert finished() in (killed, killed + 1)
        if finished() == killed:
            mid_run.append(killed)
    proc = _start(script)
    assert proc.wait(timeout=120) == 0, proc.stdout.read().decode()[-3000:]

    lines = ledger.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert [r["experiment_id"] for r in records] == ids  # each experiment exactly once, in plan order
    assert records[0]["resumed_from_step"] is None
    assert mid_run  # both kills landing in the instant after an append: seen never
    assert all(records[i]["resumed_from_step"] > 0 for i in mid_run)
    assert list((out / "checkpoints").iterdir()) == []

    torch.set_num_threads(1)
    reference = local_runner(tmp_path / "reference", plan).run_sweep()
    for r, (_, ref) in zip(records, reference.iterrows(), strict=True):
        assert r["status"] == ref["status"] == "completed"
        assert r["num_tokens"] == ref["num_tokens"]
        assert r["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
        assert [v for _, v in r["curve"]] == pytest.approx([v for _, v in ref["curve"]], abs=1e-6)


DDP_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_runner import TinyLM, local_runner, make_plan

runs = local_runner({out!r}, make_plan(), model=lambda w: TinyLM(w, dropout=0.0)).run_sweep()
rank = int(os.environ["RANK"])
with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as fh:
    json.dump({{"ids": list(runs["experiment_id"]), "losses": list(runs["final_loss"])}}, fh)
"""


@pytest.mark.slow
def test_two_processes_run_the_same_sweep_and_only_rank_0_writes(tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(TESTS), out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    records = read_records(out / "results.jsonl")
    assert [r["experiment_id"] for r in records] == ids  # written once, by the main process
    assert {r["world_size"] for r in records} == {2}
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["ids"] == ids

    torch.set_num_threads(1)
    single = local_runner(tmp_path / "single", plan, model=lambda w: TinyLM(w, dropout=0.0)).run_sweep()
    assert [r["final_loss"] for r in records] == pytest.approx(list(single["final_loss"]), abs=1e-5)
