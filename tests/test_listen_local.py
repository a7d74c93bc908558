"""Network services flops-fit starts: what they listen on and who may talk to them.

The local Ray cluster of ``executor="ray"`` without an address (Ray cannot bind it to loopback: its
services listen on every interface) runs without a dashboard, with Ray's token authentication where Ray
has it, and warns clearly when started without. The ``api`` service binds 127.0.0.1 by default, needs a
bearer token, and warns when bound wider.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _listening(pids: set[int]) -> set[tuple[str, str]]:
    """(address, process name) of every TCP socket the processes ``pids`` listen on."""
    import psutil

    out = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                out.add((c.laddr.ip, psutil.Process(c.pid).name()))
            except psutil.NoSuchProcess:
                pass
    return out


def _ray_pids(session_dir: str) -> set[int]:
    """The processes of the Ray session in ``session_dir`` (and this one)."""
    import psutil

    pids = {os.getpid()}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if session_dir in cmd or "gcs_server" in cmd or "raylet" in cmd:
            pids.add(p.info["pid"])
    return pids


def test_implicit_ray_cluster_starts_without_dashboard_and_warns_when_unauthenticated(monkeypatch, caplog):
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    from flops_fit.training.ray_executor import _Connection

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = {}
    real_init = ray.init

    def bounded_init(**kw):
        seen.update(kw)
        return real_init(num_cpus=1, logging_level=logging.WARNING, **kw)

    monkeypatch.setattr(ray, "init", bounded_init)
    assert not ray.is_initialized()
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        with _Connection(ray, None) as conn:
            session = str(conn.logs).rsplit("/logs", 1)[0]
            listening = _listening(_ray_pids(session))
    assert not ray.is_initialized()
    assert seen["include_dashboard"] is False
    assert listening and not any("dashboard" in name for _, name in listening)
    wildcard = {addr for addr, _ in listening if addr in ("0.0.0.0", "::")}
    assert wildcard, f"Ray now binds {listening}: if it is loopback only, the warning can be relaxed"
    assert "WITHOUT authentication (RAY_AUTH_MODE=disabled)" in caplog.text
    assert psutil is not None


def test_a_named_ray_cluster_is_joined_as_it_is(monkeypatch, caplog):
    """An address is the user's cluster: flops-fit neither changes its options nor warns about it."""
    ray = pytest.importorskip("ray")
    from flops_fit.training.ray_executor import _Connection

    seen = {}

    def fake_init(**kw):
        seen.update(kw)
        return None

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with caplog.at_level(logging.WARNING, logger="flops_fit"), _Connection(ray, "ray://head:10001"):
        pass
    assert seen == {"address": "ray://head:10001", "log_to_driver": True}
    assert "authentication" not in caplog.text


TOKEN_SCRIPT = textwrap.dedent(
    """
    import functools, logging, ray
    from flops_fit.training.ray_executor import _Connection, token_auth_enabled
    ray.init = functools.partial(ray.init, num_cpus=1, logging_level=logging.ERROR)
    logging.basicConfig(level=logging.INFO)
    with _Connection(ray, None):
        print("TOKEN", token_auth_enabled())
    """
)


@pytest.mark.slow
def test_implicit_ray_cluster_uses_token_auth_when_the_mode_is_unset(tmp_path):
    """With RAY_AUTH_MODE unset, the cluster started for a sweep requires Ray's token (Ray >= 2.52)."""
    ray = pytest.importorskip("ray")
    try:
        from ray._raylet import AuthenticationMode  # noqa: F401
    except ImportError:
        pytest.skip(f"Ray {ray.__version__} has no token authentication")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")  # token file in tmp
    out = subprocess.run(
        [sys.executable, "-c", TOKEN_SCRIPT], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TOKEN True" in out.stdout
    assert "WITHOUT authentication" not in out.stderr
    assert (tmp_path / ".ray" / "auth_token").is_file()


# ------------------------------------------------------------------------------------------ the api service


def test_serve_binds_loopback_by_default_and_warns_when_bound_wider(monkeypatch, caplog):
    pytest.importorskip("uvicorn")
    import inspect

    import uvicorn

    from flops_fit.app import serve as serve_mod
    from flops_fit.app.cli import build_parser

    assert inspect.signature(serve_mod.serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve", "--port", "8765"])
    assert args.host == "127.0.0.1"
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(serve_mod, "create_app", lambda *a: object())
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        serve_mod.serve(lambda: None, port=8765)
        assert "reachable from other machines" not in caplog.text
        serve_mod.serve(lambda: None, host="0.0.0.0", port=8765)
    assert [c["host"] for c in calls] == ["127.0.0.1", "0.0.0.0"]
    assert "serving on 0.0.0.0: reachable from other machines" in caplog.text


def test_serve_needs_a_token_and_refuses_requests_without_it(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from flops_fit.app.serve import create_app

    monkeypatch.delenv("FF_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="FF_TEST_TOKEN, which is not set"):
        create_app(lambda: None, tmp_path / "s", "FF_TEST_TOKEN")
    monkeypatch.setenv("FF_TEST_TOKEN", "s3cret-token")
    app = create_app(lambda: None, tmp_path / "s", "FF_TEST_TOKEN")
    client = TestClient(app)  # no lifespan: nothing trains
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        assert client.get("/v1/experiments/abc", headers=headers).status_code == 401
    assert (
        client.get("/v1/experiments/abc", headers={"Authorization": "Bearer s3cret-token"}).status_code == 404
    )


def test_serve_refuses_a_submission_asking_for_more_workers_than_cpus(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from flops_fit.app.serve import create_app
    from flops_fit.core.experiment import Experiment, experiment_id

    monkeypatch.setenv("FF_TEST_TOKEN", "s3cret-token")
    client = TestClient(create_app(lambda: None, tmp_path / "s", "FF_TEST_TOKEN"))
    e = Experiment(
        experiment_id=experiment_id({"w": 1}), compute_budget=6e6, size_value=4, num_params=1000,
        num_tokens=1000, flops_per_token=6000.0, epochs=None, learning_rate=None, batch_size=4,
        tokens_per_sample=8, num_steps=31, flops="6nd", seed=0,
    )  # fmt: skip
    too_many = (os.cpu_count() or 1) + 1
    body = {
        "experiment": e.to_dict(),
        "train_config": {"batch_size": 4, "num_workers": too_many},
        "retry": False,
    }
    reply = client.post("/v1/experiments", json=body, headers={"Authorization": "Bearer s3cret-token"})
    assert reply.status_code == 422 and f"train_config sets num_workers={too_many}" in reply.text
