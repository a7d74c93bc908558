"""The Ray executor on a local two-CPU Ray cluster: same results as the local executor, retries of killed
workers, Ctrl-C and driver restarts, largest-first scheduling, validation and the CLI/config plumbing."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
ray = pytest.importorskip("ray")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import flops_fit.training.progress as runner_mod  # noqa: E402
import flops_fit.training.ray_executor as rx  # noqa: E402
from flops_fit import find_optimal  # noqa: E402
from flops_fit.app.cli import main  # noqa: E402
from flops_fit.app.stages import default_config, run_train  # noqa: E402
from flops_fit.core.experiment import Experiment  # noqa: E402
from flops_fit.core.ledger import read_records  # noqa: E402
from flops_fit.plan.sweep import SweepPlan  # noqa: E402
from flops_fit.training import Callback, TrainingRunner  # noqa: E402
from test_runner import CountingLM, lm_loss, local_runner, make_plan  # noqa: E402

TESTS = Path(__file__).resolve().parent
#: Two experiments for the real-training tests: each runs in a fresh worker process (seconds to start).
WIDTHS = (8, 16)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with two CPUs; its workers import this folder's modules (the test models)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        # Ray starts its workers at nice 15: on a busy CI box they then get a few percent of a core and the
        # tests' kill points and deadlines come 10-80x late. The tests' workers run at normal priority.
        mp.setenv("RAY_worker_niceness", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the reference runs, like Ray's one-CPU workers


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The default plan trained by the local executor: the records the Ray runs must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    local_runner(out, make_plan(WIDTHS)).run_sweep()
    return {r["experiment_id"]: r for r in read_records(out / "results.jsonl")}


def by_id(path: Path) -> dict[str, dict]:
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    ids = [r["experiment_id"] for r in records]
    assert len(ids) == len(set(ids)), f"an experiment was recorded twice: {ids}"
    return {r["experiment_id"]: r for r in records}


def assert_matches(records: dict[str, dict], reference: dict[str, dict]) -> None:
    assert set(records) == set(reference)
    for eid, r in records.items():
        ref = reference[eid]
        assert r["status"] == ref["status"] == "completed"
        assert r["num_tokens"] == ref["num_tokens"] and r["steps"] == ref["steps"]
        assert r["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-5)


# --- picklable helpers: module level, so that workers import them by name ---------------------------


class KillOnce(Callback):
    """SIGKILLs the worker process running ``victim`` once it logged ``step`` steps; the marker file makes
    the retry go through (it also holds the pid of the killed process)."""

    def __init__(self, marker: str, victim: str, step: int):
        self.marker, self.victim, self.step = marker, victim, step
        self.current = ""

    def on_experiment_start(self, experiment):
        self.current = experiment.experiment_id

    def on_log(self, step, tokens, train_loss, lr):
        if self.current == self.victim and step >= self.step and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


class Pace(Callback):
    """Slows tiny runs down so they can be interrupted mid-experiment (numerics unchanged)."""

    def on_log(self, step, tokens, train_loss, lr):
        time.sleep(0.1)


class LockedLM(CountingLM):
    """A dataset that cannot be pickled (it holds a lock)."""

    def __init__(self):
        super().__init__(256)
        self.lock = threading.Lock()


def quadratic_loss(e: Experiment) -> dict:
    return {"final_loss": 2.0 + 1.0 / e.size_value}


def kill_once_train_fn(e: Experiment, marker: str, victim: str) -> dict:
    if e.experiment_id == victim and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return quadratic_loss(e)


def logging_train_fn(e: Experiment, log: str) -> dict:
    with open(log, "a") as fh:
        fh.write(e.experiment_id + "\n")
    return quadratic_loss(e)


def not_a_dict(e: Experiment) -> float:
    return 2.5


# --- same results as the local executor ---------------------------------------------------------------


def test_an_unreachable_cluster_is_named(tmp_path, monkeypatch):
    """No cluster at ray_address: a ValueError naming it (the CLI's status 2), not a ConnectionError."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        pytest.skip("a cluster is already initialised in this process")
    runner = TrainingRunner(
        "mock", plan=make_plan(), output_dir=tmp_path, executor="ray", ray_address="auto", progress=False
    )
    with pytest.raises(ValueError, match=r"cannot reach a Ray cluster at ray_address='auto'"):
        runner.run_sweep()


def test_mock_sweep_on_ray_is_identical_to_local_and_resumes(tmp_path, cluster):
    plan = make_plan(widths=(8, 16, 24, 32))
    local = TrainingRunner("mock", plan=plan, output_dir=tmp_path / "local", seed=3, progress=False)
    remote = TrainingRunner(
        "mock", plan=plan, output_dir=tmp_path / "ray", seed=3, progress=False, executor="ray"
    )
    local.run_sweep()
    runs = remote.run_sweep()
    assert by_id(remote.results_path) == by_id(local.results_path)  # same content per experiment
    assert sorted(runs["experiment_id"]) == sorted(e.experiment_id for e in plan)
    assert "ray_node_ip" not in runs.columns  # mock records carry nothing executor-specific

    before = remote.results_path.read_bytes()
    again = TrainingRunner("mock", output_dir=tmp_path / "ray", seed=3, progress=False, executor="ray")
    assert again.pending() == []
    again.run_sweep()  # a new driver on the same folder: nothing to do
    assert remote.results_path.read_bytes() == before


def test_real_training_on_ray_completes_the_same_experiments(tmp_path, cluster, reference):
    runner = local_runner(tmp_path, make_plan(WIDTHS), executor="ray")
    runs = runner.run_sweep()
    records = by_id(runner.results_path)
    assert_matches(records, reference)  # one thread per worker: the same numbers as the local run
    for r in records.values():
        assert r["resumed_from_step"] is None and r["mode"] == "local" and r["device"] == "cpu"
        assert r["ray_node_ip"] and r["ray_worker_pid"] != os.getpid()  # trained on a worker
    assert len({r["ray_worker_pid"] for r in records.values()}) == len(WIDTHS)  # a process each
    assert (runs["status"] == "completed").all() and len(runs) == len(WIDTHS)
    assert list(runner.checkpoint_dir.iterdir()) == []


# --- lost workers -------------------------------------------------------------------------------------


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, cluster, reference):
    plan = make_plan(WIDTHS)
    victim = rx.submission_order(plan)[0].experiment_id
    marker = tmp_path / "killed"
    checkpoints = tmp_path / "shared-ckpt"  # a checkpoint_dir of its own, as on a cluster
    runner = local_runner(
        tmp_path / "out",
        plan,
        executor="ray",
        max_retries=2,
        checkpoint_dir=checkpoints,
        callbacks=[KillOnce(str(marker), victim, step=10)],
    )
    runner.run_sweep()
    records = by_id(runner.results_path)  # each experiment exactly once, every line parses
    assert_matches(records, reference)  # the resumed run reproduces the uninterrupted one
    killed_pid = int(marker.read_text())
    assert records[victim]["resumed_from_step"] == 8  # the checkpoint before the kill at step 10
    assert records[victim]["ray_worker_pid"] != killed_pid
    assert [r["resumed_from_step"] for eid, r in records.items() if eid != victim] == [None]
    assert list(checkpoints.iterdir()) == [] and not (tmp_path / "out" / "checkpoints").exists()


