"""Run a whole IsoFLOP sweep: :class:`TrainingRunner`.

The runner walks the experiments of a :class:`~flops_fit.plan.sweep.SweepPlan` in plan order (budgets
ascending, sizes ascending within a budget: the cheapest runs first, so problems show early), runs each
one that is not finished yet with its **job** (:mod:`flops_fit.training.jobs`), and appends one JSON line
per finished experiment to ``output_dir/results.jsonl``. Everything needed to resume lives in
``output_dir`` (:class:`~flops_fit.core.sweepdir.SweepDir` names its files):

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

Jobs: :class:`~flops_fit.training.jobs.LocalJob` trains with :func:`~flops_fit.training.train`;
:class:`~flops_fit.training.jobs.MockJob` writes synthetic results from a Chinchilla law without training;
:class:`~flops_fit.training.jobs.FunctionJob` calls your own ``train_fn(experiment) -> {"final_loss": ...}``.
``TrainingRunner(plan, job=MockJob(seed=3))``; the keyword form ``TrainingRunner("mock", plan=plan, seed=3)``
builds the same job from ``mode`` and its keywords.

Executors: ``"local"`` runs the experiments one after another in this process (or, with ``workers=k``,
k at a time in worker processes on this machine: :mod:`flops_fit.training.worker_pool`); ``"ray"`` runs
each as a Ray task on a cluster (:mod:`flops_fit.training.ray_executor`, docs/cluster.md). Either way this
process is the only writer of the ledger.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from flops_fit.core.experiment import SAFE_EXPERIMENT_ID, Experiment
from flops_fit.core.io import remove_temporaries
from flops_fit.core.ledger import append_record, exclusive_folder, latest_records, load_results
from flops_fit.core.runs import list_ids, runs_from_records
from flops_fit.core.sweepdir import PLAN_FILE, SweepDir, branch_points, checkpoint_file
from flops_fit.core.train_config import TrainConfig
from flops_fit.core.validate import NON_NEGATIVE_INT, Instance, check, check_flag
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.callbacks import Callback
from flops_fit.training.checkpoint import check_checkpoint_folder, discard_checkpoint
from flops_fit.training.distributed import launched_world_size
from flops_fit.training.jobs import RAY_DEVICES, ConcurrentJob, Job, check_ray_device
from flops_fit.training.kinds import MODES, check_mode, job_for_mode
from flops_fit.training.mock import MockLaw
from flops_fit.training.progress import SweepProgress
from flops_fit.training.ray_executor import RayOptions
from flops_fit.training.worker_pool import check_workers

#: Modes that train a WSD plan's branches from their trunks (a mock job only draws their losses).
BRANCHING_MODES = ("local", "mock")

logger = logging.getLogger(__name__)

__all__ = [
    "EXECUTORS",
    "MODES",
    "RAY_DEVICES",
    "TrainingRunner",
    "check_executor",
    "check_workers",
    "executor_settings",
    "latest_records",
    "load_results",
]

#: Where the experiments run: one after another in this process, or as tasks on a Ray cluster.
EXECUTORS: tuple[str, ...] = ("local", "ray")


# --------------------------------------------------------------------------------------------------
# checks


def executor_settings(
    executor: Any, ray_address: Any = None, resources: Any = None, max_retries: Any = 3
) -> tuple[Any, Any, Any, Any]:
    """``(executor, ray_address, resources, max_retries)`` with a :class:`RayOptions` given as ``executor``
    unpacked: it stands for ``executor="ray"`` with its address, resources and retries, so those keywords
    must then keep their defaults (a ValueError names any given twice)."""
    if not isinstance(executor, RayOptions):
        return executor, ray_address, resources, max_retries
    twice = [
        name
        for name, value, default in (("ray_address", ray_address, None), ("resources", resources, None))
        if value is not default
    ] + (["max_retries"] if max_retries != 3 else [])
    if twice:
        raise ValueError(
            f"{' and '.join(twice)} given beside executor=RayOptions(...): set them in RayOptions only"
        )
    return "ray", executor.address, executor.resources, executor.max_retries


def check_executor(
    executor: Any, ray_address: Any, resources: Any, max_retries: Any, device: Any = "auto"
) -> None:
    """Validate the executor arguments of :class:`TrainingRunner` (and ``find_optimal``) before any work.

    Raises ValueError/TypeError naming the argument, or ImportError when ``executor="ray"`` and Ray is
    not installed.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    try:  # a ValueError for every bad count, a bool included (the documented error)
        check("max_retries", max_retries, NON_NEGATIVE_INT, "re-runs after a lost worker")
    except TypeError as exc:
        raise ValueError(str(exc)) from None
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
    check_ray_device(device)


