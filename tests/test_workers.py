"""TrainingRunner(workers=k): k experiments at once in worker processes on this machine (issue 19).

Each spawned worker imports torch (a few seconds), so the tests share few sweeps and small plans."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import flops_fit.training.worker_pool as pool_mod
from flops_fit.app.cli import main as cli_main
from flops_fit.core.ledger import read_records
from flops_fit.training import Callback, TrainingRunner
from flops_fit.training.jobs import FunctionJob
from flops_fit.training.parallel import WorkersLostError

sys.path.insert(0, str(Path(__file__).parent))  # the workers unpickle this module's classes by name
from test_runner import CFG, assert_same_results, local_runner, make_plan
from test_wsd_training import CFG as WSD_CFG
from test_wsd_training import CountingLM as WsdData
from test_wsd_training import lm_loss as wsd_loss
from test_wsd_training import wsd_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

ONE_THREAD = dataclasses.replace(CFG, threads=1)
TWO_OK = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="workers=2 needs two CPU cores")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The default plan run one experiment after another in this process (workers=1), on one thread."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    local_runner(out, train_config=ONE_THREAD).run_sweep()
    return {r["experiment_id"]: r for r in read_records(out / "results.jsonl")}


def in_plan_order(records, plan):
    order = [e.experiment_id for e in plan]
    return sorted(records, key=lambda r: order.index(r["experiment_id"]))


class KillAt(Callback):
    """In a worker: SIGKILL its own process at ``step`` of experiment ``victim``, the first time only
    (``marker`` remembers it across processes); or send ``sig`` to the sweep's process instead."""

    def __init__(self, victim: str, step: int, marker: str, parent_sig: int | None = None):
        self.victim, self.step, self.marker, self.parent_sig = victim, step, marker, parent_sig
        self.current = None

    def on_experiment_start(self, experiment):
        self.current = experiment.experiment_id

    def on_log(self, step, tokens, train_loss, lr):
        if self.current != self.victim or step != self.step or os.path.exists(self.marker):
            return
        Path(self.marker).write_text("done")
        if self.parent_sig is None:
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getppid(), self.parent_sig)
        time.sleep(1.0)  # the sweep's process interrupts this worker meanwhile, as a Ctrl-C would


@TWO_OK
def test_two_workers_record_what_one_process_records(tmp_path, reference):
    runner = local_runner(tmp_path, train_config=ONE_THREAD, workers=2)
    runs = runner.run_sweep()
    records = read_records(runner.results_path)
    assert len(records) == len(reference) == len(runs)
    assert_same_results(in_plan_order(records, runner.plan), reference)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # the ledger writer deleted each one


@TWO_OK
def test_a_killed_worker_loses_only_its_experiment_and_a_rerun_resumes_it(tmp_path, reference):
    plan = make_plan()
    victim = plan.experiments[1].experiment_id
    kill = KillAt(victim, step=6, marker=str(tmp_path / "killed"))
    runner = local_runner(tmp_path, plan, train_config=ONE_THREAD, workers=2, callbacks=[kill])
    with pytest.raises(WorkersLostError, match=rf"1 experiment\(s\) lost .*{victim} \(.*killed by SIGKILL"):
        runner.run_sweep()
    recorded = {r["experiment_id"] for r in read_records(runner.results_path)}
    assert recorded == {e.experiment_id for e in plan} - {victim}
    assert (tmp_path / "checkpoints" / f"{victim}.pt").exists()  # kept for the rerun
    local_runner(tmp_path, plan, train_config=ONE_THREAD, workers=2, callbacks=[kill]).run_sweep()
    records = read_records(runner.results_path)
    assert records[-1]["experiment_id"] == victim and records[-1]["resumed_from_step"] == 4
    assert_same_results(in_plan_order(records, plan), reference)