def test_lost_worker_without_retries_is_reported_and_resumed_by_the_next_driver(tmp_path, cluster):
    plan = make_plan(widths=(8, 16, 24, 32))
    victim = plan.experiments[1].experiment_id
    train_fn = functools.partial(kill_once_train_fn, marker=str(tmp_path / "killed"), victim=victim)

    def runner(max_retries: int) -> TrainingRunner:
        return TrainingRunner(
            "function",
            plan=plan,
            output_dir=tmp_path / "out",
            train_fn=train_fn,
            progress=False,
            executor="ray",
            max_retries=max_retries,
        )

    first = runner(max_retries=0)
    with pytest.raises(
        rx.WorkersLostError, match=rf"1 experiment\(s\) lost .*{victim}.*run the same command"
    ):
        first.run_sweep()
    done = by_id(first.results_path)
    assert set(done) == {e.experiment_id for e in plan} - {victim}  # every other experiment recorded
    assert [e.experiment_id for e in first.pending()] == [victim]

    runner(max_retries=0).run_sweep()  # the next driver runs only what is missing
    records = by_id(first.results_path)
    assert set(records) == {e.experiment_id for e in plan}
    assert records[victim]["final_loss"] == pytest.approx(2.0 + 1.0 / 16)
    assert {k: v for k, v in records.items() if k != victim} == done


