"""``find_optimal``: plan -> train -> analyze -> report in one call.

Everything the call is given is checked before any compute is spent: the budgets, the model class and its
size parameter and keyword arguments, the dataset, a probe forward/backward of the loss on one batch, and
the mode, executor and approach names. Re-running with the same ``output_dir`` resumes the sweep.
The call reads as its four steps: :func:`_checked_request` (arguments into a :class:`_Request`),
:func:`_plan`, :func:`_train`, :func:`_fit_and_save`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flops_fit.analysis.approaches import resolve_approaches
from flops_fit.app.probe import Sample, check_six_nd, data_id, probe_loss
from flops_fit.core.sweepdir import SweepDir
from flops_fit.core.validate import Instance, Nullable, check, check_bootstrap, check_seed
from flops_fit.plan.planner import SweepPlanner, explicit_budgets
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training import TrainConfig
from flops_fit.training.data import holdout_samples
from flops_fit.training.device import resolve_device
from flops_fit.training.jobs import Job
from flops_fit.training.kinds import MODES, job_for_mode
from flops_fit.training.ray_executor import RayOptions
from flops_fit.training.runner import EXECUTORS, check_executor, check_workers, executor_settings

logger = logging.getLogger(__name__)
#: Keywords of find_optimal that go on to ModelSpec, and (with these) to SweepPlanner.
_SPEC_KEYWORDS = frozenset({"size_values", "size_multiple", "param_count", "shape_fn", "sample_fn"})
_PLANNER_KEYWORDS = _SPEC_KEYWORDS | {
    "design",
    "size_span",
    "lr_rule",
    "prior",
    "tokens_per_sample",
    "dataset_tokens",
    "data_id",
}
DEFAULT_OUTPUT_DIR = "flops_fit_out"


def _check_budgets(compute_budgets: Any) -> list[float]:
    if compute_budgets is None:
        raise TypeError(
            "find_optimal needs compute_budgets: the FLOP budgets to sweep, e.g. [1e15, 3e15, 1e16]"
        )
    distinct = explicit_budgets(compute_budgets, "compute_budgets")
    if len(distinct) < 2:
        raise ValueError(
            f"compute_budgets needs at least 2 distinct budgets to fit a scaling law, got {distinct}; "
            "e.g. [1e15, 3e15, 1e16]"
        )
    return distinct


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; use one of {list(allowed)}")
    return str(value)


def _check_model_kwargs(model_cls: Any, size_param: str, model_kwargs: Mapping[str, Any]) -> None:
    try:
        sig = inspect.signature(model_cls)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params}
    unknown = sorted(set(model_kwargs) - names)
    if unknown:
        raise TypeError(
            f"model_kwargs has key(s) {unknown} that {getattr(model_cls, '__qualname__', model_cls)} does not "
            f"accept; its signature is {sig}"
        )
    if size_param in model_kwargs:
        raise TypeError(f"model_kwargs must not contain the size parameter {size_param!r}; the sweep sets it")


def find_optimal(
    model_cls: Callable[..., nn.Module],
    size_param: str | None = None,
    dataset: Any = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    compute_budgets: Sequence[float] | None = None,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    eval_dataset: Any = None,
    num_model_sizes: int = 7,
    flops: str | Callable[..., float] = "6nd",
    train: bool = True,
    mode: str = "local",
    executor: str | RayOptions = "local",
    train_config: TrainConfig | None = None,
    approach: str | Sequence[str] = "all",
    bootstrap: int = 200,
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
    train_fn: Callable[..., Mapping[str, Any]] | None = None,
    tokens_per_param: float = 20.0,
    seed: int = 0,
    device: str = "auto",
    ray_address: str | None = None,
    resources: Mapping[str, float] | None = None,
    max_retries: int = 3,
    workers: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    api_url: str | None = None,
    token_env: str | None = None,
    model_size_param: str | None = None,
    **planner_kwargs: Any,
) -> Any:
    """Find the compute-optimal model size, data and loss for your model and data.

    Plans an IsoFLOP sweep over ``compute_budgets`` (FLOPs) with ``num_model_sizes`` sizes of
    ``model_cls(**{size_param: v}, **model_kwargs)`` per budget, trains every point (``mode="local"``,
    or ``"mock"`` for synthetic losses, or ``"function"`` with your ``train_fn(experiment) -> dict``), fits
    the scaling laws (``approach``: ``"all"``, ``"envelope"``, ``"isoflop"``, ``"parametric"``) and returns a
    :class:`flops_fit.report.result.Result` (``bootstrap=B``, default 200: every approach refitted on B
    resamples, seeded by ``seed``, for 95% intervals on all of them, in seconds; 0: regression intervals
    where an approach has them).
    With ``train=False`` it returns the :class:`~flops_fit.plan.sweep.SweepPlan` to inspect (``summary()``;
    ``estimate_cost()``: FLOPs and a calibrated wall time). ``executor`` is ``"local"`` (experiments one after
    another here, or ``workers=k`` at once in processes of their own, for small models on CPU cores; multi-GPU
    through ``accelerate launch``/``torchrun``) or ``"ray"`` (each experiment a Ray task,
    ``pip install "flops-fit[ray]"``; docs/cluster.md): ``ray_address`` names the cluster (default
    ``RAY_ADDRESS``, else a local one), ``resources`` what each experiment asks for in Ray resource names
    (default one GPU where the cluster has GPUs, else one CPU), ``max_retries`` how often an experiment whose
    worker died is re-run (it resumes from its checkpoint in ``checkpoint_dir``, default
    ``output_dir/checkpoints``: storage all nodes share on a multi-node cluster); ``executor=RayOptions(...)``
    says the same. Outputs go to ``output_dir`` (default ``./flops_fit_out``); re-running resumes. The fit
    uses this plan's runs only: an earlier plan's runs in the same folder stay in its ledger, left out (warned).
    Extra keywords (``size_span``, ``lr_rule``, ``size_values``, ``design="wsd"``: :mod:`flops_fit.plan.wsd`)
    go to the planner / model spec (``model_size_param``: the deprecated old name of ``size_param``).
    """
    request = _checked_request(
        compute_budgets, mode, seed, train, (approach, bootstrap), train_config, output_dir, resume,
        _Training(
            mode, dataset, eval_dataset, loss_fn, train_fn, seed, device, tuple(callbacks), api_url, token_env
        ),
        _Execution(*executor_settings(executor, ray_address, resources, max_retries), checkpoint_dir, workers),
        planner_kwargs,
    )  # fmt: skip
    size_param = _size_param(size_param, model_size_param)
    spec = _model_spec(model_cls, size_param, model_kwargs, loss_fn, planner_kwargs)
    sample = None
    if dataset is not None:  # its tokens per sample go to the planner in place of any given
        sample = Sample.read(dataset, planner_kwargs.pop("tokens_per_sample", None))
        planner_kwargs["tokens_per_sample"] = sample.tokens
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model(inputs), targets), got {loss_fn!r}")
    spec = _with_sample_fn(spec, sample)
    planner = _planner(request, spec, sample, num_model_sizes, flops, tokens_per_param, planner_kwargs)
    plan = _plan(request, planner, spec, sample)
    if not request.train:
        return _with_cost(plan)
    runs = _train(request, plan)
    return _fit_and_save(request, plan, runs)


def _with_cost(plan: SweepPlan) -> SweepPlan:
    """``plan`` with its cost in FLOPs (nothing is trained here; ``estimate_cost(device)`` times real steps)."""
    cost = dataclasses.replace(plan, model=None).estimate_cost()
    logger.info("%s; plan.estimate_cost(device) times a few real steps for the wall time", cost)
    return dataclasses.replace(plan, cost=cost)


@dataclass(frozen=True)
class _Training:
    """What trains each experiment: the job's settings (``mode`` names the kind of job)."""

    mode: str
    dataset: Any
    eval_dataset: Any
    loss_fn: Callable[..., torch.Tensor] | None
    train_fn: Callable[..., Mapping[str, Any]] | None
    seed: int
    device: str
    callbacks: tuple[Any, ...]
    api_url: str | None = None
    token_env: str | None = None

    def needs_data(self) -> bool:
        return self.mode == "local"

    def has_data(self) -> bool:
        return self.dataset is not None and self.loss_fn is not None


