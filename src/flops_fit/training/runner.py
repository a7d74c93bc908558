"""Run a whole IsoFLOP sweep: :class:`TrainingRunner`.

The runner walks the experiments of a :class:`~flops_fit.plan.planning.SweepPlan` in plan order (budgets
ascending, sizes ascending within a budget: the cheapest runs first, so problems show early), trains
each one that is not finished yet, and appends one JSON line per finished experiment to
``output_dir/results.jsonl``. Everything needed to resume lives in ``output_dir``:

``sweep.json``
    the plan (written when absent, replaced when the plan changed).
``results.jsonl``
    the append-only ledger (:mod:`flops_fit.core.ledger`); a finished experiment (completed, diverged or
    failed) is never run again, unless ``retry_failed=True`` for failed ones.
``checkpoints/<experiment_id>.pt``
    the experiment in flight (:func:`~flops_fit.training.train` writes, resumes and deletes it); the
    folder can be moved elsewhere with ``checkpoint_dir`` (e.g. storage shared by a cluster's nodes).

Running the same command again after a crash, ``kill -9`` or Ctrl-C continues where it stopped: no
experiment is lost or recorded twice.

Modes: ``"local"`` trains with :func:`~flops_fit.training.train`; ``"mock"`` writes synthetic results
from a Chinchilla law (:class:`~flops_fit.training.mock.MockLaw`) without training; ``"function"`` calls
your own ``train_fn(experiment) -> {"final_loss": ..., ...}`` (your loop, a cluster job, an API).

Executors: ``"local"`` runs the experiments one after another in this process; ``"ray"`` runs each as a
Ray task on a cluster (:mod:`flops_fit.training.ray_executor`, docs/cluster.md). Either way this process
is the only writer of the ledger.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from flops_fit.core.io import remove_temporaries
from flops_fit.core.ledger import append_record, encode_record, exclusive_folder, read_records
from flops_fit.core.outcome import STATUSES, RunInfo, TrainOutcome
from flops_fit.core.runs import REQUIRED_COLUMNS, complete_runs, list_ids, validate_runs
from flops_fit.core.train_config import FIELD_NAMES, RESULT_FIELDS, TrainConfig, config_from_mapping
from flops_fit.plan.planning import (
    PLAN_FILE,
    SAFE_EXPERIMENT_ID,
    Experiment,
    ModelSpec,
    SweepPlan,
    experiment_id,
)
from flops_fit.training.callbacks import Callback, ProgressCallback, format_count
from flops_fit.training.checkpoint import discard_checkpoint
from flops_fit.training.data import batch_layout, prepare_data
from flops_fit.training.device import resolve_device
from flops_fit.training.distributed import launched_world_size, make_processes
from flops_fit.training.loop import train
from flops_fit.training.mock import MockLaw, mock_generator

logger = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "MODES", "TrainingRunner", "check_executor", "latest_records", "load_results"]

MODES: tuple[str, ...] = ("local", "mock", "function")
#: Where the experiments run: one after another in this process, or as tasks on a Ray cluster.
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: Devices an experiment on a Ray worker can ask for (the worker's GPU is the one Ray assigned to it).
RAY_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
RESULTS_FILE = "results.jsonl"
#: A JSON list of run objects written by earlier tools; read (never written) next to the ledger.
LEGACY_RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"


# --------------------------------------------------------------------------------------------------
# reading results


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a results file, in file order.

    ``path`` is a ``.jsonl`` ledger (a torn last line is skipped with a warning), a ``.json`` list of run
    objects (or ``{"runs": [...]}``), or a runner's ``output_dir``: then its ``results.json`` (if any)
    followed by its ``results.jsonl`` (if any). A missing file gives an empty list.
    """
    path = Path(path)
    if path.is_dir():
        return [*load_results(path / LEGACY_RESULTS_FILE), *load_results(path / RESULTS_FILE)]
    if not path.exists():
        return []
    if path.suffix.lower() == ".json":
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON ({exc}); expected a list of run objects") from exc
        if isinstance(data, Mapping) and isinstance(data.get("runs"), list):
            data = data["runs"]
        if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
            raise ValueError(f"{path} must hold a JSON list of run objects (or {{'runs': [...]}})")
        return [dict(r) for r in data]
    return read_records(path)


def latest_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each ``experiment_id`` (a retried run supersedes its failure), in order of first
    appearance; records without an id are dropped."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        if "experiment_id" in record:
            latest[str(record["experiment_id"])] = dict(record)
    return list(latest.values())


def _runs_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    rows = latest_records(records)
    if not rows:
        return validate_runs(pd.DataFrame({c: [] for c in REQUIRED_COLUMNS}))
    return complete_runs(pd.DataFrame.from_records(rows), source=RESULTS_FILE)


# --------------------------------------------------------------------------------------------------
# small helpers


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _normalised(value: Any) -> Any:
    """``value`` after a JSON round trip (tuples become lists), for comparing plans."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_map_dataset(dataset: Any) -> bool:
    from torch.utils.data import DataLoader, IterableDataset

    return (
        not isinstance(dataset, (DataLoader, IterableDataset))
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
    )


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (NumPy scalars included, bools not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------------
# progress


class _ExperimentFlops(Callback):
    """Feeds an experiment's token count into the sweep display."""

    def __init__(self, display: _SweepProgress, experiment: Experiment):
        self.display = display
        self.experiment = experiment
        self.tokens0 = 0

    def on_train_start(self, info: RunInfo) -> None:
        self.tokens0 = info.start_step * info.tokens_per_step
        self.display.in_flight(self.experiment, 0, 0)

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        self.display.in_flight(self.experiment, tokens, tokens - self.tokens0)