def test_function_mode_worker_killed_once_is_retried(tmp_path, cluster):
    plan = make_plan()
    victim = plan.experiments[0].experiment_id
    marker = tmp_path / "killed"
    train_fn = functools.partial(kill_once_train_fn, marker=str(marker), victim=victim)
    runner = TrainingRunner(
        "function", plan=plan, output_dir=tmp_path / "out", train_fn=train_fn, progress=False, executor="ray"
    )
    runner.run_sweep()
    records = by_id(runner.results_path)
    assert set(records) == {e.experiment_id for e in plan}
    assert records[victim]["status"] == "completed"
    assert records[victim]["ray_worker_pid"] != int(marker.read_text())


# --- driver interrupted or killed -------------------------------------------------------------------------


def _interrupt_when(path: Path, stop: threading.Event, timeout: float = 300.0) -> threading.Thread:
    """Ctrl-C this process as soon as a whole checkpoint (not a half-written temporary) appears under
    ``path``."""

    def watch():
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if path.is_dir() and any(path.glob("*.pt")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a shell starts background jobs (`cmd &`) with SIGINT
    ignored, and then a Ctrl-C sent to this process would do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_the_tasks_keeps_their_checkpoints_and_resumes(tmp_path, cluster, ctrl_c_raises):
    plan = make_plan((16,), steps=40)
    out = tmp_path / "out"
    stop = threading.Event()
    watcher = _interrupt_when(out / "checkpoints", stop)
    try:
        with pytest.raises(KeyboardInterrupt, match=r"running or queued .* run the same command again"):
            local_runner(out, plan, executor="ray", callbacks=[Pace()]).run_sweep()
    finally:
        stop.set()
        watcher.join()
    kept = {p.stem for p in (out / "checkpoints").glob("*.pt")}  # not a force-killed task's torn .tmp
    assert kept  # the cancelled experiments checkpointed on their way out
    recorded = set(by_id(out / "results.jsonl")) if (out / "results.jsonl").exists() else set()
    assert not kept & recorded  # nothing partial in the ledger

    local_runner(out, plan, executor="ray").run_sweep()
    records = by_id(out / "results.jsonl")
    assert set(records) == {e.experiment_id for e in plan}
    assert all(records[eid]["resumed_from_step"] > 0 for eid in kept)
    assert all(r["status"] == "completed" for r in records.values())
    assert list((out / "checkpoints").iterdir()) == []


DRIVER = """
import sys, time
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_runner import local_runner, make_plan
from test_ray_executor import Pace

local_runner({out!r}, make_plan(steps=40), executor="ray", ray_address={address!r}, callbacks=[Pace()]).run_sweep()
"""


@pytest.mark.slow
def test_driver_killed_mid_sweep_resumes_without_loss_or_duplicates(tmp_path, cluster):
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS), out=str(out), address=cluster)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "driver.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=fh, stderr=subprocess.STDOUT)
    ledger = out / "results.jsonl"

    def unfinished_checkpoints() -> set[str]:
        # Whole checkpoints only: not a half-written ``.<id>.pt.*.tmp``, and not the checkpoint of a run
        # already in the ledger (the driver discards it just after appending the record).
        recorded = set(by_id(ledger)) if ledger.exists() else set()
        return {p.stem for p in (out / "checkpoints").glob("*.pt")} - recorded

    deadline = time.monotonic() + 120
    while not (ledger.exists() and read_records(ledger) and unfinished_checkpoints()):
        assert proc.poll() is None, log.read_text()[-3000:]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = set(by_id(ledger))
    assert 0 < len(finished) < 3
    kept = unfinished_checkpoints()
    assert kept  # empty only if that run finished in the instant between the check and the kill

    local_runner(out, make_plan(steps=40), executor="ray").run_sweep()
    records = by_id(ledger)
    assert set(records) == {e.experiment_id for e in make_plan(steps=40)}
    assert all(r["status"] == "completed" for r in records.values())
    assert all(records[eid]["resumed_from_step"] > 0 for eid in kept)