@dataclass(frozen=True)
class _Execution:
    """Where the experiments run: this machine, or a Ray cluster (see docs/cluster.md)."""

    executor: str
    ray_address: str | None
    resources: Mapping[str, float] | None
    max_retries: int
    checkpoint_dir: str | os.PathLike[str] | None
    workers: int = 1  # local: experiments at once, each in a worker process


@dataclass(frozen=True)
class _Request:
    """A find_optimal call, checked: budgets (FLOPs), approaches, the train config, the sweep folder."""

    budgets: list[float]
    approaches: list[str]
    bootstrap: int
    train_config: TrainConfig
    out: SweepDir
    train: bool
    training: _Training
    execution: _Execution


def _checked_request(
    compute_budgets: Any,
    mode: Any,
    seed: Any,
    train: bool,
    fitting: tuple[Any, Any],
    train_config: Any,
    output_dir: Any,
    resume: bool,
    training: _Training,
    execution: _Execution,
    options: Mapping[str, Any],
) -> _Request:
    """Every argument that needs no data, checked in the documented order (before anything is built);
    ``fitting``: the approach(es) and bootstrap resamples; ``options``: find_optimal's extra keywords."""
    budgets = _check_budgets(compute_budgets)
    approach, bootstrap = fitting
    _check_choice("mode", mode, MODES)
    ex = execution
    _check_choice("executor", ex.executor, EXECUTORS)
    check_executor(ex.executor, ex.ray_address, ex.resources, ex.max_retries, training.device)
    check_workers(ex.workers, ex.executor, mode)
    _check_data(training, train)
    if ex.executor == "local" and mode == "local" and train:
        resolve_device(training.device)  # a Ray sweep resolves it on its workers; planning and mock need none
    check_seed(seed)
    unknown = sorted(set(options) - _PLANNER_KEYWORDS)
    if unknown:
        raise TypeError(
            f"find_optimal got unexpected keyword(s) {unknown}; extra keywords go to SweepPlanner or ModelSpec: "
            f"{sorted(_PLANNER_KEYWORDS)}"
        )
    if ex.checkpoint_dir is not None and (
        not isinstance(ex.checkpoint_dir, (str, os.PathLike)) or not str(ex.checkpoint_dir)
    ):
        raise TypeError(f"checkpoint_dir must be a folder path, got {ex.checkpoint_dir!r}")
    return _Request(
        budgets=budgets,
        approaches=resolve_approaches(approach),
        bootstrap=check_bootstrap(bootstrap),
        train_config=_check_training(training, train_config),
        out=_sweep_folder(output_dir, resume),
        train=train,
        training=training,
        execution=execution,
    )


