"""mode="api": sweeps through a real `flops-fit serve` service on 127.0.0.1 started by each test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("tenacity")

import httpx
from torch import nn

from flops_fit import TrainConfig, find_optimal
from flops_fit.training.runner import TrainingRunner

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import api_service_helpers as h  # noqa: E402

TOKEN = "test-token-not-secret"
CFG = TrainConfig(batch_size=32, lr=3e-3, eval_batches=2, weight_decay=0.0, max_epochs=20)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python tests/api_service_helpers.py PORT STATE_DIR FACTORY` in a subprocess."""

    def __init__(self, state: Path, factory: str = "job", port: int | None = None, workers: int = 1) -> None:
        self.state, self.factory, self.port, self.workers = state, factory, port or _port(), workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        env = {**os.environ, "FLOPS_FIT_API_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "api_service_helpers.py"),
                str(self.port),
                str(self.state),
                self.factory,
                str(self.workers),
            ],
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the test server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("FLOPS_FIT_API_TOKEN", TOKEN)


@pytest.fixture
def server(tmp_path, token):
    s = Server(tmp_path / "service").start()
    yield s
    s.stop()


def _plan(tmp_path, budgets=(2e6, 6e6)):
    return find_optimal(
        h.Wide, "width", h.data(), nn.functional.mse_loss, list(budgets), num_model_sizes=3,
        output_dir=tmp_path / "plan", train=False, train_config=CFG,
    )  # fmt: skip


def _api_runner(plan, out, url, **kw):
    runner = TrainingRunner(
        "api", plan=plan, output_dir=out, api_url=url, train_config=CFG, progress=False, **kw
    )
    object.__setattr__(runner.job, "poll_s", 0.05)
    return runner


