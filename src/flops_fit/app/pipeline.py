"""``find_optimal``: plan -> train -> analyze -> report in one call.

Everything the call is given is checked before any compute is spent: the budgets, the model class and its
size parameter and keyword arguments, the dataset, a probe forward/backward of the loss on one batch, and
the mode, executor and approach names. Re-running with the same ``output_dir`` resumes the sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flops_fit.analysis.approaches import resolve_approaches
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.core.validate import check_seed
from flops_fit.plan.planner import SweepPlanner, explicit_budgets
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training import TrainConfig
from flops_fit.training.data import holdout_samples
from flops_fit.training.device import resolve_device
from flops_fit.training.runner import check_executor

logger = logging.getLogger(__name__)
#: Keywords of find_optimal that go on to ModelSpec, and (with these) to SweepPlanner.
_SPEC_KEYWORDS = frozenset({"size_values", "size_multiple", "param_count", "shape_fn", "sample_fn"})
_PLANNER_KEYWORDS = _SPEC_KEYWORDS | {
    "size_span",
    "lr_rule",
    "prior",
    "tokens_per_sample",
    "dataset_tokens",
    "data_id",
}

MODES = ("local", "mock", "function")
EXECUTORS = ("local", "ray")
DEFAULT_OUTPUT_DIR = "flops_fit_out"


def _check_budgets(compute_budgets: Any) -> list[float]:
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


def _first_item(dataset: Any) -> Any:
    """The first (inputs, targets) item of a Dataset, IterableDataset or DataLoader (batched for loaders)."""
    if isinstance(dataset, torch.utils.data.DataLoader):
        return next(iter(dataset)), True
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        if len(dataset) == 0:
            raise ValueError("dataset is empty; give a Dataset whose items are (inputs, targets)")
        return dataset[0], False
    if hasattr(dataset, "__iter__"):
        try:
            return next(iter(dataset)), False
        except StopIteration:
            raise ValueError("dataset is empty; give a Dataset whose items are (inputs, targets)") from None
    raise TypeError(
        f"dataset must be a torch Dataset, IterableDataset or DataLoader of (inputs, targets), got "
        f"{type(dataset).__name__}"
    )


def _tokens_per_sample(dataset: Any, item: Any, batched: bool) -> int:
    tps = getattr(dataset, "tokens_per_sample", None)
    if tps is None and isinstance(dataset, torch.utils.data.DataLoader):
        tps = getattr(dataset.dataset, "tokens_per_sample", None)
    if tps is not None:
        return int(tps)
    targets = torch.as_tensor(item[1])
    if batched:
        return max(1, targets.numel() // max(1, targets.shape[0] if targets.ndim else 1))
    return max(1, targets.numel())


def _check_item(item: Any) -> None:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise TypeError(
            f"dataset items must be (inputs, targets) pairs, got {type(item).__name__}"
            + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
        )


def _probe_loss(model: nn.Module, item: Any, batched: bool, loss_fn: Callable[..., Any]) -> None:
    """One forward/backward on one small batch: the loss must be a finite scalar with a gradient."""
    if batched:
        inputs, targets = item
    else:
        inputs, targets = torch.utils.data.default_collate([item, item])
    try:
        loss = loss_fn(model(inputs), targets)
    except Exception as exc:
        raise TypeError(
            f"probe of loss_fn(model(inputs), targets) on one batch failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"loss_fn must return a scalar tensor, got {shape}; reduce it (e.g. .mean())")
    if not loss.requires_grad:
        raise TypeError("loss_fn returned a tensor without a gradient; compute it from the model output")
    if not torch.isfinite(loss.detach()):
        raise ValueError(f"loss_fn returned {loss.item()} on the first batch of a freshly built model")
    loss.backward()


#: A model whose measured training FLOPs per target differ from 6N by more than this factor gets a warning
#: under the default ``flops="6nd"`` (a ViT's patches, a CNN's convolutions): its budgets would be off as much.
SIX_ND_TOLERANCE = 2.0


def _check_six_nd(
    spec: ModelSpec, smallest: Any, item: Any, batched: bool, loss_fn: Callable[..., Any]
) -> None:
    """Warn when 6 N FLOPs per target (the 6nd convention) is far from what the model really costs."""
    from flops_fit.plan.flops import measure_flops_per_token

    sample = item if batched else torch.utils.data.default_collate([item, item])
    try:
        measured = measure_flops_per_token(spec.build(smallest.size_value, "meta"), sample, loss_fn)
    except Exception as exc:  # the check is advice: a model FlopCounterMode cannot follow is not an error
        logger.debug("could not measure FLOPs to check the 6nd convention: %s", exc)
        return
    ratio = measured / (FLOPS_PER_PARAM_TOKEN * smallest.num_params)
    if not 1 / SIX_ND_TOLERANCE <= ratio <= SIX_ND_TOLERANCE:
        warnings.warn(
            f"flops='6nd' counts 6 N = {FLOPS_PER_PARAM_TOKEN * smallest.num_params:.3g} FLOPs per target for the "
            f"smallest model, but one training step measures {measured:.3g} per target ({ratio:.2g}x): every "
            "run would train that much more (or less) compute than its budget. Pass flops='measured' (or a "
            "callable) to count the model's real FLOPs.",
            UserWarning,
            stacklevel=3,
        )


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
    model_size_param: str,
    dataset: Any,
    loss_fn: Callable[..., torch.Tensor] | None,
    compute_budgets: Sequence[float],
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    eval_dataset: Any = None,
    num_model_sizes: int = 7,
    flops: str | Callable[..., float] = "6nd",
    train: bool = True,
    mode: str = "local",
    executor: str = "local",
    train_config: TrainConfig | None = None,
    approach: str | Sequence[str] = "all",
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
    checkpoint_dir: str | os.PathLike[str] | None = None,
    **planner_kwargs: Any,
) -> Any:
    """Find the compute-optimal model size, data and loss for your model and data.

    Plans an IsoFLOP sweep over ``compute_budgets`` (FLOPs) with ``num_model_sizes`` sizes of
    ``model_cls(**{model_size_param: v}, **model_kwargs)`` per budget, trains every point (``mode="local"``,
    or ``"mock"`` for synthetic losses, or ``"function"`` with your ``train_fn(experiment) -> dict``), fits
    the scaling laws (``approach``: ``"all"``, ``"envelope"``, ``"isoflop"``, ``"parametric"``) and returns a
    :class:`flops_fit.report.result.Result`. With ``train=False`` (or no ``dataset``/``loss_fn`` in local mode) it
    returns the :class:`~flops_fit.plan.sweep.SweepPlan` for inspection (``plan.summary()``, and
    ``plan.estimate_cost()`` for FLOPs and a calibrated wall-time estimate). ``executor`` is ``"local"``
    (experiments one after another on this machine; multi-GPU through ``accelerate launch``/``torchrun``)
    or ``"ray"`` (each experiment a Ray task on a cluster, ``pip install "flops-fit[ray]"``; see
    docs/cluster.md): ``ray_address`` names the cluster (default ``RAY_ADDRESS``, else a local one),
    ``resources`` what each experiment asks for in Ray resource names (default one GPU where the cluster
    has GPUs, else one CPU) and ``max_retries`` how often an experiment whose worker died is re-run (it
    resumes from its checkpoint in ``checkpoint_dir``, default ``output_dir/checkpoints``, which must be
    storage all nodes share on a multi-node cluster).
    Outputs go to ``output_dir`` (default ``./flops_fit_out``); re-running resumes. The fit uses this plan's
    runs only: runs of an earlier plan in the same folder stay in its ledger but are left out (with a
    warning).
    Extra keywords (e.g. ``size_span``, ``lr_rule``, ``size_values``) go to the planner / model spec.
    """
    # ---- validate everything before any compute -------------------------------------------------
    budgets = _check_budgets(compute_budgets)
    mode = _check_choice("mode", mode, MODES)
    executor = _check_choice("executor", executor, EXECUTORS)
    check_executor(executor, ray_address, resources, max_retries, device)
    if executor == "local" and mode == "local" and train:
        resolve_device(device)  # a Ray sweep resolves it on its workers; planning and mock runs need none
    check_seed(seed)
    unknown = sorted(set(planner_kwargs) - _PLANNER_KEYWORDS)
    if unknown:
        raise TypeError(
            f"find_optimal got unexpected keyword(s) {unknown}; extra keywords go to SweepPlanner or ModelSpec: "
            f"{sorted(_PLANNER_KEYWORDS)}"
        )
    if checkpoint_dir is not None and (
        not isinstance(checkpoint_dir, (str, os.PathLike)) or not str(checkpoint_dir)
    ):
        raise TypeError(f"checkpoint_dir must be a folder path, got {checkpoint_dir!r}")
    approaches = resolve_approaches(approach)
    if not callable(model_cls):
        raise TypeError(f"model_cls must be a class or factory building an nn.Module, got {model_cls!r}")
    if not isinstance(model_size_param, str) or not model_size_param:
        raise TypeError(f"model_size_param must name the size keyword of model_cls, got {model_size_param!r}")
    model_kwargs = dict(model_kwargs or {})
    _check_model_kwargs(model_cls, model_size_param, model_kwargs)
    if train_config is None:
        train_config = TrainConfig(seed=seed)
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a flops_fit.TrainConfig, got {type(train_config).__name__}")
    if mode == "function" and not callable(train_fn):
        raise TypeError("mode='function' needs train_fn: a callable experiment -> dict(final_loss=...)")
    for cb in callbacks:
        if not hasattr(cb, "on_train_start"):
            raise TypeError(f"callbacks must be flops_fit.Callback instances, got {type(cb).__name__}")
    out = Path(output_dir if output_dir is not None else DEFAULT_OUTPUT_DIR).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(out)!r} exists and is not a directory; choose another output_dir")
    ledger = out / "results.jsonl"
    if not resume and ledger.exists() and ledger.stat().st_size > 0:
        raise ValueError(
            f"output_dir {str(out)!r} already holds results; pass resume=True to continue that sweep or choose "
            "an empty output_dir (finished runs are never deleted)"
        )

    needs_data = mode == "local"
    have_data = dataset is not None and loss_fn is not None
    if needs_data and train and not have_data:
        logger.info("no dataset/loss_fn given: returning the plan without training")
        train = False
    item = batched = None
    tokens_per_sample = planner_kwargs.pop("tokens_per_sample", None)
    if dataset is not None:
        item, batched = _first_item(dataset)
        _check_item(item)
        if tokens_per_sample is None:
            tokens_per_sample = _tokens_per_sample(dataset, item, batched)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model(inputs), targets), got {loss_fn!r}")

    spec_kwargs = {k: planner_kwargs.pop(k) for k in list(planner_kwargs) if k in _SPEC_KEYWORDS}
    if item is not None and "sample_fn" not in spec_kwargs and not batched:
        sample = item

        def sample_fn(batch_size: int) -> Any:
            return torch.utils.data.default_collate([sample] * batch_size)

        spec_kwargs["sample_fn"] = sample_fn
    spec = ModelSpec(model_cls, model_size_param, model_kwargs, loss_fn=loss_fn, **spec_kwargs)
    dataset_tokens = planner_kwargs.pop("dataset_tokens", None)
    if dataset_tokens is None and dataset is not None and hasattr(dataset, "__len__") and not batched:
        # the training part only: without eval_dataset, training holds samples out for validation
        n = len(dataset)
        held_out = holdout_samples(train_config) if eval_dataset is None else 0
        dataset_tokens = (n - held_out if held_out <= n // 2 else n) * (tokens_per_sample or 1)
    train_dict = dataclasses.asdict(train_config)
    data_id = planner_kwargs.pop("data_id", None)
    planner = SweepPlanner.from_budgets(
        budgets,
        num_model_sizes,
        model=spec,
        flops=flops,
        tokens_per_param=tokens_per_param,
        dataset_tokens=dataset_tokens,
        batch_size=train_config.batch_size,
        tokens_per_sample=tokens_per_sample,
        data_id=data_id,
        train_config={k: v for k, v in train_dict.items() if _jsonable(v)},
        seed=train_config.seed,
        **planner_kwargs,
    )
    plan = planner.plan()
    if item is not None and loss_fn is not None:
        smallest = min(plan.experiments, key=lambda e: e.num_params)
        _probe_loss(spec.build(smallest.size_value, "cpu"), item, batched, loss_fn)
    if mode == "local" and train:
        _check_epochs(plan, train_config.max_epochs)
    if item is not None and loss_fn is not None and plan.flops == "6nd":  # advice, after every check passed
        _check_six_nd(spec, min(plan.experiments, key=lambda e: e.num_params), item, batched, loss_fn)
    if data_id is None and dataset is not None:
        # Named only now, after every check passed: naming the data reads a few of its items.
        planner.data_id = _data_id(dataset, eval_dataset, loss_fn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the first plan() gave its warnings already
            plan = planner.plan()
    if not train:
        cost = dataclasses.replace(plan, model=None).estimate_cost()  # FLOPs only: nothing is trained here
        logger.info("%s; plan.estimate_cost(device) times a few real steps for the wall time", cost)
        return dataclasses.replace(plan, cost=cost)

    # ---- train ---------------------------------------------------------------------------------
    from flops_fit.report.result import Result
    from flops_fit.training.runner import TrainingRunner

    runner = TrainingRunner(
        mode=mode,
        plan=plan,
        output_dir=out,
        dataset=dataset,
        eval_dataset=eval_dataset,
        loss_fn=loss_fn,
        train_config=train_config,
        train_fn=train_fn,
        seed=seed,
        callbacks=callbacks,
        device=device,
        executor=executor,
        ray_address=ray_address,
        resources=resources,
        max_retries=max_retries,
        checkpoint_dir=checkpoint_dir,
    )
    runs = plan.select_runs(runner.run_sweep(), out / "results.jsonl")

    # ---- analyze and report ----------------------------------------------------------------------
    result = Result.from_runs(runs, approach=approaches, plan=plan, output_dir=out)
    result.save(out)
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


#: Items of a map-style dataset whose contents enter its default data id (first, evenly spaced, last).
_FINGERPRINT_ITEMS = 5


def _data_id(dataset: Any, eval_dataset: Any = None, loss_fn: Any = None) -> str | None:
    """What the runs train on, for experiment ids when the user names no ``data_id``: the dataset (and the
    held-out set) by its ``data_id`` attribute, else by type, size and a hash of a few of its items, and
    the loss function by import name; so other data of the same size, or another loss, are other runs."""
    if dataset is None:
        return None
    parts = [_dataset_id(dataset)]
    if eval_dataset is not None:
        parts.append(f"eval={_dataset_id(eval_dataset)}")
    if loss_fn is not None:
        parts.append(
            f"loss={getattr(loss_fn, '__module__', '?')}.{getattr(loss_fn, '__qualname__', type(loss_fn).__qualname__)}"
        )
    return "; ".join(parts)


def _dataset_id(dataset: Any) -> str:
    explicit = getattr(dataset, "data_id", None)
    if isinstance(explicit, str):
        return explicit
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return f"{name}[stream]"  # reading a stream to hash it could consume it: name data_id= instead
    n = len(dataset)
    picks = sorted(
        {round(k * (n - 1) / (_FINGERPRINT_ITEMS - 1)) for k in range(_FINGERPRINT_ITEMS)} if n else set()
    )
    reads = []
    for _ in range(2):  # twice: items drawn at random on each access (augmentation) cannot name the data
        digest = hashlib.sha256()
        for i in picks:
            _hash_item(digest, dataset[i])
        reads.append(digest.hexdigest()[:12])
    if reads[0] != reads[1]:
        logger.info("%s gives different items on each read; naming it by type and size (pass data_id=)", name)
        return f"{name}[{n}]"
    return f"{name}[{n}, {reads[0]}]"


def _hash_item(digest: Any, item: Any) -> None:
    """Feed a data item's contents (tensors, arrays, numbers, strings, nested sequences) to ``digest``."""
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif hasattr(item, "tobytes") and hasattr(item, "dtype"):  # NumPy arrays and scalars
        digest.update(f"{item.dtype}{getattr(item, 'shape', ())}".encode() + item.tobytes())
    elif isinstance(item, (bool, int, float, str, bytes)) or item is None:
        digest.update(repr(item).encode())
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            digest.update(repr(key).encode())
            _hash_item(digest, item[key])
    elif isinstance(item, (list, tuple)):
        digest.update(f"{type(item).__name__}{len(item)}".encode())
        for part in item:
            _hash_item(digest, part)
    else:  # an object whose repr may hold its address: its type only
        digest.update(type(item).__qualname__.encode())
