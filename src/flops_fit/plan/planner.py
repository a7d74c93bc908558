"""Plan a sweep before any GPU-hour is spent: budgets, model sizes, tokens, cost.

Compute budgets are log-spaced from ``min_flops`` to ``max_flops``. At each budget C the expected
compute-optimal size N* comes from the tokens-per-parameter rule (D = r N, D = C / flops_per_token) or
from a previous fit (``prior``). A sweep design then picks the runs; the default,
:class:`~flops_fit.plan.design.IsoFLOPDesign`, log-spaces ``num_model_sizes`` sizes over ``[N*/s, N* s]``
(``size_span=s``, 8 by default) so the IsoFLOP minimum is bracketed on both sides, and gives each run
D = C / flops_per_token tokens, rounded to whole optimiser steps.

Without a model the planner works in parameter space (N is a number, C = 6 N D). With a
:class:`~flops_fit.plan.spec.ModelSpec` it builds ``model_cls(**{size_param: v}, **model_kwargs)`` on the
``meta`` device (no memory), counts parameters for candidate values ``v`` and picks the values whose N
lands nearest each target (:mod:`flops_fit.plan.search`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from flops_fit.core.experiment import Experiment, plain_json, result_config
from flops_fit.core.train_config import config_from_mapping
from flops_fit.core.validate import (
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Instance,
    Integer,
    Nullable,
    Real,
    check,
)
from flops_fit.plan.cost import seeded
from flops_fit.plan.design import (
    DEFAULT_SIZE_SPAN,
    DesignContext,
    ExperimentFactory,
    IsoFLOPDesign,
    SweepDesign,
)
from flops_fit.plan.flops import FlopsFn, convention_name, split_sample
from flops_fit.plan.search import ParameterSpace, SizeGrid, SizeProber, SizeSearch
from flops_fit.plan.spec import ModelSpec, as_lr_rule
from flops_fit.plan.sweep import SweepPlan
from flops_fit.plan.wsd import WSDDesign, design_from_config

logger = logging.getLogger(__name__)

#: Runs with fewer optimiser steps than this get a warning: warmup and decay barely fit.
FEW_STEPS = 100
#: Samples in the batch used to measure FLOPs per token (FLOPs are linear in the batch size).
MEASURE_BATCH = 2

_AT_LEAST_ONE = Integer(1, range_label="at least 1")
_MODEL = Nullable(Instance(ModelSpec))
_DESIGN = Nullable(Instance(SweepDesign))
_PRIOR_KINDS = (
    "prior must have .optimal(C) -> {'optimal_params': N}, be a PowerLawFit of N_opt against C, "
    "or be a callable C -> N_opt"
)


def _round_sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _prior_optimum(prior: Any, budget: float) -> float:
    """N_opt (parameters) the prior fit predicts at ``budget`` FLOPs, checked positive and finite."""
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
        raise TypeError(f"{_PRIOR_KINDS}; got {type(prior).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"prior gives N_opt = {value} at C = {budget:.3g}; it must be positive and finite")
    return value


def _describe(obj: Any) -> str:
    text = str(obj)
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__}: {text}"


#: The most compute budgets one sweep may plan (an IsoFLOP sweep needs a handful; each budget adds runs).
MAX_COMPUTE_BUDGETS = 1000
#: The largest compute budget, FLOPs: far above any training run, far below float overflow.
MAX_FLOPS = 1e40
#: The most tokens one experiment may train (a 64-bit token counter).
MAX_TOKENS = 2**63 - 1

#: A compute budget: a positive finite number of FLOPs, at most MAX_FLOPS.
_FLOPS = Real(
    0,
    MAX_FLOPS,
    lo_open=True,
    type_label="a number of FLOPs",
    range_label=f"a positive finite number of FLOPs up to {MAX_FLOPS:.0e}",
)


def explicit_budgets(budgets: Any, name: str = "budgets") -> list[float]:
    """Sorted, distinct, positive finite budgets (FLOPs), or an error naming ``name`` and the bad value."""
    if _FLOPS.is_kind(budgets):  # one budget
        budgets = [budgets]
    if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__iter__"):
        raise TypeError(f"{name} must be a list of FLOP values such as [1e15, 3e15, 1e16], got {budgets!r}")
    values = [check(f"{name}[{i}]", b, _FLOPS) for i, b in enumerate(budgets)]
    if not values:
        raise ValueError(f"{name} is empty; give at least one compute budget in FLOPs, e.g. [1e15, 1e16]")
    return sorted(set(values))


def _check_magnitudes(runs: Sequence[Experiment]) -> None:
    """Raise ValueError naming ``budgets`` when a run's tokens, parameters or FLOPs overflow what a
    training run can count (tokens above 2**63 - 1, non-finite FLOPs or their sum)."""
    for e in runs:
        numbers = (e.num_params, e.flops_per_token, e.planned_flops)
        if e.num_tokens > MAX_TOKENS or not all(math.isfinite(float(v)) for v in numbers):
            raise ValueError(
                f"budgets: the budget C={e.compute_budget:.3g} plans {e.num_tokens:.3g} tokens for "
                f"N={e.num_params:.3g} parameters, which overflows a training run's counters; give smaller "
                "budgets (min_flops/max_flops)"
            )
    if not math.isfinite(math.fsum(e.planned_flops for e in runs)):
        raise ValueError("budgets: the planned FLOPs add up past a float's range; give smaller budgets")


def _check_flops(flops: str | FlopsFn, model: ModelSpec | None) -> str:
    """The convention's recorded name; a convention other than 6nd needs a model and what it reads."""
    name = convention_name(flops)
    if name != "6nd" and model is None:
        raise ValueError(f"flops={name!r} needs a model; without one only '6nd' applies")
    if name == "chinchilla" and model is not None and model.shape_fn is None:
        raise ValueError(
            "flops='chinchilla' needs the transformer shape: pass ModelSpec(..., shape_fn=lambda m: "
            "TransformerShape(d_model=..., num_layers=..., num_heads=..., d_ff=..., vocab_size=..., seq_len=...))"
        )
    if name == "measured" and model is not None and model.sample_fn is None:
        raise ValueError(
            "flops='measured' needs a sample batch: pass ModelSpec(..., sample_fn=lambda b: (x, y))"
        )
    return name


