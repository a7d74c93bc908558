"""WSD trunks and cooldown branches (Hägele et al. 2024): the schedule, the config fields, and the loop's
branch points (``train(branch_points=...)``) and trunk starts (``train(init_checkpoint=...)``)."""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from flops_fit.core.schedule import lr_multiplier
from flops_fit.core.train_config import RESULT_FIELDS, TrainConfig, result_settings
from flops_fit.training import Callback, load_checkpoint, train
from flops_fit.training.branching import run_fingerprint
from flops_fit.training.jobs import _result_settings
from flops_fit.training.optim import build_optimizer
from test_runner import CountingLM as _CountingLM
from test_runner import TinyLM as _TinyLM
from test_runner import lm_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

VOCAB, SEQ, BATCH = 11, 16, 8
TOKENS_PER_STEP = BATCH * SEQ
W, B, S, T = 3, 8, 16, 20  # warm-up, branch point, branch steps, trunk steps

#: TrainConfig's trajectory and result fields of release 0.1.0: ids and fingerprints must keep exactly these.
OLD_TRAJECTORY = {
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_frac",
    "schedule",
    "min_lr_ratio",
    "decay_frac",
    "grad_clip",
    "eval_every",
    "eval_batches",
    "seed",
    "divergence_factor",
}
OLD_RESULT = OLD_TRAJECTORY | {"precision"}


# -------------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
@pytest.mark.parametrize(("warm", "branch", "steps"), [(0, 5, 9), (3, 8, 16), (10, 10, 12), (4, 30, 100)])
def test_wsd_run_follows_a_constant_trunk_until_its_cooldown(shape, warm, branch, steps):
    for trunk_steps in (branch, branch + 1, 3 * steps):
        for step in range(branch):
            wsd = lr_multiplier(
                step,
                steps,
                schedule="wsd",
                warmup_steps=warm,
                decay_steps=steps - branch,
                decay_shape=shape,
                min_lr_ratio=0.0,
            )
            assert wsd == lr_multiplier(step, trunk_steps, schedule="constant", warmup_steps=warm)
    first = lr_multiplier(branch, steps, schedule="wsd", warmup_steps=warm, decay_steps=steps - branch)
    assert first == 1.0  # the cooldown starts from the peak at the branch point


def test_absolute_warmup_does_not_depend_on_the_run_length():
    short = [lr_multiplier(s, 5, schedule="constant", warmup_steps=8) for s in range(5)]
    long = [lr_multiplier(s, 50, schedule="constant", warmup_steps=8) for s in range(5)]
    assert short == long == [(s + 1) / 8 for s in range(5)]


@pytest.mark.parametrize("r", [0.0, 0.1])
def test_one_minus_sqrt_cooldown(r):
    steps, decay = 20, 5  # cooldown steps 15..19, progress 0, 1/4, 1/2, 3/4, 1
    values = [
        lr_multiplier(s, steps, schedule="wsd", decay_steps=decay, decay_shape="1-sqrt", min_lr_ratio=r)
        for s in range(steps)
    ]
    assert values[:15] == [1.0] * 15
    assert values[15] == 1.0
    assert values[16] == pytest.approx(r + (1 - r) * 0.5)
    assert values[19] == pytest.approx(r)
    linear = lr_multiplier(16, steps, schedule="wsd", decay_steps=decay, min_lr_ratio=r)
    assert linear == pytest.approx(1 + (r - 1) * 0.25)
    assert values[16] < linear  # 1-sqrt drops faster at first


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
@pytest.mark.parametrize(
    ("total", "warmup_frac", "decay_frac"), [(1, 0.02, 0.2), (10, 0.1, 0.2), (97, 0.02, 0.35)]
)
def test_defaults_give_the_schedules_of_before(schedule, total, warmup_frac, decay_frac):
    kw = {"schedule": schedule, "warmup_frac": warmup_frac, "decay_frac": decay_frac, "min_lr_ratio": 0.1}
    before = [lr_multiplier(s, total, **kw) for s in range(total)]
    explicit = [
        lr_multiplier(s, total, **kw, warmup_steps=None, decay_steps=None, decay_shape="linear")
        for s in range(total)
    ]
    assert explicit == before
    warm = min(math.ceil(warmup_frac * total), total - 1) if total > 1 else 0
    absolute = [
        lr_multiplier(s, total, **kw, warmup_steps=warm, decay_steps=math.ceil(decay_frac * total))
        for s in range(total)
    ]
    assert absolute == before
    if schedule == "wsd" and total == 10:  # warm-up 1 step, decay over the last 2
        assert before == pytest.approx([1.0] * 9 + [0.1], abs=1e-15)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"decay_shape": "cosine"}, "decay_shape must be 'linear' or '1-sqrt'"),
        ({"warmup_steps": -1}, "warmup_steps must be None or an int >= 0"),
        ({"decay_steps": 2.5}, "decay_steps must be None or an int >= 0"),
    ],
)
def test_lr_multiplier_rejects_bad_lengths(kw, message):
    with pytest.raises(ValueError, match=message):
        lr_multiplier(0, 10, schedule="wsd", **kw)


