"""Argument validation for every layer, declared rather than hand-written.

A parameter's rule is a small constraint object (:class:`Integer`, :class:`Real`, :class:`Options`,
:class:`Flag`, :class:`Instance`, :class:`Nullable`), in the spirit of scikit-learn's parameter
constraints. :func:`check` applies one and returns the value in canonical form, or raises an error that
names the argument, says what it must be, shows what it got and, with ``hint``, how to fix it:
TypeError for the wrong kind of value, ValueError for a value out of range. :func:`validate_params`
declares the rules of a whole function. Booleans are never numbers here (``True`` is not a count).

Array checks for the fits (:func:`positive_arrays`, :func:`positive_values`) live here too.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


class Constraint:
    """One rule for a value. ``kind`` says what sort of value it takes (TypeError when that is wrong),
    ``describe()`` what it must be, ``accepts`` whether a value of that kind is in range."""

    kind: str = "a value"

    def is_kind(self, value: Any) -> bool:
        raise NotImplementedError  # each constraint below defines it

    def accepts(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return self.kind

    def convert(self, value: Any) -> Any:
        return value

    def type_text(self) -> str:
        """What the TypeError says the value must be."""
        return getattr(self, "type_label", None) or self.describe()

    def range_text(self) -> str:
        """What the ValueError says the value must be."""
        return getattr(self, "range_label", None) or self.describe()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        if lo == 0:
            return "> 0" if lo_open else ">= 0"
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


@dataclass(frozen=True)
class Integer(Constraint):
    """An int (numpy ints too) in ``[lo, hi]``; ``lo=None``/``hi=None``: unbounded."""

    lo: int | None = None
    hi: int | None = None
    kind: str = "an int"
    #: Wording of the TypeError / ValueError where the default description does not fit the argument.
    type_label: str | None = None
    range_label: str | None = None

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))

    def accepts(self, value: Any) -> bool:
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def describe(self) -> str:
        if self.lo == 0 and self.hi is None:
            return "a non-negative int"
        if self.lo == 1 and self.hi is None:
            return "a positive int"
        return f"an int {_bounds(self.lo, self.hi, False, False)}".rstrip()

    def convert(self, value: Any) -> int:
        return int(value)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (ints too, never a bool) between ``lo`` and ``hi``, open or closed at each end."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    kind: str = "a number"
    #: Wording of the TypeError / ValueError where the default description does not fit the argument.
    type_label: str | None = None
    range_label: str | None = None

    def is_kind(self, value: Any) -> bool:
        return _is_number(value)

    def accepts(self, value: Any) -> bool:
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        if self.lo == 0 and self.lo_open and self.hi is None:
            return "a positive finite number"
        return f"a finite number {_bounds(self.lo, self.hi, self.lo_open, self.hi_open)}".rstrip()

    def convert(self, value: Any) -> float:
        return float(value)


#: A positive finite number: budgets, learning rates, spans.
POSITIVE = Real(0, lo_open=True)
#: A non-negative int: seeds, retries, resamples.
NON_NEGATIVE_INT = Integer(0)
#: A positive int: counts of sizes, steps, points.
POSITIVE_INT = Integer(1)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of strings."""

    values: tuple[str, ...] = ()
    kind: str = "a string"

    def __init__(self, values: Collection[str]) -> None:
        object.__setattr__(self, "values", tuple(values))

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, str)

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Flag(Constraint):
    """True or False (numpy bools too); a string such as 'no' is not read by truthiness."""

    kind: str = "True or False"

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def convert(self, value: Any) -> bool:
        return bool(value)


@dataclass(frozen=True)
class Instance(Constraint):
    """An instance of one of ``types``."""

    types: tuple[type, ...] = ()

    def __init__(self, *types: type) -> None:
        object.__setattr__(self, "types", types)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return " or ".join(t.__name__ for t in self.types)

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, self.types)


@dataclass(frozen=True)
class Nullable(Constraint):
    """None, or a value that ``inner`` accepts."""

    inner: Constraint = Flag()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"None or {self.inner.kind}"

    def is_kind(self, value: Any) -> bool:
        return value is None or self.inner.is_kind(value)

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"

    def convert(self, value: Any) -> Any:
        return None if value is None else self.inner.convert(value)


def check(name: str, value: Any, constraint: Constraint, hint: str = "") -> Any:
    """``value`` converted by ``constraint``, or a TypeError (wrong kind) / ValueError (out of range) that
    names ``name``, says what it must be and, with ``hint`` (e.g. ``"e.g. 0.05"``), how to fix it."""
    extra = f" ({hint})" if hint else ""
    if not constraint.is_kind(value):
        raise TypeError(f"{name} must be {constraint.type_text()}{extra}, got {value!r}")
    if not constraint.accepts(value):
        raise ValueError(f"{name} must be {constraint.range_text()}{extra}, got {value!r}")
    return constraint.convert(value)


