"""The size search: which model sizes exist, how many parameters and FLOPs per token each has, and which
one lands nearest a target parameter count.

With a :class:`~flops_fit.plan.spec.ModelSpec`, the candidates are the values of its size argument
(:class:`SizeGrid`), each built on the ``meta`` device (no memory) and measured by a :class:`SizeProber`.
Without one, any whole number of parameters is a size (:class:`ParameterSpace`, FLOPs = 6 N D). Both
answer :class:`SizeSearch`: the size nearest a target N, and the rule's compute-optimal N at a budget.
:meth:`flops_fit.report.result.Result.closest_size` uses the same search to name a size for a fitted N.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.plan.flops import FlopsFn, convention_name, count_params
from flops_fit.plan.flops import flops_per_token as _flops_per_token
from flops_fit.plan.spec import ModelSpec

#: Largest number of ``size_multiple`` steps the candidate search walks through.
MAX_MULTIPLES = 2**40


@dataclass(frozen=True)
class Size:
    """One model size: the size argument's value (None in parameter space), its parameter count N and
    its training FLOPs per token."""

    value: int | float | None
    num_params: int
    flops_per_token: float


class SizeSearch(Protocol):
    """Where the planner finds model sizes (:class:`SizeGrid` or :class:`ParameterSpace`)."""

    def nearest_size(self, target: float) -> Size:
        """The available size whose N is nearest ``target`` parameters (in log space)."""
        ...

    def optimum(self, budget: float, tokens_per_param: float) -> float:
        """N* (parameters) where D / N = ``tokens_per_param`` at ``budget`` FLOPs."""
        ...


class SizeProber:
    """Memoised N(v) (parameters) and flops_per_token(v) (FLOPs) of the model at size value v, built on the
    meta device.

    ``flops`` is the FLOP convention; ``sample`` the ``(inputs, targets)`` batch and ``tokens_in_sample`` the
    tokens in it, which ``"measured"`` needs (None otherwise).
    """

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
        """Parameters N of the model at size value ``v`` (counted per the spec's ``param_count``)."""
        if v not in self._n:
            model = self._build(v)
            self._n[v] = count_params(model, self.spec.param_count)
            if self.name == "6nd":
                self._fpt[v] = FLOPS_PER_PARAM_TOKEN * count_params(model, "non_embedding")
        return self._n[v]

    def flops_per_token(self, v: int | float) -> float:
        """Training FLOPs per token of the model at size value ``v``, under the convention."""
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


class SizeGrid:
    """Candidate size values, indexed 0, 1, 2, ... in increasing order (N must grow along it).

    The values are the spec's ``size_values``, else the multiples of ``size_multiple`` (1, 2, 3, ... times
    it, without end); N and FLOPs per token come from ``prober``.
    """

    def __init__(self, spec: ModelSpec, prober: SizeProber) -> None:
        self.prober = prober
        self.values = spec.size_values
        self.multiple = spec.size_multiple or 1
        self.size_param = spec.size_param

    def value(self, i: int) -> int | float:
        """The size argument's value at index ``i``."""
        return self.values[i] if self.values is not None else (i + 1) * self.multiple

    @property
    def last(self) -> int | None:
        """The last index of an explicit list of values; None for the endless multiples."""
        return None if self.values is None else len(self.values) - 1

    def n(self, i: int) -> int:
        """Parameters N at index ``i``."""
        return self.prober.num_params(self.value(i))

    def size(self, i: int) -> Size:
        """The :class:`Size` at index ``i``."""
        v = self.value(i)
        return Size(v, self.n(i), self.prober.flops_per_token(v))

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

    def _bracket(self, pred: Callable[[int], bool]) -> tuple[int, int] | None:
        """``(lo, hi)`` with pred(lo) false and pred(hi) true (doubling through the multiples), or None."""
        if self.values is not None:
            hi = len(self.values) - 1
            return (0, hi) if pred(hi) else None
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
        return lo, hi

    def first_index(self, pred: Callable[[int], bool]) -> int | None:
        """Smallest index i with pred(i) true, for pred false-then-true along the grid (None if never)."""
        if pred(0):
            return 0
        bracket = self._bracket(pred)
        if bracket is None:
            return None
        lo, hi = bracket
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def nearest(self, target: float) -> int:
        """Index whose N is nearest ``target`` parameters in log space."""
        i = self.first_index(lambda j: self.n(j) >= target)
        if i is None:
            assert self.last is not None
            return self.last
        if i == 0:
            return 0
        below, above = self.n(i - 1), self.n(i)
        return i - 1 if math.log(target / below) <= math.log(above / target) else i

    def nearest_size(self, target: float) -> Size:
        """The :class:`Size` whose N is nearest ``target`` parameters in log space."""
        return self.size(self.nearest(target))

    def _gap(self, i: int, budget: float, ratio: float) -> float:
        """log(D/N) - log(r) at index i: positive while the model is smaller than the rule's optimum."""
        v = self.value(i)
        n = self.prober.num_params(v)
        d = budget / self.prober.flops_per_token(v)
        return math.log(d / n) - math.log(ratio)

    def optimum(self, budget: float, tokens_per_param: float) -> float:
        """N* (parameters) where D/N = ``tokens_per_param`` at ``budget`` FLOPs, interpolated in log N
        between grid points.

        Outside the grid it extrapolates with slope -2 (log(D/N) = log(C/(k N^2)) when FLOPs/token ~ k N).
        """
        ratio = tokens_per_param
        i = self.first_index(lambda j: self._gap(j, budget, ratio) < 0)
        if i is None:  # only for an explicit list of size values: the optimum lies beyond the largest
            j = self.last
            assert j is not None
            return math.exp(math.log(self.n(j)) + self._gap(j, budget, ratio) / 2)
        h_hi = self._gap(i, budget, ratio)
        if i == 0:
            return math.exp(math.log(self.n(0)) + h_hi / 2)
        h_lo = self._gap(i - 1, budget, ratio)
        ln_lo, ln_hi = math.log(self.n(i - 1)), math.log(self.n(i))
        return math.exp(ln_lo + h_lo * (ln_hi - ln_lo) / (h_lo - h_hi))


class ParameterSpace:
    """Sizes without a model: any whole number N of parameters, at 6 N FLOPs per token (C = 6 N D)."""

    def nearest_size(self, target: float) -> Size:
        """N = ``target`` rounded to a whole parameter (0 for a target below one half)."""
        n = round(target)
        return Size(None, n, FLOPS_PER_PARAM_TOKEN * n)

    def optimum(self, budget: float, tokens_per_param: float) -> float:
        """N* = sqrt(C / (6 r)): C = 6 N D with D = r N."""
        return math.sqrt(budget / (FLOPS_PER_PARAM_TOKEN * tokens_per_param))