# -------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        (
            "warmup_steps",
            -1,
            ValueError,
            "TrainConfig.warmup_steps must be None or a non-negative int, got -1",
        ),
        ("warmup_steps", 2.5, TypeError, "TrainConfig.warmup_steps"),
        ("decay_steps", 0, ValueError, "TrainConfig.decay_steps must be None or a positive int, got 0"),
        ("decay_shape", "sqrt", ValueError, "TrainConfig.decay_shape must be one of 'linear', '1-sqrt'"),
    ],
)
def test_new_train_config_fields_are_checked(field, value, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        TrainConfig(**{field: value})


def test_result_settings_keep_their_keys_at_the_defaults():
    assert set(result_settings(TrainConfig().to_dict())) == OLD_RESULT
    assert set(_result_settings(TrainConfig())) == OLD_RESULT
    assert {"warmup_steps", "decay_steps", "decay_shape"} <= set(RESULT_FIELDS)
    changed = TrainConfig(decay_steps=5, warmup_steps=0, decay_shape="1-sqrt")
    assert set(_result_settings(changed)) == OLD_RESULT | {"warmup_steps", "decay_steps", "decay_shape"}
    assert _result_settings(changed)["warmup_steps"] == 0  # 0 is set: only None is left out
    assert set(result_settings({"lr": 1e-3, "decay_steps": None, "threads": 2})) == {"lr"}


def test_checkpoint_fingerprints_keep_their_keys_at_the_defaults():
    model = nn.Linear(4, 4)
    optimizer = build_optimizer(model, TrainConfig(), torch.device("cpu"))

    def config_keys(config: TrainConfig) -> set[str]:
        return set(run_fingerprint(model, optimizer, config, ["map", 1, 10, 2], total_steps=3)["config"])

    assert config_keys(TrainConfig()) == OLD_TRAJECTORY
    assert config_keys(TrainConfig(decay_steps=5)) == OLD_TRAJECTORY | {"decay_steps"}


# -------------------------------------------------------------------------------------------------- the loop


def CountingLM() -> Dataset:
    return _CountingLM(512)


def TinyLM() -> nn.Module:
    return _TinyLM(16, dropout=0.2)


BASE = {
    "batch_size": BATCH,
    "lr": 1e-2,
    "eval_batches": 2,
    "log_every": 2,
    "eval_every": 4,
    "checkpoint_every_s": None,
    "warmup_steps": W,
    "threads": 1,
}
TRUNK = TrainConfig(**BASE, schedule="constant")
BRANCH = TrainConfig(**BASE, schedule="wsd", decay_steps=S - B, min_lr_ratio=0.0)


class Crash(Exception):
    pass


class Watch(Callback):
    """Records where the run started; raises at the log of step ``crash_at``."""

    def __init__(self, crash_at: int | None = None):
        self.crash_at, self.start_tokens = crash_at, None

    def on_train_start(self, info):
        self.start_tokens = info.start_step * info.tokens_per_step

    def on_log(self, step, tokens, train_loss, lr):
        if step == self.crash_at:
            raise Crash(f"injected at step {step}")


def fit(steps: int, config: TrainConfig, **kw):
    torch.manual_seed(0)
    model = TinyLM()
    out = train(
        model,
        CountingLM(),
        lm_loss,
        num_tokens=steps * TOKENS_PER_STEP,
        config=config,
        device="cpu",
        progress=False,
        **kw,
    )
    return out, model


def assert_identical(a, model_a, b, model_b):
    assert a.status == b.status == "completed"
    assert (a.steps, a.tokens_seen, a.final_loss, a.train_loss) == (
        b.steps,
        b.tokens_seen,
        b.final_loss,
        b.train_loss,
    )
    assert a.curve == b.curve
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    """A constant-LR trunk of T steps with branch points at B and 12 (written once for the module)."""
    folder = tmp_path_factory.mktemp("trunk")
    points = {B: folder / "at8.pt", 12: folder / "at12.pt"}
    out, _ = fit(T, TRUNK, branch_points=points)
    assert out.status == "completed"
    return points


@pytest.fixture(scope="module")
def scratch():
    """The branch's run (wsd, cooldown over the last S - B steps) trained from scratch, no checkpoint."""
    return fit(S, BRANCH)


def test_branch_points_hold_the_state_at_their_step(trunk):
    for step, path in trunk.items():
        saved = load_checkpoint(path)
        assert saved["step"] == step
        assert saved["loop"]["tokens_seen"] == step * TOKENS_PER_STEP
        assert saved["fingerprint"]["total_steps"] == T
        assert saved["fingerprint"]["config"]["schedule"] == "constant"
        assert [t for t, _ in saved["loop"]["curve"]] == [
            s * TOKENS_PER_STEP for s in range(4, step + 1, 4)
        ]  # the evaluations due up to and at the branch point
        assert {"model", "optimizer", "rng", "scaler", "data"} <= set(saved)


def test_branch_from_a_trunk_equals_the_same_run_from_scratch(trunk, scratch, caplog):
    watch = Watch()
    with caplog.at_level(logging.INFO, logger="flops_fit.training.loop"):
        branch, model = fit(S, BRANCH, init_checkpoint=trunk[B], callbacks=[watch])
    assert_identical(branch, model, *scratch)
    assert branch.resumed_from_step == B
    assert watch.start_tokens == B * TOKENS_PER_STEP  # a caller counts only the tokens trained in this call
    assert f"starting from trunk checkpoint {trunk[B]} at step {B} of {S}" in caplog.text
    assert load_checkpoint(trunk[B])["step"] == B  # the trunk's file is read, never changed


def test_one_minus_sqrt_branch_equals_its_run_from_scratch(trunk):
    config = TrainConfig(
        **{**BASE, "eval_every": 0}, schedule="wsd", decay_steps=S - 12, decay_shape="1-sqrt"
    )
    branch, model = fit(S, config, init_checkpoint=trunk[12])
    whole, whole_model = fit(S, config)
    assert branch.final_loss == whole.final_loss
    for a, b in zip(model.parameters(), whole_model.parameters(), strict=True):
        assert torch.equal(a, b)
    # the trunk's evaluations (eval_every 4) stay in the branch's curve
    assert [t for t, _ in branch.curve] == [
        4 * TOKENS_PER_STEP,
        8 * TOKENS_PER_STEP,
        12 * TOKENS_PER_STEP,
        S * TOKENS_PER_STEP,
    ]


def test_no_make_up_evaluation_at_a_trunk_start(tmp_path):
    trunk = tmp_path / "at8.pt"
    fit(10, TrainConfig(**{**BASE, "eval_every": 0}, schedule="constant"), branch_points={B: trunk})
    assert load_checkpoint(trunk)["loop"]["curve"] == []
    branch, _ = fit(S, BRANCH, init_checkpoint=trunk)  # eval_every 4: step 8 is an evaluation step
    assert [t for t, _ in branch.curve] == [s * TOKENS_PER_STEP for s in (12, 16)]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"lr": 2e-2}, "config.lr"), ({"warmup_steps": 2}, "config.warmup_steps"), ({"seed": 1}, "config.seed")],
)
def test_a_trunk_of_another_run_is_refused(trunk, change, named):
    config = TrainConfig(**{**BASE, **change}, schedule="wsd", decay_steps=S - B)
    with pytest.raises(
        ValueError, match=f"belongs to another run: it differs from this one in {named}"
    ) as info:
        fit(S, config, init_checkpoint=trunk[B])
    assert str(trunk[B]) in str(info.value)