@TWO_OK
def test_ctrl_c_interrupts_the_workers_which_checkpoint_and_a_rerun_resumes(tmp_path, reference):
    plan = make_plan()
    victim = plan.experiments[2].experiment_id  # the largest: it starts first
    sigint = KillAt(victim, step=6, marker=str(tmp_path / "sent"), parent_sig=signal.SIGINT)
    runner = local_runner(tmp_path, plan, train_config=ONE_THREAD, workers=2, callbacks=[sigint])
    with pytest.raises(KeyboardInterrupt, match="run the same command again to resume"):
        runner.run_sweep()
    done = read_records(runner.results_path) if runner.results_path.exists() else []
    assert victim not in {r["experiment_id"] for r in done}
    assert (tmp_path / "checkpoints" / f"{victim}.pt").exists()
    local_runner(tmp_path, plan, train_config=ONE_THREAD, workers=2).run_sweep()
    records = read_records(runner.results_path)
    assert {r["experiment_id"]: r["resumed_from_step"] for r in records}[victim] == 7  # the step it was in
    assert_same_results(in_plan_order(records, plan), reference)


def run_wsd(out, **kw):
    runner = TrainingRunner(
        "local", plan=wsd_plan(), output_dir=out, dataset=WsdData(2048), loss_fn=wsd_loss,
        train_config=dataclasses.replace(WSD_CFG, threads=1), device="cpu", progress=False, **kw,
    )  # fmt: skip
    runner.run_sweep()
    return runner, read_records(runner.results_path)


@TWO_OK
def test_wsd_branches_of_a_trunk_run_one_after_another_with_the_losses_of_one_process(tmp_path):
    _, one = run_wsd(tmp_path / "one")
    runner, two = run_wsd(tmp_path / "two", workers=2)
    assert {r["experiment_id"]: r["status"] for r in two} == {r["experiment_id"]: r["status"] for r in one}
    assert {r["experiment_id"]: r["final_loss"] for r in two} == pytest.approx(
        {r["experiment_id"]: r["final_loss"] for r in one}, abs=1e-6
    )
    for trunk in runner.plan.trunks:
        branches = [r for r in two if r.get("trunk_id") == trunk.trunk_id]  # in the order recorded
        assert [r["branch_step"] for r in branches] == sorted(r["branch_step"] for r in branches)
        assert [r["timestamp"] for r in branches] == sorted(r["timestamp"] for r in branches)
        assert [r["resumed_from_step"] for r in branches] == [r["branch_step"] for r in branches]
    assert not list((tmp_path / "two" / "checkpoints").glob("*.pt"))


def malformed(experiment):
    return {"loss": 2.5}


@TWO_OK
def test_a_contract_error_in_a_worker_surfaces_with_its_message(tmp_path):
    plan = make_plan()
    with pytest.raises(ValueError) as here:
        TrainingRunner(plan, job=FunctionJob(train_fn=malformed), output_dir=tmp_path / "a").run_sweep()
    with pytest.raises(ValueError) as there:
        TrainingRunner(
            plan, job=FunctionJob(train_fn=malformed), output_dir=tmp_path / "b", workers=2, progress=False
        ).run_sweep()
    # the same message, about the first experiment each ran (largest first in the workers)
    assert str(there.value).split(")", 1)[1] == str(here.value).split(")", 1)[1]
    assert "final_loss=None" in str(there.value)
    assert not (tmp_path / "b" / "results.jsonl").exists()


def test_the_job_and_callbacks_must_be_picklable(tmp_path):
    runner = local_runner(tmp_path, loss_fn=lambda logits, y: logits.sum(), workers=2)
    with pytest.raises(TypeError, match=r"loss_fn cannot be sent to worker processes.*module level"):
        runner.run_sweep()


@pytest.mark.parametrize(
    ("workers", "error"),
    [("2", TypeError), (2.0, TypeError), (True, TypeError), (0, ValueError), (-1, ValueError)],
)
def test_bad_workers_values_name_the_argument(tmp_path, workers, error):
    with pytest.raises(error, match="workers must be"):
        local_runner(tmp_path, workers=workers)


