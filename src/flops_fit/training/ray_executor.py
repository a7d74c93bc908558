"""Run a sweep's experiments as Ray tasks: ``TrainingRunner(executor="ray")``.

What runs where (docs/cluster.md has the whole story):

the driver (the process that called :meth:`TrainingRunner.run_sweep`)
    decides what is pending, submits one Ray task per experiment (largest planned FLOPs first, so the
    longest runs start early and the makespan is short), appends each returned record to
    ``results.jsonl`` (it is the ledger's only writer), shows progress and ETA, and cancels the tasks in
    flight on Ctrl-C.
the workers (one Ray task per experiment, anywhere on the cluster)
    run the sweep's job on one experiment (build the model and train, call ``train_fn``, or simulate) and
    write its checkpoint under ``checkpoint_dir``; they return the record and never touch the ledger.

A worker that dies (process killed, node lost) is re-run by Ray up to ``max_retries`` times and resumes
from its checkpoint, which is why ``checkpoint_dir`` must be shared by all nodes on a multi-node
cluster. An exception inside training is a failed run, recorded as locally, not retried.

Ray is imported only when this executor runs, so ``import flops_fit`` never needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from flops_fit.core.experiment import Experiment
from flops_fit.core.validate import Real, check
from flops_fit.training.callbacks import Callback, format_count
from flops_fit.training.jobs import Job
from flops_fit.training.kinds import job_kind
from flops_fit.training.parallel import (
    TokenReporter,
    Work,
    WorkersLostError,
    check_sendable,
    run_experiment,
    submission_order,
    worker_logging,
)

logger = logging.getLogger(__name__)

__all__ = [
    "INSTALL_HINT",
    "RayOptions",
    "WorkersLostError",
    "check_resources",
    "default_resources",
    "fresh_process",
    "require_ray",
    "run_on_ray",
    "submission_order",
    "task_options",
    "token_auth_enabled",
]

INSTALL_HINT = 'pip install "flops-fit[ray]"'
#: The driver wakes at least this often (seconds) to refresh the progress of experiments in flight.
POLL_S = 1.0
#: After Ctrl-C, how long (seconds) cancelled experiments get to checkpoint and stop.
CANCEL_GRACE_S = 30.0
#: A worker reports its progress to the driver at most this often (seconds).
REPORT_EVERY_S = 2.0
#: How long (seconds) the shared-storage check may wait for a probe task on each node.
PROBE_TIMEOUT_S = 60.0
#: Ray resource names with their own ``.options`` keyword; any other name is a custom resource.
_BUILTIN = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How the sweep uses Ray.

    Attributes:
        address: cluster to join (``None``: ``RAY_ADDRESS``, else a Ray instance this process already
            initialised, else a new local cluster).
        resources: each experiment's request in Ray resource names (``None``: :func:`default_resources`).
        max_retries: re-runs of an experiment whose worker process or node died.
    """

    address: str | None = None
    resources: Mapping[str, float] | None = None
    max_retries: int = 3


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"executor='ray' needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


#: A resource amount: a number (never a bool), finite and >= 0.
_AMOUNT = Real(0, type_label="a number", range_label="a finite non-negative number")


def check_resources(resources: Any) -> dict[str, float] | None:
    """Validate a per-experiment resource request (Ray resource names -> amounts); ``None`` stays None."""
    if resources is None:
        return None
    example = "e.g. resources={'GPU': 1, 'CPU': 8}"
    if not isinstance(resources, Mapping) or not resources:
        raise TypeError(f"resources must be a non-empty mapping of Ray resource names to amounts, {example}")
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"resources keys must be Ray resource names such as 'CPU' or 'GPU', got {name!r}"
            )
        if name in ("num_cpus", "num_gpus", "cpu", "gpu"):
            raise ValueError(
                f"resources uses Ray resource names: write 'CPU'/'GPU' instead of {name!r}, {example}"
            )
        value = check(f"resources[{name!r}]", amount, _AMOUNT)
        if name != "memory" and value > 1 and not value.is_integer():
            raise ValueError(
                f"resources[{name!r}]={amount!r}: Ray takes fractions only below 1; use a whole number"
            )
        out[name] = value
    if not any(v > 0 for v in out.values()):
        raise ValueError(f"resources must request something (all amounts are 0), {example}")
    return out


def default_resources(cluster: Mapping[str, float], mode: str | Job) -> dict[str, float]:
    """One GPU per experiment when the cluster has GPUs and the job (or the job of a mode name) computes
    (is not simulated), else one CPU."""
    if not job_kind(mode).simulated and cluster.get("GPU", 0.0) >= 1.0:
        return {"GPU": 1.0}
    return {"CPU": 1.0}