def validate_params(rules: Mapping[str, Constraint]) -> Callable[[F], F]:
    """Declare a function's parameter rules: every call checks the named arguments with :func:`check`
    before the body runs (defaults are not checked)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        unknown = set(rules) - set(signature.parameters)
        if unknown:
            raise TypeError(f"validate_params: {func.__qualname__} has no parameter(s) {sorted(unknown)}")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            for name, value in bound.arguments.items():
                if name in rules:
                    check(name, value, rules[name])
            return func(*args, **kwargs)

        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.parameter_constraints = dict(rules)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def positive_arrays(min_points: int = 1, **arrays: Any) -> list[np.ndarray]:
    """Return each named array as 1-D float, checking equal length, finiteness and positivity.

    Raises ValueError naming the argument, the first offending index and value, and the fix.
    """
    out: list[np.ndarray] = []
    length = None
    for name, value in arrays.items():
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers ({exc})") from None
        if arr.ndim == 0:
            raise ValueError(f"{name} must be a 1-D sequence of numbers, got a scalar")
        arr = arr.reshape(-1) if arr.ndim > 1 and max(arr.shape) == arr.size else arr
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if length is None:
            length = arr.size
        elif arr.size != length:
            sizes = {k: np.size(v) for k, v in arrays.items()}
            raise ValueError(f"arrays must have the same length, got {sizes}")
        bad = ~np.isfinite(arr) | (arr <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite or non-positive value(s) (first: {name}[{i}] = {arr[i]}); "
                "scaling-law fits need positive finite values: drop those runs "
                "(detect_outliers flags them) or fix the data"
            )
        out.append(arr)
    if length is not None and length < min_points:
        raise ValueError(f"Not enough valid points: got {length}, need at least {min_points}")
    return out


#: Most bootstrap resamples a fit accepts. The Monte Carlo error of a 2.5% percentile is already about
#: 0.16 percentage points at 10,000 resamples; far more only costs memory (a weights table per resample).
MAX_BOOTSTRAP = 100_000


_RESAMPLES = Integer(0, type_label="an int number of resamples (0 for none)", range_label=">= 0 resamples")


def check_bootstrap(bootstrap: Any) -> int:
    """``bootstrap`` as an int number of resamples in [0, MAX_BOOTSTRAP], or a TypeError/ValueError naming it."""
    n = check("bootstrap", bootstrap, _RESAMPLES)
    if n > MAX_BOOTSTRAP:
        raise ValueError(
            f"bootstrap={n} resamples is more than the {MAX_BOOTSTRAP:,} allowed; 1,000 to 10,000 give "
            "stable 95% intervals"
        )
    return n


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool, or a TypeError naming ``name`` (a string such as 'no' is not read by truthiness)."""
    return check(name, value, Flag())


def check_seed(seed: Any) -> int:
    """``seed`` as a non-negative int, or a TypeError/ValueError naming it."""
    return check("seed", seed, NON_NEGATIVE_INT)


def check_ids(ids: Any, n: int) -> list[str] | None:
    """Run names for the ``n`` points of a fit (None: ``run-0``, ``run-1``, ...), or a ValueError naming ``ids``."""
    if ids is None:
        return None
    if isinstance(ids, str):
        raise TypeError(f"ids must be a sequence of {n} run names, got the string {ids!r}")
    names = [str(i) for i in ids]
    if len(names) != n:
        raise ValueError(f"ids must name each of the {n} points, got {len(names)} name(s)")
    return names


_RTOL = Real(0, type_label="a number such as 0.05", range_label="a finite number >= 0 (e.g. 0.05)")


def check_budget_rtol(budget_rtol: Any) -> float:
    """``budget_rtol`` (relative width of a budget bucket) as a finite float >= 0, or an error naming it."""
    return check("budget_rtol", budget_rtol, _RTOL)


def check_positive(name: str, value: Any, hint: str) -> float:
    """``value`` as a positive finite float, or a TypeError/ValueError naming ``name`` (``hint``: e.g. its default)."""
    return check(name, value, POSITIVE, hint)


def positive_values(name: str, value: Any, what: str, *, allow_empty: bool = True) -> np.ndarray:
    """``value`` (a number or an array) as a float array of positive finite ``what``, or a ValueError naming it."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be positive finite {what}, got {value!r}") from None
    if (arr.size == 0 and not allow_empty) or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(f"{name} must be positive finite {what}, got {value!r}")
    return arr


def positive_budgets(C: Any) -> np.ndarray:
    """Compute budget(s) C (FLOPs) as a float array, or a ValueError if any is not positive and finite."""
    return positive_values("C", C, "compute budget(s) in FLOPs", allow_empty=False)


def canonical_order(*columns: np.ndarray) -> np.ndarray:
    """Indices that sort rows by ``columns`` (the first is the primary key).

    Bootstrap draws pick rows by position, so every fit sorts its rows with this first: its estimates and
    its intervals then do not depend on the order the rows came in.
    """
    return np.lexsort(tuple(reversed(columns)))
