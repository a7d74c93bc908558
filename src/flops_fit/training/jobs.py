"""What one experiment of a sweep runs: the jobs a :class:`~flops_fit.training.runner.TrainingRunner` is given.

A job runs one :class:`~flops_fit.core.experiment.Experiment` and returns its ledger record; it checks its own
arguments when it is made, and says which ledger records it would have written itself (so that a resumed
sweep never takes a mock loss for a trained one). The runner and the executors (this process, Ray workers)
treat every job the same way:

:class:`LocalJob`
    trains a fresh torch model per experiment with :func:`~flops_fit.training.train`.
:class:`MockJob`
    synthetic losses from a Chinchilla law (:class:`~flops_fit.training.mock.MockLaw`), no training.
:class:`FunctionJob`
    calls your ``train_fn(experiment) -> {"final_loss": ...}`` (your loop, a cluster job, an API).

A new kind of job (like :class:`~flops_fit.training.api_job.ApiJob`, which sends each experiment to an HTTP
training service) is one more class that follows the :class:`Job` protocol, registered by its mode name in
:mod:`flops_fit.training.kinds`; the runner needs no change. A job that keeps several experiments in flight
itself (ApiJob, on its service) also follows :class:`ConcurrentJob`: the local executor then hands it the
whole to-do list instead of one experiment at a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.core.ledger import encode_record
from flops_fit.core.outcome import STATUSES, RunInfo, TrainOutcome
from flops_fit.core.train_config import (
    FIELD_NAMES,
    RESULT_FIELDS,
    TrainConfig,
    config_from_mapping,
    result_settings,
)
from flops_fit.core.validate import Instance, Real, check, check_seed
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.callbacks import Callback
from flops_fit.training.data import batch_layout, prepare_data
from flops_fit.training.device import resolve_device
from flops_fit.training.distributed import SingleProcess, launched_world_size, make_processes
from flops_fit.training.loop import train
from flops_fit.training.mock import MockLaw, mock_generator
from flops_fit.training.trunks import TrunkTrainer, branch_config

if TYPE_CHECKING:
    from flops_fit.training.progress import SweepProgress

logger = logging.getLogger(__name__)

__all__ = [
    "RAY_DEVICES",
    "ConcurrentJob",
    "FunctionJob",
    "Job",
    "LocalJob",
    "MockJob",
    "check_ray_device",
    "check_recorded_train_config",
]

#: Devices an experiment on a Ray worker can ask for (the worker's GPU is the one Ray assigned to it).
RAY_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


@runtime_checkable
class Job(Protocol):
    """What a runner needs of a job. Jobs are picklable (the Ray executor ships one to every worker).

    Attributes:
        mode: written into each record's ``mode``; records of another mode are not this job's.
        trains: trains a model in the process that runs it: it gets a checkpoint path per experiment,
            data-parallel processes under ``torchrun``, and a fresh Ray worker process per experiment.
        simulated: costs nothing: no GPU by default on Ray, no live progress, cancelled by a kill, and
            its records are the same wherever it ran.
    """

    mode: ClassVar[str]
    trains: ClassVar[bool]
    simulated: ClassVar[bool]

    def prepare(self, plan: SweepPlan, executor: str) -> Job:
        """This job made ready for ``plan`` on ``executor`` (defaults taken from the plan, everything that
        can be checked before a run checked); raises ValueError/TypeError naming the argument."""
        ...

    def check_pending(self, todo: Sequence[Experiment]) -> None:
        """Check the experiments about to run, before the first starts (e.g. the data against the largest)."""
        ...

    def processes(self) -> SingleProcess | None:
        """The processes an experiment runs in under the local executor (None: this process alone)."""
        ...

    def produced(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` is one this job would have written (records that do not say count)."""
        ...

    def run(
        self,
        e: Experiment,
        checkpoint_path: Path | None,
        callbacks: Sequence[Callback],
        procs: SingleProcess | None,
    ) -> tuple[dict[str, Any], float]:
        """Run ``e``; return its ledger record and the FLOPs trained in this call (never touches the ledger)."""
        ...