class _SweepProgress:
    """Sweep-level progress: experiments and FLOPs done, throughput measured in this session, ETA.

    Several experiments may be in flight at once (the Ray executor); each reports the tokens it has seen,
    and the ETA is the planned FLOPs left divided by the FLOPs per second trained in this session (finished
    experiments and the ones in flight together, so it reflects the whole cluster). A rich display (sweep
    bar above one bar per experiment in flight) when ``bars`` and stderr is a terminal; otherwise one
    ``logging`` line when each experiment starts and ends, and a heartbeat line while several run.
    """

    def __init__(self, plan: SweepPlan, done_ids: set[str], bars: bool, verbose: bool = True):
        self.total = len(plan)
        self.total_flops = plan.total_flops
        self.done = sum(e.experiment_id in done_ids for e in plan)
        self.done_flops = math.fsum(e.planned_flops for e in plan if e.experiment_id in done_ids)
        self.bars = bars
        self.verbose = verbose
        self.live: Any = None
        self.sweep_bar: Any = None
        self.exp_bar: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._session_flops = 0.0  # FLOPs trained by this session in finished experiments
        # experiment id -> (planned FLOPs of it done so far, FLOPs of it trained in this session)
        self._flight: dict[str, tuple[float, float]] = {}
        self._remote_bars: dict[str, Any] = {}  # experiment id -> rich task of an experiment on a worker

    # -- display ---------------------------------------------------------------------------------------

    def __enter__(self) -> _SweepProgress:
        self._t0 = time.perf_counter()
        if not (self.bars and sys.stderr.isatty()):
            return self
        try:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return self
        self.sweep_bar = Progress(
            TextColumn("[bold]sweep"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[experiments]} experiments"),
            TextColumn("{task.fields[flops]} FLOPs"),
            TextColumn("{task.fields[rate]} FLOP/s"),
            TextColumn("ETA {task.fields[eta]}"),
        )
        self.exp_bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[tokens]} tok"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self.sweep_bar.add_task("sweep", total=max(self.total_flops, 1.0), **self._fields())
        self.sweep_bar.update(self._task, completed=self.done_flops)
        self.live = Live(
            Group(self.sweep_bar, self.exp_bar), console=Console(stderr=True), refresh_per_second=4
        )
        self.live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # -- numbers ---------------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Experiments in flight."""
        return len(self._flight)

    def _flight_done(self) -> float:
        return math.fsum(done for done, _ in self._flight.values())

    def rate(self) -> float:
        """FLOPs per second trained in this session, all experiments in flight included (NaN before any)."""
        elapsed = time.perf_counter() - self._t0
        flops = self._session_flops + math.fsum(new for _, new in self._flight.values())
        return flops / elapsed if elapsed > 0 and flops > 0 else math.nan

    def eta(self) -> float:
        """Seconds until every planned FLOP is trained at the session's rate (NaN before any)."""
        remaining = max(self.total_flops - self.done_flops - self._flight_done(), 0.0)
        rate = self.rate()
        return remaining / rate if math.isfinite(rate) else math.nan

    def _fields(self) -> dict[str, str]:
        done = self.done_flops + self._flight_done()
        rate = self.rate()
        return {
            "experiments": f"{self.done}/{self.total}",
            "flops": f"{done:.3g}/{self.total_flops:.3g}",
            "rate": f"{rate:.3g}" if math.isfinite(rate) else "-",
            "eta": _format_duration(self.eta()),
        }

    def _refresh(self) -> None:
        if self._task is not None:
            self.sweep_bar.update(
                self._task, completed=self.done_flops + self._flight_done(), **self._fields()
            )

    def summary(self) -> str:
        """One line: experiments and FLOPs done, experiments running, rate and ETA."""
        rate = self.rate()
        done = self.done_flops + self._flight_done()
        return (
            f"sweep: {self.done}/{self.total} experiments done, {self.running} running, {done:.3g} of "
            f"{self.total_flops:.3g} FLOPs ({100.0 * done / self.total_flops if self.total_flops > 0 else 100.0:.1f}%), "
            f"{f'{rate:.3g}' if math.isfinite(rate) else '-'} FLOP/s, ETA {_format_duration(self.eta())}"
        )

    # -- events ----------------------------------------------------------------------------------------

    def start(self, index: int, todo: int, e: Experiment) -> list[Callback]:
        """Log the experiment and return the callbacks that report its progress (local executor)."""
        self._flight[e.experiment_id] = (0.0, 0.0)
        if not self.verbose:
            return []
        logger.info(
            "[%d/%d] experiment %s: C=%.3g FLOPs, N=%s params, D=%s tokens (%d steps)%s",
            index,
            todo,
            e.experiment_id,
            e.compute_budget,
            format_count(e.num_params),
            format_count(e.num_tokens),
            e.num_steps,
            "" if e.size_value is None else f", size {e.size_value:g}",
        )
        if not self.bars:
            return []
        return [ProgressCallback(self.exp_bar, description=e.experiment_id), _ExperimentFlops(self, e)]

    def started_remote(self, e: Experiment, where: str, restarted: bool) -> None:
        """An experiment began on a worker (again, after a retry, when ``restarted``)."""
        self._flight.setdefault(e.experiment_id, (0.0, 0.0))
        if self.verbose:
            logger.info(
                "experiment %s %s on %s: C=%.3g FLOPs, N=%s params, D=%s tokens (%d steps)",
                e.experiment_id,
                "restarted (its previous worker died)" if restarted else "started",
                where,
                e.compute_budget,
                format_count(e.num_params),
                format_count(e.num_tokens),
                e.num_steps,
            )

    def in_flight(self, e: Experiment, tokens: int, new_tokens: int) -> None:
        """Experiment ``e`` has seen ``tokens`` tokens, ``new_tokens`` of them in this session."""
        previous = self._flight.get(e.experiment_id, (0.0, 0.0))[1]
        new = max(e.flops_per_token * max(new_tokens, 0), previous)  # a retried run does not undo work
        self._flight[e.experiment_id] = (min(e.flops_per_token * tokens, e.planned_flops), new)
        self._refresh()

    def remote_progress(self, e: Experiment, tokens: int, tokens0: int, where: str) -> None:
        """Progress reported by a worker: ``tokens`` seen, ``tokens0`` of them before this attempt."""
        self.in_flight(e, tokens, tokens - tokens0)
        if self.exp_bar is None:
            return
        task = self._remote_bars.get(e.experiment_id)
        if task is None:
            task = self.exp_bar.add_task(
                f"{e.experiment_id} @ {where}", total=max(e.num_tokens, 1), tokens="0", loss="-", rate="-"
            )
            self._remote_bars[e.experiment_id] = task
        self.exp_bar.update(task, completed=min(tokens, e.num_tokens), tokens=format_count(tokens))

    def finish(self, e: Experiment, record: Mapping[str, Any], trained_flops: float) -> None:
        self.done += 1
        self.done_flops += e.planned_flops
        flight = self._flight.pop(e.experiment_id, (0.0, 0.0))[1]
        self._session_flops += max(trained_flops, flight)
        task = self._remote_bars.pop(e.experiment_id, None)
        if task is not None:
            self.exp_bar.remove_task(task)
        self._refresh()
        if not self.verbose:
            return
        loss = record.get("final_loss")
        what = (
            f"loss {loss:.4g}"
            if record["status"] == "completed" and loss is not None
            else f"{record['status']}: {record.get('error')}"
        )
        rate = self.rate()
        logger.info(
            "experiment %s %s; sweep: %d/%d experiments, %.3g of %.3g FLOPs (%.1f%%), %s FLOP/s, ETA %s",
            e.experiment_id,
            what,
            self.done,
            self.total,
            self.done_flops,
            self.total_flops,
            100.0 * self.done_flops / self.total_flops if self.total_flops > 0 else 100.0,
            f"{rate:.3g}" if math.isfinite(rate) else "-",
            _format_duration(self.eta()),
        )

    def forget(self, e: Experiment) -> None:
        """Drop an experiment that left the flight without a result (cancelled, or its worker lost)."""
        self._flight.pop(e.experiment_id, None)
        task = self._remote_bars.pop(e.experiment_id, None)
        if task is not None:
            self.exp_bar.remove_task(task)
        self._refresh()