# --- scheduling ---------------------------------------------------------------------------------------


def _experiment(eid: str, flops_per_token: float) -> Experiment:
    return Experiment(
        experiment_id=eid,
        compute_budget=flops_per_token * 100,
        size_value=None,
        num_params=int(flops_per_token / 6),
        num_tokens=100,
        flops_per_token=flops_per_token,
        epochs=None,
        learning_rate=None,
        batch_size=1,
        tokens_per_sample=100,
        num_steps=1,
        flops="6nd",
        seed=0,
    )


def test_submission_order_is_largest_first_with_ties_by_id():
    exps = [_experiment("b", 60.0), _experiment("c", 600.0), _experiment("a", 60.0), _experiment("d", 6.0)]
    assert [e.experiment_id for e in rx.submission_order(exps)] == ["c", "a", "b", "d"]
    plan = make_plan(widths=(8, 16, 24, 32))
    order = rx.submission_order(plan)
    assert [e.planned_flops for e in order] == sorted((e.planned_flops for e in plan), reverse=True)


def test_experiments_start_largest_first(tmp_path, cluster):
    plan = make_plan(widths=(8, 16, 24, 32))
    log = tmp_path / "started.txt"
    runner = TrainingRunner(
        "function",
        plan=plan,
        output_dir=tmp_path / "out",
        train_fn=functools.partial(logging_train_fn, log=str(log)),
        progress=False,
        executor="ray",
        resources={"CPU": 2},  # the whole two-CPU cluster: one experiment at a time
    )
    runner.run_sweep()
    started = log.read_text().split()
    assert started == [e.experiment_id for e in rx.submission_order(plan)]
    assert started[0] == plan.experiments[-1].experiment_id  # the plan lists the largest last
    assert [r["experiment_id"] for r in read_records(runner.results_path)] == started


def test_default_request_and_task_options():
    assert rx.default_resources({"CPU": 64.0, "GPU": 8.0}, "local") == {"GPU": 1.0}
    assert rx.default_resources({"CPU": 64.0, "GPU": 8.0}, "mock") == {"CPU": 1.0}
    assert rx.default_resources({"CPU": 2.0}, "function") == {"CPU": 1.0}
    assert rx.fresh_process("local", {"CPU": 1.0}) and rx.fresh_process("function", {"GPU": 0.5})
    assert not rx.fresh_process("function", {"CPU": 1.0}) and not rx.fresh_process("mock", {"CPU": 1.0})
    request = rx.check_resources({"GPU": 1, "CPU": 8, "memory": 16e9, "A100": 0.5})
    assert rx.task_options(request) == {
        "num_gpus": 1.0,
        "num_cpus": 8.0,
        "memory": 16_000_000_000,
        "resources": {"A100": 0.5},
    }


