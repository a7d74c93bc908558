"""``flops-fit serve``: the reference training service of ``mode="api"`` (protocol 1, docs/api.md).

A FastAPI app whose worker threads run submitted experiments with the local trainer (a
:class:`~flops_fit.training.jobs.LocalJob`), ``workers`` at a time. The job table lives in SQLite
(``state_dir/jobs.sqlite``) and each run checkpoints to ``state_dir/checkpoints/<id>.pt``, so a restarted
server keeps every finished result and resumes unfinished runs (jobs found "running" at start-up are queued
again). Needs the ``serve`` extra (``pip install flops-fit[serve]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import secrets
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request

from flops_fit.core.experiment import Experiment, canonical, result_config
from flops_fit.core.ledger import encode_record
from flops_fit.core.train_config import config_from_mapping
from flops_fit.core.validate import Instance, Integer, check
from flops_fit.core.version import __version__
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.api_protocol import DEFAULT_TOKEN_ENV, PROTOCOL, models
from flops_fit.training.callbacks import Callback
from flops_fit.training.jobs import LocalJob, check_recorded_train_config

#: The bodies of protocol 1 (module names, so that FastAPI resolves the route annotations).
Health, Submission, Status = models().Health, models().Submission, models().Status

logger = logging.getLogger(__name__)

__all__ = ["JobTable", "create_app", "openapi_schema", "serve"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    experiment_id TEXT PRIMARY KEY, state TEXT NOT NULL, body TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0,
    record TEXT, error TEXT, seq INTEGER NOT NULL)"""


