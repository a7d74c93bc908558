"""What the user hands the planner: the model to scale (:class:`ModelSpec`) and its learning rate by size
(:class:`PowerLawLR`, or any ``callable(num_params) -> lr``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from flops_fit.core.experiment import plain_json
from flops_fit.core.validate import POSITIVE, POSITIVE_INT, Real, check
from flops_fit.plan.flops import PARAM_COUNTS, TransformerShape, convention_name

logger = logging.getLogger(__name__)

#: How each entry point spells "trust this plan's import paths" (named in :class:`UntrustedPlanError`).
TRUST_FLAGS = "--trust-plan (flops-fit train), trust_plan=true (ff-train) or trust_plan=True (TrainingRunner)"

#: ``sample_fn(batch_size) -> (inputs, targets)``: a sample batch.
SampleFn = Callable[[int], Any]
#: ``loss_fn(output, targets) -> scalar tensor``: the training loss.
LossFn = Callable[[Any, Any], torch.Tensor]
#: ``shape_fn(model)``: the transformer shape the ``"chinchilla"`` convention needs.
ShapeFn = Callable[[nn.Module], "TransformerShape | Mapping[str, Any]"]


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
            check(f"lr_rule {name}", getattr(self, name), POSITIVE)
        check("lr_rule exponent", self.exponent, Real())

    def __call__(self, num_params: float) -> float:
        return float(self.base_lr) * (float(num_params) / float(self.base_params)) ** (-float(self.exponent))

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def as_lr_rule(lr_rule: Any) -> tuple[Callable[[float], float] | None, Any]:
    """Return ``(rule, record)``: the callable (parameters -> learning rate) and how the plan records it."""
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


class UntrustedPlanError(ValueError):
    """A plan read from a file names a model class that training would import, and nobody trusted it."""


def _module_of(obj: Any) -> str:
    """The module that defines ``obj`` (for a bound classmethod: its class's)."""
    owner = obj.__self__ if inspect.ismethod(obj) else obj
    return str(getattr(owner, "__module__", None) or "")


def _is_stdlib(module: str) -> bool:
    top = module.partition(".")[0].lstrip("_")
    return top in sys.stdlib_module_names or f"_{top}" in sys.stdlib_module_names or top == "builtins"


def check_model_target(path: str, obj: Any) -> None:
    """Raise TypeError unless ``obj`` (imported from ``path``) can be a model class or factory: a class, a
    function or a method bound to a class, defined outside the Python standard library. Anything else (a
    stdlib function or class such as ``subprocess:run``, a builtin, a callable instance) is refused."""
    kind_ok = inspect.isclass(obj) or inspect.isfunction(obj)
    kind_ok = kind_ok or (inspect.ismethod(obj) and inspect.isclass(obj.__self__))
    module = _module_of(obj)
    if not kind_ok or _is_stdlib(module):
        where = f" from the standard library module {module!r}" if _is_stdlib(module) else ""
        raise TypeError(
            f"model class path {path!r} names a {type(obj).__name__}{where}, not a model class or factory "
            "function; name a torch.nn.Module subclass (or a function returning one) from your own code"
        )


def _check_model_cls(model_cls: Any) -> None:
    """A class or factory function, or its import path; never a built model."""
    if isinstance(model_cls, str):
        if ":" not in model_cls:
            raise ValueError(f"model_cls path must look like 'package.module:ClassName', got {model_cls!r}")
    elif not callable(model_cls) or isinstance(model_cls, nn.Module):
        raise TypeError(
            f"model_cls must be a class or factory function (or 'package.module:ClassName'), got "
            f"{type(model_cls).__name__}; pass the class itself, not an instance"
        )


def _size_values(size_values: Any, size_multiple: int | None) -> tuple[int | float, ...]:
    """The candidate size values, sorted and distinct: at least 3 positive numbers, multiples of
    ``size_multiple`` when it is given."""
    if isinstance(size_values, (str, bytes)) or not isinstance(size_values, Sequence):
        raise TypeError("size_values must be a sequence of numbers, e.g. [128, 256, 384]")
    values = []
    for i, v in enumerate(size_values):
        size = check(f"size_values[{i}]", v, POSITIVE)
        values.append(int(v) if POSITIVE_INT.is_kind(v) else size)  # an int size stays an int
    if len(values) < 3:
        raise ValueError(f"size_values needs at least 3 values (a parabola needs 3 sizes), got {values}")
    if size_multiple is not None:
        off = [v for v in values if float(v) % size_multiple]
        if off:
            raise ValueError(f"size_values {off} are not multiples of size_multiple={size_multiple}")
    return tuple(sorted(set(values)))


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
    trusted: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_model_cls(self.model_cls)
        if not isinstance(self.trusted, bool):
            raise TypeError(f"trusted must be True or False, got {self.trusted!r}")
        if not isinstance(self.size_param, str) or not self.size_param.isidentifier():
            raise ValueError(
                f"size_param must be the name of a constructor argument, got {self.size_param!r}"
            )
        if not isinstance(self.model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a mapping, got {type(self.model_kwargs).__name__}")
        kwargs = plain_json(self.model_kwargs, "model_kwargs")
        if self.size_param in kwargs:
            raise ValueError(
                f"model_kwargs sets {self.size_param!r}, which is the size parameter the planner varies; remove it"
            )
        object.__setattr__(self, "model_kwargs", kwargs)
        if self.param_count not in PARAM_COUNTS:
            raise ValueError(f"param_count must be one of {list(PARAM_COUNTS)}, got {self.param_count!r}")
        if self.size_multiple is not None:
            object.__setattr__(
                self, "size_multiple", check("size_multiple", self.size_multiple, POSITIVE_INT)
            )
        if self.size_values is not None:
            object.__setattr__(self, "size_values", _size_values(self.size_values, self.size_multiple))
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
        check_model_target(self.model_cls, obj)
        return obj

    def require_trust(self, trust_plan: bool = False) -> None:
        """Raise :class:`UntrustedPlanError` (before importing anything) when this spec was read from a file
        (:meth:`from_dict`), names its class by import path and ``trust_plan`` is False; else log (INFO)
        the class path that :meth:`resolve` will import."""
        if not isinstance(self.model_cls, str):
            return  # a class object of this process: nothing to import
        if not (self.trusted or trust_plan):
            raise UntrustedPlanError(
                f"the plan names the model class {self.model_cls!r}, which training would import and call "
                f"with the plan's arguments {dict(self.model_kwargs)} (plus {self.size_param}=<size>); a plan "
                f"read from a file is data and runs no code unasked. Check its 'model' entry, then pass "
                f"{TRUST_FLAGS}; or name the model yourself (flops-fit train --model, "
                "TrainingRunner(model=ModelSpec(...)))"
            )
        logger.info("importing model class %s named by the plan", self.model_cls)

    def trusting(self) -> ModelSpec:
        """This spec with its import path trusted (``trust_plan=True``)."""
        return self if self.trusted else dataclasses.replace(self, trusted=True)

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
    def from_dict(cls, d: Mapping[str, Any], *, trusted: bool = False, **callables: Any) -> ModelSpec:
        """Rebuild from :meth:`to_dict`; the class stays an import path until :meth:`resolve`.

        ``callables`` may add ``sample_fn``, ``loss_fn`` and ``shape_fn``. A spec read this way is data
        (``trusted=False``): training refuses to import its class until trusted (:meth:`require_trust`);
        pass ``trusted=True`` for a mapping from your own configuration.
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
        return cls(**dict(d), **callables, trusted=trusted)