def test_progress_counts_every_experiment_in_flight(monkeypatch):
    """Several experiments at once: the rate adds up their FLOPs trained in this session, the ETA divides
    the planned FLOPs left by it, and finished or lost experiments leave the flight."""
    plan = make_plan(widths=(8, 16, 24))
    small, mid, large = plan.experiments
    clock = [100.0]
    monkeypatch.setattr(runner_mod.time, "perf_counter", lambda: clock[0])
    display = runner_mod._SweepProgress(plan, {small.experiment_id}, bars=False, verbose=False)
    with display:
        clock[0] = 110.0
        half, quarter = large.num_tokens // 2, mid.num_tokens // 4
        display.remote_progress(large, tokens=half, tokens0=0, where="10.0.0.1 (pid 1)")
        display.remote_progress(mid, tokens=2 * quarter, tokens0=quarter, where="10.0.0.2 (pid 2)")  # resumed
        assert display.running == 2
        new = large.flops_per_token * half + mid.flops_per_token * quarter
        assert display.rate() == pytest.approx(new / 10.0)
        left = plan.total_flops - small.planned_flops - large.planned_flops / 2 - mid.planned_flops / 2
        assert display.eta() == pytest.approx(left / (new / 10.0))
        assert "1/3 experiments done, 2 running" in display.summary()

        display.remote_progress(mid, tokens=quarter, tokens0=quarter, where="10.0.0.3 (pid 3)")  # a retry
        assert display.rate() == pytest.approx(new / 10.0)  # work already done is not taken back
        display.finish(large, {"status": "completed", "final_loss": 2.0}, large.flops_per_token * half * 2)
        display.forget(mid)
        assert display.running == 0 and display.done == 2
        assert display.rate() == pytest.approx(large.flops_per_token * half * 2 / 10.0)


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"executor": "slurm"}, ValueError, r"executor must be one of \['local', 'ray'\]"),
        ({"ray_address": "auto"}, ValueError, "ray_address only apply to executor='ray'"),
        ({"resources": {"GPU": 1}}, ValueError, "resources only apply to executor='ray'"),
        ({"executor": "ray", "ray_address": ""}, ValueError, "ray_address must be"),
        ({"executor": "ray", "resources": "GPU=1"}, TypeError, "resources must be a non-empty mapping"),
        ({"executor": "ray", "resources": {"num_gpus": 1}}, ValueError, "'CPU'/'GPU' instead of 'num_gpus'"),
        ({"executor": "ray", "resources": {"GPU": 1.5}}, ValueError, "whole number"),
        ({"executor": "ray", "resources": {"GPU": -1}}, ValueError, "non-negative"),
        ({"executor": "ray", "resources": {"GPU": 0}}, ValueError, "request something"),
        ({"executor": "ray", "resources": {"GPU": True}}, TypeError, r"resources\['GPU'\] must be a number"),
        ({"executor": "ray", "max_retries": -1}, ValueError, "max_retries"),
        ({"executor": "ray", "max_retries": True}, ValueError, "max_retries"),
        (
            {"executor": "ray", "device": "cuda:1"},
            ValueError,
            "device='cuda:1' cannot be used with executor='ray'",
        ),
        ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir must be a folder path"),
    ],
)
def test_bad_executor_arguments_fail_before_any_compute(tmp_path, kwargs, error, match):
    for mode, extra in (("mock", {}), ("local", {"dataset": CountingLM(64), "loss_fn": lm_loss})):
        with pytest.raises(error, match=match):
            TrainingRunner(mode, plan=make_plan(), output_dir=tmp_path / "out", **extra, **kwargs)
    assert not (tmp_path / "out").exists()


def test_checkpoint_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint_dir .* is a file"):
        local_runner(tmp_path / "out", checkpoint_dir=tmp_path / "file")