def task_options(resources: Mapping[str, float]) -> dict[str, Any]:
    """The ``ray.remote(...).options(...)`` keywords of a request in Ray resource names."""
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in resources.items():
        if name == "memory":
            options["memory"] = int(amount)
        elif name in _BUILTIN:
            options[_BUILTIN[name]] = amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    return options


def fresh_process(mode: str | Job, resources: Mapping[str, float]) -> bool:
    """Whether each experiment gets a worker process of its own (Ray's ``max_calls=1``).

    Yes for a job that trains (mode ``"local"``) and for anything holding a GPU, as Ray does for GPU tasks:
    GPU memory and interpreter state never carry over to the next experiment, and a worker interrupted by a
    cancel (perhaps mid-import) is not reused. Process start-up is small next to a training run. Mock and
    CPU ``train_fn`` tasks reuse workers. ``mode`` is a job or the mode name of one.
    """
    return job_kind(mode).trains or resources.get("GPU", 0.0) > 0


# --------------------------------------------------------------------------------------------------
# worker side


def _execute(
    work: Work, e: Experiment, checkpoint_path: str | None, board: Any, log_level: int, after: Any = None
) -> dict[str, Any]:
    """The Ray task of one experiment: run it on this worker and return its record (never the ledger).
    ``after``: the result of the task it waited for (a WSD branch waits for the branch before it on its
    trunk, which advanced the trunk to where this one starts); unused."""
    import ray

    worker_logging(log_level)
    ip, pid = ray.util.get_node_ip_address(), os.getpid()
    where = f"{ip} (pid {pid})"
    extra: list[Callback] = []
    if board is not None:
        attempt, eid = uuid.uuid4().hex[:12], e.experiment_id

        def report(tokens: int, tokens0: int) -> None:
            board.report.remote(eid, attempt, tokens, tokens0, where)

        reporter = TokenReporter(report, REPORT_EVERY_S)
        reporter.send(0, force=True)
        extra.append(reporter)
    logger.info("experiment %s running on %s", e.experiment_id, where)
    out = run_experiment(work, e, checkpoint_path, extra)  # the job makes its own single process
    if not work.job.simulated:  # simulated records stay identical to the local executor's
        out["record"].setdefault("ray_node_ip", ip)
        out["record"].setdefault("ray_worker_pid", pid)
    return out


# --------------------------------------------------------------------------------------------------
# driver side


def _start_board(ray: ModuleType) -> Any:
    """Start the progress board: a Ray actor holding the latest report of each experiment in flight.

    The class is made here, not at module level, so that Ray ships it by value and the actor's process
    starts in a fraction of a second without importing flops_fit (and torch).
    """

    class ProgressBoard:
        def __init__(self) -> None:
            self.reports: dict[str, tuple[str, int, int, str]] = {}

        def report(self, experiment_id: str, attempt: str, tokens: int, tokens0: int, where: str) -> None:
            self.reports[experiment_id] = (attempt, tokens, tokens0, where)

        def snapshot(self) -> dict[str, tuple[str, int, int, str]]:
            return dict(self.reports)

    return ray.remote(ProgressBoard).options(num_cpus=0, max_restarts=0).remote()


class _Connection:
    """``ray.init`` for one sweep, unless Ray is already initialised here; ``ray.shutdown`` only what this
    opened (for a cluster started here that stops it; for a remote one it only disconnects)."""

    def __init__(self, ray: ModuleType, address: str | None) -> None:
        self.ray = ray
        self.address = address
        self.opened = False
        self.implicit = False  # no address anywhere: Ray found or started a cluster on its own
        self.logs = "/tmp/ray/session_latest/logs"

    def __enter__(self) -> _Connection:
        ray = self.ray
        if ray.is_initialized():
            if self.address is not None:
                logger.warning(
                    "Ray is already initialised in this process; using that cluster, not ray_address=%r",
                    self.address,
                )
            return self
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        self.implicit = address is None
        # a cluster started here: no dashboard (an HTTP server that takes job submissions, i.e. code)
        options = {"include_dashboard": False} if self.implicit else {}
        try:
            context = ray.init(address=address, log_to_driver=True, **options)
        except ConnectionError as exc:  # no cluster there (auto with none running, a wrong host or port)
            raise ValueError(
                f"cannot reach a Ray cluster at ray_address={address!r} ({exc}); start one (ray start --head), "
                "fix the address, or leave ray_address unset for a local cluster"
            ) from None
        self.opened = True
        if self.implicit:
            _warn_if_open(ray)
        session = getattr(context, "address_info", {}).get("session_dir")
        if session:
            self.logs = str(Path(session) / "logs")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.opened:
            self.ray.shutdown()


