"""The sweep runner: local training, resume after a crash or Ctrl-C, failures, mock and function modes."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import flops_fit
import flops_fit.training.jobs as runner_mod
from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.core.ledger import read_records
from flops_fit.core.runs import load_runs
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training import Callback, MockLaw, TrainConfig, TrainingRunner, load_results

VOCAB, SEQ, BATCH = 11, 16, 8


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


class TinyLM(nn.Module):
    """Embedding -> MLP -> logits; dropout makes an exact resume depend on the restored RNG state."""

    def __init__(self, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, VOCAB)
        )

    def forward(self, x):
        return self.body(self.emb(x))


def non_embedding(width: int) -> int:
    return width * width + width + width * VOCAB + VOCAB


def lm_loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def make_plan(widths=(8, 16, 24), steps=16, lrs=None) -> SweepPlan:
    """A hand-made plan: one budget per width is fine for the runner (it does not fit anything)."""
    experiments = []
    for i, width in enumerate(widths):
        n = non_embedding(width)
        tokens = steps * BATCH * SEQ
        lr = None if lrs is None else lrs[i]
        fields = {"width": width, "tokens": tokens, "lr": lr}
        experiments.append(
            Experiment(
                experiment_id=experiment_id(fields),
                compute_budget=6.0 * n * tokens,
                size_value=width,
                num_params=n,
                num_tokens=tokens,
                flops_per_token=6.0 * n,
                epochs=None,
                learning_rate=lr,
                batch_size=BATCH,
                tokens_per_sample=SEQ,
                num_steps=steps,
                flops="6nd",
                seed=0,
            )
        )
    return SweepPlan(
        experiments=tuple(experiments),
        flops="6nd",
        param_count="non_embedding",
        model=ModelSpec(TinyLM, "width"),
    )


CFG = TrainConfig(
    lr=3e-2,
    eval_batches=2,
    log_every=2,
    eval_every=4,
    checkpoint_every_s=None,
    checkpoint_every_steps=4,
)


def local_runner(out, plan=None, **kw) -> TrainingRunner:
    kw.setdefault("dataset", CountingLM())
    kw.setdefault("loss_fn", lm_loss)
    kw.setdefault("train_config", CFG)
    return TrainingRunner(
        "local", plan=plan or make_plan(), output_dir=out, device="cpu", progress=False, **kw
    )


class Crash(BaseException):
    """Not an Exception: train() lets it through, like a crash of the process."""


class RaiseAt(Callback):
    """Raise ``exc`` in the ``experiment``-th run (1-based) once ``step`` steps are done."""

    def __init__(self, experiment: int, step: int, action=None):
        self.experiment, self.step, self.count = experiment, step, 0
        self.action = action or (lambda: (_ for _ in ()).throw(Crash(f"injected at step {step}")))

    def on_train_start(self, info):
        self.count += 1

    def on_log(self, step, tokens, train_loss, lr):
        if self.count == self.experiment and step == self.step:
            self.action()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the default plan: the records every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    local_runner(out).run_sweep()
    return {r["experiment_id"]: r for r in read_records(out / "results.jsonl")}


def assert_same_results(records, reference):
    assert [r["experiment_id"] for r in records] == list(reference)
    for r in records:
        ref = reference[r["experiment_id"]]
        assert r["status"] == ref["status"] == "completed"
        assert r["num_tokens"] == ref["num_tokens"] and r["steps"] == ref["steps"]
        assert r["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
        assert [t for t, _ in r["curve"]] == [t for t, _ in ref["curve"]]
        assert [v for _, v in r["curve"]] == pytest.approx([v for _, v in ref["curve"]], abs=1e-6)


# ------------------------------------------------------------------------------------------ local mode


def test_local_sweep_learns_and_writes_the_runs_table(tmp_path, reference):
    plan = make_plan()
    runner = local_runner(tmp_path, plan)
    lines = (tmp_path / "results.jsonl").read_text().splitlines() if runner.results_path.exists() else []
    assert lines == [] and len(runner.pending()) == 3
    runs = runner.run_sweep()

    records = [json.loads(line) for line in runner.results_path.read_text().splitlines()]
    assert [r["experiment_id"] for r in records] == [e.experiment_id for e in plan]
    assert_same_results(records, reference)  # same seeds: the same numbers as the module's reference run
    for r, e in zip(records, plan, strict=True):
        assert r["status"] == "completed" and r["error"] is None
        first, last = r["curve"][0][1], r["curve"][-1][1]
        assert last == r["final_loss"]
        assert last < first - 0.3 and last < math.log(VOCAB) - 0.5  # it learned the counting task
        assert r["num_tokens"] == e.num_steps * BATCH * SEQ == r["planned_tokens"]
        assert r["actual_flops"] == pytest.approx(e.flops_per_token * r["num_tokens"])
        assert r["num_params"] == e.num_params == r["model_num_params"]
        assert r["compute_budget"] == e.compute_budget and r["size_value"] == e.size_value
        assert r["learning_rate"] == CFG.lr and r["batch_size"] == BATCH and r["seed"] == 0
        assert r["mode"] == "local" and r["flops_convention"] == "6nd" and r["resumed_from_step"] is None
        assert r["wall_time_s"] > 0 and r["tokens_per_s"] > 0 and r["timestamp"]
    assert list(runs["experiment_id"]) == [e.experiment_id for e in plan]
    assert set(runs["status"]) == {"completed"}
    table = load_runs(runner.results_path)
    assert list(table["final_loss"]) == pytest.approx(list(runs["final_loss"]))
    assert SweepPlan.load(tmp_path / "sweep.json").to_dict() == plan.to_dict()
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert runner.pending() == []


def test_finished_experiments_are_skipped(tmp_path, monkeypatch):
    runner = TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, progress=False)
    first = runner.run_sweep()
    before = runner.results_path.read_bytes()

    def nothing_to_run(*args, **kwargs):
        raise AssertionError("nothing should run again")

    monkeypatch.setattr(runner_mod.MockLaw, "simulate", nothing_to_run)
    again = TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, progress=False).run_sweep()
    assert runner.results_path.read_bytes() == before
    assert list(again["final_loss"]) == list(first["final_loss"])


def test_resume_after_injected_crash_equals_uninterrupted_run(tmp_path, reference):
    plan = make_plan()
    crashing = local_runner(tmp_path, plan, callbacks=[RaiseAt(experiment=2, step=10)])
    with pytest.raises(Crash):
        crashing.run_sweep()
    assert [r["experiment_id"] for r in read_records(crashing.results_path)] == [
        plan.experiments[0].experiment_id
    ]
    second = plan.experiments[1].experiment_id
    assert (tmp_path / "checkpoints" / f"{second}.pt").exists()  # saved at step 8

    runs = local_runner(tmp_path, plan).run_sweep()
    records = read_records(tmp_path / "results.jsonl")
    assert_same_results(records, reference)
    assert [r["resumed_from_step"] for r in records] == [None, 8, None]
    assert len(runs) == 3 and list((tmp_path / "checkpoints").iterdir()) == []


def test_ctrl_c_checkpoints_writes_nothing_and_says_how_to_resume(tmp_path, reference):
    plan = make_plan()
    sigint = RaiseAt(experiment=2, step=6, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    runner = local_runner(tmp_path, plan, callbacks=[sigint])
    with pytest.raises(
        KeyboardInterrupt,
        match=r"interrupted during experiment \w+ \(1 of 3 experiments done\); run the same command again to resume from its checkpoint",
    ):
        runner.run_sweep()
    assert len(read_records(runner.results_path)) == 1
    local_runner(tmp_path, plan).run_sweep()
    records = read_records(runner.results_path)
    assert_same_results(records, reference)
    assert records[1]["resumed_from_step"] == 7  # the step in flight finished, then it stopped


def test_corrupt_checkpoint_is_discarded_and_the_experiment_restarts(tmp_path, reference, caplog):
    plan = make_plan()
    first = plan.experiments[0].experiment_id
    (tmp_path / "checkpoints").mkdir(parents=True)
    (tmp_path / "checkpoints" / f"{first}.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        local_runner(tmp_path, plan).run_sweep()
    assert "discarding corrupt checkpoint" in caplog.text
    records = read_records(tmp_path / "results.jsonl")
    assert_same_results(records, reference)
    assert records[0]["resumed_from_step"] is None


class NaNLM(TinyLM):
    def forward(self, x):
        return super().forward(x) * float("nan")


class BrokenLM(TinyLM):
    """Fails in its 7th training forward pass (a bug that shows up mid-run)."""

    def __init__(self, width: int):
        super().__init__(width)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 7:
                raise RuntimeError("boom")
        return super().forward(x)


def flaky_models(width: int) -> nn.Module:
    return {8: TinyLM, 16: NaNLM, 24: BrokenLM}[width](width)


def test_diverged_and_failed_runs_are_recorded_and_skipped(tmp_path, monkeypatch):
    plan = make_plan()
    ids = [e.experiment_id for e in plan]
    runs = local_runner(tmp_path, plan, model=flaky_models).run_sweep()
    assert list(runs["status"]) == ["completed", "diverged", "failed"]
    records = read_records(tmp_path / "results.jsonl")
    assert "training loss became nan" in records[1]["error"] and records[1]["final_loss"] is None
    assert "RuntimeError: boom" in records[2]["error"] and records[2]["steps"] == 6
    assert math.isnan(runs["final_loss"][2])
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the failure is final: no checkpoint kept

    calls = []
    real_train = runner_mod.train
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    local_runner(tmp_path, plan, model=flaky_models).run_sweep()
    assert calls == [] and len(read_records(tmp_path / "results.jsonl")) == 3

    retry = local_runner(tmp_path, plan, model=flaky_models, retry_failed=True)
    assert [e.experiment_id for e in retry.pending()] == [ids[2]]
    runs = retry.run_sweep()
    assert len(calls) == 1 and len(read_records(tmp_path / "results.jsonl")) == 4
    assert list(runs["experiment_id"]) == ids and list(runs["status"]) == ["completed", "diverged", "failed"]
    assert (tmp_path / "checkpoints" / f"{ids[2]}.pt").exists()  # kept so that the next retry resumes


def test_model_that_cannot_be_built_is_a_failed_run(tmp_path):
    def factory(width):
        if width == 16:
            raise RuntimeError("out of memory")
        return TinyLM(width)

    runs = local_runner(tmp_path, model=factory).run_sweep()
    assert list(runs["status"]) == ["completed", "failed", "completed"]
    assert "building the model failed: RuntimeError: out of memory" in runs["error"][1]


def test_plan_learning_rate_and_train_config_from_the_plan(tmp_path, caplog):
    plan = make_plan(widths=(8, 16, 24), steps=4, lrs=[1e-3, 2e-3, 3e-3])
    plan = SweepPlan(
        experiments=plan.experiments,
        flops=plan.flops,
        param_count=plan.param_count,
        model=plan.model,
        config={
            "train_config": {"eval_batches": 1, "log_every": 1, "checkpoint_every_s": None, "notes": "v2"}
        },
    )
    with caplog.at_level(logging.WARNING):
        runner = TrainingRunner(
            "local", plan=plan, output_dir=tmp_path, dataset=CountingLM(), loss_fn=lm_loss, progress=False
        )
    assert "['notes'] that TrainConfig does not have" in caplog.text
    assert runner.train_config == TrainConfig(eval_batches=1, log_every=1, checkpoint_every_s=None)
    runs = runner.run_sweep()
    assert list(runs["learning_rate"]) == [1e-3, 2e-3, 3e-3]


# ------------------------------------------------------------------------------------------ mock mode


def test_mock_mode_is_byte_identical_and_follows_the_law(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: pytest.fail("mock mode must not train"))
    plan = make_plan(widths=(8, 16, 24, 32))
    a = TrainingRunner("mock", plan=plan, output_dir=tmp_path / "a", seed=3, progress=False)
    b = TrainingRunner("mock", plan=plan, output_dir=tmp_path / "b", seed=3, progress=False)
    runs = a.run_sweep()
    b.run_sweep()
    assert a.results_path.read_bytes() == b.results_path.read_bytes()
    assert (tmp_path / "a" / "sweep.json").read_bytes() == (tmp_path / "b" / "sweep.json").read_bytes()
    before = a.results_path.read_bytes()
    a.run_sweep()
    assert a.results_path.read_bytes() == before  # nothing re-run

    law = MockLaw()
    for r, e in zip(read_records(a.results_path), plan, strict=True):
        exact = law.loss(e.num_params, e.num_tokens)
        assert abs(math.log(r["final_loss"] / exact)) < 5 * law.noise
        assert r["curve"][-1] == [e.num_tokens, r["final_loss"]] and len(r["curve"]) == law.curve_points
        assert r["curve"][0][1] > r["final_loss"]
        assert r["actual_flops"] == e.planned_flops and r["mode"] == "mock"
        assert "timestamp" not in r and "wall_time_s" not in r
    assert set(runs["status"]) == {"completed"}

    other = TrainingRunner("mock", plan=plan, output_dir=tmp_path / "c", seed=4, progress=False).run_sweep()
    assert list(other["final_loss"]) != list(runs["final_loss"])
    exact = TrainingRunner(
        "mock", plan=plan, output_dir=tmp_path / "d", mock_law={"noise": 0.0, "E": 2.0}, progress=False
    ).run_sweep()
    want = [MockLaw(E=2.0).loss(e.num_params, e.num_tokens) for e in plan]
    assert list(exact["final_loss"]) == pytest.approx(want, rel=1e-12)


def test_resume_from_the_output_dir_and_legacy_results(tmp_path, caplog):
    plan = make_plan(widths=(8, 16, 24, 32))
    first, second = plan.experiments[:2]
    legacy = [
        {
            "experiment_id": first.experiment_id,
            "compute_budget": 1.0,
            "num_params": 2.0,
            "num_tokens": 3.0,
            "final_loss": 4.0,
            "status": "completed",
        }
    ]
    (tmp_path / "results.json").write_text(json.dumps(legacy))
    plan.save(tmp_path / "sweep.json")
    runner = TrainingRunner("mock", output_dir=tmp_path, progress=False)  # the plan comes from sweep.json
    assert runner.pending()[0].experiment_id == second.experiment_id
    with open(runner.results_path, "w") as fh:  # a writer killed mid-line left a torn record
        fh.write('{"experiment_id": "' + second.experiment_id + '", "status": "compl')
    with caplog.at_level(logging.WARNING):
        runs = runner.run_sweep()
    assert "not valid JSON" in caplog.text
    assert len(runs) == 4 and runs["final_loss"][0] == 4.0
    ids = [r["experiment_id"] for r in load_results(runner.results_path)]
    assert ids == [e.experiment_id for e in plan.experiments[1:]]
    assert [r["experiment_id"] for r in load_results(tmp_path)] == [e.experiment_id for e in plan]
    assert load_runs(runner.results_path)["experiment_id"].tolist() == ids


def test_changed_plan_keeps_going_and_reports_orphans(tmp_path, caplog):
    old = make_plan(widths=(8, 16, 24))
    TrainingRunner("mock", plan=old, output_dir=tmp_path, progress=False).run_sweep()
    new = make_plan(widths=(16, 24, 32))
    with caplog.at_level(logging.WARNING):
        runs = TrainingRunner("mock", plan=new, output_dir=tmp_path, progress=False).run_sweep()
    assert old.experiments[0].experiment_id in caplog.text and "1 experiment(s) new, 1 dropped" in caplog.text
    assert len(read_records(tmp_path / "results.jsonl")) == 4 and len(runs) == 4
    assert SweepPlan.load(tmp_path / "sweep.json").to_dict() == new.to_dict()


def test_a_killed_write_of_sweep_json_leaves_nothing_behind_on_the_next_run(tmp_path):
    plan = make_plan()
    TrainingRunner("mock", plan=plan, output_dir=tmp_path, progress=False).run_sweep()
    torn = tmp_path / ".sweep.json.4242-0badcafe.tmp"  # named as flops_fit.core.io names its temporaries
    torn.write_text('{"version": 1, "experim')
    TrainingRunner("mock", output_dir=tmp_path, progress=False).run_sweep()  # resumes from sweep.json
    assert not torn.exists()
    assert SweepPlan.load(tmp_path / "sweep.json").to_dict() == plan.to_dict()


# ------------------------------------------------------------------------------------------ function mode


def test_function_mode_validates_and_records(tmp_path):
    plan = make_plan()
    seen = []

    def train_fn(e):
        seen.append(e)
        if e.size_value == 16:
            raise OSError("cluster job lost")
        return {"final_loss": 3.0 - e.size_value / 100, "num_tokens": e.num_tokens + 1, "job": "j-1"}

    runner = TrainingRunner("function", plan=plan, output_dir=tmp_path, train_fn=train_fn, progress=False)
    runs = runner.run_sweep()
    assert [e.experiment_id for e in seen] == [e.experiment_id for e in plan]
    assert all(isinstance(e, Experiment) for e in seen)
    assert list(runs["status"]) == ["completed", "failed", "completed"]
    assert runs["error"][1] == "OSError: cluster job lost"
    rec = read_records(runner.results_path)[2]
    assert rec["final_loss"] == pytest.approx(2.76) and rec["job"] == "j-1"
    assert rec["num_tokens"] == plan.experiments[2].num_tokens + 1
    assert rec["actual_flops"] == pytest.approx(plan.experiments[2].flops_per_token * rec["num_tokens"])
    assert rec["mode"] == "function" and rec["wall_time_s"] >= 0


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        (2.5, TypeError, "must return a dict"),
        ({"loss": 2.5}, ValueError, "final_loss=None"),
        ({"final_loss": float("nan")}, ValueError, "finite number"),
        ({"final_loss": 2.5, "status": "ok"}, ValueError, "status='ok'"),
        ({"final_loss": 2.5, "curve": [1, 2]}, ValueError, "curve"),
        ({"final_loss": 2.5, "compute_budget": 1.0}, ValueError, "the plan says"),
        ({"final_loss": 2.5, "extra": object()}, TypeError, "JSON"),
    ],
)
def test_function_mode_rejects_malformed_results(tmp_path, result, error, match):
    runner = TrainingRunner("function", plan=make_plan(), output_dir=tmp_path, train_fn=lambda e: result)
    with pytest.raises(error, match=match):
        runner.run_sweep()
    assert not runner.results_path.exists()


def test_function_mode_accepts_diverged_without_loss(tmp_path):
    runner = TrainingRunner(
        "function",
        plan=make_plan(),
        output_dir=tmp_path,
        train_fn=lambda e: {"status": "diverged", "error": "loss spike"},
        progress=False,
    )
    runs = runner.run_sweep()
    assert set(runs["status"]) == {"diverged"} and runs["final_loss"].isna().all()


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "remote"}, ValueError, "mode must be one of"),
        ({"mode": "local", "dataset": None}, ValueError, "needs dataset="),
        ({"mode": "local", "loss_fn": "ce"}, TypeError, "loss_fn"),
        ({"mode": "local", "model": TinyLM(8)}, TypeError, "not an nn.Module instance"),
        ({"mode": "local", "train_config": {"lr": 1e-3, "warmup": 0.1}}, ValueError, "unknown TrainConfig"),
        (
            {"mode": "local", "train_config": TrainConfig(batch_size=48, micro_batch_size=3)},
            ValueError,
            "does not fit",
        ),
        ({"mode": "local", "device": "cuda:7"}, ValueError, "CUDA"),
        ({"mode": "local", "callbacks": [print]}, TypeError, "subclass"),
        ({"mode": "mock", "progress": "maybe"}, TypeError, "progress must be True or False"),
        ({"mode": "function", "train_fn": "script.sh"}, TypeError, "train_fn"),
        ({"mode": "mock", "seed": -1}, ValueError, "seed"),
        ({"mode": "mock", "mock_law": {"gamma": 1}}, ValueError, "unknown key"),
        ({"mode": "mock", "sweep_path": "plan.json"}, ValueError, "not both"),
        ({"mode": "mock", "plan": {"experiments": []}}, TypeError, "SweepPlan"),
        ({"mode": "mock", "retry_failed": "yes"}, TypeError, "retry_failed"),
    ],
)
def test_bad_arguments_fail_before_any_compute(tmp_path, kwargs, error, match):
    args = {
        "plan": make_plan(),
        "output_dir": tmp_path,
        "dataset": CountingLM(64),
        "loss_fn": lm_loss,
        "device": "cpu",
        **kwargs,
    }
    if args.get("plan") is None:
        del args["plan"]
    with pytest.raises(error, match=match):
        TrainingRunner(**args)
    assert list(tmp_path.iterdir()) == []  # nothing created, not even the output folder's contents


def test_bad_paths_and_ids(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path / "file")
    with pytest.raises(ValueError, match="no plan"):
        TrainingRunner("mock", output_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainingRunner("mock", sweep_path=tmp_path / "missing.json", output_dir=tmp_path / "o")
    plan = make_plan()
    for bad in ("../../escape", ".hidden", "a/b", ""):
        e = plan.experiments[0]
        evil = SweepPlan(
            experiments=(Experiment(**{**e.to_dict(), "experiment_id": bad}),),
            flops="6nd",
            param_count="non_embedding",
        )
        with pytest.raises(ValueError, match="not a safe file name"):
            TrainingRunner("mock", plan=evil, output_dir=tmp_path / "o")
    twice = SweepPlan(experiments=plan.experiments[:1] * 2, flops="6nd", param_count="non_embedding")
    with pytest.raises(ValueError, match="appears twice"):
        TrainingRunner("mock", plan=twice, output_dir=tmp_path / "o")


def test_data_too_small_for_the_largest_run_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: pytest.fail("must not train"))
    runner = local_runner(tmp_path, make_plan(steps=40), dataset=CountingLM(64))
    with pytest.raises(ValueError, match=r"needs 5,120 training tokens .* holds 768"):
        runner.run_sweep()
    assert not runner.results_path.exists()


def test_progress_display_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    runner = TrainingRunner(
        "local",
        plan=make_plan(steps=4),
        output_dir=tmp_path,
        dataset=CountingLM(),
        loss_fn=lm_loss,
        train_config=CFG,
        device="cpu",
    )
    runs = runner.run_sweep()
    assert set(runs["status"]) == {"completed"}
    err = capsys.readouterr().err
    assert "sweep" in err and "3/3 experiments" in err and "FLOP/s" in err


def test_records_made_another_way_are_not_taken_as_finished(tmp_path, caplog):
    """A mock loss is never reused as a trained one (nor one of another mock seed or law): such
    experiments run again, with a warning, and their new records supersede the old ones."""
    plan = make_plan(widths=(8, 16))
    TrainingRunner("mock", plan=plan, output_dir=tmp_path, seed=3, progress=False).run_sweep()
    mock_losses = [r["final_loss"] for r in read_records(tmp_path / "results.jsonl")]

    same = TrainingRunner("mock", plan=plan, output_dir=tmp_path, seed=3, progress=False)
    assert same.pending() == []
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        assert (
            len(TrainingRunner("mock", plan=plan, output_dir=tmp_path, seed=4, progress=False).pending()) == 2
        )
    assert "2 finished record(s)" in caplog.text and "mode='mock' here" in caplog.text

    caplog.clear()
    local = TrainingRunner(
        "local", plan=plan, output_dir=tmp_path, dataset=CountingLM(), loss_fn=lm_loss, progress=False
    )
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        runs = local.run_sweep()
    assert "were made another way" in caplog.text
    assert list(runs["mode"]) == ["local", "local"] and list(runs["final_loss"]) != mock_losses
    assert local.pending() == []


def test_a_second_runner_on_the_same_folder_is_refused(tmp_path):
    """While one runner writes a sweep folder, another one on it stops at once (EBUSY, naming the holder)
    instead of racing it for the ledger; the lock goes with the runner."""
    import errno
    import multiprocessing

    from flops_fit.core.ledger import exclusive_folder

    ctx = multiprocessing.get_context("fork")
    holding, release = ctx.Event(), ctx.Event()

    def hold() -> None:
        with exclusive_folder(tmp_path):
            holding.set()
            release.wait(30)

    other = ctx.Process(target=hold)
    other.start()
    try:
        assert holding.wait(30)
        with pytest.raises(OSError, match=rf"another flops-fit runner \(process {other.pid}\)") as info:
            TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, progress=False).run_sweep()
        assert info.value.errno == errno.EBUSY
        assert not (tmp_path / "results.jsonl").exists()
    finally:
        release.set()
        other.join(30)
    assert len(TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, progress=False).run_sweep()) == 3


def test_runs_trained_with_other_settings_are_not_taken_as_finished(tmp_path, caplog):
    """A plan that records no train_config keeps its ids whatever the runner trains with; the records say
    what they were trained with, so a resumed sweep with another learning rate trains again."""
    plan = make_plan(widths=(8,), steps=4)
    first = local_runner(tmp_path, plan, train_config=TrainConfig(lr=3e-2, eval_batches=1, log_every=1))
    first.run_sweep()
    same = local_runner(tmp_path, plan, train_config=TrainConfig(lr=3e-2, eval_batches=1, log_every=2))
    assert same.pending() == []  # log_every does not change a result
    other = local_runner(tmp_path, plan, train_config=TrainConfig(lr=1e-3, eval_batches=1, log_every=1))
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        assert [e.experiment_id for e in other.pending()] == [plan.experiments[0].experiment_id]
    assert "result-changing train_config" in caplog.text
    runs = other.run_sweep()
    assert list(runs["learning_rate"]) == [1e-3]


def test_ray_options_are_the_executor_in_one_object(tmp_path):
    """executor=RayOptions(...) is executor='ray' with its three keywords; giving one twice is an error."""
    pytest.importorskip("ray")
    from flops_fit.training import MockJob, RayOptions

    plan = flops_fit.SweepPlanner.from_budgets([1e17, 1e18], 3).plan()
    runner = TrainingRunner(plan, job=MockJob(), output_dir=tmp_path,
                            executor=RayOptions(address="auto", resources={"CPU": 1}, max_retries=1))  # fmt: skip
    assert (runner.executor, runner.ray_address, runner.resources, runner.max_retries) == (
        "ray", "auto", {"CPU": 1.0}, 1
    )  # fmt: skip
    with pytest.raises(ValueError, match="max_retries given beside executor=RayOptions"):
        TrainingRunner(plan, job=MockJob(), output_dir=tmp_path, executor=RayOptions(), max_retries=5)
