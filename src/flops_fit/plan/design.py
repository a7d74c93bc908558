"""Sweep designs: which runs a sweep trains at its compute budgets.

A design is an object with one method, ``experiments(context) -> DesignedSweep`` (:class:`SweepDesign`).
The planner hands it a :class:`DesignContext`: the budgets (FLOPs), the size search (which model sizes
exist, their N and FLOPs per token), the expected compute-optimal size N* per budget, and a factory that
turns (budget, size, optimiser steps) into an :class:`~flops_fit.core.experiment.Experiment` with the
planner's batch, learning rate, data and id. The design decides the sizes and step counts; everything a
run shares with the others stays in the planner.

:class:`IsoFLOPDesign` is today's design (Hoffmann et al. 2022, approach 2). A new design, e.g. WSD trunks
with cooldown branches (:class:`~flops_fit.plan.wsd.WSDDesign`), is a new class, not a branch in the planner.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.core.trunk import Trunk
from flops_fit.core.validate import POSITIVE, Integer, check
from flops_fit.plan.search import Size, SizeSearch

#: Most model sizes per budget an IsoFLOP design accepts (candidate search grows with it; 5-15 is usual).
MAX_MODEL_SIZES = 100
#: Default size span s: sizes cover [N*/s, N* s].
DEFAULT_SIZE_SPAN = 8.0
#: Warnings of a design point at the user's ``planner.plan()`` call: user -> plan -> experiments -> helper.
_STACKLEVEL = 4

_NUM_SIZES = Integer(3, range_label="at least 3 (a parabola through each IsoFLOP profile needs 3 sizes)")


@dataclass(frozen=True)
class ExperimentFactory:
    """Makes one experiment from the planner's settings: a budget (FLOPs), a size and a number of optimiser
    steps; the run trains ``steps x batch_size x tokens_per_sample`` tokens.

    ``id_fields`` are the fields every run of the plan shares that enter its id (model, data, settings);
    ``lr_rule`` maps N (parameters) to a learning rate (None: the runner's default); ``dataset_tokens``
    (tokens) gives each run's epochs.
    """

    id_fields: Mapping[str, Any]
    flops: str
    batch_size: int
    tokens_per_sample: int
    seed: int
    dataset_tokens: float | None = None
    lr_rule: Callable[[float], float] | None = None

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimiser step sees."""
        return self.batch_size * self.tokens_per_sample

    def learning_rate(self, num_params: int) -> float | None:
        """The rule's learning rate for N parameters, checked positive and finite."""
        if self.lr_rule is None:
            return None
        lr = float(self.lr_rule(num_params))
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(
                f"lr_rule gives learning rate {lr} for N={num_params}; it must be positive and finite"
            )
        return lr

    def __call__(
        self, budget: float, size: Size, steps: int, extra_id_fields: Mapping[str, Any] | None = None
    ) -> Experiment:
        """The run of ``size`` for ``steps`` optimiser steps in the group of ``budget`` FLOPs.

        ``extra_id_fields`` tell apart runs a design makes at the same budget, size and tokens (e.g. a
        cooldown branch's start); they enter the id only.
        """
        tokens = steps * self.tokens_per_step
        lr = self.learning_rate(size.num_params)
        run = {"compute_budget": budget, "size_value": size.value, "num_params": size.num_params}
        eid = experiment_id(
            {**self.id_fields, **run, "num_tokens": tokens, "learning_rate": lr, **(extra_id_fields or {})}
        )
        return Experiment(
            experiment_id=eid,
            compute_budget=budget,
            size_value=size.value,
            num_params=int(size.num_params),
            num_tokens=int(tokens),
            flops_per_token=float(size.flops_per_token),
            epochs=None if self.dataset_tokens is None else tokens / self.dataset_tokens,
            learning_rate=lr,
            batch_size=self.batch_size,
            tokens_per_sample=self.tokens_per_sample,
            num_steps=int(steps),
            flops=self.flops,
            seed=self.seed,
        )


@dataclass(frozen=True)
class DesignContext:
    """What the planner hands a design.

    ``budgets``: the compute budgets (FLOPs), ascending. ``sizes``: the size search. ``expected_optimum``:
    N* (parameters) expected at a budget (the tokens-per-parameter rule or the prior). ``experiment``:
    the factory of runs (budget, :class:`~flops_fit.plan.search.Size`, optimiser steps).
    ``train_config``: the TrainConfig fields the planner records (the user's, possibly empty).
    """

    budgets: tuple[float, ...]
    sizes: SizeSearch
    expected_optimum: Callable[[float], float]
    experiment: ExperimentFactory
    train_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DesignedSweep:
    """A design's answer: the experiments in plan order, the ``(budget, N*)`` pairs it centred on, and the
    trunks its branches start from (none for runs trained from scratch)."""

    experiments: tuple[Experiment, ...]
    expected_optimum: tuple[tuple[float, float], ...] = ()
    trunks: tuple[Trunk, ...] = ()


@runtime_checkable
class SweepDesign(Protocol):
    """A sweep design: turns the planner's budgets, sizes and settings into experiments."""

    def experiments(self, context: DesignContext) -> DesignedSweep:
        """The sweep's experiments (raise ValueError, before anything is trained, when none fit)."""
        ...


def _size_span(size_span: Any) -> tuple[float, float]:
    """``(lo, hi)`` multipliers of N*: a number s > 1 gives (1/s, s); a pair must have lo < 1 < hi."""
    if isinstance(size_span, (tuple, list)):
        if len(size_span) != 2:
            raise ValueError(f"size_span must be a number > 1 or a pair (lo, hi), got {size_span!r}")
        lo = check("size_span[0]", size_span[0], POSITIVE)
        hi = check("size_span[1]", size_span[1], POSITIVE)
        if not lo < 1 < hi:
            raise ValueError(f"size_span (lo, hi) must satisfy lo < 1 < hi to bracket N*, got {size_span!r}")
        return lo, hi
    s = check("size_span", size_span, POSITIVE)
    if s <= 1:
        raise ValueError(f"size_span must be > 1 (sizes cover N*/span to N* span), got {size_span}")
    return 1.0 / s, s


#: One IsoFLOP group: the budget C (FLOPs), the expected optimum N* (parameters) and the sizes around it.
_Group = tuple[float, float, list[Size]]


@dataclass(frozen=True)
class IsoFLOPDesign:
    """IsoFLOP profiles: at each budget C, ``num_model_sizes`` sizes log-spaced over ``[N*/s, N* s]``
    around the expected optimum N* (``size_span=s``; or ``[N* lo, N* hi]`` for a pair), each snapped to
    the nearest available size and trained for D = C / flops_per_token tokens, in whole optimiser steps.

    ``size_span`` is kept as the pair ``(lo, hi)``.
    """

    num_model_sizes: int
    size_span: float | tuple[float, float] = DEFAULT_SIZE_SPAN

    def __post_init__(self) -> None:
        n = check("num_model_sizes", self.num_model_sizes, _NUM_SIZES)
        if n > MAX_MODEL_SIZES:
            raise ValueError(
                f"num_model_sizes={n} is more than {MAX_MODEL_SIZES} sizes per budget; IsoFLOP "
                "profiles are usually 5-15 sizes (Hoffmann et al. used about 9)"
            )
        object.__setattr__(self, "num_model_sizes", n)
        object.__setattr__(self, "size_span", _size_span(self.size_span))

    def targets(self, centre: float) -> np.ndarray:
        """The target sizes (parameters) around ``centre`` = N*."""
        lo, hi = self.size_span  # type: ignore[misc]
        return centre * np.exp(np.linspace(math.log(lo), math.log(hi), self.num_model_sizes))

    def experiments(self, context: DesignContext) -> DesignedSweep:
        """Every budget's sizes, then their runs; ValueError when a profile has under 3 sizes or a run
        gets no optimiser step."""
        groups = [self._group(c, context) for c in context.budgets]
        out: list[Experiment] = []
        too_small: list[str] = []
        for c, centre, sizes in groups:
            self._check_group(c, centre, sizes)
            out += self._runs(c, sizes, context.experiment, too_small)
        if too_small:
            raise ValueError(
                "budget too small for one optimiser step: "
                + "; ".join(too_small[:5])
                + ("; ..." if len(too_small) > 5 else "")
                + ". Raise min_flops (--min-flops, or the smallest of --budgets), lower batch_size / tokens_per_sample, "
                "or narrow size_span"
            )
        return DesignedSweep(tuple(out), tuple((c, centre) for c, centre, _ in groups))

    def _group(self, budget: float, context: DesignContext) -> _Group:
        """The distinct sizes nearest the targets around N* at ``budget``, ascending."""
        centre = context.expected_optimum(budget)
        chosen: dict[tuple[Any, int], Size] = {}
        for target in self.targets(centre):
            size = context.sizes.nearest_size(float(target))
            if size.num_params < 1:
                raise ValueError(
                    f"at C={budget:.3g} the target size {target:.3g} is below one parameter; raise min_flops"
                )
            chosen.setdefault((size.value, size.num_params), size)
        order = sorted(chosen.values(), key=lambda s: s.num_params if s.value is None else s.value)
        return budget, centre, order

    def _check_group(self, c: float, centre: float, sizes: list[Size]) -> None:
        """At least 3 sizes (else ValueError); warn when sizes merged or do not bracket N*."""
        if len(sizes) < 3:
            vals = [s.value if s.value is not None else s.num_params for s in sizes]
            smallest = min(s.num_params for s in sizes)
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
                stacklevel=_STACKLEVEL,
            )
        ns = [s.num_params for s in sizes]
        if not min(ns) < centre < max(ns):
            warnings.warn(
                f"at C={c:.3g} the sizes N={min(ns):.3g}..{max(ns):.3g} do not bracket the expected optimum "
                f"N*={centre:.3g}; the IsoFLOP minimum will likely sit at an edge. Offer "
                "sizes on both sides of N*",
                UserWarning,
                stacklevel=_STACKLEVEL,
            )

    @staticmethod
    def _runs(c: float, sizes: list[Size], make: ExperimentFactory, too_small: list[str]) -> list[Experiment]:
        """One run per size with D = C / flops_per_token tokens; sizes without a whole step go to ``too_small``."""
        out = []
        for size in sizes:
            steps = round(c / size.flops_per_token / make.tokens_per_step)
            if steps < 1:
                too_small.append(
                    f"C={c:.3g}, N={size.num_params:.3g}: D={c / size.flops_per_token:.3g} tokens < one step "
                    f"of {make.tokens_per_step} tokens"
                )
                continue
            out.append(make(c, size, steps))
        return out