@runtime_checkable
class ConcurrentJob(Protocol):
    """A job that runs several experiments at once itself (e.g. on a training service): the runner's
    local executor gives it the whole to-do list."""

    def run_many(
        self,
        todo: Sequence[Experiment],
        display: SweepProgress,
        record: Callable[[Experiment, dict[str, Any], float], None],
        callbacks: Sequence[Callback],
        retry: Collection[str],
    ) -> None:
        """Run ``todo``, calling ``record(experiment, ledger record, FLOPs trained in this call)`` as each
        ends and telling ``display`` of each in flight; ``retry`` are ids whose last record failed."""
        ...


class _JobBase:
    """Defaults shared by the built-in jobs."""

    mode: ClassVar[str]
    trains: ClassVar[bool] = False
    simulated: ClassVar[bool] = False

    def prepare(self, plan: SweepPlan, executor: str) -> Job:
        return self  # type: ignore[return-value]

    def check_pending(self, todo: Sequence[Experiment]) -> None:
        return None

    def processes(self) -> SingleProcess | None:
        return None

    def produced(self, record: Mapping[str, Any]) -> bool:
        return bool(record.get("mode", self.mode) == self.mode)

    def base_record(self, e: Experiment) -> dict[str, Any]:
        """The plan's fields of ``e`` that every record carries, and this job's mode."""
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
            **({"trunk_id": e.trunk_id, "branch_step": e.branch_step} if e.is_branch else {}),
            **({"validates": e.validates} if e.validates is not None else {}),
            "mode": self.mode,
        }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# mock


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class MockJob(_JobBase):
    """Synthetic results: the loss and curve of :class:`MockLaw` with seeded noise, without training.

    Args:
        seed: seeds the noise (with each experiment's id): the same plan and seed give the same records.
        mock_law: a :class:`MockLaw`, a mapping of its fields, or None (Hoffmann et al. 2022).
    """

    mode: ClassVar[str] = "mock"
    simulated: ClassVar[bool] = True

    seed: int = 0
    mock_law: MockLaw = dataclasses.field(default_factory=MockLaw)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_seed(self.seed))
        object.__setattr__(self, "mock_law", MockLaw.from_value(self.mock_law))

    def produced(self, record: Mapping[str, Any]) -> bool:
        """Same mode, mock seed and law (a loss of another law is not this one's)."""
        return (
            super().produced(record)
            and record.get("mock_seed", self.seed) == self.seed
            and record.get("mock_law", self.mock_law.to_dict()) == self.mock_law.to_dict()
        )

    def run(
        self, e: Experiment, checkpoint_path: Path | None, callbacks: Sequence[Callback], procs: Any
    ) -> tuple[dict[str, Any], float]:
        sim = self.mock_law.simulate(e.num_params, e.num_tokens, mock_generator(self.seed, e.experiment_id))
        record = {
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
        return record, 0.0


# --------------------------------------------------------------------------------------------------
# your function


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FunctionJob(_JobBase):
    """Calls ``train_fn(experiment) -> {"final_loss": float, ...}`` for each experiment.

    Optional keys of the result: ``status`` (default ``"completed"``), ``num_tokens`` (tokens trained;
    default the plan's), ``actual_flops``, ``curve`` (``[[tokens, loss], ...]``), ``error`` and any JSON-able
    extras. An exception ``train_fn`` raises records the experiment as failed; a malformed result raises.
    """

    mode: ClassVar[str] = "function"

    train_fn: Callable[[Experiment], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not callable(self.train_fn):
            raise TypeError(
                "mode='function' needs train_fn=callable(experiment) -> {'final_loss': ...}, got "
                f"{type(self.train_fn).__name__}"
            )

    def run(
        self, e: Experiment, checkpoint_path: Path | None, callbacks: Sequence[Callback], procs: Any
    ) -> tuple[dict[str, Any], float]:
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
        return record, 0.0


#: A number a ``train_fn`` returns (NumPy scalars included, bools not); an amount (tokens, FLOPs) is
#: also finite and non-negative.
_NUMBER = Real()
_AMOUNT = Real(0)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (NumPy scalars and NaN included, bools not), else None."""
    return float(value) if _NUMBER.is_kind(value) else None


def _amount(where: str, out: Mapping[str, Any], key: str, default: Any, what: str) -> float:
    """``out[key]`` (or ``default``) as a finite non-negative float, or a ValueError saying ``what`` to give."""
    given = out.get(key, default)
    # a value train_fn returned, not an argument: a ValueError whether its kind or its range is wrong
    if not (_AMOUNT.is_kind(given) and _AMOUNT.accepts(given)):
        raise ValueError(f"{where} returned {key}={given!r}; give {what} (a number)")
    return float(given)


def _check_loss(where: str, out: dict[str, Any]) -> None:
    """Check ``status`` and ``final_loss`` of a ``train_fn`` result in place."""
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
    _check_loss(where, out)
    out["num_tokens"] = _amount(where, out, "num_tokens", e.num_tokens, "the tokens trained")
    out["actual_flops"] = _amount(
        where, out, "actual_flops", e.flops_per_token * out["num_tokens"], "the FLOPs spent"
    )
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


# --------------------------------------------------------------------------------------------------
# local training


def check_ray_device(device: Any) -> None:
    """Raise ValueError unless ``device`` is one a Ray worker can train on (it gets the GPU Ray assigned)."""
    if str(device) not in RAY_DEVICES:
        raise ValueError(
            f"device={str(device)!r} cannot be used with executor='ray': each worker trains on the GPU "
            f"Ray assigned to it; pass device as one of {list(RAY_DEVICES)}"
        )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LocalJob(_JobBase):
    """Trains each experiment with :func:`~flops_fit.training.train`: a fresh model after
    ``torch.manual_seed(experiment.seed)``, the planned tokens, resumable from its checkpoint.

    Args:
        dataset: the training data, ``(inputs, targets)`` items (see ``train``).
        model: a :class:`ModelSpec`, or a callable ``size_value -> nn.Module`` (given the plan's
            ``num_params`` when the plan has no size values). Default: the plan's ModelSpec.
        loss_fn: ``loss_fn(model(inputs), targets)`` -> scalar tensor; default the plan ModelSpec's.
        train_config: a :class:`TrainConfig` (or a mapping of its fields); default the plan's recorded
            ``train_config``, else ``TrainConfig()``. Each experiment runs it with the plan's ``batch_size``,
            ``seed`` and ``learning_rate`` (when the plan sets one) put in.
        eval_dataset: validation data (default: a fixed held-out slice of ``dataset``).
        device: ``"auto"`` (cuda > mps > cpu) or a device such as ``"cpu"``, ``"cuda:1"``.
        configs: the TrainConfig of each experiment id, filled in by :meth:`prepare`.
    """

    mode: ClassVar[str] = "local"
    trains: ClassVar[bool] = True

    dataset: Any = None
    model: ModelSpec | Callable[[Any], nn.Module] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    train_config: TrainConfig | Mapping[str, Any] | None = None
    eval_dataset: Any = None
    device: str | torch.device = "auto"
    configs: Mapping[str, TrainConfig] = dataclasses.field(default_factory=dict, repr=False)
    trunks: TrunkTrainer | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dataset is None:
            raise ValueError(
                "mode='local' needs dataset= (--dataset on the command line; items (inputs, targets)); use "
                "mode='mock' (--mode mock) to try the pipeline without data"
            )
        _check_model(self.model)
        if self.loss_fn is not None:
            _check_loss_fn(self.loss_fn)
        config = self.train_config
        if isinstance(config, Mapping):
            config = config_from_mapping(config, "train_config")
        if config is not None:
            check("train_config", config, Instance(TrainConfig), "or a mapping of its fields")
        object.__setattr__(self, "train_config", config)
        check("device", self.device, Instance(str, torch.device), "e.g. 'auto', 'cpu' or 'cuda:1'")

    # -- set-up ----------------------------------------------------------------------------------------

    def prepare(self, plan: SweepPlan, executor: str) -> LocalJob:
        """The model, loss and TrainConfig of each experiment resolved against ``plan``; the device checked."""
        if executor == "ray":
            check_ray_device(self.device)
        model = _model_to_train(self.model, plan)
        if isinstance(model, ModelSpec):
            model.require_trust()  # before any import: a plan read from a file names code to run
            model.resolve()  # import errors now, not after the first experiment
            if any(e.size_value is None for e in plan):
                raise ValueError(
                    "the plan has no size values (planned without a model); pass model=callable(num_params)"
                )
        loss_fn = self.loss_fn
        if loss_fn is None and plan.model is not None:
            loss_fn = plan.model.loss_fn
        _check_loss_fn(loss_fn)
        base = _base_config(self.train_config, plan)
        configs = _experiment_configs(base, plan)
        if launched_world_size() <= 1 and executor == "local":
            resolve_device(self.device)  # raises for a bad or unavailable device (workers resolve their own)
        shared = {
            "dataset": self.dataset,
            "loss_fn": loss_fn,
            "eval_dataset": self.eval_dataset,
            "device": self.device,
        }
        trunks = TrunkTrainer({t.trunk_id: t for t in plan.trunks}, shared) if plan.trunks else None
        return dataclasses.replace(
            self, model=model, loss_fn=loss_fn, train_config=base, configs=configs, trunks=trunks
        )

    def check_pending(self, todo: Sequence[Experiment]) -> None:
        """Check a map-style dataset against the largest pending run before anything trains."""
        if not todo or not _is_map_dataset(self.dataset):
            return
        largest = max(todo, key=lambda e: e.num_tokens)
        config = self.configs[largest.experiment_id]
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

    def processes(self) -> SingleProcess:
        """This process, or the data-parallel group of a ``torchrun``/``accelerate launch``."""
        return make_processes(None, self.device)

    def produced(self, record: Mapping[str, Any]) -> bool:
        """Same mode, and trained with the same result-changing TrainConfig fields (a plan that records
        none keeps the same ids whatever it is trained with)."""
        if not super().produced(record):
            return False
        config = self.configs.get(str(record.get("experiment_id")))
        if config is None or not isinstance(record.get("train_config"), Mapping):
            return True
        return experiment_id(dict(record["train_config"])) == experiment_id(_result_settings(config))

    # -- one experiment --------------------------------------------------------------------------------

    def run(
        self,
        e: Experiment,
        checkpoint_path: Path | None,
        callbacks: Sequence[Callback],
        procs: SingleProcess | None,
    ) -> tuple[dict[str, Any], float]:
        assert self.configs and checkpoint_path is not None, "call prepare(plan, executor) first"
        procs = procs if procs is not None else SingleProcess(self.device)
        config = self.configs[e.experiment_id]
        stamp = _now()
        torch.manual_seed(e.seed)
        try:
            model = self.build(e, procs.device)
        except Exception as exc:
            logger.exception("building the model of experiment %s failed", e.experiment_id)
            outcome = _untrained_failure(e, f"building the model failed: {type(exc).__name__}: {exc}")
            return self._record(e, config, outcome, stamp, procs), 0.0
        start, spent = None, 0.0
        if e.is_branch:
            start, spent, error = self._branch_start(e, config, checkpoint_path, procs)
            if error is not None:
                return self._record(e, config, _untrained_failure(e, error), stamp, procs), spent
        outcome, trained = self._train(e, model, config, checkpoint_path, callbacks, start)
        return self._record(e, config, outcome, stamp, procs), trained + spent

    def _branch_start(
        self, e: Experiment, config: TrainConfig, path: Path, procs: SingleProcess
    ) -> tuple[Path | None, float, str | None]:
        """A branch's trunk checkpoint (trained up to its branch point first where missing), the FLOPs that
        took, and the trunk's failure; a branch with its own checkpoint resumes from that instead."""
        assert self.trunks is not None, "a branch needs the plan's trunks: call prepare(plan, executor) first"

        def build() -> nn.Module:
            torch.manual_seed(e.seed)  # the trunk starts where the branch would: same seed, same size
            return self.build(e, procs.device)

        if path.exists():
            return None, 0.0, None
        return self.trunks.start(e, config, path.parent, build)

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

    def _train(
        self,
        e: Experiment,
        model: nn.Module,
        config: TrainConfig,
        path: Path,
        callbacks: Sequence[Callback],
        start: Path | None = None,
    ) -> tuple[TrainOutcome, float]:
        """Train ``model`` for ``e`` (a branch from its trunk checkpoint ``start``); the outcome and the FLOPs
        trained in this call (not before a resume)."""
        assert self.loss_fn is not None
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
                callbacks=[*callbacks, meter],
                checkpoint_path=path,
                init_checkpoint=start,
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
        return outcome, e.flops_per_token * max(outcome.tokens_seen - meter.tokens0, 0)

    def _record(
        self, e: Experiment, config: TrainConfig, outcome: TrainOutcome, stamp: str, procs: SingleProcess
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


def _check_model(model: Any) -> None:
    """A model must build a fresh network per experiment: a ModelSpec or a factory, not a network."""
    if isinstance(model, nn.Module):
        raise TypeError(
            "model must build a fresh network per experiment: pass a ModelSpec or a callable "
            "size_value -> nn.Module, not an nn.Module instance"
        )
    if model is not None and not isinstance(model, ModelSpec) and not callable(model):
        raise TypeError(
            f"model must be a ModelSpec or a callable size_value -> nn.Module, got {type(model).__name__}"
        )


def _model_to_train(model: ModelSpec | Callable[[Any], nn.Module] | None, plan: SweepPlan) -> Any:
    """``model`` when given (the plan's model entry is then never imported), else the plan's ModelSpec."""
    if model is None:
        if plan.model is None:
            raise ValueError(
                "mode='local' needs a model: pass model=ModelSpec(...) or model=lambda size: MyModel(size), "
                "or plan with SweepPlanner(model=ModelSpec(...))"
            )
        return plan.model
    if plan.model is not None and isinstance(model, ModelSpec) and model.model_path != plan.model.model_path:
        logger.warning(
            "training %s (model=) instead of the plan's %s; the plan's sizes were chosen for its class",
            model.model_path,
            plan.model.model_path,
        )
    return model


def _resource_bounds() -> dict[str, int]:
    """TrainConfig fields that size a resource of this machine, and their bounds (DataLoader processes)."""
    return {"num_workers": os.cpu_count() or 1}


def check_recorded_train_config(
    recorded: Mapping[str, Any],
    what: str = "the plan's train_config",
    fix: str = "set it yourself: train_config=TrainConfig({key}=...) (ff-train: +train.{key}=N)",
) -> None:
    """Raise ValueError when a ``train_config`` that came with data (a plan's recorded one, a service
    submission) asks for more of this machine than it has (``num_workers`` above ``os.cpu_count()``),
    naming ``what``, the key and ``fix``."""
    for key, bound in _resource_bounds().items():
        value = recorded.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > bound:
            raise ValueError(
                f"{what} sets {key}={value}, more than this machine's {bound} CPUs; {fix.format(key=key)}"
            )


def _check_loss_fn(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(
            "mode='local' needs loss_fn=callable(model(inputs), targets) -> scalar tensor, got "
            f"{type(loss_fn).__name__}"
        )


def _base_config(train_config: TrainConfig | None, plan: SweepPlan) -> TrainConfig:
    """``train_config``, or the plan's recorded one, or the default; warns where the two disagree."""
    recorded = plan.config.get("train_config")
    if train_config is None:
        if not isinstance(recorded, Mapping):
            return TrainConfig()
        other = sorted(set(recorded) - FIELD_NAMES)
        if other:
            logger.warning(
                "the plan's train_config has key(s) %s that TrainConfig does not have; ignoring them "
                "(pass train_config=TrainConfig(...) to set the training run yourself)",
                other,
            )
        known = {k: v for k, v in recorded.items() if k in FIELD_NAMES}
        check_recorded_train_config(known)
        if known:
            logger.info("training with the plan's recorded train_config %s", known)
        return config_from_mapping(known, "the plan's train_config")
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


def _experiment_configs(base: TrainConfig, plan: SweepPlan) -> dict[str, TrainConfig]:
    """The TrainConfig of each experiment: ``base`` with its batch size, seed and learning rate put in (a
    branch: also its trunk's warm-up and its cooldown)."""
    configs = {}
    for e in plan:
        changes: dict[str, Any] = {"batch_size": e.batch_size, "seed": e.seed}
        if e.learning_rate is not None:
            changes["lr"] = e.learning_rate
        try:
            config = dataclasses.replace(base, **changes)
            if e.trunk_id is not None:
                config = branch_config(config, e, plan.trunk(e.trunk_id))
        except ValueError as exc:
            raise ValueError(f"train_config does not fit experiment {e.experiment_id}: {exc}") from exc
        configs[e.experiment_id] = config
    return configs


def _result_settings(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that change a run's result (recorded with each trained run)."""
    return result_settings(config.to_dict())


def _is_map_dataset(dataset: Any) -> bool:
    from torch.utils.data import DataLoader, IterableDataset

    return (
        not isinstance(dataset, (DataLoader, IterableDataset))
        and hasattr(dataset, "__getitem__")
        and hasattr(dataset, "__len__")
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


class _ResumeMeter(Callback):
    """Remembers where a (possibly resumed) run started, to count only the FLOPs trained now."""

    def __init__(self) -> None:
        self.tokens0 = 0

    def on_train_start(self, info: RunInfo) -> None:
        self.tokens0 = info.start_step * info.tokens_per_step