def token_auth_enabled() -> bool:
    """Whether Ray's token authentication guards the cluster this process started or joined (False with
    a Ray that has none, before 2.52)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:
        return False
    return bool(get_authentication_mode() == AuthenticationMode.TOKEN)


def _warn_if_open(ray: ModuleType) -> None:
    """Warn when the local cluster started for a sweep runs without token authentication: Ray binds its
    services (GCS, raylet, workers) to every network interface, and it cannot be told to use loopback."""
    if token_auth_enabled():
        logger.info("started a local Ray cluster with token authentication (RAY_AUTH_MODE=token)")
        return
    logger.warning(
        "started a local Ray cluster (Ray %s) that listens on all network interfaces WITHOUT "
        "authentication (RAY_AUTH_MODE=%s): anyone who can reach this machine's ports can run code as you. "
        "Unset RAY_AUTH_MODE (Ray >= 2.52 then uses token authentication) or set RAY_AUTH_MODE=token, or run "
        "on a machine whose ports are firewalled (docs/cluster.md, 'Trust boundary')",
        getattr(ray, "__version__", "?"),
        os.environ.get("RAY_AUTH_MODE", "unset"),
    )


def _alive_nodes(ray: ModuleType) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _check_feasible(ray: ModuleType, request: Mapping[str, float], strict: bool) -> None:
    """Raise (a cluster Ray started on its own) or warn (a named cluster, which an autoscaler may grow)
    when no node can run one experiment."""
    need = {"CPU": 1.0, **request} if "CPU" not in request else dict(request)  # Ray's default CPU per task
    need = {k: v for k, v in need.items() if v > 0}
    nodes = _alive_nodes(ray)
    if any(all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
        return
    have = [{k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")} for n in nodes]
    message = (
        f"no node of the Ray cluster can run an experiment that requests {need} (nodes have {have}); "
        "pass resources= that a node has"
    )
    if strict:
        raise ValueError(message + ", or ray_address='auto' for a cluster whose autoscaler adds such nodes")
    logger.warning("%s; the experiments wait until a node that has them joins", message)


def _unshared_nodes(ray: ModuleType, directory: Path, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The nodes (by IP) that do not see ``directory`` at the driver's path: one tiny task per node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = directory / f".flops-fit-probe-{uuid.uuid4().hex}"
    marker.write_text("flops-fit shared storage probe\n", encoding="utf-8")
    try:

        def sees(path: str) -> bool:  # nested: shipped by value, the probe process imports nothing
            import os

            return os.path.exists(path)

        probe = ray.remote(sees)
        refs = {}
        for n in _alive_nodes(ray):
            strategy = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ref = probe.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(str(marker))
            refs[ref] = n.get("NodeManagerAddress", n["NodeID"])
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        blind = []
        for ref in ready:
            try:
                if not ray.get(ref):
                    blind.append(refs[ref])
            except ray.exceptions.RayError:
                blind.append(refs[ref])
        for ref in not_ready:
            ray.cancel(ref, force=True)
        if not_ready:
            logger.warning(
                "could not check checkpoint_dir on node(s) %s within %.0f s",
                [refs[r] for r in not_ready],
                timeout_s,
            )
        return blind
    finally:
        marker.unlink(missing_ok=True)


def _put_work(ray: ModuleType, work: Work) -> Any:
    """``ray.put`` the job and callbacks once; if they cannot be pickled, say which argument is at fault."""
    try:
        return ray.put(work)
    except Exception as exc:
        from ray import cloudpickle

        check_sendable(work, cloudpickle.dumps, "Ray workers")
        raise TypeError(f"the sweep cannot be sent to Ray workers: {type(exc).__name__}: {exc}") from exc


def _remote_error(e: Experiment, exc: BaseException) -> BaseException:
    """The exception to raise in the driver for an exception raised by an experiment's task."""
    cause = getattr(exc, "cause", None)
    text = str(exc)
    if isinstance(cause, ImportError) or "failed to import" in text or "No module named" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next(
            (line for line in reversed(lines) if "No module named" in line or line.startswith("ImportError")),
            lines[0] if lines else repr(cause),
        )
        return ImportError(
            f"experiment {e.experiment_id}: a Ray worker could not load the sweep's code ({detail}); "
            "your model, dataset, loss_fn, train_fn and callbacks must be importable on every node: install "
            "your package there, set PYTHONPATH, or call ray.init(runtime_env={'py_modules': [...]}) first"
        )
    if isinstance(cause, Exception):
        return cause
    return RuntimeError(f"experiment {e.experiment_id} raised on a Ray worker: {text}")