def _check_training(training: _Training, train_config: Any) -> TrainConfig:
    if train_config is None:
        train_config = TrainConfig(seed=training.seed)
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a flops_fit.TrainConfig, got {type(train_config).__name__}")
    if training.mode == "function" and not callable(training.train_fn):
        raise TypeError("mode='function' needs train_fn: a callable experiment -> dict(final_loss=...)")
    check(
        "api_url",
        training.api_url,
        Nullable(Instance(str)),
        "the training service, e.g. 'http://127.0.0.1:8765'",
    )
    check("token_env", training.token_env, Nullable(Instance(str)), "the name of an environment variable")
    if training.mode == "api" and training.api_url is None:
        raise ValueError("mode='api' needs api_url= (the training service, e.g. 'http://127.0.0.1:8765')")
    for cb in training.callbacks:
        if not hasattr(cb, "on_train_start"):
            raise TypeError(f"callbacks must be flops_fit.Callback instances, got {type(cb).__name__}")
    return train_config


def _sweep_folder(output_dir: Any, resume: bool) -> SweepDir:
    out = Path(output_dir if output_dir is not None else DEFAULT_OUTPUT_DIR).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(out)!r} exists and is not a directory; choose another output_dir")
    ledger = SweepDir(out).results
    if not resume and ledger.exists() and ledger.stat().st_size > 0:
        raise ValueError(
            f"output_dir {str(out)!r} already holds results; pass resume=True to continue that sweep or choose "
            "an empty output_dir (finished runs are never deleted)"
        )
    return SweepDir(out)


