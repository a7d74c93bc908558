"""WSD sweeps trained for real (issue 19): branches start from their trunk's checkpoint, survive crashes
anywhere, are recorded one per endpoint, and fail with their trunk's reason."""

from __future__ import annotations

import logging
import math
import warnings

import pytest

import flops_fit.training.trunks as trunks_mod
from flops_fit import SweepPlanner
from flops_fit.core.ledger import read_records
from flops_fit.core.outcome import TrainOutcome
from flops_fit.plan.spec import ModelSpec
from flops_fit.report.analyzer import ScalingLawAnalyzer
from flops_fit.report.result import Result
from flops_fit.training import Callback, TrainConfig, TrainingRunner
from test_runner import CountingLM, TinyLM, lm_loss

VOCAB, SEQ, BATCH = 11, 16, 8
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


CFG = TrainConfig(
    lr=3e-2, eval_batches=2, log_every=2, eval_every=8, checkpoint_every_s=None, checkpoint_every_steps=4
)


def wsd_plan(validate: int = 0):
    spec = ModelSpec(TinyLM, "width", size_values=[4, 6, 8, 12, 16, 24, 32, 48])
    design = {"kind": "wsd", "validate": validate} if validate else "wsd"
    planner = SweepPlanner.from_budgets(
        [3e6, 6e6, 1.2e7],
        3,
        model=spec,
        batch_size=BATCH,
        tokens_per_sample=SEQ,
        size_span=2.0,
        design=design,
    )
    with pytest.warns(UserWarning):  # few optimiser steps: a test, not a study
        return planner.plan()


def run(out, plan=None, **kw):
    runner = TrainingRunner(
        "local", plan=plan or wsd_plan(), output_dir=out, dataset=CountingLM(2048), loss_fn=lm_loss, train_config=CFG,
        device="cpu", progress=False, **kw,
    )  # fmt: skip
    return runner, runner.run_sweep()


def losses(out) -> dict[str, float]:
    return {r["experiment_id"]: r["final_loss"] for r in read_records(out / "results.jsonl")}


def test_branches_start_from_their_trunk_and_the_folder_is_tidied(tmp_path) -> None:
    runner, _runs = run(tmp_path)
    plan = runner.plan
    assert len(plan.trunks) < len(plan)
    records = read_records(tmp_path / "results.jsonl")
    assert len(records) == len(plan)
    for r in records:
        e = plan.get(r["experiment_id"])
        assert r["status"] == "completed" and math.isfinite(r["final_loss"])
        assert r["resumed_from_step"] == e.branch_step and r["trunk_id"] == e.trunk_id
        assert r["train_config"]["schedule"] == "wsd"
        assert r["train_config"]["decay_steps"] == e.num_steps - e.branch_step
        assert r["curve"][0][0] < e.branch_step * e.tokens_per_step  # the trunk's evaluations are in it
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three budgets of a tiny model: fragile fits, warned
        summary = Result.from_runs(_runs, plan=plan, bootstrap=0).summary()
    assert (
        f"WSD design: {len(plan)} cooldown branches of {len(plan.trunks)} constant-learning-rate trunks"
        in summary
    )


def test_crash_in_a_trunk_or_a_branch_resumes_to_the_same_losses(tmp_path, monkeypatch) -> None:
    _, _ = run(tmp_path / "clean")
    calls = {"n": 0}
    real = trunks_mod.train

    class Crash(BaseException):
        pass

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third trunk segment dies half-way (after a checkpoint)
            kwargs = {**kwargs, "callbacks": [_Raise(Crash, step=4)]}
        return real(*args, **kwargs)

    monkeypatch.setattr(trunks_mod, "train", crashing)
    with pytest.raises(Crash):
        run(tmp_path / "crashed")
    assert list((tmp_path / "crashed" / "checkpoints").glob("*.pt"))  # trunk state kept for the resume
    monkeypatch.setattr(trunks_mod, "train", real)
    with pytest.raises(Crash):  # a branch dies in its cooldown
        run(tmp_path / "crashed", callbacks=[_Raise(Crash, step=None)])
    run(tmp_path / "crashed")
    assert losses(tmp_path / "crashed") == losses(tmp_path / "clean")