def _ledger(out: Path) -> list[dict]:
    (path,) = out.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sweep_through_the_service_records_what_local_mode_writes(tmp_path, server):
    plan = _plan(tmp_path)
    runs = _api_runner(plan, tmp_path / "api", server.url).run_sweep()
    assert len(runs) == len(plan) and (runs["status"] == "completed").all()
    local = TrainingRunner(
        "local", plan=plan, output_dir=tmp_path / "local", model=h.wide, dataset=h.data(),
        loss_fn=nn.functional.mse_loss, train_config=CFG, progress=False, device="cpu",
    ).run_sweep()  # fmt: skip
    api_lines, local_lines = _ledger(tmp_path / "api"), _ledger(tmp_path / "local")
    assert set(api_lines[0]) == set(local_lines[0])
    assert all(r["mode"] == "api" for r in api_lines)
    by_id = local.set_index("experiment_id")["final_loss"]
    for r in api_lines:  # same seeds, same data, same trainer: the same losses
        assert r["final_loss"] == pytest.approx(by_id[r["experiment_id"]], rel=1e-4)
    # resuming against the service trains nothing again
    again = _api_runner(plan, tmp_path / "api", server.url).run_sweep()
    assert len(again) == len(plan) and len(_ledger(tmp_path / "api")) == len(plan)
    # resubmitting to a fresh ledger re-attaches to the finished jobs: the service trains nothing twice
    before = httpx.get(f"{server.url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    _api_runner(plan, tmp_path / "api2", server.url).run_sweep()
    after = httpx.get(f"{server.url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert before["queued"] == after["queued"] == 0
    assert [r["final_loss"] for r in _ledger(tmp_path / "api2")] == [r["final_loss"] for r in api_lines]


def test_missing_or_wrong_token_is_named_before_anything_is_submitted(tmp_path, server, monkeypatch):
    plan = _plan(tmp_path)
    monkeypatch.delenv("FLOPS_FIT_API_TOKEN")
    with pytest.raises(ValueError, match="FLOPS_FIT_API_TOKEN"):
        _api_runner(plan, tmp_path / "a", server.url)
    monkeypatch.setenv("MY_TOKEN", "wrong")
    with pytest.raises(ValueError, match="MY_TOKEN") as info:
        _api_runner(plan, tmp_path / "a", server.url, token_env="MY_TOKEN")
    assert "wrong" not in str(info.value)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{server.url}/v1/health", headers=auth).json()["queued"] == 0
    assert (
        httpx.get(
            f"{server.url}/v1/experiments/{plan.experiments[0].experiment_id}", headers=auth
        ).status_code
        == 404
    )


def test_unreachable_url_is_a_clear_error_and_exit_status_2(tmp_path, token):
    plan = _plan(tmp_path)
    url = f"http://127.0.0.1:{_port()}"
    with pytest.raises(ValueError, match="cannot reach the training service at " + url):
        _api_runner(plan, tmp_path / "a", url)
    from flops_fit.app.cli import main

    out = tmp_path / "cli"
    assert main(["plan", "--out", str(out), "--budgets", "1e13,1e14"]) == 0
    assert main(["train", str(out), "--mode", "api", "--api-url", url]) == 2


def test_a_failed_experiment_is_recorded_with_its_message_and_the_sweep_goes_on(tmp_path, token):
    s = Server(tmp_path / "service", "failing_job").start()
    try:
        runs = _api_runner(_plan(tmp_path), tmp_path / "a", s.url).run_sweep()
    finally:
        s.stop()
    assert len(runs) == 6 and (runs["status"] == "failed").all()
    assert all("no model of width" in r["error"] for r in _ledger(tmp_path / "a"))


def _fake_server(handler) -> tuple[str, callable]:
    """A tiny FastAPI app in a uvicorn thread answering ``handler(path)`` (for malformed answers)."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def any_route(path: str):
        return JSONResponse(handler(path))

    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def test_a_schema_violating_response_names_the_field(tmp_path, token):
    health = {"protocol": 1, "service": "fake", "version": "0", "busy": 0, "queued": 0}
    url, stop = _fake_server(
        lambda path: health if path == "v1/health" else {"experiment_id": "x", "state": "done"}
    )
    try:
        runner = _api_runner(_plan(tmp_path), tmp_path / "a", url)
        with pytest.raises(ValueError, match="'state'"):
            runner.run_sweep()
    finally:
        stop()
    url, stop = _fake_server(lambda path: {"protocol": 1, "service": "fake"})
    try:
        with pytest.raises(ValueError, match="'version'"):
            _api_runner(_plan(tmp_path), tmp_path / "b", url)
    finally:
        stop()


def test_a_request_timeout_is_retried_then_a_clear_error(tmp_path, token):
    calls = []

    def slow(path):
        calls.append(path)
        time.sleep(1.0)
        return {}

    url, stop = _fake_server(slow)
    try:
        from flops_fit.training.api_job import ApiJob

        job = ApiJob(api_url=url, timeout_s=0.2, retries=3)
        with pytest.raises(ValueError, match="timed out 3 times"):
            job.prepare(_plan(tmp_path), "local")
    finally:
        stop()
    assert len(calls) == 3


def test_sigkill_mid_sweep_and_restart_loses_nothing_and_trains_nothing_twice(tmp_path, token):
    plan = _plan(tmp_path, budgets=(2e6, 6e6, 2e7))
    s = Server(tmp_path / "service").start()
    out = tmp_path / "api"
    errors = []

    def sweep():
        try:
            _api_runner(
                plan,
                out,
                s.url,
            ).run_sweep()
        except ValueError as exc:  # the service went away: the sweep stops with a clear error
            errors.append(exc)

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("*.jsonl")):
        time.sleep(0.05)
    s.kill()
    thread.join(120)
    assert errors and "cannot reach" in str(errors[0])
    s.start()  # same port, same state
    try:
        runs = _api_runner(plan, out, s.url).run_sweep()
    finally:
        s.stop()
    lines = _ledger(out)  # every line parses
    ids = [r["experiment_id"] for r in lines]
    assert sorted(ids) == sorted(e.experiment_id for e in plan) and len(set(ids)) == len(ids)
    assert (runs["status"] == "completed").all()
    assert list((tmp_path / "service" / "checkpoints").glob("*.pt")) == []


def test_serve_help_and_a_missing_token_variable_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    from flops_fit.app.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0 and "--token-env" in capsys.readouterr().out
    monkeypatch.delenv("MY_SERVICE_TOKEN", raising=False)
    state = tmp_path / "state"
    assert (
        main(
            [
                "serve",
                "--port",
                "8765",
                "--demo",
                "--token-env",
                "MY_SERVICE_TOKEN",
                "--state-dir",
                str(state),
            ]
        )
        == 2
    )
    assert "MY_SERVICE_TOKEN" in capsys.readouterr().err and not state.exists()
    monkeypatch.setenv("MY_SERVICE_TOKEN", TOKEN)
    assert (
        main(
            [
                "serve",
                "--port",
                "8765",
                "--token-env",
                "MY_SERVICE_TOKEN",
                "--model",
                "api_service_helpers.wide",
            ]
        )
        == 2
    )
    assert "--size-param" in capsys.readouterr().err


def test_find_optimal_mode_api_trains_the_sweep_on_the_service(tmp_path, server):
    from flops_fit.report.result import Result

    result = find_optimal(
        h.Wide, "width", h.data(), nn.functional.mse_loss, [2e6, 6e6], num_model_sizes=3,
        output_dir=tmp_path / "out", train_config=CFG, mode="api", api_url=server.url,
    )  # fmt: skip
    assert isinstance(result, Result)
    lines = _ledger(tmp_path / "out")
    assert len(lines) == 6 and all(r["mode"] == "api" and r["status"] == "completed" for r in lines)
    with pytest.raises(ValueError, match="api_url"):
        find_optimal(
            h.Wide,
            "width",
            h.data(),
            nn.functional.mse_loss,
            [2e6, 6e6],
            mode="api",
            output_dir=tmp_path / "x",
        )


def test_the_committed_openapi_document_is_the_services():
    from flops_fit.app.serve import openapi_schema

    committed = (HERE.parent / "docs" / "openapi.json").read_text()
    assert json.loads(committed) == openapi_schema(), "regenerate: python -m flops_fit.app.serve --openapi"


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_max_in_flight_keeps_the_services_workers_busy_with_live_progress(tmp_path, token, monkeypatch):
    from flops_fit.training.progress import SweepProgress

    s = Server(tmp_path / "service", "slow_job", workers=2).start()
    seen: list[tuple[str, int, float | None]] = []
    shown = SweepProgress.remote_progress
    monkeypatch.setattr(
        SweepProgress, "remote_progress",
        lambda self, e, tokens, tokens0, where, loss=None: (seen.append((e.experiment_id, tokens, loss)),
                                                             shown(self, e, tokens, tokens0, where, loss)),
    )  # fmt: skip
    busy, stop = [], threading.Event()

    def watch():  # the service's own count of experiments training at once
        with httpx.Client(base_url=s.url, headers=_auth()) as client:
            while not stop.is_set():
                busy.append(client.get("/v1/health").json()["busy"])
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    try:
        plan = _plan(tmp_path)
        runner = _api_runner(plan, tmp_path / "api", s.url)  # max_in_flight from the service's 2 workers
        assert runner.job.max_in_flight == 2
        watcher.start()
        runs = runner.run_sweep()
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(10)
        s.stop()
    assert (runs["status"] == "completed").all() and len(_ledger(tmp_path / "api")) == len(plan)
    assert max(busy) == 2  # two experiments trained at once
    # the display got the tokens and training loss of runs in flight
    assert any(tokens > 0 and loss is not None and loss > 0 for _, tokens, loss in seen)
    with pytest.raises(ValueError, match="max_in_flight"):
        _api_runner(plan, tmp_path / "b", "http://127.0.0.1:1", max_in_flight=0)


def test_ctrl_c_cancels_what_is_in_flight_and_a_rerun_resumes_it(tmp_path, token, monkeypatch):
    from flops_fit.training.progress import SweepProgress

    s = Server(tmp_path / "service", "slow_job").start()
    plan = _plan(tmp_path, budgets=(1e6, 2e6))
    out = tmp_path / "api"
    interrupted: list[str] = []

    def ctrl_c(self, e, tokens, tokens0, where, loss=None):
        if tokens >= 64 and not interrupted:  # the first experiment is a few steps in
            interrupted.append(e.experiment_id)
            raise KeyboardInterrupt

    try:
        with monkeypatch.context() as m:
            m.setattr(SweepProgress, "remote_progress", ctrl_c)
            with pytest.raises(KeyboardInterrupt, match="run the same command again"):
                _api_runner(plan, out, s.url).run_sweep()
        (eid,) = interrupted
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.url}/v1/experiments/{eid}", headers=_auth()).json()["state"] != "cancelled":
            assert time.monotonic() < deadline, "the service did not cancel the experiment"
            time.sleep(0.05)
        assert (tmp_path / "service" / "checkpoints" / f"{eid}.pt").exists()
        runs = _api_runner(plan, out, s.url).run_sweep()  # re-queued on the service, resumed
    finally:
        s.stop()
    assert (runs["status"] == "completed").all()
    lines = {r["experiment_id"]: r for r in _ledger(out)}
    assert len(lines) == len(_ledger(out)) == len(plan)
    assert lines[eid]["resumed_from_step"] > 0


def test_an_id_submitted_with_other_settings_is_a_409_naming_the_fields(tmp_path, server):
    plan = _plan(tmp_path)
    runner = _api_runner(plan, tmp_path / "api", server.url)
    runner.run_sweep()
    e = plan.experiments[0]
    record, trained = runner.job.run(e, None, [], None)  # one experiment: re-attached, nothing trained
    assert record["experiment_id"] == e.experiment_id and record["status"] == "completed" and trained == 0
    body = {"experiment": e.to_dict(), "train_config": CFG.to_dict()}
    with httpx.Client(base_url=server.url, headers=_auth()) as client:
        same = client.post(
            "/v1/experiments", json={**body, "train_config": {**CFG.to_dict(), "log_every": 3}}
        )
        assert same.status_code == 200 and same.json()["state"] == "completed"  # logging is not a result
        other = client.post("/v1/experiments", json={**body, "train_config": {**CFG.to_dict(), "lr": 0.1}})
        assert other.status_code == 409 and "train_config.lr" in other.json()["detail"]
    other_lr = TrainConfig(**{**CFG.to_dict(), "lr": 0.1})
    runner = TrainingRunner(
        "api", plan=plan, output_dir=tmp_path / "b", api_url=server.url, train_config=other_lr, progress=False
    )
    with pytest.raises(ValueError, match=r"HTTP 409.*train_config.lr.*--state-dir"):
        runner.run_sweep()
    assert not list((tmp_path / "b").glob("*.jsonl"))


def test_the_command_line_and_ff_train_take_max_in_flight(tmp_path, server, capsys):
    from flops_fit.app.cli import main
    from flops_fit.app.stages import default_config, run_train

    folder = str(tmp_path / "sweep")
    _plan(tmp_path).save(tmp_path / "sweep" / "sweep.json")  # for the service's Wide model
    assert main(["train", folder, "--mode", "api", "--api-url", server.url, "--max-in-flight", "0"]) == 2
    assert "max_in_flight" in capsys.readouterr().err
    assert not list((tmp_path / "sweep").glob("*.jsonl"))
    keys = {
        "mode": "api",
        "api_url": server.url,
        "max_in_flight": 2,
        "output.dir": folder,
        "train.lr": CFG.lr,
    }
    runs = run_train(default_config("trainer", keys))
    assert len(runs) == 6 and (runs["status"] == "completed").all()
    assert main(["train", folder, "--mode", "api", "--api-url", server.url, "--max-in-flight", "3"]) == 0


def test_retry_failed_reruns_on_the_service_what_it_had_failed(tmp_path, token):
    plan, state = _plan(tmp_path), tmp_path / "service"
    s = Server(state, "failing_job").start()
    try:
        failed = _api_runner(plan, tmp_path / "api", s.url).run_sweep()
    finally:
        s.stop()
    assert (failed["status"] == "failed").all()
    s = Server(state, "job").start()  # the service fixed, its job table kept
    try:
        again = _api_runner(plan, tmp_path / "fresh", s.url).run_sweep()  # re-attaches: still failed
        assert (again["status"] == "failed").all()
        fixed = _api_runner(plan, tmp_path / "api", s.url, retry_failed=True).run_sweep()
    finally:
        s.stop()
    assert (fixed["status"] == "completed").all() and len(fixed) == len(plan)
