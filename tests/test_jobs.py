"""Jobs as objects: the runner given a job runs it exactly as the keyword form does, jobs check their own
arguments, say which records are theirs, and a new kind of job needs no change to the runner."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from torch import nn

import flops_fit.training.ray_executor as rx
from flops_fit.core.experiment import Experiment
from flops_fit.core.ledger import latest_records, load_results, read_run_list
from flops_fit.core.runs import load_runs, runs_from_records
from flops_fit.training import TrainConfig, TrainingRunner
from flops_fit.training.jobs import FunctionJob, Job, LocalJob, MockJob
from flops_fit.training.kinds import job_for_mode
from test_runner import CountingLM, lm_loss, make_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

QUICK = TrainConfig(lr=3e-2, eval_batches=1, log_every=2, checkpoint_every_s=None)


def test_a_given_mock_job_writes_what_the_keyword_form_writes(tmp_path):
    plan = make_plan(widths=(8, 16, 24))
    TrainingRunner("mock", plan=plan, output_dir=tmp_path / "kw", seed=3, progress=False).run_sweep()
    runner = TrainingRunner(plan, job=MockJob(seed=3), output_dir=tmp_path / "job", progress=False)
    runs = runner.run_sweep()
    assert runner.mode == "mock" and runner.train_config is None
    assert (tmp_path / "job" / "results.jsonl").read_bytes() == (
        tmp_path / "kw" / "results.jsonl"
    ).read_bytes()
    assert len(runs) == 3 and runner.pending() == []


def test_a_given_local_job_trains_as_the_keyword_form_does(tmp_path):
    plan = make_plan(widths=(8,), steps=4)
    data = CountingLM(256)
    keyword = TrainingRunner(
        "local",
        plan=plan,
        output_dir=tmp_path / "kw",
        dataset=data,
        loss_fn=lm_loss,
        train_config=QUICK,
        device="cpu",
        progress=False,
    ).run_sweep()
    job = LocalJob(dataset=data, loss_fn=lm_loss, train_config=QUICK, device="cpu")
    runner = TrainingRunner(plan=plan, job=job, output_dir=tmp_path / "job", progress=False)
    runs = runner.run_sweep()
    assert runner.train_config == QUICK and runner.mode == "local"
    assert list(runs["final_loss"]) == pytest.approx(list(keyword["final_loss"]), abs=1e-6)
    assert list(runs["status"]) == ["completed"]


def test_a_given_function_job(tmp_path):
    job = FunctionJob(train_fn=lambda e: {"final_loss": 2.0 + 1.0 / e.size_value})
    runs = TrainingRunner(make_plan(), job=job, output_dir=tmp_path, progress=False).run_sweep()
    assert list(runs["final_loss"]) == pytest.approx([2.0 + 1.0 / w for w in (8, 16, 24)])
    assert set(runs["mode"]) == {"function"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "mock"}, ValueError, "mode belong to the job"),
        ({"dataset": CountingLM(8)}, ValueError, "dataset belong to the job"),
        ({"seed": 4}, ValueError, "seed belong to the job"),
        ({"device": "cpu"}, ValueError, "device belong to the job"),
    ],
)
def test_keywords_of_a_job_next_to_job_are_refused(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        TrainingRunner(plan=make_plan(), job=MockJob(), output_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_job_that_is_not_one_and_a_plan_given_twice(tmp_path):
    with pytest.raises(TypeError, match="job must be Job"):
        TrainingRunner(plan=make_plan(), job="mock", output_dir=tmp_path)
    with pytest.raises(ValueError, match="pass the plan once"):
        TrainingRunner(make_plan(), plan=make_plan(), job=MockJob(), output_dir=tmp_path)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: LocalJob(), ValueError, "needs dataset="),
        (
            lambda: LocalJob(dataset=CountingLM(8), model=nn.Linear(2, 2)),
            TypeError,
            "not an nn.Module instance",
        ),
        (lambda: LocalJob(dataset=CountingLM(8), model=3), TypeError, "model must be a ModelSpec"),
        (lambda: LocalJob(dataset=CountingLM(8), loss_fn="ce"), TypeError, "loss_fn"),
        (lambda: LocalJob(dataset=CountingLM(8), train_config=3), TypeError, "train_config must be"),
        (lambda: LocalJob(dataset=CountingLM(8), train_config={"lrr": 1}), ValueError, "unknown TrainConfig"),
        (lambda: LocalJob(dataset=CountingLM(8), device=0), TypeError, "device must be"),
        (lambda: MockJob(seed=-1), ValueError, "seed must be a non-negative int"),
        (lambda: MockJob(seed="1"), TypeError, "seed must be a non-negative int"),
        (lambda: MockJob(mock_law={"gamma": 1}), ValueError, "unknown key"),
        (lambda: FunctionJob(train_fn="script.sh"), TypeError, "train_fn"),
        (lambda: FunctionJob(), TypeError, "train_fn"),
        (lambda: job_for_mode("remote"), ValueError, "mode must be one of"),
    ],
)
def test_jobs_check_their_own_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_local_job_checks_what_needs_the_plan_when_prepared():
    job = LocalJob(dataset=CountingLM(8), loss_fn=lm_loss, device="cuda:1")
    with pytest.raises(ValueError, match="device='cuda:1' cannot be used with executor='ray'"):
        job.prepare(make_plan(), "ray")
    bare = dataclasses.replace(make_plan(), model=None)
    with pytest.raises(ValueError, match="needs a model"):
        LocalJob(dataset=CountingLM(8), loss_fn=lm_loss).prepare(bare, "local")
    with pytest.raises(TypeError, match="needs loss_fn="):  # the plan's ModelSpec has no loss either
        LocalJob(dataset=CountingLM(8), device="cpu").prepare(make_plan(), "local")
    job = LocalJob(dataset=CountingLM(8), loss_fn=lm_loss, train_config=QUICK, device="cpu")
    prepared = job.prepare(make_plan(), "local")
    assert prepared.model == make_plan().model and prepared.train_config == QUICK
    assert {c.batch_size for c in prepared.configs.values()} == {8} and job.configs == {}


def test_which_records_a_job_calls_its_own():
    mock = MockJob(seed=3)
    assert mock.produced({}) and mock.produced({"mode": "mock", "mock_seed": 3})
    assert not mock.produced({"mode": "mock", "mock_seed": 4})
    assert not mock.produced({"mode": "mock", "mock_law": {**mock.mock_law.to_dict(), "E": 9.0}})
    assert not mock.produced({"mode": "local"})
    function = FunctionJob(train_fn=len)
    assert function.produced({"mode": "function"}) and not function.produced({"mode": "mock"})


def test_the_ray_defaults_read_the_job():
    assert rx.default_resources({"GPU": 8.0}, MockJob()) == {"CPU": 1.0}
    assert rx.default_resources({"GPU": 8.0}, FunctionJob(train_fn=len)) == {"GPU": 1.0}
    assert rx.fresh_process(LocalJob(dataset=CountingLM(8)), {"CPU": 1.0})
    assert not rx.fresh_process(MockJob(), {"CPU": 1.0})


@dataclasses.dataclass(frozen=True)
class ConstantJob:
    """A kind of job the runner has never heard of (as a future HTTP job would be): it only follows the
    protocol."""

    loss: float
    mode: ClassVar[str] = "constant"
    trains: ClassVar[bool] = False
    simulated: ClassVar[bool] = True

    def prepare(self, plan: Any, executor: str) -> ConstantJob:
        return self

    def check_pending(self, todo: Sequence[Experiment]) -> None:
        pass

    def processes(self) -> None:
        return None

    def produced(self, record: Mapping[str, Any]) -> bool:
        return record.get("mode") == self.mode and record.get("final_loss") == self.loss

    def run(self, e: Experiment, checkpoint_path: Path | None, callbacks: Sequence[Any], procs: Any):
        record = {
            "experiment_id": e.experiment_id,
            "compute_budget": e.compute_budget,
            "num_params": e.num_params,
            "num_tokens": e.num_tokens,
            "final_loss": self.loss,
            "status": "completed",
            "mode": self.mode,
        }
        return record, 0.0


def test_a_new_kind_of_job_needs_no_change_to_the_runner(tmp_path):
    assert isinstance(ConstantJob(2.5), Job)
    runs = TrainingRunner(make_plan(), job=ConstantJob(2.5), output_dir=tmp_path, progress=False).run_sweep()
    assert list(runs["final_loss"]) == [2.5, 2.5, 2.5]
    again = TrainingRunner(make_plan(), job=ConstantJob(2.5), output_dir=tmp_path, progress=False)
    assert again.pending() == []
    other = TrainingRunner(make_plan(), job=ConstantJob(3.0), output_dir=tmp_path, progress=False)
    assert len(other.pending()) == 3  # not its records: they run again


def test_one_reader_for_every_results_format(tmp_path):
    rows = [
        {"experiment_id": "a", "compute_budget": 6e6, "num_params": 10, "num_tokens": 1e5, "final_loss": 3.0},
        {"experiment_id": "b", "compute_budget": 6e6, "num_params": 20, "num_tokens": 5e4, "final_loss": 2.9},
    ]
    (tmp_path / "results.json").write_text(json.dumps({"runs": rows[:1]}))
    (tmp_path / "results.jsonl").write_text(
        json.dumps({**rows[1], "status": "failed"})
        + "\n"
        + json.dumps({**rows[1], "status": "completed"})
        + "\n"
    )
    records = load_results(tmp_path)
    assert [r["experiment_id"] for r in records] == ["a", "b", "b"]
    assert [r.get("status") for r in latest_records(records)] == [None, "completed"]
    table = runs_from_records(records)
    assert list(table["experiment_id"]) == ["a", "b"] and list(table["status"]) == ["completed"] * 2
    assert load_runs(tmp_path / "results.json")["experiment_id"].tolist() == ["a"]
    assert read_run_list(tmp_path / "results.json") == rows[:1]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_list(tmp_path / "bad.json")
    assert runs_from_records([]).empty and load_results(tmp_path / "missing.jsonl") == []