# --------------------------------------------------------------------------------------------------
# the runner


def check_executor(
    executor: Any, ray_address: Any, resources: Any, max_retries: Any, device: Any = "auto"
) -> None:
    """Validate the executor arguments of :class:`TrainingRunner` (and ``find_optimal``) before any work.

    Raises ValueError/TypeError naming the argument, or ImportError when ``executor="ray"`` and Ray is
    not installed.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(
            f"max_retries must be a non-negative integer (re-runs after a lost worker), got {max_retries!r}"
        )
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(
            f"ray_address must be a Ray cluster address such as 'auto' or 'ray://head:10001', got {ray_address!r}"
        )
    if executor == "local":
        given = [n for n, v in (("ray_address", ray_address), ("resources", resources)) if v is not None]
        if given:
            raise ValueError(
                f"{' and '.join(given)} only apply to executor='ray'; pass executor='ray' or drop them"
            )
        return
    from flops_fit.training.ray_executor import check_resources, require_ray

    require_ray()
    check_resources(resources)
    if launched_world_size() > 1:
        raise ValueError(
            f"executor='ray' cannot run under torchrun/accelerate launch (WORLD_SIZE={launched_world_size()}): "
            "Ray starts one task per experiment itself; run the driver with plain `python` (multi-GPU "
            "data-parallel experiments go through executor='local' under torchrun)"
        )
    if str(device) not in RAY_DEVICES:
        raise ValueError(
            f"device={str(device)!r} cannot be used with executor='ray': each worker trains on the GPU "
            f"Ray assigned to it; pass device as one of {list(RAY_DEVICES)}"
        )


def _untrained_failure(e: Experiment, error: str) -> TrainOutcome:
    """The outcome of an experiment that failed before its first step (nothing trained, nothing spent)."""
    return TrainOutcome(
        status="failed",
        final_loss=math.nan,
        train_loss=math.nan,
        tokens_seen=0,
        steps=0,
        flops=0.0,
        wall_time_s=0.0,
        tokens_per_s=math.nan,
        error=error,
        flops_per_token=e.flops_per_token,
    )


class TrainingRunner:
    """Train every experiment of a sweep plan once, resumably, into an append-only ledger.

    Args:
        mode: ``"local"`` (train here with :func:`~flops_fit.training.train`), ``"mock"`` (synthetic
            losses from a :class:`~flops_fit.training.mock.MockLaw`, no training) or ``"function"``
            (call ``train_fn``).
        sweep_path: a plan saved with :meth:`SweepPlan.save`. Give this or ``plan``; with neither,
            ``output_dir/sweep.json`` is used (so a sweep can be resumed from its folder alone).
        plan: a :class:`~flops_fit.plan.planning.SweepPlan`.
        output_dir: folder of ``sweep.json``, ``results.jsonl`` and ``checkpoints/``; created if needed.
        model: local mode: a :class:`~flops_fit.plan.planning.ModelSpec`, or a callable ``size_value ->
            nn.Module`` (given the plan's ``num_params`` when the plan has no size values). Default: the
            plan's ModelSpec. Each experiment builds a fresh model after ``torch.manual_seed(experiment.seed)``.
        dataset: local mode: the training data, ``(inputs, targets)`` items (see ``train``).
        loss_fn: local mode: ``loss_fn(model(inputs), targets)`` -> scalar tensor; default the plan
            ModelSpec's ``loss_fn``.
        train_config: local mode: a :class:`TrainConfig` (or a mapping of its fields); default the plan's
            recorded ``train_config``, else ``TrainConfig()``. Each experiment runs it with the plan's
            ``batch_size``, ``seed`` and ``learning_rate`` (when the plan sets one) put in.
            ``checkpoint_every_s``/``checkpoint_every_steps`` set the checkpoint cadence.
        train_fn: function mode: ``train_fn(experiment) -> {"final_loss": float, ...}``. Optional keys:
            ``status`` (default ``"completed"``), ``num_tokens`` (tokens trained; default the plan's),
            ``actual_flops``, ``curve`` (``[[tokens, loss], ...]``), ``error`` and any JSON-able extras.
            An exception it raises records the experiment as failed; a malformed return value raises.
        seed: seeds the mock noise (with the experiment id). Training runs use each experiment's own
            seed, which the plan fixed and which is part of its id.
        eval_dataset: local mode: validation data (default: a fixed held-out slice of ``dataset``).
        callbacks: local mode: :class:`Callback` objects passed to every ``train`` call.
        device: local mode: ``"auto"`` (cuda > mps > cpu) or a device such as ``"cpu"``, ``"cuda:1"``.
        retry_failed: also run the experiments whose last record is ``failed`` (a retry appends a new
            record, which supersedes the failure). A failed run's checkpoint is kept for such a retry;
            with ``retry_failed=False`` it is deleted when the failure is recorded.
        mock_law: mock mode: a :class:`MockLaw` or a mapping of its fields (default Hoffmann et al.).
        progress: show progress bars on a terminal (log lines are written either way).
        executor: ``"local"`` (one experiment after another in this process) or ``"ray"`` (each experiment
            a Ray task on a cluster, largest first; needs ``pip install "flops-fit[ray]"``). With Ray this
            process (the driver) still writes ``sweep.json`` and the ledger; workers only train and write
            checkpoints. ``model``, ``dataset``, ``loss_fn``, ``train_fn`` and ``callbacks`` are sent to the
            workers (pickled once), so they must be importable there; callbacks run on the workers.
        ray_address: executor="ray": the cluster to join (``"auto"``, ``"ray://head:10001"``, ``"host:6379"``).
            Default: the ``RAY_ADDRESS`` environment variable, else the Ray instance this process already
            started with ``ray.init``, else a new local cluster (shut down when the sweep ends).
        resources: executor="ray": what each experiment asks Ray for, in Ray resource names, e.g.
            ``{"GPU": 1, "CPU": 8}`` or ``{"CPU": 4, "memory": 16e9}`` (bytes) or custom resources.
            Default ``{"GPU": 1}`` when the cluster has GPUs (local/function modes), else ``{"CPU": 1}``.
        max_retries: executor="ray": how often Ray re-runs an experiment whose worker process or node
            died (the retry resumes from its checkpoint). Exceptions inside training are not retried: they
            are recorded as failed runs, as locally.
        checkpoint_dir: folder of the checkpoints of experiments in flight (default
            ``output_dir/checkpoints``). With Ray on several nodes it must be storage every node reaches at
            the same path (NFS, Lustre, a mounted bucket), so that a retry on another node resumes.

    Under ``torchrun``/``accelerate launch`` every process runs the same experiments in the same order
    (the main process decides which are pending); each is trained data-parallel and only the main
    process writes ``sweep.json``, the ledger and checkpoints. (``executor="ray"`` is not for a
    multi-process launch: run the driver with plain ``python``.)
    """

    def __init__(
        self,
        mode: str = "local",
        sweep_path: str | os.PathLike[str] | None = None,
        plan: SweepPlan | None = None,
        output_dir: str | os.PathLike[str] = "outputs",
        model: ModelSpec | Callable[[Any], nn.Module] | None = None,
        dataset: Any = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        train_config: TrainConfig | Mapping[str, Any] | None = None,
        train_fn: Callable[[Experiment], Mapping[str, Any]] | None = None,
        seed: int = 0,
        *,
        eval_dataset: Any = None,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device = "auto",
        retry_failed: bool = False,
        mock_law: MockLaw | Mapping[str, Any] | None = None,
        progress: bool = True,
        executor: str = "local",
        ray_address: str | None = None,
        resources: Mapping[str, float] | None = None,
        max_retries: int = 3,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        check_executor(executor, ray_address, resources, max_retries, device)
        self.executor = executor
        self.ray_address = ray_address
        self.resources = None if resources is None else {str(k): float(v) for k, v in resources.items()}
        self.max_retries = max_retries
        self.output_dir = self._output_path(output_dir)
        self._checkpoint_root = (
            self.output_dir / CHECKPOINT_DIR
            if checkpoint_dir is None
            else self._output_path(checkpoint_dir, "checkpoint_dir")
        )
        self.plan = self._load_plan(plan, sweep_path)
        self._check_ids()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        if not isinstance(retry_failed, bool):
            raise TypeError(f"retry_failed must be True or False, got {retry_failed!r}")
        self.retry_failed = retry_failed
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        self.progress = progress
        self.device = device
        self.dataset = dataset
        self.eval_dataset = eval_dataset
        self.callbacks = self._check_callbacks(callbacks)
        self.train_fn = train_fn
        self.mock_law = MockLaw.from_value(mock_law) if mode == "mock" else None
        self._model: ModelSpec | Callable[[Any], nn.Module] | None = None
        self.loss_fn = loss_fn
        self.train_config: TrainConfig | None = None
        self._configs: dict[str, TrainConfig] = {}

        ignored = {
            "local": ["train_fn", "mock_law"],
            "mock": ["model", "dataset", "loss_fn", "train_config", "train_fn", "eval_dataset", "callbacks"],
            "function": [
                "model",
                "dataset",
                "loss_fn",
                "train_config",
                "eval_dataset",
                "callbacks",
                "mock_law",
            ],
        }[mode]
        given = {
            "model": model,
            "dataset": dataset,
            "loss_fn": loss_fn,
            "train_config": train_config,
            "train_fn": train_fn,
            "eval_dataset": eval_dataset,
            "callbacks": self.callbacks or None,
            "mock_law": mock_law,
        }
        unused = [name for name in ignored if given[name] is not None]
        if unused:
            logger.info("mode=%r does not use %s; ignoring them", mode, ", ".join(unused))
        if mode == "local":
            self._setup_local(model, loss_fn, train_config)
        elif mode == "function" and not callable(train_fn):
            raise TypeError(
                "mode='function' needs train_fn=callable(experiment) -> {'final_loss': ...}, got "
                f"{type(train_fn).__name__}"
            )
        self._make_output_dir()

    # -- validation ------------------------------------------------------------------------------------

    @staticmethod
    def _output_path(output_dir: Any, name: str = "output_dir") -> Path:
        if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
            raise TypeError(f"{name} must be a folder path, got {output_dir!r}")
        path = Path(output_dir).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ValueError(f"{name} {str(path)!r} is a file; pass a folder")
        return path

    def _make_output_dir(self) -> None:
        for name, path in (("output_dir", self.output_dir), ("checkpoint_dir", self._checkpoint_root)):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(
                    f"{name} {str(path)!r} cannot be created ({exc}); pass a writable folder"
                ) from exc
            if not os.access(path, os.W_OK | os.X_OK):
                raise ValueError(f"{name} {str(path)!r} is not writable; pass a writable folder")

    def _load_plan(self, plan: Any, sweep_path: Any) -> SweepPlan:
        if plan is not None and sweep_path is not None:
            raise ValueError("pass either plan= or sweep_path=, not both")
        if plan is not None:
            if not isinstance(plan, SweepPlan):
                raise TypeError(
                    f"plan must be a SweepPlan (from SweepPlanner(...).plan()), got {type(plan).__name__}"
                )
        else:
            if sweep_path is None:
                sweep_path = self.output_dir / PLAN_FILE
                if not sweep_path.is_file():
                    raise ValueError(
                        f"no plan: pass plan=SweepPlanner(...).plan() or sweep_path='plan.json' "
                        f"(or resume from an output_dir holding {PLAN_FILE}; {str(sweep_path)!r} does not exist)"
                    )
            if not isinstance(sweep_path, (str, os.PathLike)):
                raise TypeError(f"sweep_path must be a path to a saved plan, got {type(sweep_path).__name__}")
            if not Path(sweep_path).is_file():
                raise FileNotFoundError(f"sweep_path {str(sweep_path)!r} does not exist")
            plan = SweepPlan.load(sweep_path)
        if not plan.experiments:
            raise ValueError("the plan has no experiments")
        return plan

    def _check_ids(self) -> None:
        seen: set[str] = set()
        root = self._checkpoint_root.resolve()
        for e in self.plan:
            eid = e.experiment_id
            if not isinstance(eid, str) or not SAFE_EXPERIMENT_ID.fullmatch(eid):
                raise ValueError(
                    f"experiment id {eid!r} is not a safe file name (letters, digits, '.', '_', '-'; "
                    "at most 128 characters, not starting with '.'); plan ids are 12 hex digits, re-plan"
                )
            if not self._checkpoint_path(eid).resolve().is_relative_to(root):
                raise ValueError(f"experiment id {eid!r} would write outside {root}")
            if eid in seen:
                raise ValueError(f"experiment id {eid!r} appears twice in the plan")
            seen.add(eid)

    @staticmethod
    def _check_callbacks(callbacks: Any) -> list[Callback]:
        if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
            raise TypeError("callbacks must be a sequence of Callback objects, e.g. callbacks=[MyCallback()]")
        out = list(callbacks)
        for cb in out:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"every callback must subclass flops_fit.training.Callback, got {type(cb).__name__}"
                )
        return out

    def _setup_local(self, model: Any, loss_fn: Any, train_config: Any) -> None:
        if self.dataset is None:
            raise ValueError(
                "mode='local' needs dataset= (items (inputs, targets)); use mode='mock' to try the "
                "pipeline without data"
            )
        spec = model if model is not None else self.plan.model
        if spec is None:
            raise ValueError(
                "mode='local' needs a model: pass model=ModelSpec(...) or model=lambda size: MyModel(size), "
                "or plan with SweepPlanner(model=ModelSpec(...))"
            )
        if isinstance(spec, nn.Module):
            raise TypeError(
                "model must build a fresh network per experiment: pass a ModelSpec or a callable "
                "size_value -> nn.Module, not an nn.Module instance"
            )
        if isinstance(spec, ModelSpec):
            spec.resolve()  # import errors now, not after the first experiment
            if any(e.size_value is None for e in self.plan):
                raise ValueError(
                    "the plan has no size values (planned without a model); pass model=callable(num_params)"
                )
        elif not callable(spec):
            raise TypeError(
                f"model must be a ModelSpec or a callable size_value -> nn.Module, got {type(spec).__name__}"
            )
        self._model = spec
        if loss_fn is None and self.plan.model is not None:
            loss_fn = self.plan.model.loss_fn
        if not callable(loss_fn):
            raise TypeError(
                "mode='local' needs loss_fn=callable(model(inputs), targets) -> scalar tensor, got "
                f"{type(loss_fn).__name__}"
            )
        self.loss_fn = loss_fn
        self.train_config = self._base_config(train_config)
        for e in self.plan:
            changes: dict[str, Any] = {"batch_size": e.batch_size, "seed": e.seed}
            if e.learning_rate is not None:
                changes["lr"] = e.learning_rate
            try:
                self._configs[e.experiment_id] = dataclasses.replace(self.train_config, **changes)
            except ValueError as exc:
                raise ValueError(f"train_config does not fit experiment {e.experiment_id}: {exc}") from exc
        if launched_world_size() <= 1 and self.executor == "local":
            resolve_device(self.device)  # raises for a bad or unavailable device (workers resolve their own)

    def _base_config(self, train_config: Any) -> TrainConfig:
        recorded = self.plan.config.get("train_config")
        if train_config is None:
            if isinstance(recorded, Mapping):
                other = sorted(set(recorded) - FIELD_NAMES)
                if other:
                    logger.warning(
                        "the plan's train_config has key(s) %s that TrainConfig does not have; ignoring them "
                        "(pass train_config=TrainConfig(...) to set the training run yourself)",
                        other,
                    )
                known = {k: v for k, v in recorded.items() if k in FIELD_NAMES}
                return config_from_mapping(known, "the plan's train_config")
            return TrainConfig()
        if isinstance(train_config, Mapping):
            train_config = config_from_mapping(train_config, "train_config")
        if not isinstance(train_config, TrainConfig):
            raise TypeError(
                f"train_config must be a TrainConfig or a mapping of its fields, got {type(train_config).__name__}"
            )
        if isinstance(recorded, Mapping):
            mine = train_config.to_dict()
            differ = sorted(  # batch size and seed come from each experiment, whatever either says
                k
                for k, v in recorded.items()
                if k in RESULT_FIELDS and k not in ("batch_size", "seed") and k in mine and mine[k] != v
            )
            if differ:
                logger.warning(
                    "train_config differs from the one recorded in the plan in %s; experiment ids do not "
                    "reflect the difference (re-plan with SweepPlanner(train_config=...) to keep them apart)",
                    differ,
                )
        return train_config

    # -- paths and state -------------------------------------------------------------------------------

    @property
    def results_path(self) -> Path:
        """The ledger, ``output_dir/results.jsonl``."""
        return self.output_dir / RESULTS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """The folder of the checkpoints of experiments in flight (``checkpoint_dir``)."""
        return self._checkpoint_root

    def _checkpoint_path(self, experiment_id: str) -> Path:
        return self._checkpoint_root / f"{experiment_id}.pt"

    def _produced_here(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` came from this runner's mode (for mock mode, its seed and law; for local
        training, its result-changing TrainConfig fields): a mock loss is never taken for a trained one,
        nor a run trained with another learning rate for this one. Records that do not say count."""
        if record.get("mode", self.mode) != self.mode:
            return False
        if self.mode == "mock":
            assert self.mock_law is not None
            return (
                record.get("mock_seed", self.seed) == self.seed
                and record.get("mock_law", self.mock_law.to_dict()) == self.mock_law.to_dict()
            )
        config = self._configs.get(str(record.get("experiment_id")))
        if self.mode == "local" and config is not None and isinstance(record.get("train_config"), Mapping):
            # trained with other result-changing settings (a plan that records none keeps the same ids)
            return experiment_id(dict(record["train_config"])) == experiment_id(_result_settings(config))
        return True

    def _finished(self, records: Iterable[Mapping[str, Any]]) -> set[str]:
        done, other = set(), []
        planned = {e.experiment_id for e in self.plan}
        for r in latest_records(records):
            status = r.get("status", "completed")  # as load_runs reads a record without a status
            if status in ("completed", "diverged") or (status == "failed" and not self.retry_failed):
                if self._produced_here(r):
                    done.add(str(r["experiment_id"]))
                elif str(r["experiment_id"]) in planned:
                    other.append(str(r["experiment_id"]))
        if other:
            logger.warning(
                "%d finished record(s) in %s were made another way than mode=%r here (another mode, mock "
                "seed or law, or result-changing train_config): %s; those experiments run again and their "
                "new records supersede them",
                len(other),
                self.results_path,
                self.mode,
                list_ids(pd.Series(other)),
            )
        return done

    def pending(self) -> list[Experiment]:
        """The experiments a :meth:`run_sweep` call would run now, in order."""
        done = self._finished(load_results(self.output_dir))
        return [e for e in self.plan if e.experiment_id not in done]

    def results(self) -> pd.DataFrame:
        """The runs table of everything recorded so far (the last record per experiment id)."""
        return _runs_frame(load_results(self.output_dir))

    def _sync_plan_file(self, finished: set[str]) -> None:
        path = self.output_dir / PLAN_FILE
        remove_temporaries(path)  # left by a run killed while writing it; this process is its only writer
        ids = [e.experiment_id for e in self.plan]
        if path.is_file():
            try:
                old = SweepPlan.load(path)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("replacing unreadable %s (%s)", path, exc)
            else:
                if _normalised(old.to_dict()) == _normalised(self.plan.to_dict()):
                    return
                old_ids = [e.experiment_id for e in old]
                if set(old_ids) == set(ids):
                    logger.info("updating %s (same experiments, other plan details changed)", path)
                    self.plan.save(path)
                    return
                new = [i for i in ids if i not in set(old_ids)]
                orphans = sorted(finished - set(ids))
                logger.warning(
                    "%s holds a different plan; replacing it (%d experiment(s) new, %d dropped). Finished "
                    "experiments not in the current plan stay in the ledger: %s",
                    path,
                    len(new),
                    len(set(old_ids) - set(ids)),
                    orphans if orphans else "none",
                )
        self.plan.save(path)

    # -- running ---------------------------------------------------------------------------------------

    def run_sweep(self) -> pd.DataFrame:
        """Run every experiment not finished yet; return the runs table of the whole ledger.

        Raises:
            KeyboardInterrupt: on Ctrl-C, after ``train`` checkpointed the experiment(s) in flight; nothing
                partial is written to the ledger. Running again resumes.
            flops_fit.training.ray_executor.WorkersLostError: executor="ray": some experiments lost their
                worker more than ``max_retries`` times (after every other experiment finished and was
                recorded); their checkpoints are kept and running again resumes them.
            OSError: another runner is writing to ``output_dir`` (errno EBUSY).
        """
        if int(os.environ.get("RANK", "0")) != 0:  # data-parallel ranks follow rank 0, which holds the lock
            return self._run_sweep()
        with exclusive_folder(self.output_dir):
            return self._run_sweep()

    def _run_sweep(self) -> pd.DataFrame:
        procs = (
            make_processes(None, self.device) if self.mode == "local" and self.executor == "local" else None
        )
        is_main = procs.is_main if procs is not None else int(os.environ.get("RANK", "0")) == 0
        records = load_results(self.output_dir)
        if procs is not None and procs.world_size > 1:
            records = procs.gather(records)[0]  # every process runs what the main process found pending
        finished = self._finished(records)
        if is_main:
            self._sync_plan_file(finished)
            for eid in finished & {e.experiment_id for e in self.plan}:
                path = self._checkpoint_path(eid)
                if path.exists():
                    logger.info("removing the leftover checkpoint of finished experiment %s", eid)
                    discard_checkpoint(self._checkpoint_path(eid))
        todo = [e for e in self.plan if e.experiment_id not in finished]
        logger.info(
            "sweep in %s: %d experiments, %d finished, %d to run (mode=%s, executor=%s)",
            self.output_dir,
            len(self.plan),
            len(self.plan) - len(todo),
            len(todo),
            self.mode,
            self.executor,
        )
        if self.mode == "local" and todo:
            self._check_data(todo)
        display = _SweepProgress(self.plan, finished, bars=self.progress and is_main, verbose=is_main)
        if self.executor == "ray":
            if todo:
                from flops_fit.training.ray_executor import RayOptions, run_on_ray

                options = RayOptions(
                    address=self.ray_address, resources=self.resources, max_retries=self.max_retries
                )

                def record(e: Experiment, rec: dict[str, Any], trained_flops: float) -> None:
                    self._record(e, rec, trained_flops, records, display, is_main=True)

                with display:
                    run_on_ray(
                        self._job(), todo, self._configs, self._checkpoint_path, options, display, record
                    )
            return _runs_frame(records)
        job = self._job()
        with display:
            for index, e in enumerate(todo, start=1):
                callbacks = display.start(index, len(todo), e)
                for cb in self.callbacks:
                    cb.on_experiment_start(e)
                try:
                    rec, trained_flops = job.run(
                        e,
                        self._configs.get(e.experiment_id),
                        self._checkpoint_path(e.experiment_id),
                        callbacks,
                        procs,
                    )
                except KeyboardInterrupt:
                    message = self._interrupt_message(e, display)
                    logger.warning("%s", message)
                    raise KeyboardInterrupt(message) from None
                self._record(e, rec, trained_flops, records, display, is_main)
        return _runs_frame(records)

    def _record(
        self,
        e: Experiment,
        record: dict[str, Any],
        trained_flops: float,
        records: list[dict[str, Any]],
        display: _SweepProgress,
        is_main: bool,
    ) -> None:
        """Append a finished experiment's record to the ledger (the only place that writes it)."""
        if is_main:
            append_record(self.results_path, record)
            # Only now, with the record safe in the ledger: a crash before this line resumes the run from
            # its checkpoint instead of training it again from scratch. A failed run's checkpoint stays
            # for a retry.
            if record["status"] != "failed" or not self.retry_failed:
                discard_checkpoint(self._checkpoint_path(e.experiment_id))
        records.append(record)
        display.finish(e, record, trained_flops)

    def _job(self) -> _ExperimentJob:
        """What running one experiment needs, in one picklable object (shipped once to Ray workers)."""
        return _ExperimentJob(
            mode=self.mode,
            seed=self.seed,
            mock_law=self.mock_law,
            train_fn=self.train_fn,
            model=self._model,
            dataset=self.dataset,
            eval_dataset=self.eval_dataset,
            loss_fn=self.loss_fn,
            callbacks=tuple(self.callbacks),
            device=self.device,
        )

    def _interrupt_message(self, e: Experiment, display: _SweepProgress) -> str:
        saved = self.mode == "local" and self._checkpoint_path(e.experiment_id).exists()
        where = " from its checkpoint" if saved else ""
        return (
            f"interrupted during experiment {e.experiment_id} ({display.done} of {display.total} experiments "
            f"done); run the same command again to resume{where}"
        )

    def _check_data(self, todo: list[Experiment]) -> None:
        """Check a map-style dataset against the largest pending run before anything trains."""
        if not _is_map_dataset(self.dataset):
            return
        largest = max(todo, key=lambda e: e.num_tokens)
        config = self._configs[largest.experiment_id]
        data_plan, _, _ = prepare_data(
            self.dataset,
            self.eval_dataset,
            num_tokens=largest.num_tokens,
            config=config,
            layout=batch_layout(config),
        )
        if data_plan.tokens_per_sample != largest.tokens_per_sample:
            logger.warning(
                "the plan assumed %d tokens per sample but the dataset has %d: each run still trains its "
                "planned tokens, in %d instead of %d steps (re-plan with tokens_per_sample=%d)",
                largest.tokens_per_sample,
                data_plan.tokens_per_sample,
                data_plan.total_steps,
                largest.num_steps,
                data_plan.tokens_per_sample,
            )


# --------------------------------------------------------------------------------------------------
# one experiment (here, or on a Ray worker)


@dataclasses.dataclass(frozen=True, eq=False)
class _ExperimentJob:
    """Everything needed to run one experiment of a sweep and build its ledger record.

    The local executor calls :meth:`run` in the driver; the Ray executor pickles the job once and calls
    :meth:`run` on workers. It never touches the ledger: it returns the record.
    """

    mode: str
    seed: int
    mock_law: MockLaw | None
    train_fn: Callable[[Experiment], Mapping[str, Any]] | None
    model: ModelSpec | Callable[[Any], nn.Module] | None
    dataset: Any
    eval_dataset: Any
    loss_fn: Callable[[Any, Any], torch.Tensor] | None
    callbacks: tuple[Callback, ...]
    device: str | torch.device

    def run(
        self,
        e: Experiment,
        config: TrainConfig | None,
        checkpoint_path: Path | None,
        callbacks: Sequence[Callback],
        procs: Any,
    ) -> tuple[dict[str, Any], float]:
        """Run ``e``; return its ledger record and the FLOPs trained in this call."""
        if self.mode == "mock":
            return self.run_mock(e), 0.0
        if self.mode == "function":
            return self.run_function(e), 0.0
        assert config is not None and checkpoint_path is not None
        return self.run_local(e, config, checkpoint_path, callbacks, procs)

    def build(self, e: Experiment, dev: torch.device) -> nn.Module:
        """A fresh model for ``e`` on ``dev``."""
        if isinstance(self.model, ModelSpec):
            return self.model.build(e.size_value, dev)
        assert self.model is not None
        with dev:
            model = self.model(e.size_value if e.size_value is not None else e.num_params)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def base_record(self, e: Experiment) -> dict[str, Any]:
        return {
            "experiment_id": e.experiment_id,
            "compute_budget": e.compute_budget,
            "num_params": e.num_params,
            "size_value": e.size_value,
            "planned_tokens": e.num_tokens,
            "batch_size": e.batch_size,
            "flops_per_token": e.flops_per_token,
            "flops_convention": e.flops,
            "seed": e.seed,
            "mode": self.mode,
        }

    def run_mock(self, e: Experiment) -> dict[str, Any]:
        assert self.mock_law is not None
        sim = self.mock_law.simulate(e.num_params, e.num_tokens, mock_generator(self.seed, e.experiment_id))
        return {
            **self.base_record(e),
            "num_tokens": e.num_tokens,
            "final_loss": sim["final_loss"],
            "status": "completed",
            "actual_flops": e.planned_flops,
            "curve": sim["curve"],
            "error": None,
            "steps": e.num_steps,
            "learning_rate": e.learning_rate,
            "mock_seed": self.seed,
            "mock_law": self.mock_law.to_dict(),
        }

    def run_function(self, e: Experiment) -> dict[str, Any]:
        assert self.train_fn is not None
        start, stamp = time.perf_counter(), _now()
        try:
            result = self.train_fn(e)
        except Exception as exc:
            logger.debug("train_fn failed", exc_info=True)
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        wall = time.perf_counter() - start
        base = self.base_record(e)
        record = {**base, **_check_result(e, result, base)}
        record.setdefault("learning_rate", e.learning_rate)
        record.setdefault("wall_time_s", wall)
        record.setdefault("timestamp", stamp)
        return record

    def run_local(
        self, e: Experiment, config: TrainConfig, path: Path, callbacks: Sequence[Callback], procs: Any
    ) -> tuple[dict[str, Any], float]:
        assert self.loss_fn is not None
        stamp = _now()
        torch.manual_seed(e.seed)
        try:
            model = self.build(e, procs.device)
        except Exception as exc:
            logger.exception("building the model of experiment %s failed", e.experiment_id)
            outcome = _untrained_failure(e, f"building the model failed: {type(exc).__name__}: {exc}")
            return self._local_record(e, config, outcome, stamp, procs), 0.0
        meter = _ResumeMeter()
        try:
            outcome = train(
                model,
                self.dataset,
                self.loss_fn,
                num_tokens=e.num_tokens,
                config=config,
                eval_dataset=self.eval_dataset,
                device=self.device,
                callbacks=[*self.callbacks, *callbacks, meter],
                checkpoint_path=path,
                flops_per_token=e.flops_per_token,
                progress=False,
                keep_checkpoint=True,  # deleted by the ledger writer once the record is appended
            )
        except (TypeError, ValueError):
            raise  # a contract violation (data, loss, arguments): fix it, nothing was trained
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # set-up failures inside train(), e.g. out of memory moving the model
            logger.exception("experiment %s failed before training", e.experiment_id)
            outcome = _untrained_failure(e, f"{type(exc).__name__}: {exc}")
        trained = e.flops_per_token * max(outcome.tokens_seen - meter.tokens0, 0)
        return self._local_record(e, config, outcome, stamp, procs), trained

    def _local_record(
        self, e: Experiment, config: TrainConfig, outcome: TrainOutcome, stamp: str, procs: Any
    ) -> dict[str, Any]:
        return {
            **self.base_record(e),
            "num_tokens": outcome.tokens_seen,
            "final_loss": outcome.final_loss,
            "status": outcome.status,
            "actual_flops": outcome.flops,
            "curve": [[int(t), float(v)] for t, v in outcome.curve],
            "error": outcome.error,
            "steps": outcome.steps,
            "learning_rate": config.lr,
            "train_config": _result_settings(config),
            "train_loss": outcome.train_loss,
            "wall_time_s": outcome.wall_time_s,
            "tokens_per_s": outcome.tokens_per_s,
            "resumed_from_step": outcome.resumed_from_step,
            "model_num_params": outcome.num_params,
            "device": str(procs.device),
            "world_size": procs.world_size,
            "timestamp": stamp,
        }


def _result_settings(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that change a run's result (recorded with each trained run)."""
    return {k: v for k, v in config.to_dict().items() if k in RESULT_FIELDS}


def _check_result(e: Experiment, result: Any, base: Mapping[str, Any]) -> dict[str, Any]:
    """Validate what ``train_fn`` returned and fill the runs-table columns."""
    where = f"train_fn({e.experiment_id})"
    if not isinstance(result, Mapping):
        raise TypeError(
            f"{where} must return a dict like {{'final_loss': 2.31}}, got {type(result).__name__}"
        )
    out = {str(k): v for k, v in result.items()}
    if "num_params" in out:  # N stays the plan's (its convention); keep theirs beside it
        out["reported_num_params"] = out.pop("num_params")
    for key, value in base.items():
        if key in out and out[key] != value:
            raise ValueError(f"{where} returned {key}={out[key]!r}, but the plan says {value!r}")
    status = out.setdefault("status", "completed")
    if status not in STATUSES:
        raise ValueError(f"{where} returned status={status!r}; use one of {list(STATUSES)}")
    loss = out.get("final_loss")
    value = _number(loss)
    if status == "completed":
        if value is None or not math.isfinite(value):
            raise ValueError(
                f"{where} returned final_loss={loss!r}; a completed run needs a finite number "
                "(return status='failed' or 'diverged' with an error otherwise)"
            )
        out["final_loss"] = value
    else:
        out["final_loss"] = value if value is not None and math.isfinite(value) else None
        out.setdefault("error", None)
    tokens = out.get("num_tokens", e.num_tokens)
    tokens_value = _number(tokens)
    if tokens_value is None or not math.isfinite(tokens_value) or tokens_value < 0:
        raise ValueError(f"{where} returned num_tokens={tokens!r}; give the tokens trained (a number)")
    out["num_tokens"] = tokens_value
    flops = out.get("actual_flops", e.flops_per_token * tokens_value)
    flops_value = _number(flops)
    if flops_value is None or not math.isfinite(flops_value) or flops_value < 0:
        raise ValueError(f"{where} returned actual_flops={flops!r}; give the FLOPs spent (a number)")
    out["actual_flops"] = flops_value
    curve = out.get("curve")
    if curve is not None:
        try:
            out["curve"] = [[float(t), float(v)] for t, v in curve]
        except (TypeError, ValueError):
            raise ValueError(f"{where} returned a curve that is not a list of (tokens, loss) pairs") from None
    out.setdefault("curve", None)
    out.setdefault("error", None)
    if out["error"] is not None and not isinstance(out["error"], str):
        out["error"] = str(out["error"])
    try:
        encode_record(out)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} returned a value that cannot be written as JSON: {exc}") from exc
    return out


class _ResumeMeter(Callback):
    """Remembers where a (possibly resumed) run started, to count only the FLOPs trained now."""

    def __init__(self) -> None:
        self.tokens0 = 0

    def on_train_start(self, info: RunInfo) -> None:
        self.tokens0 = info.start_step * info.tokens_per_step