class _Raise(Callback):
    """Raise ``exc`` at ``step`` (None: at the first log of a run that started from a trunk checkpoint)."""

    def __init__(self, exc: type[BaseException], step: int | None):
        self.exc, self.step, self.start = exc, step, 0

    def on_train_start(self, info):
        self.start = getattr(info, "start_step", 0)

    def on_log(self, step, tokens, train_loss, lr):
        if (self.step is not None and step == self.step) or (
            self.step is None and self.start and step > self.start
        ):
            raise self.exc(f"injected at step {step}")


def test_a_failed_trunk_fails_its_branches_with_its_reason_once(tmp_path, monkeypatch) -> None:
    calls = []

    def failing(*args, **kwargs):
        calls.append(kwargs["checkpoint_path"])
        return TrainOutcome(
            status="failed", final_loss=math.nan, train_loss=math.nan, tokens_seen=0, steps=0, flops=0.0,
            wall_time_s=0.0, tokens_per_s=math.nan, error="out of memory (injected)", flops_per_token=1.0,
        )  # fmt: skip

    monkeypatch.setattr(trunks_mod, "train", failing)
    runner, _ = run(tmp_path)
    records = read_records(tmp_path / "results.jsonl")
    assert {r["status"] for r in records} == {"failed"}
    assert all("trunk" in r["error"] and "out of memory (injected)" in r["error"] for r in records)
    assert len(calls) == len(runner.plan.trunks)  # each trunk tried once, not once per branch


def test_modes_that_train_from_scratch_refuse_a_wsd_plan(tmp_path) -> None:
    with pytest.raises(ValueError, match="cooldown branches of shared trunks"):
        TrainingRunner(
            "function", plan=wsd_plan(), output_dir=tmp_path, train_fn=lambda e: {"final_loss": 1.0}
        )


def test_mock_wsd_sweep_fits(tmp_path) -> None:
    from flops_fit import find_optimal

    with pytest.warns(UserWarning):
        result = find_optimal(
            TinyLM, "width", None, None, [1e9, 3e9, 1e10, 3e10], mode="mock", design="wsd", num_model_sizes=5,
            size_values=list(range(4, 400, 4)), tokens_per_sample=SEQ, output_dir=tmp_path, bootstrap=0,
        )  # fmt: skip
    assert result.plan.trunks and result.plan.total_flops < result.plan.equivalent_flops
    assert math.isfinite(result.predict(1e11)["optimal_params"])


def test_validation_runs_train_from_scratch_are_not_fitted_and_are_reported(tmp_path, caplog) -> None:
    plan = wsd_plan(validate=1)
    (check,) = [e for e in plan if e.validates is not None]
    assert check.trunk_id is None and plan.get(check.validates).num_params == check.num_params
    _, runs = run(tmp_path, plan=plan)
    records = {r["experiment_id"]: r for r in read_records(tmp_path / "results.jsonl")}
    mine = records[check.experiment_id]
    assert mine["validates"] == check.validates and mine["resumed_from_step"] is None
    assert mine["train_config"]["schedule"] == "cosine"  # the train_config's own schedule, from scratch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Result.from_runs(runs, plan=plan, bootstrap=0)
    assert check.experiment_id not in set(result.usable_runs["experiment_id"])
    assert len(result.usable_runs) == len(plan) - 1
    (line,) = [x for x in result.summary().splitlines() if "validation at C" in x]
    assert f"{mine['final_loss']:.4f} vs branch {records[check.validates]['final_loss']:.4f}" in line
    assert "IsoFLOP minimum moves" in line
    analyzer = ScalingLawAnalyzer(
        tmp_path / "results.jsonl", tmp_path / "fit", plan=tmp_path / "sweep.json", approach="all"
    )
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer.analyze()
    summary = analyzer.result_.summary()  # flops-fit analyze prints this
    assert f"WSD design: {len(plan) - 1} cooldown branches" in summary and "validation at C" in summary
    assert check.experiment_id not in caplog.text  # left out of the fits as a check, not as a bad value