class _Driver:
    """The driver's loop: submit, wait, record, show progress; cancel on Ctrl-C."""

    def __init__(
        self,
        ray: ModuleType,
        display: Any,
        record: Callable[[Experiment, dict[str, Any], float], None],
        board: Any,
        graceful: bool = True,
    ) -> None:
        self.ray = ray
        self.display = display
        self.record = record
        self.board = board
        self.graceful = graceful  # cancel with a KeyboardInterrupt in the task (it checkpoints), not a kill
        self.pending: dict[Any, Experiment] = {}
        self.attempts: dict[str, str] = {}
        self.lost: list[tuple[Experiment, str]] = []

    def loop(self) -> None:
        ray = self.ray
        while self.pending:
            refs = list(self.pending)
            ready, rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            self.poll_board()
            done = set(ready)
            for ref in [r for r in refs if r in done]:  # a batch is recorded in submission order
                self.collect(ref)
            self.display.heartbeat()

    def collect(self, ref: Any) -> None:
        """Take one finished task: record its result, or note its lost worker, or raise its error."""
        ray = self.ray
        e = self.pending.pop(ref)
        try:
            out = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self.display.forget(e)
            return
        except ray.exceptions.RayTaskError as exc:
            self.display.forget(e)
            logger.debug("experiment %s raised on its worker:\n%s", e.experiment_id, exc)
            error = _remote_error(e, exc)
            self.cancel(wait=True)
            raise error from exc
        except ray.exceptions.RayError as exc:  # the worker or its node died more than max_retries times
            self.display.forget(e)
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            logger.error(
                "experiment %s lost its Ray worker for good (%s); its checkpoint is kept",
                e.experiment_id,
                reason,
            )
            self.lost.append((e, reason))
            return
        self.record(e, out["record"], out["trained_flops"])

    def poll_board(self) -> None:
        if self.board is None:
            return
        ray = self.ray
        try:
            reports = ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # the display is best effort; results still arrive
            logger.debug("progress board unreachable; live progress off", exc_info=True)
            self.board = None
            return
        in_flight = {e.experiment_id: e for e in self.pending.values()}
        for eid, (attempt, tokens, tokens0, where) in reports.items():
            e = in_flight.get(eid)
            if e is None:
                continue
            if self.attempts.get(eid) != attempt:
                self.display.started_remote(e, where, restarted=eid in self.attempts)
                self.attempts[eid] = attempt
            self.display.remote_progress(e, tokens, tokens0, where)

    def cancel(self, wait: bool) -> None:
        """Cancel what is in flight (each experiment checkpoints and stops); with ``wait``, give them
        CANCEL_GRACE_S seconds and record those that finished meanwhile. A second Ctrl-C kills them."""
        ray = self.ray
        for ref in self.pending:
            ray.cancel(ref, force=not self.graceful)
        if not wait:
            return
        deadline = time.monotonic() + CANCEL_GRACE_S
        try:
            while self.pending and time.monotonic() < deadline:
                refs = list(self.pending)
                left = max(0.0, min(POLL_S, deadline - time.monotonic()))
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=left)
                for ref in ready:
                    e = self.pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError:
                        self.display.forget(e)
                        continue
                    self.record(e, out["record"], out["trained_flops"])
        except KeyboardInterrupt:
            logger.warning("second Ctrl-C: killing %d experiment(s) without waiting", len(self.pending))
        for ref in self.pending:
            ray.cancel(ref, force=True)
        for e in self.pending.values():
            self.display.forget(e)
        self.pending.clear()