def _check_data(training: _Training, train: bool) -> None:
    """Refuse to train in a mode that needs data (``local``) when ``dataset`` or ``loss_fn`` is missing."""
    if not train or not training.needs_data() or training.has_data():
        return
    missing = [name for name in ("dataset", "loss_fn") if getattr(training, name) is None]
    raise ValueError(
        f"mode={training.mode!r} trains on your data, but {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} None; pass dataset=... and loss_fn=..., or mode='mock' for "
        "synthetic losses, or train=False to only plan the sweep"
    )


def _size_param(size_param: str | None, model_size_param: str | None) -> Any:
    """``size_param``, or its deprecated old name ``model_size_param`` (with a DeprecationWarning)."""
    if model_size_param is None:
        if size_param is None:
            raise TypeError("find_optimal needs size_param: the keyword of model_cls that sets its size, e.g. "
                            "size_param='d_model'")  # fmt: skip
        return size_param
    if size_param is not None:
        raise TypeError(
            "pass size_param only: model_size_param is its deprecated old name, and both were given "
            f"({size_param!r} and {model_size_param!r})"
        )
    warnings.warn(
        "find_optimal(model_size_param=...) is deprecated; call it size_param=...",
        DeprecationWarning,
        stacklevel=3,
    )
    return model_size_param


def _model_spec(
    model_cls: Any, size_param: Any, model_kwargs: Mapping[str, Any] | None, loss_fn: Any, options: dict
) -> ModelSpec:
    """The model spec (``options``: find_optimal's extra keywords; the spec's are taken out of it)."""
    if not callable(model_cls):
        raise TypeError(f"model_cls must be a class or factory building an nn.Module, got {model_cls!r}")
    if not isinstance(size_param, str) or not size_param:
        raise TypeError(
            f"size_param must name the size keyword of model_cls, e.g. 'd_model'; got {size_param!r}"
        )
    model_kwargs = dict(model_kwargs or {})
    _check_model_kwargs(model_cls, size_param, model_kwargs)
    spec_kwargs = {k: options.pop(k) for k in list(options) if k in _SPEC_KEYWORDS}
    return ModelSpec(model_cls, size_param, model_kwargs, loss_fn=loss_fn, **spec_kwargs)


def _with_sample_fn(spec: ModelSpec, sample: Sample | None) -> ModelSpec:
    """``spec`` measuring FLOPs on the dataset's own item when it names no ``sample_fn``."""
    if sample is None or spec.sample_fn is not None or sample.sample_fn() is None:
        return spec
    return dataclasses.replace(spec, sample_fn=sample.sample_fn())


