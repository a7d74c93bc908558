"""Data-parallel training under ``torchrun`` (two gloo processes on CPU) gives the one-process result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from flops_fit.training import Callback, TrainConfig, load_checkpoint, train
from flops_fit.training.distributed import SingleProcess, launched_world_size, make_processes

pytest.importorskip("accelerate")

VOCAB, SEQ = 11, 16
CFG = TrainConfig(
    batch_size=8,
    lr=1e-2,
    eval_batches=2,
    log_every=2,
    eval_every=4,
    checkpoint_every_s=None,
    checkpoint_every_steps=4,
)
TOKENS = 20 * 8 * SEQ  # 20 steps


class CountingLM(Dataset):
    def __init__(self, n: int = 1024, seed: int = 0):
        start = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))
        windows = (start[:, None] + torch.arange(SEQ + 1)) % VOCAB
        self.x, self.y = windows[:, :-1], windows[:, 1:]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyLM(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.body = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, VOCAB))

    def forward(self, x):
        return self.body(self.emb(x))


def lm_loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def fit(path=None, callbacks=(), distributed=None):
    """17 validation samples: the two processes evaluate different numbers of batches (3 and 2)."""
    torch.manual_seed(0)
    model = TinyLM()
    out = train(
        model,
        CountingLM(),
        lm_loss,
        num_tokens=TOKENS,
        config=CFG,
        eval_dataset=CountingLM(17, seed=1),
        device="cpu",
        checkpoint_path=path,
        callbacks=callbacks,
        progress=False,
        distributed=distributed,
    )
    return out, model


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_checkpoint(self, step, path):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _launch(
    tmp_path: Path, out_dir: Path, checkpoint: Path, kill_at: int | None = None
) -> subprocess.CompletedProcess:
    """Run this file's ``fit`` under ``torchrun --nproc_per_node 2`` (gloo on CPU)."""
    script = tmp_path / "ddp_job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys
            import torch
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            torch.set_num_threads(1)
            from test_distributed import KillAt, fit

            callbacks = [KillAt({kill_at})] if {kill_at is not None} else []
            out, model = fit(path={str(checkpoint)!r}, callbacks=callbacks)
            rank = int(os.environ["RANK"])
            with open(os.path.join({str(out_dir)!r}, f"rank{{rank}}.json"), "w") as fh:
                json.dump({{**out.to_dict(), "world": int(os.environ["WORLD_SIZE"])}}, fh)
            torch.save(model.state_dict(), os.path.join({str(out_dir)!r}, f"rank{{rank}}.pt"))
            """
        )
    )
    out_dir.mkdir(exist_ok=True)
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
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


def _check_against_one_process(out_dir: Path) -> None:
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0] == {
        **ranks[1],
        "wall_time_s": ranks[0]["wall_time_s"],
        "tokens_per_s": ranks[0]["tokens_per_s"],
    }
    states = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.set_num_threads(1)
    single, model = fit()
    assert ranks[0]["status"] == "completed"
    assert ranks[0]["tokens_seen"] == single.tokens_seen and ranks[0]["steps"] == single.steps
    assert [v for _, v in ranks[0]["curve"]] == pytest.approx([v for _, v in single.curve], abs=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(states[0][name], states[1][name], atol=0, rtol=0)
        torch.testing.assert_close(states[0][name], value, atol=1e-5, rtol=0)


def test_two_gloo_processes_match_one_process(tmp_path):
    checkpoint = tmp_path / "ckpt" / "exp.pt"
    proc = _launch(tmp_path, tmp_path / "out", checkpoint)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check_against_one_process(tmp_path / "out")
    assert not checkpoint.exists()  # the main process removed it when the experiment completed


@pytest.mark.slow
def test_two_processes_resume_after_kill_9(tmp_path):
    checkpoint = tmp_path / "ckpt" / "exp.pt"
    killed = _launch(tmp_path, tmp_path / "killed", checkpoint, kill_at=12)
    assert killed.returncode != 0
    assert load_checkpoint(checkpoint)["step"] == 12
    assert len(load_checkpoint(checkpoint)["rng"]) == 2  # one RNG state per process
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "exp.pt"
    ]  # written by the main process only
    resumed = _launch(tmp_path, tmp_path / "resumed", checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert json.loads((tmp_path / "resumed" / "rank1.json").read_text())["resumed_from_step"] == 12
    _check_against_one_process(tmp_path / "resumed")


def test_plain_python_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    assert type(make_processes(None, "cpu")) is SingleProcess
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4
    assert type(make_processes(False, "cpu")) is SingleProcess


def test_accelerate_path_with_one_process_matches_plain(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain, _ = fit(distributed=False)
        accelerated, _ = fit(distributed=True)
    finally:
        torch.set_num_threads(before)
    assert accelerated.final_loss == pytest.approx(plain.final_loss, abs=1e-6)
    with pytest.raises(ValueError, match="launcher gives each process its device"):
        make_processes(True, "cuda:3")