def test_ray_under_torchrun_and_ray_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"torchrun.*WORLD_SIZE=2.*plain `python`"):
        TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, executor="ray")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r'pip install "flops-fit\[ray\]"'):
        TrainingRunner("mock", plan=make_plan(), output_dir=tmp_path, executor="ray")
    make_plan().save(tmp_path / "sweep.json")
    assert main(["train", str(tmp_path), "--executor", "ray"]) == 2
    assert not (tmp_path / "results.jsonl").exists()


def test_importing_flops_fit_never_needs_ray():
    code = (
        "import sys; sys.modules['ray'] = None; import flops_fit; "
        "from flops_fit.training import ray_executor, runner; print('ray' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]  # only the blocker


def test_unpicklable_dataset_is_named_before_anything_runs(tmp_path, cluster):
    runner = local_runner(tmp_path, make_plan(), executor="ray", dataset=LockedLM())
    with pytest.raises(TypeError, match="dataset cannot be sent to Ray workers"):
        runner.run_sweep()
    assert not runner.results_path.exists()


def test_code_the_workers_cannot_import_is_named(tmp_path, cluster, monkeypatch):
    (tmp_path / "driver_only.py").write_text("def train_fn(e):\n    return {'final_loss': 1.0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not on the workers
    import driver_only

    runner = TrainingRunner(
        "function",
        plan=make_plan(),
        output_dir=tmp_path / "out",
        train_fn=driver_only.train_fn,
        executor="ray",
    )
    with pytest.raises(ImportError, match=r"No module named 'driver_only'.*importable on every node"):
        runner.run_sweep()
    assert not runner.results_path.exists()


def test_malformed_train_fn_result_raises_in_the_driver_as_locally(tmp_path, cluster):
    runner = TrainingRunner(
        "function", plan=make_plan(), output_dir=tmp_path, train_fn=not_a_dict, progress=False, executor="ray"
    )
    with pytest.raises(TypeError, match=r"train_fn\(\w+\) must return a dict"):
        runner.run_sweep()
    assert not runner.results_path.exists()


def test_a_request_no_node_can_meet(cluster, caplog):
    with pytest.raises(ValueError, match=r"no node of the Ray cluster can run .*'GPU': 1.0.*resources="):
        rx._check_feasible(ray, {"GPU": 1.0}, strict=True)
    with caplog.at_level(logging.WARNING):
        rx._check_feasible(ray, {"GPU": 1.0}, strict=False)  # a named cluster may autoscale
    assert "wait until a node that has them joins" in caplog.text
    rx._check_feasible(ray, {"CPU": 2.0}, strict=True)


def test_storage_probe_sees_a_local_folder(tmp_path, cluster):
    assert rx._unshared_nodes(ray, tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the marker is gone


# --- plumbing: find_optimal, flops-fit train, ff-train ---------------------------------------------------


class Wide(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, 0] * x[:, 1])


@pytest.mark.filterwarnings("ignore:.*more than one pass over:UserWarning")
def test_find_optimal_on_ray(tmp_path, cluster):
    args = (Wide, "width", _data(), nn.functional.mse_loss, [1e9, 3e9, 1e10])
    with pytest.raises(ValueError, match="ray_address only apply to executor='ray'"):
        find_optimal(*args, mode="mock", ray_address="auto", output_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="resources"):
        find_optimal(*args, mode="mock", executor="ray", resources={"gpu": 1}, output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()

    result = find_optimal(*args, mode="mock", executor="ray", num_model_sizes=5, output_dir=tmp_path / "ray")
    assert len(result.runs) == 15 and (result.runs["status"] == "completed").all()
    plan = SweepPlan.load(tmp_path / "ray" / "sweep.json")
    local = TrainingRunner("mock", plan=plan, output_dir=tmp_path / "local", progress=False)
    local.run_sweep()
    assert by_id(tmp_path / "ray" / "results.jsonl") == by_id(local.results_path)


def test_cli_and_hydra_config_run_on_ray(tmp_path, cluster, capsys):
    out = tmp_path / "sweep"
    assert main(["plan", "--out", str(out), "--budgets", "1e17,1e18,1e19", "--sizes", "4"]) == 0
    assert main(["train", str(out), "--mode", "mock", "--executor", "ray", "--no-progress"]) == 0
    local = tmp_path / "local"
    local.mkdir()
    (local / "sweep.json").write_bytes((out / "sweep.json").read_bytes())
    assert main(["train", str(local), "--mode", "mock", "--no-progress"]) == 0
    assert by_id(out / "results.jsonl") == by_id(local / "results.jsonl")
    capsys.readouterr()

    assert main(["train", str(out), "--ray-address", "auto"]) == 2
    assert "ray_address only apply to executor='ray'" in capsys.readouterr().err
    assert main(["train", str(out), "--executor", "ray", "--resources", "GPU"]) == 2
    assert "--resources must be NAME=AMOUNT" in capsys.readouterr().err
    assert main(["train", str(out), "--executor", "ray", "--resources", "GPU=1.5"]) == 2
    assert "whole number" in capsys.readouterr().err

    hydra_out = tmp_path / "hydra"
    hydra_out.mkdir()
    (hydra_out / "sweep.json").write_bytes((out / "sweep.json").read_bytes())
    overrides = {
        "output.dir": str(hydra_out),
        "progress": False,
        "executor": "ray",
        "resources": {"CPU": 1},
        "max_retries": 1,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    run_train(default_config("trainer", overrides))
    assert by_id(hydra_out / "results.jsonl") == by_id(local / "results.jsonl")
    assert (tmp_path / "ckpt").is_dir()


def test_demo_flags_reach_find_optimal(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        "flops_fit.examples.gpt_text.run_demo", lambda **kwargs: seen.update(kwargs), raising=True
    )
    assert main(["demo", "--out", str(tmp_path), "--mock", "--executor", "ray", "--ray-address", "auto"]) == 0
    assert seen["executor"] == "ray" and seen["ray_address"] == "auto"
    assert main(["demo", "--out", str(tmp_path), "--ray-address", "auto"]) == 2


# --- WSD sweeps (issue 19) ----------------------------------------------------------------------------


def test_branches_of_a_trunk_are_submitted_together_in_branch_order():
    from test_wsd_training import wsd_plan

    plan = wsd_plan()
    order = rx.submission_order(reversed(plan.experiments))
    for trunk in plan.trunks:
        at = [i for i, e in enumerate(order) if e.trunk_id == trunk.trunk_id]
        assert at == list(range(at[0], at[0] + len(at)))  # one chain, not interleaved
        assert [order[i].branch_step for i in at] == sorted(order[i].branch_step for i in at)


@pytest.mark.slow
def test_wsd_sweep_on_ray_matches_local_and_runs_each_trunk_in_order(tmp_path, cluster):
    from test_wsd_training import CFG as WSD_CFG
    from test_wsd_training import CountingLM as WSDData
    from test_wsd_training import lm_loss as wsd_loss
    from test_wsd_training import wsd_plan

    def runner(out, **kw):
        return TrainingRunner(
            "local", plan=wsd_plan(), output_dir=out, dataset=WSDData(2048), loss_fn=wsd_loss,
            train_config=WSD_CFG, device="cpu", progress=False, **kw,
        )  # fmt: skip

    local = runner(tmp_path / "local")
    local.run_sweep()
    remote = runner(tmp_path / "ray", executor="ray")
    remote.run_sweep()
    here, there = by_id(local.results_path), by_id(remote.results_path)
    assert {k: r["final_loss"] for k, r in there.items()} == {k: r["final_loss"] for k, r in here.items()}
    for trunk in remote.plan.trunks:
        chain = sorted(
            (r for r in there.values() if r["trunk_id"] == trunk.trunk_id), key=lambda r: r["branch_step"]
        )
        assert [r["timestamp"] for r in chain] == sorted(r["timestamp"] for r in chain)  # one after another
    assert list(remote.checkpoint_dir.iterdir()) == []
