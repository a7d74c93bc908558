"""Experiment tracking callbacks, against the real local backends where they are installed."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from flops_fit.app.tracking import (
    MLflowCallback,
    TensorBoardCallback,
    TrackingCallback,
    WandbCallback,
    experiment_params,
    result_metrics,
)
from flops_fit.core.experiment import Experiment
from flops_fit.core.outcome import RunInfo, TrainOutcome
from flops_fit.report.result import Result
from flops_fit.training import TrainConfig, train
from test_result import make_runs

EXPERIMENT = {
    "experiment_id": "exp-0007",
    "compute_budget": 1.5e9,
    "size_value": 16,
    "num_params": 212,
    "num_tokens": 512,
    "learning_rate": 0.01,
    "batch_size": 16,
}
INFO = RunInfo(
    total_steps=8, start_step=0, num_tokens=256, tokens_per_step=32, device="cpu", precision="fp32",
    compiled=False, world_size=1, num_params=212,
)  # fmt: skip


def outcome(status: str = "completed", **kw) -> TrainOutcome:
    base = dict(
        status=status, final_loss=0.5 if status == "completed" else math.nan, train_loss=0.6, tokens_seen=256,
        steps=8, flops=3.3e5, wall_time_s=2.0, tokens_per_s=128.0, curve=[(128, 0.7), (256, 0.5)],
        error=None if status == "completed" else "CUDA out of memory",
    )  # fmt: skip
    base.update(kw)
    return TrainOutcome(**base)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------
# The event logic, with an in-memory backend


class Recorder(TrackingCallback):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.runs: list[dict] = []

    def _open(self, name, params):
        self.runs.append({"name": name, "params": params, "metrics": [], "status": None})

    def _log(self, metrics, step):
        self.runs[-1]["metrics"].append((step, metrics))

    def _close(self, status, final):
        self.runs[-1]["status"] = (status, final)

    def _log_result_files(self, directory, result, metrics, name):
        return sorted(p.name for p in directory.iterdir()), metrics, name


def test_events_become_one_run_per_experiment(monkeypatch):
    clock = iter([100.0, 102.0, 103.0])
    monkeypatch.setattr("flops_fit.app.tracking.time.perf_counter", lambda: next(clock))
    rec = Recorder(params={"sweep": "demo"})
    rec.on_experiment_start(EXPERIMENT)
    rec.on_train_start(INFO)
    rec.on_log(4, 128, 0.9, 1e-3)  # 128 tokens in 2 s
    rec.on_eval(4, 128, 0.7)
    rec.on_log(8, 256, 0.6, 1e-4)  # 128 more in 1 s
    rec.on_train_end(outcome())
    (run,) = rec.runs
    assert run["name"] == "exp-0007"
    p = run["params"]
    assert p["compute_budget"] == 1.5e9 and p["size_value"] == 16 and p["learning_rate"] == 0.01
    assert p["num_tokens"] == 512 and p["total_steps"] == 8 and p["device"] == "cpu" and p["sweep"] == "demo"
    steps = [(s, m) for s, m in run["metrics"]]
    assert steps[0] == (128, {"train/loss": 0.9, "train/lr": 1e-3, "train/tokens_per_s": 64.0})
    assert steps[1] == (128, {"val/loss": 0.7})
    assert steps[2][1]["train/tokens_per_s"] == 128.0
    final = steps[3][1]
    assert steps[3][0] == 256 and final["final/val_loss"] == 0.5 and final["final/tokens_per_s"] == 128.0
    assert run["status"] == ("completed", {"status": "completed", "error": ""})


def test_runs_without_an_experiment_are_numbered_and_failures_keep_their_error():
    rec = Recorder()
    for status in ("completed", "diverged"):
        rec.on_train_start(INFO)
        rec.on_train_end(outcome(status))
    assert [r["name"] for r in rec.runs] == ["run-1", "run-2"]
    assert rec.runs[1]["status"] == ("diverged", {"status": "diverged", "error": "CUDA out of memory"})
    assert "final/val_loss" not in rec.runs[1]["metrics"][-1][1]  # NaN is not logged
    named = Recorder(run_name="baseline")
    named.on_train_start(INFO)
    named.on_interrupt(3)
    assert named.runs[0]["name"] == "baseline" and named.runs[0]["status"][0] == "interrupted"
    named.on_log(4, 128, 0.9, 1e-3)  # after the run: ignored
    assert named.runs[0]["metrics"] == []


def test_experiment_params_from_a_planned_experiment():
    e = Experiment(
        experiment_id="e1", compute_budget=1e18, size_value=256, num_params=10_000_000, num_tokens=16_000_000,
        flops_per_token=6e7, epochs=None, learning_rate=3e-4, batch_size=64, tokens_per_sample=512,
        num_steps=489, flops="6nd", seed=0,
    )  # fmt: skip
    p = experiment_params(e)
    assert p["experiment_id"] == "e1" and p["size_value"] == 256 and p["learning_rate"] == 3e-4
    assert "epochs" not in p  # None values are left out
    with pytest.raises(TypeError, match="Experiment or a mapping"):
        experiment_params(42)
    with pytest.raises(TypeError, match="run_name"):
        Recorder(run_name=3)


@pytest.mark.parametrize(
    ("cls", "module", "kwargs"),
    [
        (MLflowCallback, "mlflow", {}),
        (TensorBoardCallback, "torch.utils.tensorboard", {}),
        (WandbCallback, "wandb", {}),
    ],
)
def test_a_missing_backend_fails_at_construction_naming_the_extra(monkeypatch, cls, module, kwargs):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "flops-fit\[tracking\]"'):
        cls(**kwargs)


@pytest.fixture(scope="module")
def small_result() -> Result:
    return Result.from_runs(make_runs(curves=False), approach="isoflop")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_result):
    """``small_result`` saved (figures as PNG only) in a sweep directory that also holds a checkpoint."""
    out = small_result.save(tmp_path_factory.mktemp("sweep"), plots=False)
    small_result.plot(save_dir=out, formats="png")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "exp-1.pt").write_bytes(b"weights")
    (out / "results.jsonl").write_text("{}\n")
    return out


def test_log_result_hands_the_saved_files_to_the_backend(small_result):
    files, metrics, name = Recorder().log_result(small_result)
    assert {
        "scaling_laws.json",
        "result.json",
        "runs.json",
        "chinchilla_table.md",
        "report.html",
        "isoflop.png",
    } <= set(files)
    assert name == "scaling-laws"
    assert metrics == result_metrics(small_result)
    assert metrics["isoflop/a"] == pytest.approx(small_result.fits["isoflop"].a)
    assert metrics["optimum/params"] == pytest.approx(small_result.predict(1e20)["optimal_params"], rel=1e-6)
    with pytest.raises(TypeError, match="Result"):
        Recorder().log_result({"a": 0.5})


def test_log_result_from_a_saved_directory_logs_only_the_result_files(saved, small_result):
    files, metrics, _ = Recorder().log_result(saved)
    assert "checkpoints" not in files and "results.jsonl" not in files
    assert {"scaling_laws.json", "runs.json", "report.html", "isoflop.png"} <= set(files)
    assert metrics == result_metrics(small_result)
    assert not (saved / "report.html").exists()  # the source directory is left as it was


def test_log_result_of_a_sweep_folder_carries_its_runs(tmp_path):
    """A sweep folder keeps its runs in the ledger (not logged): the logged result gets them as an export
    and loads on its own."""
    import shutil
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "legacy_v0_1" / "cli_v0_1"
    folder = shutil.copytree(legacy, tmp_path / "sweep")
    Result.load(folder).save(folder, plots=False)  # as find_optimal leaves it: no runs.json

    class Keeper(Recorder):
        def _log_result_files(self, directory, result, metrics, name):
            shutil.copytree(directory, tmp_path / "logged")
            return super()._log_result_files(directory, result, metrics, name)

    files, _, _ = Keeper().log_result(folder, report=False)
    assert "results.jsonl" not in files and {"runs.json", "sweep.json"} <= set(files)
    logged = Result.load(tmp_path / "logged")
    assert sorted(logged.runs["experiment_id"]) == sorted(Result.load(folder).runs["experiment_id"])


# ----------------------------------------------------------------------------------------------------
# The real backends, fed by one real training run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train a tiny model once with every installed tracker attached."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "WANDB_DIR",
            "WANDB_CACHE_DIR",
            "WANDB_DATA_DIR",
            "WANDB_CONFIG_DIR",
            "WANDB_ARTIFACT_DIR",
        ):
            mp.setenv(var, str(root / "wandb-home"))
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "1")  # MLflow 3 refuses plain file stores without it
        trackers: dict[str, TrackingCallback] = {}
        if installed("mlflow"):
            trackers["mlflow"] = MLflowCallback((root / "mlruns").as_uri(), experiment_name="test")
        if installed("tensorboard"):
            trackers["tensorboard"] = TensorBoardCallback(root / "tb")
        if installed("wandb"):
            trackers["wandb"] = WandbCallback(project="test", dir=root / "wb")
        if not trackers:
            pytest.skip("no tracking backend installed (pip install 'flops-fit[tracking]')")
        for cb in trackers.values():
            cb.on_experiment_start(EXPERIMENT)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 8, generator=g)
        y = (x @ torch.randn(8, 4, generator=g)).argmax(-1)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        config = TrainConfig(batch_size=16, lr=1e-2, log_every=4, eval_every=8, eval_batches=2, seed=0)
        out = train(
            model, TensorDataset(x, y), nn.functional.cross_entropy, num_tokens=512, config=config,
            device="cpu", callbacks=list(trackers.values()), progress=False,
        )  # fmt: skip
        yield root, trackers, out


def _need(trackers, name):
    if name not in trackers:
        pytest.skip(f"{name} is not installed (pip install 'flops-fit[tracking]')")
    return trackers[name]


def test_mlflow_records_params_curve_and_outcome(trained, saved, small_result):
    root, trackers, out = trained
    cb = _need(trackers, "mlflow")
    import mlflow

    client = mlflow.MlflowClient((root / "mlruns").as_uri())
    run = client.get_run(cb.run_id)
    assert out.status == "completed" and run.info.run_name == "exp-0007" and run.info.status == "FINISHED"
    p = run.data.params
    assert (
        p["experiment_id"] == "exp-0007" and float(p["compute_budget"]) == 1.5e9 and p["size_value"] == "16"
    )
    assert float(p["learning_rate"]) == 0.01 and p["precision"] == "fp32"
    curve = [(m.step, m.value) for m in client.get_metric_history(cb.run_id, "val/loss")]
    assert curve == [(int(t), pytest.approx(v)) for t, v in out.curve]
    train_loss = client.get_metric_history(cb.run_id, "train/loss")
    assert [m.step for m in train_loss] == [64 * k for k in range(1, 9)]
    assert all(m.value > 0 for m in client.get_metric_history(cb.run_id, "train/tokens_per_s"))
    assert run.data.metrics["final/val_loss"] == pytest.approx(out.final_loss)
    assert run.data.tags["flops_fit.status"] == "completed"
    # The fitted laws as their own run, with the files as artifacts.
    rid = cb.log_result(saved)
    laws = client.get_run(rid)
    assert laws.info.run_name == "scaling-laws" and laws.data.params["primary"] == "isoflop"
    assert laws.data.metrics["isoflop/a"] == pytest.approx(small_result.fits["isoflop"].a)
    names = {a.path for a in client.list_artifacts(rid)}
    assert {"scaling_laws.json", "report.html", "isoflop.png", "chinchilla_table.md", "runs.json"} <= names
    assert not {"checkpoints", "results.jsonl"} & names  # only the result files
    local = client.download_artifacts(rid, "scaling_laws.json", str(root / "dl"))
    assert json.loads(open(local).read())["approach"] == "isoflop"


@pytest.mark.slow
def test_mlflow_sqlite_store(tmp_path):
    """A SQLite store (MLflow's recommended local backend; creating its schema takes several seconds)."""
    pytest.importorskip("mlflow")
    pytest.importorskip(
        "sqlalchemy", reason="a SQLite store needs the full mlflow package, not mlflow-skinny"
    )
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = MLflowCallback(
        uri, experiment={"experiment_id": "e1"}, artifact_location=str(tmp_path / "artifacts")
    )
    cb.on_train_start(INFO)
    cb.on_eval(8, 256, 0.5)
    cb.on_train_end(outcome())
    client = mlflow.MlflowClient(uri)
    run = client.get_run(cb.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "e1"
    assert [(m.step, m.value) for m in client.get_metric_history(cb.run_id, "val/loss")] == [(256, 0.5)]


def test_mlflow_failed_and_interrupted_runs(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "1")
    uri = (tmp_path / "mlruns").as_uri()
    cb = MLflowCallback(uri, tags={"team": "scaling"})
    cb.on_experiment_start({"experiment_id": "boom"})
    cb.on_train_start(INFO)
    cb.on_log(4, 128, 3.0, 1e-3)
    cb.on_train_end(outcome("diverged"))
    client = mlflow.MlflowClient(uri)
    run = client.get_run(cb.run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "boom"
    assert run.data.tags["flops_fit.status"] == "diverged" and run.data.tags["team"] == "scaling"
    assert run.data.tags["flops_fit.error"] == "CUDA out of memory"
    assert run.data.metrics["train/loss"] == 3.0 and "final/val_loss" not in run.data.metrics
    cb.on_train_start(INFO)
    cb.on_interrupt(2)
    stopped = client.get_run(cb.run_id)
    assert stopped.info.status == "KILLED" and stopped.info.run_name == "run-2"


def test_tensorboard_records_scalars_against_tokens(trained, saved, small_result):
    root, trackers, out = trained
    cb = _need(trackers, "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert cb.run_dir == root / "tb" / "exp-0007"
    events = EventAccumulator(str(cb.run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "final/val_loss"} <= scalars
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val/loss")] == [
        (t, v) for t, v in out.curve
    ]
    assert "params/text_summary" in events.Tags()["tensors"]
    assert any(p.name.startswith("events.out.tfevents") for p in cb.run_dir.iterdir())  # hparams summary too
    where = cb.log_result(saved)
    laws = EventAccumulator(str(where), size_guidance={"images": 0})
    laws.Reload()
    assert {"figures/isoflop", "figures/optimal"} <= set(laws.Tags()["images"])
    assert laws.Scalars("isoflop/a")[0].value == pytest.approx(small_result.fits["isoflop"].a)
    assert (where / "files" / "report.html").is_file() and (where / "files" / "scaling_laws.json").is_file()


def _wandb_records(path):
    """Decode an offline W&B run file: a ':W&B' header, then LevelDB-log records of protobuf messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero-filled tail of a block
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        part = payload if kind in (1, 2) else part + payload  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            records.append(pb.Record.FromString(part))
            part = b""
    return records


def _wandb_values(items):
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_records_config_history_and_summary(trained, saved, small_result):
    root, trackers, out = trained
    cb = _need(trackers, "wandb")
    (run_file,) = (root / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "exp-0007" and run.project == "test"
    config = _wandb_values(run.config.update)
    assert config["experiment_id"] == "exp-0007" and config["compute_budget"] == 1.5e9
    assert config["learning_rate"] == 0.01 and config["total_steps"] == out.steps
    history = [_wandb_values(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    evals = [(h["tokens"], h["val/loss"]) for h in history if "val/loss" in h]
    assert evals == [(t, pytest.approx(v)) for t, v in out.curve]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_wandb_values(r.summary.update))
    assert summary["status"] == "completed" and summary["final/val_loss"] == pytest.approx(out.final_loss)
    assert "exit" in kinds and [
        r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"
    ] == [0]
    # The fitted laws: figures, table and an artifact with the files, in a run of their own.
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(root / "wandb-home"))
        laws = cb.log_result(saved)
    laws_dir = Path(laws.dir).parent  # run.dir is <run folder>/files
    (laws_file,) = laws_dir.glob("run-*.wandb")
    laws_records = _wandb_records(laws_file)
    assert any(
        r.WhichOneof("record_type") == "artifact" and r.artifact.type == "scaling-laws" for r in laws_records
    )
    media = {
        p.name.split("_")[0] for p in (laws_dir / "files" / "media" / "images" / "figures").glob("*.png")
    }
    assert {"isoflop", "optimal"} <= media
    laws_summary = {}
    for r in laws_records:
        if r.WhichOneof("record_type") == "summary":
            laws_summary.update(_wandb_values(r.summary.update))
    assert laws_summary["isoflop/a"] == pytest.approx(small_result.fits["isoflop"].a)