def test_too_many_workers_api_mode_ray_and_torchrun_are_refused(tmp_path, monkeypatch):
    cores = os.cpu_count() or 1
    with pytest.raises(ValueError, match=rf"workers must be between 1 and {cores}"):
        local_runner(tmp_path, workers=cores + 1)
    if cores < 2:
        return
    with pytest.raises(ValueError, match=r"workers=2 .*mode=.api.*drop workers"):
        TrainingRunner("api", plan=make_plan(), output_dir=tmp_path, api_url="http://127.0.0.1:9", workers=2)
    with pytest.raises(ValueError, match="workers=2 applies to executor='local' only"):
        TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, executor="ray", workers=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="workers=2 cannot run under torchrun"):
        local_runner(tmp_path, workers=2)


def fake_pool(calls):
    """A stand-in for run_in_workers that runs the experiments here and says what it was given."""

    def run(job, todo, checkpoint_path, workers, display, record, callbacks=(), threads="auto"):
        calls.append(workers)
        for e in todo:
            record(e, *job.run(e, checkpoint_path(e.experiment_id), list(callbacks), None))

    return run


@TWO_OK
def test_one_worker_runs_here_and_more_go_to_the_pool_from_every_entry_point(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(pool_mod, "run_in_workers", fake_pool(calls))
    plan = make_plan()
    TrainingRunner("mock", plan=plan, output_dir=tmp_path / "one", progress=False).run_sweep()
    assert calls == []
    TrainingRunner("mock", plan=plan, output_dir=tmp_path / "two", progress=False, workers=2).run_sweep()
    assert calls == [2] and len(read_records(tmp_path / "two" / "results.jsonl")) == len(plan)
    plan.save(tmp_path / "cli" / "sweep.json")
    assert (
        cli_main(["train", str(tmp_path / "cli"), "--mode", "mock", "--workers", "2", "--no-progress"]) == 0
    )
    assert calls == [2, 2]
    from flops_fit import find_optimal
    from test_size_param import Wide

    args = (Wide, "width", None, None, [1e8, 1e9, 1e10])
    with pytest.raises(ValueError, match="workers must be between"):
        find_optimal(*args, mode="mock", workers=0, output_dir=tmp_path / "fo")
    assert not (tmp_path / "fo").exists()
    find_optimal(*args, num_model_sizes=5, mode="mock", approach="isoflop", bootstrap=0, tokens_per_sample=1,
                 workers=2, output_dir=tmp_path / "fo")  # fmt: skip
    assert calls == [2, 2, 2]


class _Stop(Exception):
    pass


def test_the_demo_passes_workers_on(tmp_path, monkeypatch):
    import flops_fit.examples.gpt_text as gpt_text

    real_run_demo, seen = gpt_text.run_demo, {}
    monkeypatch.setattr(gpt_text, "run_demo", lambda **kw: seen.update(kw))
    assert cli_main(["demo", "--mock", "--workers", "2", "--out", str(tmp_path / "demo")]) == 0
    assert seen["workers"] == 2

    def fake_sweep(budgets, out, **options):
        seen.update(sweep=options)
        raise _Stop

    monkeypatch.setattr(gpt_text, "demo_sweep", fake_sweep)
    with pytest.raises(_Stop):
        real_run_demo(tmp_path / "d", [1e10], mock=True, workers=2)
    assert seen["sweep"]["workers"] == 2


def test_find_optimal_model_spec_can_be_sent_to_workers():
    """find_optimal gives the model spec a sample_fn repeating one dataset item: it must pickle."""
    import pickle

    from flops_fit.app.probe import Sample
    from test_runner import CountingLM

    sample_fn = Sample.read(CountingLM()).sample_fn()
    inputs, targets = pickle.loads(pickle.dumps(sample_fn))(3)
    assert inputs.shape == targets.shape == (3, 16) and torch.equal(inputs[0], CountingLM()[0][0])