def test_a_branch_whose_cooldown_starts_before_the_trunk_checkpoint_is_refused(trunk):
    early = TrainConfig(**BASE, schedule="wsd", decay_steps=S - B + 2)  # 1 at step 6, less from 7
    with pytest.raises(ValueError, match="another learning rate at step 7") as info:
        fit(S, early, init_checkpoint=trunk[B])
    assert f"decay_steps <= {S - B}" in str(info.value)


def test_a_trunk_checkpoint_at_or_past_the_branch_end_is_refused(trunk):
    with pytest.raises(ValueError, match="is at step 12, but this run has 12 steps"):
        fit(12, TrainConfig(**BASE, schedule="wsd", decay_steps=1), init_checkpoint=trunk[12])


def test_a_missing_trunk_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init_checkpoint .*missing"):
        fit(S, BRANCH, init_checkpoint=tmp_path / "nope.pt")


def test_a_branch_killed_in_its_cooldown_resumes_from_its_own_checkpoint(trunk, scratch, tmp_path):
    own = tmp_path / "branch.pt"
    config = TrainConfig(
        **{**BASE, "checkpoint_every_steps": 1}, schedule="wsd", decay_steps=S - B, min_lr_ratio=0.0
    )
    crashed, _ = fit(S, config, init_checkpoint=trunk[B], checkpoint_path=own, callbacks=[Watch(crash_at=14)])
    assert crashed.status == "failed" and "injected at step 14" in crashed.error
    saved = load_checkpoint(own)
    assert saved["step"] == 12 and saved["fingerprint"]["total_steps"] == S  # the branch's own
    moved = tmp_path / "trunk_moved_away.pt"
    os.replace(trunk[B], moved)  # the retry must not need the trunk
    try:
        resumed, model = fit(S, config, init_checkpoint=trunk[B], checkpoint_path=own)
    finally:
        os.replace(moved, trunk[B])
    assert resumed.resumed_from_step == 12
    assert_identical(resumed, model, *scratch)
    assert not own.exists()