def _check_callbacks(callbacks: Any) -> list[Callback]:
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError("callbacks must be a sequence of Callback objects, e.g. callbacks=[MyCallback()]")
    out = list(callbacks)
    for i, cb in enumerate(out):
        check(f"callbacks[{i}]", cb, Instance(Callback), "callbacks subclass flops_fit.training.Callback")
    return out


def _check_job_alone(job: Any, mode: Any, seed: Any, device: Any, keywords: Mapping[str, Any]) -> None:
    """With ``job=``, the keywords that would build a job must be left unset (they belong to the job)."""
    check("job", job, Instance(Job), "e.g. LocalJob(dataset=...), MockJob(seed=3), FunctionJob(train_fn=f)")
    given = ["mode"] if mode is not None else []
    given += [name for name, value in keywords.items() if value is not None]
    given += [] if type(seed) is int and seed == 0 else ["seed"]
    given += [] if isinstance(device, str) and device == "auto" else ["device"]
    if given:
        raise ValueError(
            f"{', '.join(given)} belong to the job when job= is given; pass them to it instead (e.g. "
            "LocalJob(dataset=..., device=...), MockJob(seed=...), FunctionJob(train_fn=...))"
        )


def _output_path(output_dir: Any, name: str = "output_dir") -> Path:
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise TypeError(f"{name} must be a folder path, got {output_dir!r}")
    path = Path(output_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file; pass a folder")
    return path


def _make_folder(name: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{name} {str(path)!r} cannot be created ({exc}); pass a writable folder") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} is not writable; pass a writable folder")


def _trusted(plan: SweepPlan, trust_plan: bool) -> SweepPlan:
    """``plan`` with its model entry trusted when ``trust_plan`` (a plan read from a file is not)."""
    if not trust_plan or plan.model is None or plan.model.trusted:
        return plan
    return dataclasses.replace(plan, model=plan.model.trusting())


def _normalised(value: Any) -> Any:
    """``value`` after a JSON round trip (tuples become lists), for comparing plans."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------------
# the runner


class TrainingRunner:
    """Run every experiment of a sweep plan once, resumably, into an append-only ledger.

    ``TrainingRunner(plan, job=LocalJob(dataset=..., loss_fn=...), output_dir="sweep")`` runs ``plan`` with
    the given job (:mod:`flops_fit.training.jobs`). The keyword form ``TrainingRunner(mode, plan=...,
    model=..., dataset=..., ...)`` builds the job from ``mode`` and the keywords that job takes; the others
    are logged as unused.

    Args:
        mode: keyword form: ``"local"`` (the default; :class:`~flops_fit.training.jobs.LocalJob` from
            ``model``, ``dataset``, ``loss_fn``, ``train_config``, ``eval_dataset``, ``device``), ``"mock"``
            (:class:`~flops_fit.training.jobs.MockJob` from ``seed`` and ``mock_law``), ``"function"``
            (:class:`~flops_fit.training.jobs.FunctionJob` from ``train_fn``) or ``"api"``
            (:class:`~flops_fit.training.api_job.ApiJob` from ``api_url``, ``token_env``, ``train_config``
            and ``max_in_flight``: a training service, docs/api.md). The jobs document those.
            Leave it out with ``job=``; a :class:`SweepPlan` here is taken as ``plan``.
        sweep_path: a plan saved with :meth:`SweepPlan.save`. Give this or ``plan``; with neither,
            ``output_dir/sweep.json`` is used (so a sweep can be resumed from its folder alone).
        plan: a :class:`~flops_fit.plan.sweep.SweepPlan`.
        output_dir: folder of ``sweep.json``, ``results.jsonl`` and ``checkpoints/``; created if needed.
        job: what runs each experiment (any :class:`~flops_fit.training.jobs.Job`).
        callbacks: :class:`Callback` objects told of every experiment (``on_experiment_start``) and, for a
            training job, of its training events.
        retry_failed: also run the experiments whose last record is ``failed`` (a retry appends a new
            record, which supersedes the failure). A failed run's checkpoint is kept for such a retry;
            with ``retry_failed=False`` it is deleted when the failure is recorded.
        progress: show progress bars on a terminal (log lines are written either way).
        executor: ``"local"`` (one experiment after another in this process) or ``"ray"`` (each experiment
            a Ray task on a cluster, largest first; needs ``pip install "flops-fit[ray]"``). With Ray this
            process (the driver) still writes ``sweep.json`` and the ledger; workers only run the job and
            write checkpoints. The job and ``callbacks`` are sent to the workers (pickled once), so what
            they hold must be importable there; callbacks run on the workers. ``executor=RayOptions(address,
            resources, max_retries)`` is the same as ``"ray"`` with those three keywords, in one object.
        ray_address: executor="ray": the cluster to join (``"auto"``, ``"ray://head:10001"``, ``"host:6379"``).
            Default: the ``RAY_ADDRESS`` environment variable, else the Ray instance this process already
            started with ``ray.init``, else a new local cluster (shut down when the sweep ends).
        resources: executor="ray": what each experiment asks Ray for, in Ray resource names, e.g.
            ``{"GPU": 1, "CPU": 8}`` or ``{"CPU": 4, "memory": 16e9}`` (bytes) or custom resources.
            Default ``{"GPU": 1}`` when the cluster has GPUs (jobs that compute), else ``{"CPU": 1}``.
        max_retries: executor="ray": how often Ray re-runs an experiment whose worker process or node
            died (the retry resumes from its checkpoint). Exceptions inside training are not retried: they
            are recorded as failed runs, as locally.
        workers: executor="local": how many experiments run at once, each in a worker process of its own
            on this machine (default 1: one after another in this process). For small models bound by
            per-step overhead rather than matmuls (one process keeps about one core busy); each worker gets
            ``cores // workers`` torch threads unless ``TrainConfig.threads`` is a number. The job and
            ``callbacks`` are pickled to the workers (so what they hold must be importable by module) and
            callbacks run there; this process still writes the ledger. At most ``os.cpu_count()``; not with
            ``mode="api"`` or under torchrun/accelerate launch. A worker that dies loses its experiment
            (not recorded, checkpoint kept): the others go on, and ``WorkersLostError`` lists it at the end.
        checkpoint_dir: folder of the checkpoints of experiments in flight (default
            ``output_dir/checkpoints``). With Ray on several nodes it must be storage every node reaches at
            the same path (NFS, Lustre, a mounted bucket), so that a retry on another node resumes.
        trust_plan: let a plan read from a file (``sweep_path``, ``output_dir/sweep.json``,
            ``SweepPlan.load``) have its ``model`` entry imported and called (mode="local"). Without it such
            a plan is data: training it raises :class:`~flops_fit.plan.spec.UntrustedPlanError` before
            importing anything, unless ``model=`` names the model (then the plan's entry is never imported).
            A plan made in this process (``SweepPlanner(...).plan()``, ``find_optimal``) needs no trust.

    Under ``torchrun``/``accelerate launch`` every process runs the same experiments in the same order
    (the main process decides which are pending); each is trained data-parallel and only the main
    process writes ``sweep.json``, the ledger and checkpoints. (``executor="ray"`` is not for a
    multi-process launch: run the driver with plain ``python``.)
    """

    def __init__(
        self,
        mode: str | SweepPlan | None = None,
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
        job: Job | None = None,
        eval_dataset: Any = None,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device = "auto",
        retry_failed: bool = False,
        mock_law: MockLaw | Mapping[str, Any] | None = None,
        progress: bool = True,
        executor: str | RayOptions = "local",
        ray_address: str | None = None,
        resources: Mapping[str, float] | None = None,
        max_retries: int = 3,
        workers: int = 1,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        api_url: str | None = None,
        token_env: str | None = None,
        max_in_flight: int | None = None,
        trust_plan: bool = False,
    ) -> None:
        if isinstance(mode, SweepPlan):  # TrainingRunner(plan, job=...)
            if plan is not None:
                raise ValueError("pass the plan once: TrainingRunner(plan, job=...) or plan=..., not both")
            mode, plan = None, mode
        keywords = {
            "model": model,
            "dataset": dataset,
            "loss_fn": loss_fn,
            "train_config": train_config,
            "train_fn": train_fn,
            "eval_dataset": eval_dataset,
            "mock_law": mock_law,
            "api_url": api_url,
            "token_env": token_env,
            "max_in_flight": max_in_flight,
        }
        if job is None:
            mode = check_mode("local" if mode is None else mode)
        else:
            _check_job_alone(job, mode, seed, device, keywords)
        executor, ray_address, resources, max_retries = executor_settings(
            executor, ray_address, resources, max_retries
        )
        check_executor(executor, ray_address, resources, max_retries, device)
        self.workers = check_workers(workers, executor, job.mode if job is not None else mode)
        self._set_executor(executor, ray_address, resources, max_retries)
        self._set_folders(output_dir, checkpoint_dir)
        self.plan = _trusted(self._load_plan(plan, sweep_path), check_flag("trust_plan", trust_plan))
        self._check_ids()
        self.retry_failed = check_flag("retry_failed", retry_failed)
        self.progress = check_flag("progress", progress)
        self.callbacks = _check_callbacks(callbacks)
        if job is None:
            job = job_for_mode(mode, seed=seed, device=device, **keywords)
        if self.plan.trunks and job.mode not in BRANCHING_MODES:
            raise ValueError(
                f"mode={job.mode!r} trains each run from scratch, but this plan's runs are cooldown branches of "
                f"shared trunks (the WSD design); train it with mode='local' (or 'mock' to try it), or re-plan "
                "with the IsoFLOP design (design='isoflop')"
            )
        self.job: Job = job.prepare(self.plan, executor)
        check_workers(self.workers, executor, self.job.mode, concurrent=isinstance(self.job, ConcurrentJob))
        _make_folder("output_dir", self.output_dir)
        _make_folder("checkpoint_dir", self._checkpoint_root)

    # -- set-up ----------------------------------------------------------------------------------------

    def _set_executor(self, executor: str, address: str | None, resources: Any, max_retries: int) -> None:
        self.executor = executor
        self.ray_address = address
        self.resources = None if resources is None else {str(k): float(v) for k, v in resources.items()}
        self.max_retries = max_retries

    def _set_folders(self, output_dir: Any, checkpoint_dir: Any) -> None:
        self.output_dir = _output_path(output_dir)
        self.sweep = SweepDir(self.output_dir)
        self._checkpoint_root = (
            check_checkpoint_folder(self.sweep.checkpoints, self.output_dir)
            if checkpoint_dir is None
            else _output_path(checkpoint_dir, "checkpoint_dir")
        )
        self._own_checkpoints = checkpoint_dir is None

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
                sweep_path = self.sweep.plan
                if not sweep_path.is_file():
                    raise ValueError(
                        f"no plan: pass plan=SweepPlanner(...).plan() or sweep_path='sweep.json' "
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

    # -- paths and state -------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The job's mode (``"local"``, ``"mock"``, ``"function"``, ``"api"``), written into every record."""
        return self.job.mode

    @property
    def train_config(self) -> TrainConfig | None:
        """The TrainConfig a training job runs (before the plan's per-experiment settings); else None."""
        return getattr(self.job, "train_config", None)

    @property
    def results_path(self) -> Path:
        """The ledger, ``output_dir/results.jsonl``."""
        return self.sweep.results

    @property
    def checkpoint_dir(self) -> Path:
        """The folder of the checkpoints of experiments in flight (``checkpoint_dir``)."""
        return self._checkpoint_root

    def _checkpoint_path(self, experiment_id: str) -> Path:
        return checkpoint_file(self._checkpoint_root, experiment_id)

    def _finished(self, records: Iterable[Mapping[str, Any]]) -> set[str]:
        """Ids whose last record is finished and was made by this job (others run again, with a warning)."""
        done, other = set(), []
        planned = {e.experiment_id for e in self.plan}
        for r in latest_records(records):
            status = r.get("status", "completed")  # as load_runs reads a record without a status
            if status in ("completed", "diverged") or (status == "failed" and not self.retry_failed):
                if self.job.produced(r):
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
        return runs_from_records(load_results(self.output_dir))

    def _sync_plan_file(self, finished: set[str]) -> None:
        path = self.sweep.plan
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
                logger.warning(
                    "%s holds a different plan; replacing it (%d experiment(s) new, %d dropped). Finished "
                    "experiments not in the current plan stay in the ledger: %s",
                    path,
                    len(set(ids) - set(old_ids)),
                    len(set(old_ids) - set(ids)),
                    sorted(finished - set(ids)) or "none",
                )
        self.plan.save(path)

    def _tidy(self, finished: set[str]) -> None:
        """Main process: write the plan file, and drop the checkpoints of finished experiments."""
        self._sync_plan_file(finished)
        if self._own_checkpoints:  # checked again right before deleting anything in it
            check_checkpoint_folder(self._checkpoint_root, self.output_dir)
        for eid in finished & {e.experiment_id for e in self.plan}:
            path = self._checkpoint_path(eid)
            if path.exists():
                logger.info("removing the leftover checkpoint of finished experiment %s", eid)
                discard_checkpoint(path)
        for trunk in self.plan.trunks:
            self._tidy_trunk(trunk.trunk_id, finished)

    def _tidy_trunk(self, trunk_id: str, finished: set[str]) -> None:
        """Drop the branch points of a WSD trunk no unfinished branch needs: all of them once every branch
        finished, else those of finished branches except the latest (where the trunk goes on from)."""
        branches = [e for e in self.plan if e.trunk_id == trunk_id]
        pending = {e.branch_step for e in branches if e.experiment_id not in finished}
        points = branch_points(self.checkpoint_dir, trunk_id)
        keep = set() if not pending else pending | {max(points, default=0)}
        for step, path in points.items():
            if step not in keep:
                discard_checkpoint(path)
        own = self._checkpoint_path(trunk_id)  # the trunk segment in flight
        if not pending and own.exists():
            discard_checkpoint(own)

    # -- running ---------------------------------------------------------------------------------------

    def run_sweep(self) -> pd.DataFrame:
        """Run every experiment not finished yet; return the runs table of the whole ledger.

        Raises:
            KeyboardInterrupt: on Ctrl-C, after ``train`` checkpointed the experiment(s) in flight; nothing
                partial is written to the ledger. Running again resumes.
            flops_fit.training.ray_executor.WorkersLostError: executor="ray": some experiments lost their
                worker more than ``max_retries`` times; ``workers`` > 1: some lost their worker process
                (raised after every other experiment finished and was recorded); their checkpoints are kept
                and running again resumes them.
            OSError: another runner is writing to ``output_dir`` (errno EBUSY).
        """
        if int(os.environ.get("RANK", "0")) != 0:  # data-parallel ranks follow rank 0, which holds the lock
            return self._run_sweep()
        with exclusive_folder(self.output_dir):
            return self._run_sweep()

    def _run_sweep(self) -> pd.DataFrame:
        procs = self.job.processes() if self.executor == "local" else None
        is_main = procs.is_main if procs is not None else int(os.environ.get("RANK", "0")) == 0
        records = load_results(self.output_dir)
        if procs is not None and procs.world_size > 1:
            records = procs.gather(records)[0]  # every process runs what the main process found pending
        finished = self._finished(records)
        if is_main:
            self._tidy(finished)
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
        if todo:
            self.job.check_pending(todo)
        display = SweepProgress(self.plan, finished, bars=self.progress and is_main, verbose=is_main)
        if self.executor == "ray":
            if todo:
                self._run_on_ray(todo, records, display)
        elif self.workers > 1:
            if todo:
                self._run_in_workers(todo, records, display)
        elif isinstance(self.job, ConcurrentJob):
            self._run_many(self.job, todo, records, display)
        else:
            self._run_here(todo, records, display, procs, is_main)
        return runs_from_records(records)

    def _run_here(
        self,
        todo: list[Experiment],
        records: list[dict[str, Any]],
        display: SweepProgress,
        procs: Any,
        is_main: bool,
    ) -> None:
        """The local executor: the experiments one after another in this process (or process group)."""
        with display:
            for index, e in enumerate(todo, start=1):
                shown = display.start(index, len(todo), e)
                for cb in self.callbacks:
                    cb.on_experiment_start(e)
                path = self._checkpoint_path(e.experiment_id)
                try:
                    record, trained_flops = self.job.run(e, path, [*self.callbacks, *shown], procs)
                except KeyboardInterrupt:
                    message = self._interrupt_message(e, display)
                    logger.warning("%s", message)
                    raise KeyboardInterrupt(message) from None
                self._record(e, record, trained_flops, records, display, is_main)

    def _run_many(
        self,
        job: ConcurrentJob,
        todo: list[Experiment],
        records: list[dict[str, Any]],
        display: SweepProgress,
    ) -> None:
        """A job that keeps several experiments in flight itself (on a service): it gets the whole list."""

        def record(e: Experiment, rec: dict[str, Any], trained_flops: float) -> None:
            self._record(e, rec, trained_flops, records, display, is_main=True)

        failed = {str(r["experiment_id"]) for r in latest_records(records) if r.get("status") == "failed"}
        with display:
            try:
                job.run_many(todo, display, record, self.callbacks, failed if self.retry_failed else set())
            except KeyboardInterrupt:
                message = (
                    f"interrupted with {display.done} of {display.total} experiments done; the ones in flight "
                    "were cancelled on the service, which keeps their checkpoints: run the same command "
                    "again to resume them"
                )
                logger.warning("%s", message)
                raise KeyboardInterrupt(message) from None

    def _run_on_ray(
        self, todo: list[Experiment], records: list[dict[str, Any]], display: SweepProgress
    ) -> None:
        """The Ray executor: each experiment a task on the cluster; this process records the results."""
        from flops_fit.training.ray_executor import run_on_ray

        options = RayOptions(address=self.ray_address, resources=self.resources, max_retries=self.max_retries)

        def record(e: Experiment, rec: dict[str, Any], trained_flops: float) -> None:
            self._record(e, rec, trained_flops, records, display, is_main=True)

        with display:
            run_on_ray(self.job, todo, self._checkpoint_path, options, display, record, self.callbacks)

    def _run_in_workers(
        self, todo: list[Experiment], records: list[dict[str, Any]], display: SweepProgress
    ) -> None:
        """The local executor with ``workers`` > 1: that many worker processes; this process records."""
        from flops_fit.training.worker_pool import run_in_workers

        def record(e: Experiment, rec: dict[str, Any], trained_flops: float) -> None:
            self._record(e, rec, trained_flops, records, display, is_main=True)

        config = self.train_config
        threads = config.threads if isinstance(config, TrainConfig) else "auto"
        with display:
            run_in_workers(
                self.job, todo, self._checkpoint_path, self.workers, display, record, self.callbacks, threads
            )

    def _record(
        self,
        e: Experiment,
        record: dict[str, Any],
        trained_flops: float,
        records: list[dict[str, Any]],
        display: SweepProgress,
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
        if is_main and e.trunk_id is not None:  # every record of this run was made by this job
            ended = {
                str(r["experiment_id"])
                for r in latest_records(records)
                if r.get("status", "completed") != "failed" or not self.retry_failed
            }
            self._tidy_trunk(e.trunk_id, ended)
        display.finish(e, record, trained_flops)

    def _interrupt_message(self, e: Experiment, display: SweepProgress) -> str:
        saved = self.job.trains and self._checkpoint_path(e.experiment_id).exists()
        where = " from its checkpoint" if saved else ""
        return (
            f"interrupted during experiment {e.experiment_id} ({display.done} of {display.total} experiments "
            f"done); run the same command again to resume{where}"
        )
