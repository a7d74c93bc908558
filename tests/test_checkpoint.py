"""Checkpoints of the run in flight: atomic files, exact resume after a crash, kill -9 or Ctrl-C."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flops_fit.training import Callback, TrainConfig, load_checkpoint, save_checkpoint, train
from flops_fit.training.checkpoint import capture_rng, remove_checkpoint, restore_rng

VOCAB, SEQ = 11, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


class CountingLM(Dataset):
    """Windows of a counting sequence modulo VOCAB: the next token is the current one plus one."""

    def __init__(self, n: int = 1024, seed: int = 0):
        start = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))
        windows = (start[:, None] + torch.arange(SEQ + 1)) % VOCAB
        self.x, self.y = windows[:, :-1], windows[:, 1:]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class StreamLM(IterableDataset):
    def __init__(self, n: int = 1024):
        self.inner = CountingLM(n)

    def __iter__(self):
        return (self.inner[i] for i in range(len(self.inner)))


class TinyLM(nn.Module):
    """Dropout makes the result depend on the RNG state, so an exact resume must restore it."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.body = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(0.2), nn.Linear(d, VOCAB))

    def forward(self, x):
        return self.body(self.emb(x))


def lm_loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def make_lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


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


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Raise ``exc`` when ``step`` steps are done (after the loss read-out, before that step's checkpoint)."""

    def __init__(self, step: int, exc: type[BaseException] = Crash):
        self.step, self.exc = step, exc

    def on_log(self, step, tokens, train_loss, lr):
        if step == self.step:
            raise self.exc(f"injected at step {step}")


def fit(model=None, data=None, path=None, callbacks=(), config=CFG, **kw):
    model = model if model is not None else make_lm()
    out = train(
        model,
        data if data is not None else CountingLM(),
        lm_loss,
        num_tokens=TOKENS,
        config=config,
        device="cpu",
        callbacks=callbacks,
        checkpoint_path=path,
        progress=False,
        **kw,
    )
    return out, model


def assert_same_run(a, model_a, b, model_b):
    assert a.status == b.status == "completed"
    assert a.steps == b.steps and a.tokens_seen == b.tokens_seen
    assert [t for t, _ in a.curve] == [t for t, _ in b.curve]
    assert [v for _, v in a.curve] == pytest.approx([v for _, v in b.curve], abs=1e-6)
    assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


@pytest.fixture(scope="module")
def reference():
    return fit()


# -------------------------------------------------------------------------------------------------- files


def test_save_is_atomic_and_loads_weights_only(tmp_path):
    path = tmp_path / "sub" / "exp.pt"
    state = {
        "format": 1,
        "fingerprint": {"a": 1},
        "step": 3,
        "model": {"w": torch.ones(2)},
        "optimizer": {},
        "rng": [capture_rng()],
        "loop": {"curve": [[1, 2.0]]},
    }
    save_checkpoint(path, state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["exp.pt"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    (path.parent / f".{path.name}.123-abcd1234.tmp").write_bytes(b"torn")  # as flops_fit.core.io names them
    remove_checkpoint(path)
    assert list(path.parent.iterdir()) == []


def test_rng_round_trip_reproduces_draws(tmp_path):
    path = tmp_path / "rng.pt"
    state = capture_rng()
    expected = (torch.rand(4), random.random())
    save_checkpoint(
        path,
        {"format": 1, "fingerprint": {}, "step": 0, "model": {}, "optimizer": {}, "rng": [state], "loop": {}},
    )
    restore_rng(load_checkpoint(path)["rng"][0])
    assert torch.equal(torch.rand(4), expected[0]) and random.random() == expected[1]


def test_corrupt_checkpoint_is_discarded_with_a_warning(tmp_path, caplog, reference):
    path = tmp_path / "exp.pt"
    path.write_bytes(b"\x00not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="flops_fit.training"):
        out, model = fit(path=path)
    assert any("corrupt checkpoint" in r.getMessage() for r in caplog.records)
    assert out.resumed_from_step is None
    assert_same_run(out, model, *reference)
    assert not path.exists()


# -------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kind", ["map", "iterable", "loader"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, kind):
    def data():
        if kind == "map":
            return CountingLM()
        if kind == "iterable":
            return StreamLM()
        return DataLoader(CountingLM(), batch_size=8, shuffle=True)

    extra = {"eval_dataset": CountingLM(n=64, seed=1)} if kind == "loader" else {}
    whole, whole_model = fit(data=data(), **extra)
    path = tmp_path / "exp.pt"
    crashed, _ = fit(data=data(), path=path, callbacks=[CrashAt(10)], **extra)
    assert crashed.status == "failed" and "injected at step 10" in crashed.error
    assert path.exists()  # a failed run keeps its checkpoint so a retry resumes
    assert load_checkpoint(path)["step"] == 8
    resumed, resumed_model = fit(data=data(), path=path, **extra)
    assert resumed.resumed_from_step == 8
    assert_same_run(resumed, resumed_model, whole, whole_model)
    assert not path.exists()  # removed when the experiment completes


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    path = tmp_path / "exp.pt"
    script = tmp_path / "victim.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys
            import torch
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            torch.set_num_threads(1)
            from test_checkpoint import Callback, fit

            class Kill(Callback):
                def on_checkpoint(self, step, path):
                    if step == 12:
                        os.kill(os.getpid(), signal.SIGKILL)

            fit(path={str(path)!r}, callbacks=[Kill()])
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(path)["step"] == 12
    resumed, model = fit(path=path)
    assert resumed.resumed_from_step == 12
    assert_same_run(resumed, model, *reference)


def test_ctrl_c_checkpoints_and_reraises_with_how_to_resume(tmp_path, reference):
    interrupted = []

    class Record(Callback):
        def on_interrupt(self, step):
            interrupted.append(step)

    path = tmp_path / "exp.pt"
    with pytest.raises(KeyboardInterrupt, match="run the same command again to resume"):
        fit(path=path, callbacks=[Record(), CrashAt(6, KeyboardInterrupt)])
    assert interrupted == [6]
    assert load_checkpoint(path)["step"] == 6
    resumed, model = fit(path=path)
    assert resumed.resumed_from_step == 6
    assert_same_run(resumed, model, *reference)


def test_ctrl_c_between_a_step_and_its_evaluation_loses_no_curve_point(tmp_path, reference):
    """on_log runs before the step's evaluation: a Ctrl-C there checkpoints the step without it, and the
    resumed run makes the evaluation up before training on."""
    path = tmp_path / "exp.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(path=path, callbacks=[CrashAt(8, KeyboardInterrupt)])  # eval_every=4: step 8 evaluates
    assert load_checkpoint(path)["step"] == 8
    resumed, model = fit(path=path)
    assert resumed.resumed_from_step == 8
    assert_same_run(resumed, model, *reference)  # the curve included


def test_sigint_stops_at_a_step_boundary(tmp_path, reference):
    class SendSigint(Callback):
        def on_log(self, step, tokens, train_loss, lr):
            if step == 6:
                signal.raise_signal(signal.SIGINT)

    path = tmp_path / "exp.pt"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        fit(path=path, callbacks=[SendSigint()])
    assert signal.getsignal(signal.SIGINT) is handler  # the loop restored the previous handler
    assert load_checkpoint(path)["step"] == 7  # the step in flight was finished, then saved
    resumed, model = fit(path=path)
    assert_same_run(resumed, model, *reference)


def test_checkpoint_of_another_run_is_ignored(tmp_path, caplog, reference):
    path = tmp_path / "exp.pt"
    other = TrainConfig(**{**CFG.to_dict(), "seed": 99})
    fit(path=path, config=other, callbacks=[CrashAt(10)])
    assert path.exists()
    with caplog.at_level(logging.WARNING, logger="flops_fit.training"):
        out, model = fit(path=path)
    assert any("different run" in r.getMessage() and "config" in r.getMessage() for r in caplog.records)
    assert out.resumed_from_step is None
    assert_same_run(out, model, *reference)


def test_time_based_checkpoints_and_cleanup_on_divergence(tmp_path):
    saved = []

    class Record(Callback):
        def on_checkpoint(self, step, path):
            saved.append(step)

    path = tmp_path / "exp.pt"
    cfg = TrainConfig(**{**CFG.to_dict(), "checkpoint_every_s": 0.0, "checkpoint_every_steps": None})
    out, _ = fit(path=path, config=cfg, callbacks=[Record()])
    assert out.status == "completed" and saved == list(range(2, 20, 2)) and not path.exists()

    class NaNAt(TinyLM):
        calls = 0

        def forward(self, x):
            self.calls += self.training
            out = super().forward(x)
            return out * float("nan") if self.calls > 9 else out

    torch.manual_seed(0)
    diverged, _ = fit(model=NaNAt(), path=path, config=cfg)
    assert diverged.status == "diverged" and "step 10" in diverged.error
    assert not path.exists()