def _differences(held: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The fields that make two submissions of one id different runs: the experiment's fields and the
    result-changing fields of the train config (others, such as how often to log, may differ)."""

    def fields(body: dict[str, Any]) -> dict[str, Any]:
        experiment = {f"experiment.{k}": v for k, v in body["experiment"].items()}
        config = result_config(body["train_config"]) or {}
        return canonical({**experiment, **{f"train_config.{k}": v for k, v in config.items()}})

    a, b = fields(held), fields(given)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class JobTable:
    """The service's jobs in SQLite (one connection per call, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute(_SCHEMA)
            requeued = db.execute("UPDATE jobs SET state='queued' WHERE state='running'").rowcount
        if requeued:
            logger.info("re-queued %d job(s) that were running when the service stopped", requeued)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30)
            try:
                with db:  # commits, or rolls back on an exception
                    yield db
            finally:
                db.close()

    def submit(self, eid: str, body: dict[str, Any], retry: bool = False) -> list[str]:
        """Queue ``eid``. An id the table has already is left as it is (idempotent), except that a cancelled
        run, or a failed one with ``retry``, is queued again (it resumes from its checkpoint). Returns the
        fields in which ``body`` differs from the one the table holds for ``eid`` (then nothing changes)."""
        with self._db() as db:
            row = db.execute("SELECT state, body FROM jobs WHERE experiment_id=?", (eid,)).fetchone()
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            if row is None:
                db.execute(
                    "INSERT INTO jobs (experiment_id, state, body, seq) VALUES (?, 'queued', ?, ?)",
                    (eid, json.dumps(body), seq),
                )
                return []
            differs = _differences(json.loads(row[1]), body)
            if not differs and (row[0] == "cancelled" or (retry and row[0] == "failed")):
                db.execute(
                    "UPDATE jobs SET state='queued', body=?, record=NULL, error=NULL, seq=? WHERE experiment_id=?",
                    (json.dumps(body), seq, eid),
                )
                logger.info("experiment %s queued again (it was %s)", eid, row[0])
        return differs

    def get(self, eid: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(
                "SELECT experiment_id, state, tokens, record, error FROM jobs WHERE experiment_id=?", (eid,)
            ).fetchone()
        if row is None:
            return None
        return {
            "experiment_id": row[0],
            "state": row[1],
            "tokens": row[2],
            "record": None if row[3] is None else json.loads(row[3]),
            "error": row[4],
        }

    def claim(self) -> tuple[str, dict[str, Any]] | None:
        """The oldest queued job, marked running."""
        with self._db() as db:
            row = db.execute(
                "SELECT experiment_id, body FROM jobs WHERE state='queued' ORDER BY seq"
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running' WHERE experiment_id=?", (row[0],))
        return row[0], json.loads(row[1])

    def finish(
        self, eid: str, state: str, record: dict[str, Any] | None, error: str | None, tokens: int
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE jobs SET state=?, record=?, error=?, tokens=? WHERE experiment_id=?",
                (state, None if record is None else encode_record(record), error, int(tokens), eid),
            )

    def cancel_queued(self, eid: str) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET state='cancelled' WHERE experiment_id=? AND state='queued'", (eid,))

    def counts(self) -> dict[str, int]:
        with self._db() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: n for state, n in rows}


class _Watch(Callback):
    """Counts tokens trained and stops the run (as Ctrl-C would) when it is cancelled."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled
        self.tokens = 0
        self.train_loss: float | None = None

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        self.tokens = int(tokens)
        self.train_loss = float(train_loss) if math.isfinite(train_loss) else None
        if self.cancelled.is_set():
            raise KeyboardInterrupt


class Service:
    """The job table and the worker threads that train what is queued in it."""

    def __init__(self, job_factory: Callable[[], LocalJob], state_dir: Path, workers: int) -> None:
        self.job_factory = job_factory
        self.state_dir = state_dir
        self.checkpoints = state_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.table = JobTable(state_dir / "jobs.sqlite")
        self.workers = workers
        self._job: LocalJob | None = None
        self._job_lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        self._watches: dict[str, _Watch] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"flops-fit-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for event in list(self._cancel.values()):
            event.set()
        with self._wake:
            self._wake.notify_all()

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def local_job(self) -> LocalJob:
        with self._job_lock:
            if self._job is None:
                job = self.job_factory()
                check("job_factory()", job, Instance(LocalJob), "a factory of a LocalJob")
                self._job = job
            return self._job

    def status(self, eid: str) -> dict[str, Any] | None:
        status = self.table.get(eid)
        watch = self._watches.get(eid)
        if status is not None and watch is not None and status["state"] == "running":
            status["tokens"], status["train_loss"] = watch.tokens, watch.train_loss
        return status

    def cancel(self, eid: str) -> None:
        self.table.cancel_queued(eid)
        event = self._cancel.get(eid)
        if event is not None:
            event.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            claimed = self.table.claim()
            if claimed is None:
                with self._wake:
                    self._wake.wait(timeout=0.5)
                continue
            self._run(*claimed)

    def _run(self, eid: str, body: dict[str, Any]) -> None:
        e = Experiment.from_dict(body["experiment"])
        config = config_from_mapping(body["train_config"], "train_config")
        cancelled = threading.Event()
        watch = _Watch(cancelled)
        self._cancel[eid], self._watches[eid] = cancelled, watch
        checkpoint = self.checkpoints / f"{eid}.pt"
        try:
            plan = SweepPlan(experiments=(e,), flops=e.flops, param_count="model")
            job = dataclasses.replace(self.local_job(), train_config=config).prepare(plan, "local")
            record, _ = job.run(e, checkpoint, [watch], None)
        except KeyboardInterrupt:
            state = "queued" if self._stop.is_set() else "cancelled"  # stopping: resume on the next start
            self.table.finish(eid, state, None, "cancelled" if state == "cancelled" else None, watch.tokens)
            return
        except Exception as exc:
            logger.exception("experiment %s could not be run", eid)
            self.table.finish(eid, "failed", None, f"{type(exc).__name__}: {exc}", watch.tokens)
            return
        finally:
            self._cancel.pop(eid, None)
            self._watches.pop(eid, None)
        self.table.finish(eid, record["status"], record, record.get("error"), int(record["num_tokens"]))
        checkpoint.unlink(missing_ok=True)
        logger.info("experiment %s %s (loss %s)", eid, record["status"], record.get("final_loss"))


def create_app(
    job_factory: Callable[[], LocalJob],
    state_dir: str | os.PathLike[str] = "flops_fit_service",
    token_env: str = DEFAULT_TOKEN_ENV,
    workers: int = 1,
) -> Any:
    """The FastAPI app of the service: ``job_factory()`` makes the LocalJob (model, data, loss) that trains
    each submitted experiment with the submitted TrainConfig; the token is read from ``token_env``."""
    check("job_factory", job_factory, Instance(Callable), "a callable returning a LocalJob")  # type: ignore[arg-type]
    check("state_dir", state_dir, Instance(str, os.PathLike), "a folder")
    check("token_env", token_env, Instance(str), "the name of an environment variable")
    workers = check("workers", workers, Integer(1), "experiments trained at a time")
    if not os.environ.get(token_env):
        raise ValueError(
            f"the service reads its bearer token from the environment variable {token_env}, which is not set"
        )
    service = Service(job_factory, Path(state_dir), workers)

    def authorised(request: Request) -> None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {os.environ.get(token_env, '')}"
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail=f"a valid bearer token is required (see {token_env})")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        service.start()
        yield
        service.stop()

    app = _app(service, Depends(authorised), lifespan)
    app.state.service = service
    return app


def _app(service: Service | None, auth: Any, lifespan: Any = None) -> Any:
    app = FastAPI(title="flops-fit training service", version=str(PROTOCOL), lifespan=lifespan)
    _routes(app, service, auth)  # type: ignore[arg-type]
    return app


def openapi_schema() -> dict[str, Any]:
    """The service's OpenAPI document (docs/openapi.json), made without starting or opening anything."""

    def no_auth() -> None:
        return None

    return dict(_app(None, Depends(no_auth)).openapi())


def _main(argv: list[str]) -> int:
    """``python -m flops_fit.app.serve --openapi``: write the OpenAPI document to stdout."""
    if argv != ["--openapi"]:
        sys.stderr.write(
            "usage: python -m flops_fit.app.serve --openapi  (run the service: flops-fit serve)\n"
        )
        return 2
    sys.stdout.write(json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n")
    return 0


def _routes(app: Any, service: Service, auth: Any) -> None:
    http_error = HTTPException

    @app.get("/v1/health", response_model=Health, dependencies=[auth])
    def health() -> Any:
        counts = service.table.counts()
        return {
            "protocol": PROTOCOL,
            "service": "flops-fit",
            "version": __version__,
            "busy": counts.get("running", 0),
            "queued": counts.get("queued", 0),
            "workers": service.workers,
        }

    @app.post("/v1/experiments", response_model=Status, dependencies=[auth])
    def submit(body: Submission) -> Any:
        try:
            e = Experiment.from_dict(body.experiment)
            config_from_mapping(body.train_config, "train_config")
            check_recorded_train_config(body.train_config, "train_config", "ask for at most that many")
        except (TypeError, ValueError) as exc:
            raise http_error(status_code=422, detail=str(exc)) from None
        submitted = {"experiment": e.to_dict(), "train_config": body.train_config}
        differs = service.table.submit(e.experiment_id, submitted, retry=body.retry)
        if differs:
            raise http_error(
                status_code=409,
                detail=f"experiment {e.experiment_id} is on this service with other {', '.join(differs)}",
            )
        service.notify()
        return service.status(e.experiment_id)

    @app.get("/v1/experiments/{experiment_id}", response_model=Status, dependencies=[auth])
    def status(experiment_id: str) -> Any:
        found = service.status(experiment_id)
        if found is None:
            raise http_error(status_code=404, detail=f"no experiment {experiment_id!r} on this service")
        return found

    @app.post("/v1/experiments/{experiment_id}/cancel", response_model=Status, dependencies=[auth])
    def cancel(experiment_id: str) -> Any:
        if service.status(experiment_id) is None:
            raise http_error(status_code=404, detail=f"no experiment {experiment_id!r} on this service")
        service.cancel(experiment_id)
        return service.status(experiment_id)


def serve(
    job_factory: Callable[[], LocalJob],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    state_dir: str | os.PathLike[str] = "flops_fit_service",
    token_env: str = DEFAULT_TOKEN_ENV,
    workers: int = 1,
) -> None:
    """Run the service with uvicorn until interrupted (binds 127.0.0.1 unless ``host`` says otherwise)."""
    import uvicorn

    check("host", host, Instance(str), "e.g. 127.0.0.1")
    port = check("port", port, Integer(0, 65535), "a TCP port")
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: reachable from other machines; only the bearer token guards it, and the traffic "
            "is not encrypted (put it behind TLS)",
            host,
        )
    app = create_app(job_factory, state_dir, token_env, workers)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