def _check_train_config(train_config: Any, batch_size: int) -> dict[str, Any] | None:
    """``train_config`` as plain JSON, checked against the TrainConfig fields (with the planner's batch size,
    which every experiment gets, e.g. for micro_batch_size)."""
    if train_config is None:
        return None
    if not isinstance(train_config, Mapping):
        raise TypeError(f"train_config must be a mapping, got {type(train_config).__name__}")
    plain = plain_json(train_config, "train_config")
    config_from_mapping({**plain, "batch_size": batch_size}, "train_config")
    return plain


def _check_prior(prior: Any) -> Any:
    if prior is not None and not (
        hasattr(prior, "optimal") or callable(getattr(prior, "predict", None)) or callable(prior)
    ):
        raise TypeError(f"{_PRIOR_KINDS}; got {type(prior).__name__}")
    return prior


class SweepPlanner:
    """Plan a sweep (see the module docstring).

    Parameters
    ----------
    min_flops, max_flops : compute budgets (FLOPs) of the smallest and largest IsoFLOP group.
    num_compute_budgets : number of budgets, log-spaced from ``min_flops`` to ``max_flops``.
    num_model_sizes : sizes per budget (at least 3: each IsoFLOP parabola needs 3 points); None with ``design``.
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
    budgets : exact budgets (FLOPs) instead of the log-spaced range (see :meth:`from_budgets`).
    design : a :class:`~flops_fit.plan.design.SweepDesign` that picks the runs; None (the default) is the
        :class:`~flops_fit.plan.design.IsoFLOPDesign` of ``num_model_sizes`` and ``size_span``, which
        are then left out.
    """

    def __init__(
        self,
        min_flops: float,
        max_flops: float,
        num_compute_budgets: int,
        num_model_sizes: int | None = None,
        *,
        model: ModelSpec | None = None,
        flops: str | FlopsFn = "6nd",
        tokens_per_param: float = 20.0,
        size_span: float | tuple[float, float] | None = DEFAULT_SIZE_SPAN,
        dataset_tokens: float | None = None,
        lr_rule: Any = None,
        batch_size: int = 32,
        tokens_per_sample: int | None = None,
        data_id: str | None = None,
        train_config: Mapping[str, Any] | None = None,
        prior: Any = None,
        seed: int = 0,
        budgets: Sequence[float] | None = None,
        design: SweepDesign | None = None,
    ) -> None:
        self.min_flops = check("min_flops", min_flops, _FLOPS)
        self.max_flops = check("max_flops", max_flops, _FLOPS)
        self.budgets = None if budgets is None else explicit_budgets(budgets)
        self.num_compute_budgets = self._check_budgets(num_compute_budgets)
        self.design = self._design(design, num_model_sizes, size_span)
        self.model = check("model", model, _MODEL, "e.g. ModelSpec(MyModel, 'd_model', {...})")
        self.flops = flops
        self.flops_name = _check_flops(flops, model)
        self.tokens_per_param = check("tokens_per_param", tokens_per_param, POSITIVE)
        self.dataset_tokens = check("dataset_tokens", dataset_tokens, Nullable(POSITIVE))
        self._lr, self._lr_record = as_lr_rule(lr_rule)
        self.lr_rule = lr_rule
        self.batch_size = check("batch_size", batch_size, POSITIVE_INT)
        self.tokens_per_sample = check("tokens_per_sample", tokens_per_sample, Nullable(POSITIVE_INT))
        self.data_id = check("data_id", data_id, Nullable(Instance(str)), "e.g. a dataset name and version")
        self.train_config = _check_train_config(train_config, self.batch_size)
        self.prior = _check_prior(prior)
        self.seed = check("seed", seed, NON_NEGATIVE_INT)
        if model is not None:
            model.check_signature()

    def _check_budgets(self, num_compute_budgets: Any) -> int:
        """The number of budgets, consistent with min_flops, max_flops and the explicit budgets."""
        if self.budgets is not None and (
            not math.isclose(self.budgets[0], self.min_flops, rel_tol=1e-12)
            or not math.isclose(self.budgets[-1], self.max_flops, rel_tol=1e-12)
            or len(self.budgets) != num_compute_budgets
        ):
            raise ValueError(
                "budgets must agree with min_flops, max_flops and num_compute_budgets; "
                "use SweepPlanner.from_budgets(budgets, num_model_sizes, ...) to plan exact budgets"
            )
        lo, hi = self.min_flops, self.max_flops
        if hi < lo:
            raise ValueError(f"max_flops ({hi:.3g}) must be >= min_flops ({lo:.3g})")
        k = check("num_compute_budgets", num_compute_budgets, _AT_LEAST_ONE)
        if k > MAX_COMPUTE_BUDGETS:
            raise ValueError(
                f"num_compute_budgets={k} is more than the limit of {MAX_COMPUTE_BUDGETS} budgets per sweep; "
                "an IsoFLOP sweep needs a handful (3-10): ask for fewer"
            )
        if k > 1 and hi == lo:
            raise ValueError(
                f"{k} budgets need max_flops > min_flops; use num_compute_budgets=1 for one budget"
            )
        if k == 1 and hi != lo:
            raise ValueError(
                f"num_compute_budgets=1 but min_flops ({lo:.3g}) != max_flops ({hi:.3g}); "
                "set both to the one budget, or ask for more budgets"
            )
        return k

    def _design(self, design: Any, num_model_sizes: Any, size_span: Any) -> SweepDesign:
        """The given design; a named one (``"isoflop"``, ``"wsd"``, or a mapping with ``kind``) of
        ``num_model_sizes`` and ``size_span``; else the IsoFLOP design of those."""
        if design is None or isinstance(design, (str, Mapping)):
            return design_from_config(design, num_model_sizes, size_span)
        check("design", design, _DESIGN, "e.g. IsoFLOPDesign(num_model_sizes=7), or 'wsd'")
        default_span = size_span is None or (isinstance(size_span, float) and size_span == DEFAULT_SIZE_SPAN)
        if num_model_sizes is not None or not default_span:
            raise ValueError(
                "num_model_sizes and size_span belong to the design; with design= leave them out "
                "(e.g. design=IsoFLOPDesign(num_model_sizes=7, size_span=8.0))"
            )
        return design

    @property
    def num_model_sizes(self) -> int | None:
        """Sizes per budget of the IsoFLOP design (None for another design)."""
        return self.design.num_model_sizes if isinstance(self.design, IsoFLOPDesign) else None

    @property
    def size_span(self) -> tuple[float, float] | None:
        """``(lo, hi)``: the IsoFLOP design's sizes cover ``[N* lo, N* hi]`` (None for another design)."""
        return self.design.size_span if isinstance(self.design, IsoFLOPDesign) else None  # type: ignore[return-value]

    # -- configuration ---------------------------------------------------------------------------

    #: Keys of :meth:`config` / :meth:`from_config`.
    CONFIG_KEYS: tuple[str, ...] = tuple(
        "min_flops max_flops num_compute_budgets num_model_sizes model flops tokens_per_param size_span "
        "dataset_tokens lr_rule batch_size tokens_per_sample data_id train_config prior seed budgets design".split()
    )

    def config(self) -> dict[str, Any]:
        """The planner's inputs as plain JSON (callables and a design other than IsoFLOP appear as
        descriptions)."""
        span = self.size_span
        if span is not None:
            span = span[1] if math.isclose(span[0] * span[1], 1.0) else [span[0], span[1]]
        return {
            "min_flops": self.min_flops,
            "max_flops": self.max_flops,
            "num_compute_budgets": self.num_compute_budgets,
            "num_model_sizes": self.num_model_sizes,
            "model": None if self.model is None else self.model.to_dict(),
            "flops": self.flops_name,
            "tokens_per_param": self.tokens_per_param,
            "size_span": span,
            "dataset_tokens": self.dataset_tokens,
            "lr_rule": self._lr_record,
            "batch_size": self.batch_size,
            "tokens_per_sample": self.tokens_per_sample,
            "data_id": self.data_id,
            "train_config": self.train_config,
            "prior": None if self.prior is None else _describe(self.prior),
            "seed": self.seed,
            "budgets": self.budgets,
            "design": self._design_record(),
        }

    def _design_record(self) -> Any:
        """The design in :meth:`config`: None for the IsoFLOP grid, a mapping for a named design (its sizes
        and span are the ``num_model_sizes``/``size_span`` keys), else a description."""
        if type(self.design) is IsoFLOPDesign:
            return None
        if isinstance(self.design, WSDDesign):
            return self.design.config()
        return _describe(self.design)

    @classmethod
    def from_budgets(
        cls, budgets: Sequence[float], num_model_sizes: int | None = None, **kwargs: Any
    ) -> SweepPlanner:
        """A planner for exactly these compute budgets (FLOPs) instead of a log-spaced range."""
        exact = explicit_budgets(budgets)
        return cls(exact[0], exact[-1], len(exact), num_model_sizes, budgets=exact, **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> SweepPlanner:
        """Build a planner from a mapping of its keyword arguments (e.g. a Hydra/YAML config or
        ``plan.config``). Unknown keys are an error. ``overrides`` supply what JSON cannot hold: a
        ModelSpec with its callables, a callable ``flops``/``lr_rule``, a ``prior`` or ``design`` object."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        merged = {**dict(config), **overrides}
        unknown = sorted(set(merged) - set(cls.CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown planner config key(s) {unknown}; allowed: {list(cls.CONFIG_KEYS)}")
        required = ["min_flops", "max_flops", "num_compute_budgets"]
        if merged.get("design") is None or isinstance(merged["design"], (str, Mapping)):  # a named design
            required.append("num_model_sizes")
        missing = [k for k in required if k not in merged]
        if missing:
            raise ValueError(f"planner config is missing key(s) {missing}")
        if isinstance(merged.get("model"), Mapping):
            # the caller's own configuration: planning imports the class anyway, and so may training
            merged["model"] = ModelSpec.from_dict(merged["model"], trusted=True)
        for key in ("flops", "lr_rule"):
            value = merged.get(key)
            if isinstance(value, str) and value.startswith("callable:"):
                raise ValueError(
                    f"{key} was recorded as {value!r}; pass the function itself: from_config(..., {key}=fn)"
                )
        for key in ("prior", "design"):
            if isinstance(merged.get(key), str) and merged[key] not in ("isoflop", "wsd"):
                raise ValueError(
                    f"{key} was recorded as {merged[key]!r}; pass the object: from_config(..., {key}=...)"
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
        with seeded(self.seed):
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

    def _tokens_per_sample(self, tokens_in_sample: int | None) -> int:
        """The tokens per sample: given, else inferred from the sample batch, else 1."""
        if self.tokens_per_sample is not None:
            return self.tokens_per_sample
        if tokens_in_sample is None:
            return 1
        logger.info("tokens_per_sample=%d inferred from sample_fn targets", tokens_in_sample // MEASURE_BATCH)
        return tokens_in_sample // MEASURE_BATCH

    def _size_search(self, sample: Any, tokens_in_sample: int | None) -> SizeSearch:
        """The model's size grid (its growth checked), or parameter space without a model."""
        if self.model is None:
            return ParameterSpace()
        grid = SizeGrid(self.model, SizeProber(self.model, self.flops, sample, tokens_in_sample))
        grid.check_growth()
        return grid

    def _factory(self, tokens_per_sample: int) -> ExperimentFactory:
        """Makes experiments with this planner's settings; the id fields every run shares."""
        spec = self.model
        id_fields = {
            "model": None if spec is None else spec.model_path,
            "size_param": None if spec is None else spec.size_param,
            "model_kwargs": None if spec is None else dict(spec.model_kwargs),
            "param_count": "non_embedding" if spec is None else spec.param_count,
            "flops": self.flops_name,
            "data_id": self.data_id,
            "dataset_tokens": self.dataset_tokens,
            "train_config": result_config(self.train_config),
            "batch_size": self.batch_size,
            "tokens_per_sample": tokens_per_sample,
            "seed": self.seed,
        }
        return ExperimentFactory(
            id_fields=id_fields,
            flops=self.flops_name,
            batch_size=self.batch_size,
            tokens_per_sample=tokens_per_sample,
            seed=self.seed,
            dataset_tokens=self.dataset_tokens,
            lr_rule=self._lr,
        )

    def _context(self) -> DesignContext:
        """What the design gets: budgets, size search, expected optimum and the experiment factory."""
        budgets = self.compute_budgets()
        sample, tokens_in_sample = self._sample()
        tokens_per_sample = self._tokens_per_sample(tokens_in_sample)
        search = self._size_search(sample, tokens_in_sample)

        def expected_optimum(budget: float) -> float:
            if self.prior is not None:
                return _prior_optimum(self.prior, budget)
            return search.optimum(budget, self.tokens_per_param)

        return DesignContext(
            tuple(budgets),
            search,
            expected_optimum,
            self._factory(tokens_per_sample),
            dict(self.train_config or {}),
        )

    def plan(self) -> SweepPlan:
        """Choose sizes and tokens for every budget; raises ValueError before anything is trained."""
        context = self._context()
        designed = self.design.experiments(context)
        _check_magnitudes(designed.experiments)
        self._check_runs(designed.experiments)
        plan = SweepPlan(
            experiments=tuple(designed.experiments),
            flops=self.flops_name,
            param_count=self.model.param_count if self.model is not None else "non_embedding",
            model=self.model,
            config={**self.config(), "tokens_per_sample": context.experiment.tokens_per_sample},
            expected_optimum=tuple(designed.expected_optimum),
            trunks=tuple(designed.trunks),
        )
        logger.info(
            "planned %d experiments over %d budgets, %.3g FLOPs",
            len(plan),
            len(context.budgets),
            plan.total_flops,
        )
        return plan

    def _check_runs(self, runs: Sequence[Experiment]) -> None:
        """Distinct ids (else ValueError); warn about runs with few optimiser steps or repeated data."""
        ids = [e.experiment_id for e in runs]
        if len(set(ids)) != len(ids):  # identical budgets after rounding would collide
            raise ValueError("two experiments share an id; the budgets are too close together")
        few = [e for e in runs if e.num_steps < FEW_STEPS]
        if few:
            warnings.warn(
                f"{len(few)} experiment(s) get fewer than {FEW_STEPS} optimiser steps (as few as "
                f"{min(e.num_steps for e in few)}); their losses will be noisy and warmup/decay barely fit. "
                "Raise the smallest budget (min_flops: --min-flops or the smallest of --budgets on the command line) or "
                "lower batch_size",
                UserWarning,
                stacklevel=3,
            )
        repeated = [e for e in runs if e.repeats_data]
        if repeated:
            worst = max(repeated, key=lambda e: e.epochs or 0.0)
            warnings.warn(
                f"{len(repeated)} experiment(s) need more than one pass over the {self.dataset_tokens:.3g}-token "
                f"dataset (up to {worst.epochs:.2f} epochs at C={worst.compute_budget:.3g}, N={worst.num_params:.3g}); "
                "scaling laws assume fresh data and repeated tokens change the law. Use more data or lower max_flops",
                UserWarning,
                stacklevel=3,
            )
