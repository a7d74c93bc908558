"""Plan an IsoFLOP sweep before any GPU-hour is spent: budgets, model sizes, tokens, cost.

Compute budgets are log-spaced from ``min_flops`` to ``max_flops``. At each budget C the expected
compute-optimal size N* comes from the tokens-per-parameter rule (D = r N, D = C / flops_per_token) or
from a previous fit (``prior``), and ``num_model_sizes`` sizes are log-spaced over ``[N*/s, N* s]``
(``size_span=s``, 8 by default) so the IsoFLOP minimum is bracketed on both sides. Each run gets
D = C / flops_per_token tokens, rounded to whole optimiser steps.

Without a model the planner works in parameter space (N is a number, C = 6 N D). With a
:class:`ModelSpec` it builds ``model_cls(**{size_param: v}, **model_kwargs)`` on the ``meta`` device
(no memory), counts parameters for candidate values ``v`` and picks the values whose N lands nearest
each target.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from flops_fit.core.io import atomic_write_json
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN, load_runs
from flops_fit.plan.flops import (
    PARAM_COUNTS,
    FlopsFn,
    TransformerShape,
    call_model,
    convention_name,
    count_params,
    default_loss,
    move_to,
    split_sample,
)
from flops_fit.plan.flops import flops_per_token as _flops_per_token

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
#: Most model sizes per budget a planner accepts (candidate search grows with it; 5-15 is usual).
MAX_MODEL_SIZES = 100
#: The plan's file name in a sweep's output folder (written by ff-plan / `flops-fit plan`, read by the later stages).
PLAN_FILE = "sweep.json"
#: Bump when the fields entering :func:`experiment_id` change meaning (it changes every id).
#: 2: numbers hashed by value (``0`` and ``0.0`` alike); only result-changing train_config fields.
ID_VERSION = 2
DEFAULT_SIZE_SPAN = 8.0
#: Runs with fewer optimiser steps than this get a warning: warmup and decay barely fit.
FEW_STEPS = 100
#: Samples in the batch used to measure FLOPs per token (FLOPs are linear in the batch size).
MEASURE_BATCH = 2
#: Largest number of ``size_multiple`` steps the candidate search walks through.
MAX_MULTIPLES = 2**40

SampleFn = Callable[[int], Any]
LossFn = Callable[[Any, Any], torch.Tensor]
ShapeFn = Callable[[nn.Module], "TransformerShape | Mapping[str, Any]"]


# --------------------------------------------------------------------------------------------------
# canonical JSON and stable ids
# --------------------------------------------------------------------------------------------------


def _result_config(train_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a recorded train_config that enter experiment ids: those changing a run's result."""
    if train_config is None:
        return None
    from flops_fit.core.train_config import RESULT_FIELDS  # here: flops_fit.training imports this module

    return {k: v for k, v in train_config.items() if k in RESULT_FIELDS}


def _plain(value: Any, name: str) -> Any:
    """Convert a config value to plain JSON types (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} holds a non-finite number {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, bytes)):
        return [_plain(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{name} must hold only JSON values (str, number, bool, None, list, dict), got "
        f"{type(value).__name__} {value!r}; pass it as a string or number so the plan can be saved and hashed"
    )


def _canonical(value: Any) -> Any:
    """Integers exactly; floats rounded to 12 significant digits (so last-bit differences never change an
    id), and an integral result below 2**53 as the int it equals, so ``0`` and ``0.0``, ``64`` and ``64.0``
    give one id."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        text = format(value, ".12g")
        rounded = float(text)
        return int(rounded) if rounded.is_integer() and abs(rounded) < 2.0**53 else text
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise TypeError(f"cannot hash a {type(value).__name__}")