def test_a_resumed_trunk_leaves_finished_branch_points_alone(tmp_path):
    points = {4: tmp_path / "at4.pt", 12: tmp_path / "at12.pt", 18: tmp_path / "at18.pt"}
    own = tmp_path / "trunk.pt"
    config = TrainConfig(**{**BASE, "checkpoint_every_steps": 4}, schedule="constant")
    crashed, _ = fit(T, config, branch_points=points, checkpoint_path=own, callbacks=[Watch(crash_at=14)])
    assert crashed.status == "failed" and load_checkpoint(own)["step"] == 12
    assert not points[18].exists()
    before = {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in points.items() if s < 18}
    resumed, _ = fit(T, config, branch_points=points, checkpoint_path=own)
    assert resumed.resumed_from_step == 12
    assert {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in points.items() if s < 18} == before
    assert load_checkpoint(points[18])["step"] == 18


def test_a_branch_point_file_of_another_run_is_replaced(tmp_path):
    path = tmp_path / "at4.pt"
    fit(6, TrainConfig(**{**BASE, "lr": 2e-2}, schedule="constant"), branch_points={4: path})
    fit(6, TRUNK, branch_points={4: path})
    assert load_checkpoint(path)["fingerprint"]["config"]["lr"] == TRUNK.lr


@pytest.mark.parametrize(
    ("points", "error", "message"),
    [
        ([4], TypeError, "branch_points must be a mapping"),
        ({0: "a.pt"}, ValueError, "branch_points keys must be optimiser steps >= 1, got 0"),
        ({4: 3}, TypeError, r"branch_points\[4\] must be a path"),
        ({T + 1: "a.pt"}, ValueError, rf"branch_points \[{T + 1}\] lie past the run's last step \({T}\)"),
    ],
)
def test_bad_branch_points_are_refused_before_training(points, error, message):
    with pytest.raises(error, match=message):
        fit(T, TRUNK, branch_points=points)


def test_a_branch_point_may_not_be_the_runs_own_checkpoint(tmp_path):
    own = tmp_path / "trunk.pt"
    with pytest.raises(ValueError, match="branch_points names checkpoint_path"):
        fit(T, TRUNK, branch_points={4: str(own)}, checkpoint_path=own)


class Rates(Callback):
    def __init__(self):
        self.lr: dict[int, float] = {}

    def on_log(self, step, tokens, train_loss, lr):
        self.lr[step] = lr


def test_the_loop_follows_the_absolute_warmup_and_the_cooldown_shape():
    config = TrainConfig(
        **{**BASE, "log_every": 1}, schedule="wsd", decay_steps=6, decay_shape="1-sqrt", min_lr_ratio=0.0
    )
    rates = Rates()
    out, _ = fit(12, config, callbacks=[rates])
    assert out.status == "completed"
    expected = {
        s + 1: config.lr
        * lr_multiplier(
            s, 12, schedule="wsd", warmup_steps=W, decay_steps=6, decay_shape="1-sqrt", min_lr_ratio=0.0
        )
        for s in range(12)
    }
    assert rates.lr == pytest.approx(expected, rel=1e-12)
    assert rates.lr[1] == pytest.approx(config.lr / W) and rates.lr[12] == 0.0
    assert rates.lr[8] == pytest.approx(config.lr * (1 - math.sqrt(0.2)))  # step 7: progress 1/5


def test_a_branch_point_missing_at_the_resumed_step_is_written_on_resume(tmp_path):
    """A Ctrl-C can checkpoint a step before its branch point was written: the resumed trunk writes it."""
    point, own = tmp_path / "at12.pt", tmp_path / "trunk.pt"
    config = TrainConfig(**{**BASE, "checkpoint_every_steps": 4}, schedule="constant")
    fit(T, config, branch_points={12: point}, checkpoint_path=own, callbacks=[Watch(crash_at=14)])
    first = load_checkpoint(point)
    point.unlink()
    resumed, _ = fit(T, config, branch_points={12: point}, checkpoint_path=own)
    assert resumed.resumed_from_step == 12
    again = load_checkpoint(point)
    assert again["step"] == 12 and again["loop"]["curve"] == first["loop"]["curve"]
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