def run_on_ray(
    job: Job,
    todo: list[Experiment],
    checkpoint_path: Callable[[str], Path],
    options: RayOptions,
    display: Any,
    record: Callable[[Experiment, dict[str, Any], float], None],
    callbacks: Sequence[Callback] = (),
) -> None:
    """Run ``job`` on each experiment of ``todo`` as a Ray task; call ``record(experiment, record,
    trained_flops)`` in this process as each result arrives (the caller appends it to the ledger).

    Raises:
        KeyboardInterrupt: on Ctrl-C, after cancelling the tasks in flight (they checkpoint and stop).
        WorkersLostError: after every other experiment finished, for those whose worker died more than
            ``options.max_retries`` times.
        TypeError, ValueError: what an experiment's task raised for bad input (the other tasks are
            cancelled first), or a job that cannot be sent to the workers.
    """
    ray = require_ray()
    with _Connection(ray, options.address) as connection:
        request = _prepare_cluster(
            ray, job, options, checkpoint_path(todo[0].experiment_id).parent, connection
        )
        board = _start_board(ray) if not job.simulated else None
        driver = _Driver(ray, display, record, board, graceful=not job.simulated)
        try:
            _submit(ray, driver, Work(job, tuple(callbacks)), todo, checkpoint_path, options, request)
            driver.loop()
        except KeyboardInterrupt:
            running = len(driver.pending)
            logger.warning(
                "interrupted: cancelling %d experiment(s) in flight; they checkpoint and stop", running
            )
            driver.cancel(wait=True)
            raise KeyboardInterrupt(
                f"interrupted with {running} experiment(s) running or queued ({display.done} of {display.total} "
                "experiments done); their checkpoints are kept: run the same command again to resume"
            ) from None
        finally:
            if driver.pending:  # an error left tasks behind
                driver.cancel(wait=False)
            if board is not None:
                ray.kill(board)
    if driver.lost:
        ids = ", ".join(f"{e.experiment_id} ({why})" for e, why in driver.lost)
        raise WorkersLostError(
            f"{len(driver.lost)} experiment(s) lost their Ray worker more than max_retries={options.max_retries} "
            f"times: {ids}. Every other experiment is recorded; their checkpoints are kept: run the same "
            "command again to resume them (raise max_retries if workers are often preempted)"
        )


def _prepare_cluster(
    ray: ModuleType, job: Job, options: RayOptions, storage: Path, connection: _Connection
) -> dict[str, float]:
    """Each experiment's resource request, checked against the cluster; logs the set-up, and warns when a
    training job's checkpoints are not on storage every node sees."""
    cluster = ray.cluster_resources()
    request = dict(options.resources) if options.resources else default_resources(cluster, job)
    _check_feasible(ray, request, strict=connection.implicit)
    nodes = _alive_nodes(ray)
    logger.info(
        "ray: %d node(s), %s; each experiment requests %s (max_retries=%d); checkpoints in %s; worker "
        "logs in %s on each node (`ray logs`, the dashboard), also streamed here with (task pid=, ip=) "
        "prefixes",
        len(nodes),
        ", ".join(f"{k}={v:g}" for k, v in sorted(cluster.items()) if k in ("CPU", "GPU")) or "no CPU/GPU",
        request,
        options.max_retries,
        storage,
        connection.logs,
    )
    if job.trains and len(nodes) > 1:
        blind = _unshared_nodes(ray, storage)
        if blind:
            logger.warning(
                "node(s) %s do not see checkpoint_dir %s: an experiment retried there restarts from "
                "scratch instead of resuming; put checkpoint_dir on storage every node mounts at the same "
                "path (NFS, Lustre, ...)",
                blind,
                storage,
            )
    return request


def _submit(
    ray: ModuleType,
    driver: _Driver,
    work: Work,
    todo: list[Experiment],
    checkpoint_path: Callable[[str], Path],
    options: RayOptions,
    request: Mapping[str, float],
) -> None:
    """Submit one task per experiment, largest first, into ``driver.pending``."""
    work_ref = _put_work(ray, work)
    job = work.job
    remote = ray.remote(max_calls=1)(_execute) if fresh_process(job, request) else ray.remote(_execute)
    task = {"max_retries": options.max_retries, "retry_exceptions": False, **task_options(request)}
    level = logging.getLogger("flops_fit").getEffectiveLevel()
    order = submission_order(todo)
    last_on_trunk: dict[str, Any] = {}  # a branch's task waits for the previous branch of its trunk
    for e in order:
        path = str(checkpoint_path(e.experiment_id)) if job.trains else None
        after = last_on_trunk.get(e.trunk_id) if e.trunk_id is not None else None
        ref = remote.options(name=f"flops-fit:{e.experiment_id}", **task).remote(
            work_ref, e, path, driver.board, level, after
        )
        if e.trunk_id is not None:
            last_on_trunk[e.trunk_id] = ref
        driver.pending[ref] = e
    logger.info(
        "submitted %d experiment(s), largest first (%s .. %s FLOPs)",
        len(order),
        format_count(order[0].planned_flops),
        format_count(order[-1].planned_flops),
    )