def experiment_id(fields: Mapping[str, Any]) -> str:
    """A 12-hex-digit sha256 digest of the canonical JSON of the fields that define a run."""
    payload = json.dumps(
        {"id_version": ID_VERSION, **_canonical(dict(fields))}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def _round_sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


# --------------------------------------------------------------------------------------------------
# learning-rate rule
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawLR:
    """Learning rate by size: ``lr = base_lr * (N / base_params) ** -exponent`` (N in parameters)."""

    base_lr: float
    base_params: float = 1.0
    exponent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base_lr", "base_params"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"lr_rule {name} must be a positive number, got {v!r}")
        if (
            isinstance(self.exponent, bool)
            or not isinstance(self.exponent, (int, float))
            or not math.isfinite(self.exponent)
        ):
            raise ValueError(f"lr_rule exponent must be a finite number, got {self.exponent!r}")

    def __call__(self, num_params: float) -> float:
        return float(self.base_lr) * (float(num_params) / float(self.base_params)) ** (-float(self.exponent))

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _as_lr_rule(lr_rule: Any) -> tuple[Callable[[float], float] | None, Any]:
    """Return ``(rule, record)``: the callable and how the plan records it."""
    if lr_rule is None:
        return None, None
    if isinstance(lr_rule, PowerLawLR):
        return lr_rule, lr_rule.to_dict()
    if isinstance(lr_rule, bool):
        raise TypeError(
            "lr_rule must be a number, a PowerLawLR, a mapping or a callable(num_params), not a bool"
        )
    if isinstance(lr_rule, (int, float)):
        rule = PowerLawLR(base_lr=float(lr_rule))
        return rule, rule.base_lr
    if isinstance(lr_rule, Mapping):
        allowed = {f.name for f in fields(PowerLawLR)}
        unknown = sorted(set(lr_rule) - allowed)
        if unknown:
            raise ValueError(f"lr_rule has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        if "base_lr" not in lr_rule:
            raise ValueError("lr_rule mapping needs 'base_lr' (and optionally 'base_params', 'exponent')")
        rule = PowerLawLR(**dict(lr_rule))
        return rule, rule.to_dict()
    if callable(lr_rule):
        return lr_rule, convention_name(lr_rule)
    raise TypeError(
        f"lr_rule must be None, a number, a PowerLawLR, a mapping or a callable(num_params), got {type(lr_rule).__name__}"
    )


# --------------------------------------------------------------------------------------------------
# model description
# --------------------------------------------------------------------------------------------------


def _import_path(cls: Any) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_import_path(path: str) -> Any:
    """Import ``"package.module:QualName"`` and return the object."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"model class path must look like 'package.module:ClassName', got {path!r}")
    if "<locals>" in qualname:
        raise ImportError(
            f"{path} is defined inside a function and cannot be imported; define it at module level"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for model class {path}: {exc}") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(
                f"module {module_name!r} has no attribute {qualname!r} (model class {path})"
            ) from None
    return obj


@dataclass(frozen=True)
class ModelSpec:
    """How to build the user's model at a given size.

    ``model_cls`` is a class or factory function (or its import path ``"package.module:QualName"``),
    called as
    ``model_cls(**{size_param: value}, **model_kwargs)``. Candidate size values are ``size_values`` when
    given, else the positive multiples of ``size_multiple`` (default 1). ``param_count`` says which
    parameters N counts (``"non_embedding"`` or ``"total"``, see :func:`flops_fit.plan.flops.count_params`).

    The callables are optional and never saved with a plan: ``sample_fn(batch_size) -> (inputs, targets)``
    gives a sample batch (for ``flops="measured"`` and wall-time calibration), ``loss_fn(output, targets)``
    the training loss (default: cross-entropy over the last dimension), ``shape_fn(model)`` the
    :class:`~flops_fit.plan.flops.TransformerShape` (or a mapping) for ``flops="chinchilla"``.
    """

    model_cls: type | Callable[..., nn.Module] | str
    size_param: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    size_values: Sequence[int | float] | None = None
    size_multiple: int | None = None
    param_count: str = "non_embedding"
    sample_fn: SampleFn | None = field(default=None, compare=False, repr=False)
    loss_fn: LossFn | None = field(default=None, compare=False, repr=False)
    shape_fn: ShapeFn | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model_cls, str):
            if ":" not in self.model_cls:
                raise ValueError(
                    f"model_cls path must look like 'package.module:ClassName', got {self.model_cls!r}"
                )
        elif not callable(self.model_cls) or isinstance(self.model_cls, nn.Module):
            raise TypeError(
                f"model_cls must be a class or factory function (or 'package.module:ClassName'), got "
                f"{type(self.model_cls).__name__}; pass the class itself, not an instance"
            )
        if not isinstance(self.size_param, str) or not self.size_param.isidentifier():
            raise ValueError(
                f"size_param must be the name of a constructor argument, got {self.size_param!r}"
            )
        if not isinstance(self.model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a mapping, got {type(self.model_kwargs).__name__}")
        kwargs = _plain(self.model_kwargs, "model_kwargs")
        if self.size_param in kwargs:
            raise ValueError(
                f"model_kwargs sets {self.size_param!r}, which is the size parameter the planner varies; remove it"
            )
        object.__setattr__(self, "model_kwargs", kwargs)
        if self.param_count not in PARAM_COUNTS:
            raise ValueError(f"param_count must be one of {list(PARAM_COUNTS)}, got {self.param_count!r}")
        if self.size_multiple is not None:
            m = self.size_multiple
            if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
                raise ValueError(f"size_multiple must be a positive integer, got {m!r}")
            object.__setattr__(self, "size_multiple", int(m))
        if self.size_values is not None:
            if isinstance(self.size_values, (str, bytes)) or not isinstance(self.size_values, Sequence):
                raise TypeError("size_values must be a sequence of numbers, e.g. [128, 256, 384]")
            values = []
            for v in self.size_values:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise TypeError(f"size_values must hold numbers, got {v!r}")
                if not math.isfinite(float(v)) or v <= 0:
                    raise ValueError(f"size_values must be positive and finite, got {v!r}")
                values.append(int(v) if isinstance(v, (int, np.integer)) else float(v))
            if len(values) < 3:
                raise ValueError(
                    f"size_values needs at least 3 values (a parabola needs 3 sizes), got {values}"
                )
            if self.size_multiple is not None:
                off = [v for v in values if float(v) % self.size_multiple]
                if off:
                    raise ValueError(
                        f"size_values {off} are not multiples of size_multiple={self.size_multiple}"
                    )
            object.__setattr__(self, "size_values", tuple(sorted(set(values))))
        for name in ("sample_fn", "loss_fn", "shape_fn"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")

    @property
    def model_path(self) -> str:
        """The class as an import path, ``"package.module:QualName"``."""
        return self.model_cls if isinstance(self.model_cls, str) else _import_path(self.model_cls)

    def resolve(self) -> Callable[..., nn.Module]:
        """The model class or factory (imported from :attr:`model_path` when loaded from a file)."""
        if not isinstance(self.model_cls, str):
            return self.model_cls
        obj = resolve_import_path(self.model_cls)
        if not callable(obj):
            raise TypeError(f"{self.model_cls} is a {type(obj).__name__}, not a class or function")
        return obj

    def check_signature(self) -> None:
        """Raise TypeError if the class does not accept ``size_param`` / ``model_kwargs`` or lacks arguments."""
        cls = self.resolve()
        try:
            sig = inspect.signature(cls)
        except (TypeError, ValueError):
            return  # no introspectable signature (e.g. some C extensions): the first build will tell
        params = sig.parameters
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = {
            n
            for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        given = [self.size_param, *self.model_kwargs]
        for name in given:
            if name not in named and not var_kw:
                what = "size_param" if name == self.size_param else "model_kwargs key"
                raise TypeError(
                    f"{self.model_path} does not accept the {what} {name!r}; its signature is "
                    f"{getattr(cls, '__name__', self.model_path)}{sig}"
                )
        missing = [
            n
            for n, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and n not in given
        ]
        if missing:
            raise TypeError(
                f"{self.model_path} needs argument(s) {missing} that neither size_param nor model_kwargs give; "
                f"its signature is {getattr(cls, '__name__', self.model_path)}{sig}"
            )

    def build(self, size_value: int | float, device: torch.device | str | None = None) -> nn.Module:
        """``model_cls(**{size_param: size_value}, **model_kwargs)``, created on ``device``."""
        cls = self.resolve()
        ctx = torch.device(device) if device is not None else contextlib.nullcontext()
        with ctx:
            model = cls(**{self.size_param: size_value}, **self.model_kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.model_path}(...) returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the class as an import path; the callables are not saved)."""
        return {
            "model_cls": self.model_path,
            "size_param": self.size_param,
            "model_kwargs": dict(self.model_kwargs),
            "size_values": None if self.size_values is None else list(self.size_values),
            "size_multiple": self.size_multiple,
            "param_count": self.param_count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **callables: Any) -> ModelSpec:
        """Rebuild from :meth:`to_dict`; the class stays an import path until :meth:`resolve`.

        ``callables`` may add ``sample_fn``, ``loss_fn`` and ``shape_fn``.
        """
        allowed = {"model_cls", "size_param", "model_kwargs", "size_values", "size_multiple", "param_count"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"model spec has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = [k for k in ("model_cls", "size_param") if k not in d]
        if missing:
            raise ValueError(f"model spec is missing key(s) {missing}; it needs model_cls and size_param")
        bad = sorted(set(callables) - {"sample_fn", "loss_fn", "shape_fn"})
        if bad:
            raise TypeError(f"unexpected keyword(s) {bad}; only sample_fn, loss_fn and shape_fn may be added")
        return cls(**dict(d), **callables)


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


#: Experiment ids name files (checkpoints): no path separators, no leading dot, at most 128 characters.
SAFE_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: (field, accepted JSON kinds, minimum) of every Experiment field except the id, checked when read from a file.
_EXPERIMENT_FIELD_TYPES: tuple[tuple[str, tuple[str, ...], float | None], ...] = (
    ("compute_budget", ("int", "float"), 0),
    ("size_value", ("int", "float", "none"), 0),
    ("num_params", ("int",), 1),
    ("num_tokens", ("int",), 1),
    ("flops_per_token", ("int", "float"), 0),
    ("epochs", ("int", "float", "none"), 0),
    ("learning_rate", ("int", "float", "none"), 0),
    ("batch_size", ("int",), 1),
    ("tokens_per_sample", ("int",), 1),
    ("num_steps", ("int",), 1),
    ("flops", ("str",), None),
    ("seed", ("int",), 0),
)


def _describe_kinds(kinds: tuple[str, ...], minimum: float | None) -> str:
    words = {"int": "an integer", "float": "a finite number", "str": "a string", "none": "null"}
    text = " or ".join(words[k] for k in kinds if not (k == "int" and "float" in kinds))
    return text if minimum is None else f"{text} >= {minimum:g}"


@dataclass(frozen=True)
class Experiment:
    """One training run of the sweep.

    ``compute_budget`` is the nominal budget C (FLOPs) of its IsoFLOP group. The run trains a model of
    ``num_params`` parameters (counted per the plan's ``param_count``; ``size_value`` is the value of the
    model's size argument, None in parameter space) for ``num_tokens`` tokens = ``num_steps`` optimiser
    steps of ``batch_size`` samples x ``tokens_per_sample`` tokens, at ``learning_rate`` (None: the
    runner's default). ``epochs`` is num_tokens / dataset tokens (None when the dataset size is unknown).
    """

    experiment_id: str
    compute_budget: float
    size_value: int | float | None
    num_params: int
    num_tokens: int
    flops_per_token: float
    epochs: float | None
    learning_rate: float | None
    batch_size: int
    tokens_per_sample: int
    num_steps: int
    flops: str
    seed: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.tokens_per_sample

    @property
    def planned_flops(self) -> float:
        """FLOPs the run will actually spend: flops_per_token x num_tokens (C up to step rounding)."""
        return self.flops_per_token * self.num_tokens

    @property
    def tokens_per_param(self) -> float:
        return self.num_tokens / self.num_params

    @property
    def repeats_data(self) -> bool:
        """True when the run needs more than one pass over the dataset."""
        return self.epochs is not None and self.epochs > 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Experiment:
        """Rebuild from :meth:`to_dict` (e.g. a plan file), checking every field's type and the id."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an experiment record must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"experiment record is missing field(s) {missing}")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"experiment record has unknown field(s) {unknown}")
        eid = d["experiment_id"]
        if not isinstance(eid, str) or not SAFE_EXPERIMENT_ID.fullmatch(eid):
            raise ValueError(
                f"experiment_id {eid!r} is not a safe file name (letters, digits, '.', '_', '-', at most 128, "
                "not starting with '.'); ids name checkpoint files, so a plan file must not carry path parts"
            )
        for name, kinds, minimum in _EXPERIMENT_FIELD_TYPES:
            value = d[name]
            if value is None and "none" in kinds:
                continue
            ok = not isinstance(value, bool) and (
                ("int" in kinds and isinstance(value, int))
                or ("float" in kinds and isinstance(value, float) and math.isfinite(value))
                or ("str" in kinds and isinstance(value, str))
            )
            if ok and minimum is not None and value < minimum:
                ok = False
            if not ok:
                raise ValueError(
                    f"experiment {eid}: field {name!r} must be {_describe_kinds(kinds, minimum)}, got {value!r}"
                )
        return cls(**{n: d[n] for n in names})


@dataclass(frozen=True)
class CalibrationPoint:
    """Measured training speed of one model: seconds per optimiser step and the FLOP/s it implies."""

    size_value: int | float | None
    num_params: int
    seconds_per_step: float
    flops_per_second: float
    steps: int


def _format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


@dataclass(frozen=True, eq=False)
class CostEstimate:
    """What a sweep costs: total FLOPs and, when known, wall time.

    ``method`` is ``"calibrated"`` (measured steps on ``device``), ``"throughput"`` (a FLOP/s you gave) or
    ``"uncalibrated"`` (FLOPs only). ``per_experiment`` has one row per run with its planned FLOPs and
    (when known) seconds. Times cover training steps only (no data loading, evaluation or checkpoints).
    """

    total_flops: float
    per_experiment: pd.DataFrame
    method: str
    total_seconds: float | None = None
    device: str | None = None
    calibration: tuple[CalibrationPoint, ...] = ()

    @property
    def total_hours(self) -> float | None:
        return None if self.total_seconds is None else self.total_seconds / 3600.0

    def __str__(self) -> str:
        head = f"{len(self.per_experiment)} experiments, {self.total_flops:.3g} FLOPs"
        if self.total_seconds is None:
            return f"{head}; wall time not calibrated (pass sample_fn= to calibrate, or flops_per_second=)"
        if self.method == "throughput":
            fps = self.per_experiment["flops"].sum() / self.total_seconds
            where = f" on {self.device}" if self.device else ""
            return f"{head}, ~{_format_seconds(self.total_seconds)}{where} at an assumed {fps:.3g} FLOP/s"
        where = f"~{_format_seconds(self.total_seconds)} on {self.device}"
        pts = ", ".join(
            f"N={p.num_params:.3g}: {p.seconds_per_step:.3g} s/step = {p.flops_per_second:.3g} FLOP/s"
            for p in self.calibration
        )
        steps = self.calibration[0].steps if self.calibration else 0
        return f"{head}, {where} (calibrated over {steps} steps each; {pts})"


@dataclass(frozen=True)
class SweepPlan:
    """The planned IsoFLOP sweep: experiments, the FLOP convention and the planner settings that made it.

    ``config`` holds the planner's inputs (accepted by :meth:`SweepPlanner.from_config`);
    ``expected_optimum`` the ``(compute_budget, N*)`` pairs the sizes were centred on.
    """

    experiments: tuple[Experiment, ...]
    flops: str
    param_count: str
    model: ModelSpec | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    expected_optimum: tuple[tuple[float, float], ...] = ()
    version: int = PLAN_VERSION
    #: The cost :func:`flops_fit.find_optimal` estimated for ``train=False`` (not saved with the plan).
    cost: CostEstimate | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)

    @property
    def compute_budgets(self) -> tuple[float, ...]:
        return tuple(sorted({e.compute_budget for e in self.experiments}))

    @property
    def total_flops(self) -> float:
        return math.fsum(e.planned_flops for e in self.experiments)

    def get(self, experiment_id: str) -> Experiment:
        for e in self.experiments:
            if e.experiment_id == experiment_id:
                return e
        raise KeyError(f"no experiment {experiment_id!r} in this plan")

    def select_runs(self, runs: pd.DataFrame, source: object = "the results") -> pd.DataFrame:
        """The rows of ``runs`` (a runs table) that belong to this plan, matched by experiment id.

        A ledger can also hold runs of an earlier plan in the same folder (other budgets, sizes, model, data
        or settings); those are left out with a warning naming ``source``, and stay in the file.
        """
        outside = ~runs["experiment_id"].isin({e.experiment_id for e in self.experiments})
        if len(runs) and outside.all():
            raise ValueError(
                f"none of the {len(runs)} run(s) in {source} belong to the given plan (no experiment_id matches); "
                "pass the plan these runs were trained from, or no plan (ff-analyze plan=null) to use every run"
            )
        if outside.any():
            logger.warning(
                "%d of %d run(s) in %s belong to an earlier plan (other budgets, sizes, model, data or "
                "settings) and are left out; they stay in the file (`flops-fit fit FILE` fits every run in it)",
                int(outside.sum()),
                len(runs),
                source,
            )
        return runs.loc[~outside].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "flops": self.flops,
            "param_count": self.param_count,
            "model": None if self.model is None else self.model.to_dict(),
            "config": dict(self.config),
            "expected_optimum": [list(p) for p in self.expected_optimum],
            "experiments": [e.to_dict() for e in self.experiments],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as versioned JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        if self.model is not None and (
            "<locals>" in self.model.model_path or self.model.model_path.startswith("__main__:")
        ):
            logger.warning(
                "model class %s cannot be imported from another process; define it in an importable module "
                "so a runner can rebuild the models from this plan",
                self.model.model_path,
            )
        return atomic_write_json(path, self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepPlan:
        """Rebuild from :meth:`to_dict`; a malformed plan is a ValueError saying what is wrong.

        The model class stays an import path: nothing is imported until :meth:`ModelSpec.resolve`.
        """
        if not isinstance(d, Mapping) or "experiments" not in d:
            raise ValueError("a plan must be a JSON object with 'version' and 'experiments'")
        version = d.get("version")
        if isinstance(version, bool) or version != PLAN_VERSION:
            raise ValueError(
                f"plan file version {version!r} is not supported (this flops-fit reads version {PLAN_VERSION})"
            )
        missing = [k for k in ("flops", "param_count") if not isinstance(d.get(k), str)]
        if missing:
            raise ValueError(f"a plan needs string field(s) {missing}")
        experiments, model, config = d["experiments"], d.get("model"), d.get("config")
        if not isinstance(experiments, list):
            raise ValueError(f"plan 'experiments' must be a list, got {type(experiments).__name__}")
        if model is not None and not isinstance(model, Mapping):
            raise ValueError(f"plan 'model' must be null or an object, got {type(model).__name__}")
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"plan 'config' must be null or an object, got {type(config).__name__}")
        optimum = d.get("expected_optimum") or []
        if not isinstance(optimum, list) or not all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in optimum
        ):
            raise ValueError("plan 'expected_optimum' must be a list of [compute_budget, N] number pairs")
        return cls(
            experiments=tuple(Experiment.from_dict(e) for e in experiments),
            flops=d["flops"],
            param_count=d["param_count"],
            model=None if model is None else ModelSpec.from_dict(model),
            config=dict(config or {}),
            expected_optimum=tuple((float(c), float(n)) for c, n in optimum),
            version=int(version),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepPlan:
        """Read a plan written by :meth:`save`. The model class is not imported (see ModelSpec.resolve)."""
        with open(path, encoding="utf-8") as fh:
            try:
                data = json.load(fh)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path} is not a valid plan file: {exc}") from exc
        return cls.from_dict(data)

    def to_frame(self) -> pd.DataFrame:
        """One row per experiment, with ``planned_flops`` and ``tokens_per_param`` added."""
        rows = [
            {**e.to_dict(), "planned_flops": e.planned_flops, "tokens_per_param": e.tokens_per_param}
            for e in self
        ]
        cols = [f.name for f in fields(Experiment)] + ["planned_flops", "tokens_per_param"]
        return pd.DataFrame(rows, columns=cols)

    def summary(self) -> str:
        """A readable table of the sweep, grouped by budget."""
        n_b = len(self.compute_budgets)
        lines = [
            f"IsoFLOP sweep: {len(self)} experiments over {n_b} compute budget(s); FLOP convention {self.flops!r}, "
            f"N = {self.param_count.replace('_', '-')} parameters",
        ]
        if self.model is not None:
            lines.append(f"model: {self.model.model_path} varied by {self.model.size_param!r}")
        if self.experiments:
            e0 = self.experiments[0]
            lines.append(
                f"batch: {e0.batch_size} x {e0.tokens_per_sample} tokens per step; seed {e0.seed}; "
                f"total {self.total_flops:.3g} FLOPs"
            )
        centres = dict(self.expected_optimum)
        table = []
        for e in self:
            table.append(
                {
                    "budget": f"{e.compute_budget:.3g}",
                    "N*": f"{centres[e.compute_budget]:.3g}" if e.compute_budget in centres else "",
                    "size": "" if e.size_value is None else f"{e.size_value:g}",
                    "params": f"{e.num_params:.3g}",
                    "tokens": f"{e.num_tokens:.3g}",
                    "D/N": f"{e.tokens_per_param:.3g}",
                    "steps": f"{e.num_steps:d}",
                    "epochs": ""
                    if e.epochs is None
                    else f"{e.epochs:.2f}" + (" !" if e.repeats_data else ""),
                    "lr": "" if e.learning_rate is None else f"{e.learning_rate:.3g}",
                    "id": e.experiment_id,
                }
            )
        if table:
            frame = pd.DataFrame(table)
            frame = frame.loc[:, [c for c in frame.columns if (frame[c] != "").any()]]
            lines.append(frame.to_string(index=False))
        repeated = sum(e.repeats_data for e in self)
        if repeated:
            lines.append(f"! {repeated} experiment(s) repeat data (more than one epoch)")
        return "\n".join(lines)

    def estimate_cost(
        self,
        device: torch.device | str | None = None,
        *,
        sample_fn: SampleFn | None = None,
        loss_fn: LossFn | None = None,
        flops_per_second: float | None = None,
        steps: int = 3,
        warmup: int = 1,
    ) -> CostEstimate:
        """Total and per-experiment FLOPs, and wall time when it can be known.

        With ``flops_per_second`` the time is FLOPs / that throughput. Otherwise, when the plan has a
        model and a sample batch (``sample_fn`` here or on the ModelSpec), the smallest and largest
        models each train ``warmup + steps`` real optimiser steps (AdamW) at the plan's batch size on
        ``device`` (default: CUDA if available, else CPU); the achieved FLOP/s is interpolated in log N
        between them. Without either, only FLOPs are reported.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
        if flops_per_second is not None and (
            isinstance(flops_per_second, bool)
            or not isinstance(flops_per_second, (int, float))
            or not math.isfinite(flops_per_second)
            or flops_per_second <= 0
        ):
            raise ValueError(f"flops_per_second must be a positive number, got {flops_per_second!r}")
        frame = pd.DataFrame(
            {
                "experiment_id": [e.experiment_id for e in self],
                "compute_budget": [e.compute_budget for e in self],
                "size_value": [e.size_value for e in self],
                "num_params": [e.num_params for e in self],
                "num_tokens": [e.num_tokens for e in self],
                "num_steps": [e.num_steps for e in self],
                "flops": [e.planned_flops for e in self],
            }
        )
        total = float(math.fsum(frame["flops"]))
        if flops_per_second is not None:
            frame["seconds"] = frame["flops"] / float(flops_per_second)
            seconds = float(frame["seconds"].sum())
            return CostEstimate(total, frame, "throughput", seconds, None if device is None else str(device))
        sample_fn = sample_fn if sample_fn is not None else (self.model.sample_fn if self.model else None)
        if self.model is None or sample_fn is None or not self.experiments:
            if self.experiments:
                logger.info("wall time not calibrated: no model or no sample_fn; reporting FLOPs only")
            return CostEstimate(total, frame, "uncalibrated")
        if not callable(sample_fn):
            raise TypeError(f"sample_fn must be callable, got {type(sample_fn).__name__}")
        loss_fn = loss_fn if loss_fn is not None else (self.model.loss_fn or default_loss)
        dev = torch.device(device) if device is not None else _default_device()
        by_size = sorted(self.experiments, key=lambda e: e.num_params)
        chosen = (
            [by_size[0]] if by_size[0].num_params == by_size[-1].num_params else [by_size[0], by_size[-1]]
        )
        seed = self.experiments[0].seed
        points = tuple(
            _calibrate(self.model, e, dev, sample_fn, loss_fn, steps, warmup, seed) for e in chosen
        )
        log_n = np.log([p.num_params for p in points])
        log_fps = np.log([p.flops_per_second for p in points])
        fps = np.exp(np.interp(np.log(frame["num_params"].to_numpy(float)), log_n, log_fps))
        frame["seconds"] = frame["flops"] / fps
        return CostEstimate(total, frame, "calibrated", float(frame["seconds"].sum()), str(dev), points)


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's RNG state."""
    devices: list[int] = []
    device_type = "cuda"
    if device is not None and device.type not in ("cpu", "meta"):
        device_type = device.type
        devices = [device.index if device.index is not None else 0]
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type not in ("cpu", "meta") and torch.accelerator.is_available():
        torch.accelerator.synchronize()


def _calibrate(
    spec: ModelSpec,
    e: Experiment,
    device: torch.device,
    sample_fn: SampleFn,
    loss_fn: LossFn,
    steps: int,
    warmup: int,
    seed: int,
) -> CalibrationPoint:
    """Time ``warmup + steps`` real training steps of experiment ``e``'s model on ``device``."""
    with _seeded(seed, device):
        model = spec.build(e.size_value, device=device)
        inputs, targets = split_sample(sample_fn(e.batch_size))
        inputs, targets = move_to(inputs, device), move_to(targets, device)
        opt = torch.optim.AdamW(model.parameters(), lr=e.learning_rate or 1e-3)
        model.train()
        times = []
        for i in range(warmup + steps):
            _synchronize(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(call_model(model, inputs), targets)
            loss.backward()
            opt.step()
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    point = CalibrationPoint(
        e.size_value, e.num_params, sec, e.flops_per_token * e.tokens_per_step / sec, steps
    )
    logger.info(
        "calibrated %s=%s (N=%.3g) on %s: %.3g s/step, %.3g FLOP/s",
        spec.size_param,
        e.size_value,
        e.num_params,
        device,
        sec,
        point.flops_per_second,
    )
    del model, opt
    return point


# --------------------------------------------------------------------------------------------------
# candidate sizes
# --------------------------------------------------------------------------------------------------


class _Prober:
    """Memoised N(v) and flops_per_token(v) of the model at size value v, built on the meta device."""

    def __init__(
        self,
        spec: ModelSpec,
        flops: str | FlopsFn,
        sample: Any,
        tokens_in_sample: int | None,
    ) -> None:
        self.spec = spec
        self.flops = flops
        self.name = convention_name(flops)
        self.sample = sample
        self.tokens_in_sample = tokens_in_sample
        self._n: dict[Any, int] = {}
        self._fpt: dict[Any, float] = {}

    def _build(self, v: int | float) -> nn.Module:
        try:
            return self.spec.build(v, device="meta")
        except TypeError as exc:
            raise TypeError(
                f"{self.spec.model_path}({self.spec.size_param}={v!r}, **model_kwargs) failed: {exc}"
            ) from exc
        except (ValueError, AssertionError) as exc:
            raise ValueError(
                f"{self.spec.model_path} rejects {self.spec.size_param}={v!r} ({exc}); restrict the candidates "
                "with size_multiple or size_values"
            ) from exc
        except Exception as exc:
            raise RuntimeError(
                f"building {self.spec.model_path}({self.spec.size_param}={v!r}, **model_kwargs) on the meta device "
                f"failed ({type(exc).__name__}: {exc}); the planner counts parameters without allocating memory, "
                "so the constructor must not read tensor values"
            ) from exc

    def num_params(self, v: int | float) -> int:
        if v not in self._n:
            model = self._build(v)
            self._n[v] = count_params(model, self.spec.param_count)
            if self.name == "6nd":
                self._fpt[v] = FLOPS_PER_PARAM_TOKEN * count_params(model, "non_embedding")
        return self._n[v]

    def flops_per_token(self, v: int | float) -> float:
        if v not in self._fpt:
            model = self._build(v)
            shape = None
            if self.name == "chinchilla":
                assert self.spec.shape_fn is not None
                shape = self.spec.shape_fn(model)
            self._fpt[v] = _flops_per_token(
                model,
                self.flops,
                sample=self.sample,
                loss_fn=self.spec.loss_fn,
                tokens=self.tokens_in_sample,
                shape=shape,
            )
        return self._fpt[v]


class _Grid:
    """Candidate size values, indexed 0, 1, 2, ... in increasing order (N must grow along it)."""

    def __init__(self, spec: ModelSpec, prober: _Prober) -> None:
        self.prober = prober
        self.values = spec.size_values
        self.multiple = spec.size_multiple or 1
        self.size_param = spec.size_param

    def value(self, i: int) -> int | float:
        return self.values[i] if self.values is not None else (i + 1) * self.multiple

    @property
    def last(self) -> int | None:
        return None if self.values is None else len(self.values) - 1

    def n(self, i: int) -> int:
        return self.prober.num_params(self.value(i))

    def check_growth(self) -> None:
        """N must strictly increase with the size value (all listed values, or the first few multiples)."""
        idx = list(range(len(self.values))) if self.values is not None else [0, 1, 3, 7]
        for a, b in itertools.pairwise(idx):
            na, nb = self.n(a), self.n(b)
            if nb <= na:
                raise ValueError(
                    f"the parameter count does not grow with {self.size_param!r}: {self.size_param}={self.value(a)!r} "
                    f"gives N={na} and {self.size_param}={self.value(b)!r} gives N={nb}; choose a size parameter "
                    "that scales the model (e.g. width or depth)"
                )

    def first_index(self, pred: Callable[[int], bool]) -> int | None:
        """Smallest index i with pred(i) true, for pred false-then-true along the grid (None if never)."""
        if pred(0):
            return 0
        if self.values is not None:
            lo, hi = 0, len(self.values) - 1
            if not pred(hi):
                return None
        else:
            lo, hi = 0, 1
            while not pred(hi):
                if self.n(hi) <= self.n(lo):
                    raise ValueError(
                        f"the parameter count stops growing with {self.size_param!r} at "
                        f"{self.size_param}={self.value(hi)!r}"
                    )
                lo, hi = hi, 2 * hi + 1
                if hi > MAX_MULTIPLES:
                    raise ValueError(
                        f"no {self.size_param} up to {self.value(lo)!r} reaches the requested size; "
                        "the parameter count grows too slowly with it"
                    )
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def nearest(self, target: float) -> int:
        """Index whose N is nearest ``target`` in log space."""
        i = self.first_index(lambda j: self.n(j) >= target)
        if i is None:
            assert self.last is not None
            return self.last
        if i == 0:
            return 0
        below, above = self.n(i - 1), self.n(i)
        return i - 1 if math.log(target / below) <= math.log(above / target) else i


def _log_tokens_per_param_gap(grid: _Grid, i: int, budget: float, ratio: float) -> float:
    """log(D/N) - log(r) at grid index i: positive while the model is smaller than the rule's optimum."""
    v = grid.value(i)
    n = grid.prober.num_params(v)
    d = budget / grid.prober.flops_per_token(v)
    return math.log(d / n) - math.log(ratio)


def _rule_optimum(grid: _Grid, budget: float, ratio: float) -> float:
    """N* where D/N = ratio at this budget, interpolated in log N between grid points.

    Outside the grid it extrapolates with slope -2 (log(D/N) = log(C/(k N^2)) when FLOPs/token ~ k N).
    """
    i = grid.first_index(lambda j: _log_tokens_per_param_gap(grid, j, budget, ratio) < 0)
    if i is None:  # only for an explicit list of size values: the optimum lies beyond the largest
        j = grid.last
        assert j is not None
        return math.exp(math.log(grid.n(j)) + _log_tokens_per_param_gap(grid, j, budget, ratio) / 2)
    h_hi = _log_tokens_per_param_gap(grid, i, budget, ratio)
    if i == 0:
        return math.exp(math.log(grid.n(0)) + h_hi / 2)
    h_lo = _log_tokens_per_param_gap(grid, i - 1, budget, ratio)
    ln_lo, ln_hi = math.log(grid.n(i - 1)), math.log(grid.n(i))
    return math.exp(ln_lo + h_lo * (ln_hi - ln_lo) / (h_lo - h_hi))


# --------------------------------------------------------------------------------------------------
# the planner
# --------------------------------------------------------------------------------------------------


def _prior_optimum(prior: Any, budget: float) -> float:
    if hasattr(prior, "optimal") and callable(prior.optimal):
        res = prior.optimal(budget)
        value = (
            res.get("optimal_params") if isinstance(res, Mapping) else getattr(res, "optimal_params", None)
        )
        if value is None:
            raise ValueError("prior.optimal(C) must return a mapping with 'optimal_params'")
    elif callable(getattr(prior, "predict", None)):  # a PowerLawFit of N_opt against C
        value = prior.predict(budget)
    elif callable(prior):
        value = prior(budget)
    else:
        raise TypeError(
            "prior must have .optimal(C) -> {'optimal_params': N}, be a PowerLawFit of N_opt against C, "
            f"or be a callable C -> N_opt; got {type(prior).__name__}"
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"prior gives N_opt = {value} at C = {budget:.3g}; it must be positive and finite")
    return value


def _describe(obj: Any) -> str:
    text = str(obj)
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__}: {text}"


def _positive_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def explicit_budgets(budgets: Any, name: str = "budgets") -> list[float]:
    """Sorted, distinct, positive finite budgets (FLOPs), or an error naming ``name`` and the bad value."""
    if isinstance(budgets, (int, float)) and not isinstance(budgets, bool):
        budgets = [budgets]
    if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__"):
        raise TypeError(f"{name} must be a list of FLOP values such as [1e15, 3e15, 1e16], got {budgets!r}")
    values = []
    for b in budgets:
        try:
            v = float(b)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold numbers of FLOPs; {b!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be positive finite FLOP values, got {b!r}")
        values.append(v)
    if not values:
        raise ValueError(f"{name} is empty; give at least one compute budget in FLOPs, e.g. [1e15, 1e16]")
    return sorted(set(values))


def _positive_int(name: str, value: Any, minimum: int = 1, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{why}, got {value}")
    return int(value)


def as_plan(plan: SweepPlan | str | os.PathLike[str] | None) -> SweepPlan | None:
    """None, a :class:`SweepPlan`, or the plan read from a ``sweep.json`` path (which must exist)."""
    if plan is None or isinstance(plan, SweepPlan):
        return plan
    if not isinstance(plan, (str, os.PathLike)):
        raise TypeError(f"plan must be a sweep.json path or a SweepPlan, got {plan!r}")
    if not Path(plan).is_file():
        raise FileNotFoundError(
            f"plan file {str(plan)!r} does not exist; pass the sweep's sweep.json, or plan=None for every run"
        )
    return SweepPlan.load(plan)


def load_plan_runs(
    results: str | os.PathLike[str],
    plan: SweepPlan | str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The runs table of the file ``results`` (:func:`flops_fit.core.runs.load_runs`); with a ``plan`` (see
    :func:`as_plan`), only that plan's runs (:meth:`SweepPlan.select_runs`)."""
    runs = load_runs(results, columns=columns)
    sweep = as_plan(plan)
    return runs if sweep is None else sweep.select_runs(runs, results)


class SweepPlanner:
    """Plan an IsoFLOP sweep (see the module docstring).

    Parameters
    ----------
    min_flops, max_flops : compute budgets (FLOPs) of the smallest and largest IsoFLOP group.
    num_compute_budgets : number of budgets, log-spaced from ``min_flops`` to ``max_flops``.
    num_model_sizes : sizes per budget (at least 3: each IsoFLOP parabola needs 3 points).
    model : a :class:`ModelSpec`, or None to plan in parameter space.
    flops : FLOP convention, ``"6nd"``, ``"chinchilla"``, ``"measured"`` or ``callable(model, sample)``.
    tokens_per_param : the rule D* = r N* that centres the sizes (20, Hoffmann et al.), unless ``prior``.
    size_span : sizes cover ``[N*/s, N* s]`` for a number s > 1, or ``[N* lo, N* hi]`` for a pair.
    dataset_tokens : tokens in the training set; runs needing more than one epoch are flagged.
    lr_rule : learning rate per size, a number, :class:`PowerLawLR`, mapping of its fields, or
        ``callable(num_params) -> lr``; None leaves the learning rate to the runner.
    batch_size, tokens_per_sample : one optimiser step sees ``batch_size * tokens_per_sample`` tokens.
        ``tokens_per_sample`` defaults to the targets per sample of ``model.sample_fn``, else 1.
    data_id : identity of the data; recorded in the plan and part of every experiment id.
    train_config : the runner's training settings, a mapping of :class:`~flops_fit.training.TrainConfig`
        fields (unknown fields and bad values are errors); recorded in the plan, and its fields that change
        a run's result (``flops_fit.core.train_config.RESULT_FIELDS``) are part of every experiment id.
    prior : a previous fit to centre on: ``.optimal(C) -> {"optimal_params": N}``, a
        :class:`~flops_fit.analysis.power_law.PowerLawFit` of N_opt against C, or ``callable(C) -> N``.
    seed : training seed recorded per experiment; also seeds sample batches and calibration.
    """

    def __init__(
        self,
        min_flops: float,
        max_flops: float,
        num_compute_budgets: int,
        num_model_sizes: int,
        *,
        model: ModelSpec | None = None,
        flops: str | FlopsFn = "6nd",
        tokens_per_param: float = 20.0,
        size_span: float | tuple[float, float] = DEFAULT_SIZE_SPAN,
        dataset_tokens: float | None = None,
        lr_rule: Any = None,
        batch_size: int = 32,
        tokens_per_sample: int | None = None,
        data_id: str | None = None,
        train_config: Mapping[str, Any] | None = None,
        prior: Any = None,
        seed: int = 0,
        budgets: Sequence[float] | None = None,
    ) -> None:
        self.min_flops = _positive_number("min_flops", min_flops)
        self.max_flops = _positive_number("max_flops", max_flops)
        self.budgets = None if budgets is None else explicit_budgets(budgets)
        if self.budgets is not None and (
            not math.isclose(self.budgets[0], self.min_flops, rel_tol=1e-12)
            or not math.isclose(self.budgets[-1], self.max_flops, rel_tol=1e-12)
            or len(self.budgets) != num_compute_budgets
        ):
            raise ValueError(
                "budgets must agree with min_flops, max_flops and num_compute_budgets; "
                "use SweepPlanner.from_budgets(budgets, num_model_sizes, ...) to plan exact budgets"
            )
        if self.max_flops < self.min_flops:
            raise ValueError(f"max_flops ({max_flops:.3g}) must be >= min_flops ({min_flops:.3g})")
        self.num_compute_budgets = _positive_int("num_compute_budgets", num_compute_budgets)
        if self.num_compute_budgets > 1 and self.max_flops == self.min_flops:
            raise ValueError(
                f"{num_compute_budgets} budgets need max_flops > min_flops; use num_compute_budgets=1 for one budget"
            )
        if self.num_compute_budgets == 1 and self.max_flops != self.min_flops:
            raise ValueError(
                f"num_compute_budgets=1 but min_flops ({min_flops:.3g}) != max_flops ({max_flops:.3g}); "
                "set both to the one budget, or ask for more budgets"
            )
        self.num_model_sizes = _positive_int(
            "num_model_sizes", num_model_sizes, 3, " (a parabola through each IsoFLOP profile needs 3 sizes)"
        )
        if self.num_model_sizes > MAX_MODEL_SIZES:
            raise ValueError(
                f"num_model_sizes={self.num_model_sizes} is more than {MAX_MODEL_SIZES} sizes per budget; IsoFLOP "
                "profiles are usually 5-15 sizes (Hoffmann et al. used about 9)"
            )
        if model is not None and not isinstance(model, ModelSpec):
            raise TypeError(
                f"model must be a ModelSpec (e.g. ModelSpec(MyModel, 'd_model', {{...}})), got {type(model).__name__}"
            )
        self.model = model
        self.flops = flops
        self.flops_name = convention_name(flops)
        if self.flops_name != "6nd" and model is None:
            raise ValueError(f"flops={self.flops_name!r} needs a model; without one only '6nd' applies")
        if self.flops_name == "chinchilla" and model is not None and model.shape_fn is None:
            raise ValueError(
                "flops='chinchilla' needs the transformer shape: pass ModelSpec(..., shape_fn=lambda m: "
                "TransformerShape(d_model=..., num_layers=..., num_heads=..., d_ff=..., vocab_size=..., seq_len=...))"
            )
        if self.flops_name == "measured" and model is not None and model.sample_fn is None:
            raise ValueError(
                "flops='measured' needs a sample batch: pass ModelSpec(..., sample_fn=lambda b: (x, y))"
            )
        self.tokens_per_param = _positive_number("tokens_per_param", tokens_per_param)
        self.size_span = self._check_span(size_span)
        self.dataset_tokens = _positive_number("dataset_tokens", dataset_tokens, allow_none=True)
        self._lr, self._lr_record = _as_lr_rule(lr_rule)
        self.lr_rule = lr_rule
        self.batch_size = _positive_int("batch_size", batch_size)
        self.tokens_per_sample = (
            None if tokens_per_sample is None else _positive_int("tokens_per_sample", tokens_per_sample)
        )
        if data_id is not None and not isinstance(data_id, str):
            raise TypeError(
                f"data_id must be a string (e.g. a dataset name and version), got {type(data_id).__name__}"
            )
        self.data_id = data_id
        if train_config is not None and not isinstance(train_config, Mapping):
            raise TypeError(f"train_config must be a mapping, got {type(train_config).__name__}")
        self.train_config = None if train_config is None else _plain(train_config, "train_config")
        if self.train_config is not None:
            # imported here: flops_fit.training imports this module
            from flops_fit.core.train_config import config_from_mapping

            # with the planner's batch size, which every experiment gets (e.g. for micro_batch_size)
            config_from_mapping({**self.train_config, "batch_size": self.batch_size}, "train_config")
        self.prior = prior
        if prior is not None and not (
            hasattr(prior, "optimal") or callable(getattr(prior, "predict", None)) or callable(prior)
        ):
            raise TypeError(
                "prior must have .optimal(C) -> {'optimal_params': N}, be a PowerLawFit of N_opt against C, "
                f"or be a callable C -> N_opt; got {type(prior).__name__}"
            )
        self.seed = _positive_int("seed", seed, 0)
        if model is not None:
            model.check_signature()

    @staticmethod
    def _check_span(size_span: Any) -> tuple[float, float]:
        if isinstance(size_span, (tuple, list)):
            if len(size_span) != 2:
                raise ValueError(f"size_span must be a number > 1 or a pair (lo, hi), got {size_span!r}")
            lo = _positive_number("size_span[0]", size_span[0])
            hi = _positive_number("size_span[1]", size_span[1])
            assert lo is not None and hi is not None
            if not lo < 1 < hi:
                raise ValueError(
                    f"size_span (lo, hi) must satisfy lo < 1 < hi to bracket N*, got {size_span!r}"
                )
            return lo, hi
        s = _positive_number("size_span", size_span)
        assert s is not None
        if s <= 1:
            raise ValueError(f"size_span must be > 1 (sizes cover N*/span to N* span), got {size_span}")
        return 1.0 / s, s

    # -- configuration ---------------------------------------------------------------------------

    #: Keys of :meth:`config` / :meth:`from_config`.
    CONFIG_KEYS: tuple[str, ...] = tuple(
        "min_flops max_flops num_compute_budgets num_model_sizes model flops tokens_per_param size_span "
        "dataset_tokens lr_rule batch_size tokens_per_sample data_id train_config prior seed budgets".split()
    )

    def config(self) -> dict[str, Any]:
        """The planner's inputs as plain JSON (callables appear as descriptions)."""
        span = self.size_span
        return {
            "min_flops": self.min_flops,
            "max_flops": self.max_flops,
            "num_compute_budgets": self.num_compute_budgets,
            "num_model_sizes": self.num_model_sizes,
            "model": None if self.model is None else self.model.to_dict(),
            "flops": self.flops_name,
            "tokens_per_param": self.tokens_per_param,
            "size_span": span[1] if math.isclose(span[0] * span[1], 1.0) else [span[0], span[1]],
            "dataset_tokens": self.dataset_tokens,
            "lr_rule": self._lr_record,
            "batch_size": self.batch_size,
            "tokens_per_sample": self.tokens_per_sample,
            "data_id": self.data_id,
            "train_config": self.train_config,
            "prior": None if self.prior is None else _describe(self.prior),
            "seed": self.seed,
            "budgets": self.budgets,
        }

    @classmethod
    def from_budgets(cls, budgets: Sequence[float], num_model_sizes: int, **kwargs: Any) -> SweepPlanner:
        """A planner for exactly these compute budgets (FLOPs) instead of a log-spaced range."""
        exact = explicit_budgets(budgets)
        return cls(exact[0], exact[-1], len(exact), num_model_sizes, budgets=exact, **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> SweepPlanner:
        """Build a planner from a mapping of its keyword arguments (e.g. a Hydra/YAML config or
        ``plan.config``). Unknown keys are an error. ``overrides`` supply what JSON cannot hold: a
        ModelSpec with its callables, a callable ``flops``/``lr_rule``, a ``prior`` object."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        merged = {**dict(config), **overrides}
        unknown = sorted(set(merged) - set(cls.CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown planner config key(s) {unknown}; allowed: {list(cls.CONFIG_KEYS)}")
        missing = [
            k for k in ("min_flops", "max_flops", "num_compute_budgets", "num_model_sizes") if k not in merged
        ]
        if missing:
            raise ValueError(f"planner config is missing key(s) {missing}")
        if isinstance(merged.get("model"), Mapping):
            merged["model"] = ModelSpec.from_dict(merged["model"])
        for key in ("flops", "lr_rule"):
            value = merged.get(key)
            if isinstance(value, str) and value.startswith("callable:"):
                raise ValueError(
                    f"{key} was recorded as {value!r}; pass the function itself: from_config(..., {key}=fn)"
                )
        if isinstance(merged.get("prior"), str):
            raise ValueError(
                f"prior was recorded as {merged['prior']!r}; pass the object: from_config(..., prior=fit)"
            )
        if isinstance(merged.get("size_span"), list):
            merged["size_span"] = tuple(merged["size_span"])
        return cls(**merged)

    # -- planning --------------------------------------------------------------------------------

    def compute_budgets(self) -> list[float]:
        """Budgets (FLOPs): the explicit ``budgets``, else log-spaced from min to max (interior ones
        rounded to 6 significant digits)."""
        if self.budgets is not None:
            return list(self.budgets)
        k = self.num_compute_budgets
        if k == 1:
            return [self.min_flops]
        logs = np.linspace(math.log10(self.min_flops), math.log10(self.max_flops), k)
        inner = [_round_sig(10.0**x) for x in logs[1:-1]]
        return [self.min_flops, *inner, self.max_flops]

    def _sample(self) -> tuple[Any, int | None]:
        """A seeded sample batch and the tokens in it, or (None, None) without a sample_fn."""
        if self.model is None or self.model.sample_fn is None:
            return None, None
        with _seeded(self.seed):
            sample = split_sample(self.model.sample_fn(MEASURE_BATCH))
        targets = sample[1]
        per_sample = None
        if isinstance(targets, torch.Tensor) and targets.ndim >= 1 and targets.shape[0] == MEASURE_BATCH:
            per_sample = targets.numel() // MEASURE_BATCH
        if self.tokens_per_sample is not None:
            if per_sample is not None and per_sample != self.tokens_per_sample:
                logger.warning(
                    "sample_fn gives %d target(s) per sample but tokens_per_sample=%d; FLOPs per token use %d",
                    per_sample,
                    self.tokens_per_sample,
                    self.tokens_per_sample,
                )
            return sample, MEASURE_BATCH * self.tokens_per_sample
        return sample, None if per_sample is None else MEASURE_BATCH * per_sample

    def plan(self) -> SweepPlan:
        """Choose sizes and tokens for every budget; raises ValueError before anything is trained."""
        budgets = self.compute_budgets()
        sample, tokens_in_sample = self._sample()
        tokens_per_sample = self.tokens_per_sample
        if tokens_per_sample is None:
            tokens_per_sample = 1 if tokens_in_sample is None else tokens_in_sample // MEASURE_BATCH
            if tokens_in_sample is not None:
                logger.info("tokens_per_sample=%d inferred from sample_fn targets", tokens_per_sample)
        groups: list[tuple[float, float, list[tuple[int | float | None, int, float]]]] = []
        if self.model is None:
            for c in budgets:
                centre = self._centre_param_space(c)
                sizes = []
                for target in self._targets(centre):
                    n = round(target)
                    if n < 1:
                        raise ValueError(
                            f"at C={c:.3g} the target size {target:.3g} is below one parameter; raise min_flops"
                        )
                    if all(n != s[1] for s in sizes):
                        sizes.append((None, n, FLOPS_PER_PARAM_TOKEN * n))
                groups.append((c, centre, sizes))
        else:
            prober = _Prober(self.model, self.flops, sample, tokens_in_sample)
            grid = _Grid(self.model, prober)
            grid.check_growth()
            for c in budgets:
                centre = (
                    _prior_optimum(self.prior, c)
                    if self.prior is not None
                    else _rule_optimum(grid, c, self.tokens_per_param)
                )
                chosen: list[int] = []
                for target in self._targets(centre):
                    i = grid.nearest(target)
                    if i not in chosen:
                        chosen.append(i)
                sizes = [
                    (grid.value(i), grid.n(i), prober.flops_per_token(grid.value(i))) for i in sorted(chosen)
                ]
                groups.append((c, centre, sizes))
        experiments = self._experiments(groups, tokens_per_sample)
        plan = SweepPlan(
            experiments=tuple(experiments),
            flops=self.flops_name,
            param_count=self.model.param_count if self.model is not None else "non_embedding",
            model=self.model,
            config={**self.config(), "tokens_per_sample": tokens_per_sample},
            expected_optimum=tuple((c, centre) for c, centre, _ in groups),
        )
        logger.info(
            "planned %d experiments over %d budgets, %.3g FLOPs", len(plan), len(budgets), plan.total_flops
        )
        return plan

    def _centre_param_space(self, budget: float) -> float:
        if self.prior is not None:
            return _prior_optimum(self.prior, budget)
        return math.sqrt(budget / (FLOPS_PER_PARAM_TOKEN * self.tokens_per_param))  # C = 6 N D, D = r N

    def _targets(self, centre: float) -> np.ndarray:
        lo, hi = self.size_span
        return centre * np.exp(np.linspace(math.log(lo), math.log(hi), self.num_model_sizes))

    def _experiments(
        self,
        groups: list[tuple[float, float, list[tuple[int | float | None, int, float]]]],
        tokens_per_sample: int,
    ) -> list[Experiment]:
        tokens_per_step = self.batch_size * tokens_per_sample
        spec = self.model
        fixed = {
            "model": None if spec is None else spec.model_path,
            "size_param": None if spec is None else spec.size_param,
            "model_kwargs": None if spec is None else dict(spec.model_kwargs),
            "param_count": "non_embedding" if spec is None else spec.param_count,
            "flops": self.flops_name,
            "data_id": self.data_id,
            "dataset_tokens": self.dataset_tokens,
            "train_config": _result_config(self.train_config),
            "batch_size": self.batch_size,
            "tokens_per_sample": tokens_per_sample,
            "seed": self.seed,
        }
        out: list[Experiment] = []
        too_small: list[str] = []
        for c, centre, sizes in groups:
            if len(sizes) < 3:
                vals = [s[0] if s[0] is not None else s[1] for s in sizes]
                smallest = min(s[1] for s in sizes)
                fix = (
                    f"N* is below the smallest model (N={smallest:.3g}): raise the smallest budget (min_flops) or "
                    "offer smaller sizes"
                    if centre < smallest
                    else "Offer finer sizes (size_values / a smaller size_multiple) or widen size_span"
                )
                raise ValueError(
                    f"at C={c:.3g} only {len(sizes)} distinct size(s) {vals} land near the targets around "
                    f"N*={centre:.3g}; a parabola needs 3. {fix}"
                )
            if len(sizes) < self.num_model_sizes:
                warnings.warn(
                    f"at C={c:.3g} only {len(sizes)} of {self.num_model_sizes} sizes are distinct after snapping "
                    "to the candidate size values",
                    UserWarning,
                    stacklevel=3,
                )
            ns = [s[1] for s in sizes]
            if not min(ns) < centre < max(ns):
                warnings.warn(
                    f"at C={c:.3g} the sizes N={min(ns):.3g}..{max(ns):.3g} do not bracket the expected optimum "
                    f"N*={centre:.3g}; the IsoFLOP minimum will likely sit at an edge. Offer "
                    "sizes on both sides of N*",
                    UserWarning,
                    stacklevel=3,
                )
            for value, n, fpt in sizes:
                steps = round(c / fpt / tokens_per_step)
                if steps < 1:
                    too_small.append(
                        f"C={c:.3g}, N={n:.3g}: D={c / fpt:.3g} tokens < one step of {tokens_per_step} tokens"
                    )
                    continue
                tokens = steps * tokens_per_step
                lr = None
                if self._lr is not None:
                    lr = float(self._lr(n))
                    if not math.isfinite(lr) or lr <= 0:
                        raise ValueError(
                            f"lr_rule gives learning rate {lr} for N={n}; it must be positive and finite"
                        )
                epochs = None if self.dataset_tokens is None else tokens / self.dataset_tokens
                run = {"compute_budget": c, "size_value": value, "num_params": n, "num_tokens": tokens}
                eid = experiment_id({**fixed, **run, "learning_rate": lr})
                out.append(
                    Experiment(
                        experiment_id=eid,
                        compute_budget=c,
                        size_value=value,
                        num_params=int(n),
                        num_tokens=int(tokens),
                        flops_per_token=float(fpt),
                        epochs=epochs,
                        learning_rate=lr,
                        batch_size=self.batch_size,
                        tokens_per_sample=tokens_per_sample,
                        num_steps=int(steps),
                        flops=self.flops_name,
                        seed=self.seed,
                    )
                )
        if too_small:
            raise ValueError(
                "budget too small for one optimiser step: "
                + "; ".join(too_small[:5])
                + ("; ..." if len(too_small) > 5 else "")
                + ". Raise min_flops, lower batch_size / tokens_per_sample, or narrow size_span"
            )
        ids = [e.experiment_id for e in out]
        if len(set(ids)) != len(ids):  # identical budgets after rounding would collide
            raise ValueError("two experiments share an id; the budgets are too close together")
        few = [e for e in out if e.num_steps < FEW_STEPS]
        if few:
            warnings.warn(
                f"{len(few)} experiment(s) get fewer than {FEW_STEPS} optimiser steps (as few as "
                f"{min(e.num_steps for e in few)}); their losses will be noisy and warmup/decay barely fit. "
                "Raise min_flops or lower batch_size",
                UserWarning,
                stacklevel=3,
            )
        repeated = [e for e in out if e.repeats_data]
        if repeated:
            worst = max(repeated, key=lambda e: e.epochs or 0.0)
            warnings.warn(
                f"{len(repeated)} experiment(s) need more than one pass over the {self.dataset_tokens:.3g}-token "
                f"dataset (up to {worst.epochs:.2f} epochs at C={worst.compute_budget:.3g}, N={worst.num_params:.3g}); "
                "scaling laws assume fresh data and repeated tokens change the law. Use more data or lower max_flops",
                UserWarning,
                stacklevel=3,
            )
        return out