def _planner(
    request: _Request,
    spec: ModelSpec,
    sample: Sample | None,
    num_model_sizes: Any,
    flops: Any,
    tokens_per_param: Any,
    options: dict[str, Any],
) -> SweepPlanner:
    """The planner of the sweep (``options``: the extra keywords left for it)."""
    config, data = request.train_config, request.training.dataset
    dataset_tokens = options.pop("dataset_tokens", None)
    if dataset_tokens is None and data is not None and hasattr(data, "__len__") and not sample.batched:
        # the training part only: without eval_dataset, training holds samples out for validation
        n = len(data)
        held_out = holdout_samples(config) if request.training.eval_dataset is None else 0
        dataset_tokens = (n - held_out if held_out <= n // 2 else n) * (sample.tokens or 1)
    train_dict = dataclasses.asdict(config)
    return SweepPlanner.from_budgets(
        request.budgets,
        num_model_sizes,
        model=spec,
        flops=flops,
        tokens_per_param=tokens_per_param,
        dataset_tokens=dataset_tokens,
        batch_size=config.batch_size,
        data_id=options.pop("data_id", None),
        train_config={k: v for k, v in train_dict.items() if _jsonable(v)},
        seed=config.seed,
        **options,
    )


def _plan(request: _Request, planner: SweepPlanner, spec: ModelSpec, sample: Sample | None) -> SweepPlan:
    """Plan, then check the plan against the data: a probe step of the smallest model, the epochs the runs
    need, the 6ND convention; then name the data (reading a few items) and plan with that id."""
    plan = planner.plan()
    loss_fn = request.training.loss_fn
    smallest = min(plan.experiments, key=lambda e: e.num_params)
    local_checks = request.training.mode != "api"  # the service checks its own data
    if local_checks and sample is not None and loss_fn is not None:
        probe_loss(spec.build(smallest.size_value, "cpu"), sample.item, sample.batched, loss_fn)
    if request.training.mode == "local" and request.train:
        _check_epochs(plan, request.train_config.max_epochs)
    if (
        local_checks and sample is not None and loss_fn is not None and plan.flops == "6nd"
    ):  # advice, after every check
        check_six_nd(spec, smallest, sample.item, sample.batched, loss_fn)
    if planner.data_id is None and request.training.dataset is not None:
        training = request.training
        planner.data_id = data_id(training.dataset, training.eval_dataset, loss_fn)
        with warnings.catch_warnings(), _quiet("flops_fit.plan"):
            warnings.simplefilter("ignore")  # the first plan() gave its warnings and log lines already
            plan = planner.plan()
    return plan


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the log lines below WARNING of logger ``name`` (and its children) inside the block."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _train(request: _Request, plan: SweepPlan) -> Any:
    """Run (or resume) every experiment of ``plan``; the runs table of this plan's experiments."""
    from flops_fit.training.runner import TrainingRunner

    ex = request.execution
    runner = TrainingRunner(
        plan,
        job=_job(request.training, request.train_config),
        output_dir=request.out.root,
        callbacks=request.training.callbacks,
        executor=ex.executor,
        ray_address=ex.ray_address,
        resources=ex.resources,
        max_retries=ex.max_retries,
        workers=ex.workers,
        checkpoint_dir=ex.checkpoint_dir,
    )
    return plan.select_runs(runner.run_sweep(), request.out.results)


def _job(t: _Training, train_config: TrainConfig) -> Job:
    """The job that trains each experiment: ``t.mode`` names its kind; it takes the settings it has."""
    return job_for_mode(
        t.mode,
        seed=t.seed,
        device=t.device,
        dataset=t.dataset,
        eval_dataset=t.eval_dataset,
        loss_fn=t.loss_fn,
        train_config=train_config,
        train_fn=t.train_fn,
        api_url=t.api_url,
        token_env=t.token_env,
    )


def _fit_and_save(request: _Request, plan: SweepPlan, runs: Any) -> Any:
    """Fit every requested approach to ``runs`` and save the result into the sweep folder."""
    from flops_fit.report.result import Result

    seed = request.training.seed
    logger.info(
        "fitting approaches %s%s ...", ", ".join(request.approaches),
        f" with {request.bootstrap} bootstrap resamples each" if request.bootstrap else "",
    )  # fmt: skip
    result = Result.from_runs(
        runs, approach=request.approaches, bootstrap=request.bootstrap, seed=seed, plan=plan,
        output_dir=request.out.root,
    )  # fmt: skip
    logger.info("drawing figures and saving the result into %s ...", request.out.root)
    result.save(request.out.root)
    return result


def _check_epochs(plan: SweepPlan, max_epochs: float) -> None:
    """Refuse, before anything is written, a plan whose runs would pass over the data more often than
    ``TrainConfig.max_epochs`` allows (training would stop at the first such run)."""
    over = [e for e in plan if e.epochs is not None and e.epochs > max_epochs]
    if not over:
        return
    worst = max(over, key=lambda e: e.epochs or 0.0)
    fits = sorted(set(plan.compute_budgets) - {e.compute_budget for e in over})
    largest = f"the largest budget that fits is {max(fits):.3g} FLOPs" if fits else "no budget fits"
    raise ValueError(
        f"{len(over)} planned run(s) need more than max_epochs={max_epochs:g} pass(es) over the dataset (up to "
        f"{worst.epochs:.2f} at C={worst.compute_budget:.3g}, N={worst.num_params:.3g}); {largest}. Lower the "
        "compute_budgets, use more data, or allow repetition with TrainConfig(max_epochs=...)"
    )


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))
