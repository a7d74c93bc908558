"""Configuration of one training run (:class:`TrainConfig`), checked when it is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from flops_fit.core.schedule import DECAY_SHAPES
from flops_fit.core.validate import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Constraint,
    Flag,
    Nullable,
    Options,
    Real,
    check,
)

Schedule = Literal["cosine", "wsd", "constant"]
DecayShape = Literal["linear", "1-sqrt"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

SCHEDULES: tuple[str, ...] = ("cosine", "wsd", "constant")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


# Fields that change what the run computes; the rest (workers, logging, checkpoint cadence, compile,
# micro-batching) only change how it runs, so a checkpoint stays valid across them. ``max_epochs`` is
# only a limit (a run needing more passes is refused), so raising it keeps ids and checkpoints.
TRAJECTORY_FIELDS: tuple[str, ...] = (
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "warmup_frac",
    "schedule",
    "min_lr_ratio",
    "decay_frac",
    "grad_clip",
    "eval_every",
    "eval_batches",
    "seed",
    "divergence_factor",
    "warmup_steps",
    "decay_steps",
    "decay_shape",
)


#: Fields that change a run's result, and so enter experiment ids: the trajectory, and the arithmetic
#: precision (a checkpoint resumes across precisions, but a bf16 and an fp32 run are different experiments).
#: Micro-batching and compilation change the result only by float reassociation (~1e-7), so changing
#: them to fit memory or speed keeps a sweep's ids.
RESULT_FIELDS: tuple[str, ...] = (*TRAJECTORY_FIELDS, "precision")

#: Fields added after release 0.1.0, with the value that behaves as before they existed: they are recorded
#: (in experiment ids, ledgers and checkpoint fingerprints) only when set otherwise, so the sweeps and
#: checkpoints of earlier releases keep their ids.
LATER_FIELDS: dict[str, Any] = {"warmup_steps": None, "decay_steps": None, "decay_shape": "linear"}


def result_settings(config: Mapping[str, Any], names: tuple[str, ...] = RESULT_FIELDS) -> dict[str, Any]:
    """The entries of ``config`` (a :meth:`TrainConfig.to_dict`, or part of one) named in ``names`` (default:
    those changing a run's result), less the :data:`LATER_FIELDS` left at their default."""
    return {
        k: v for k, v in config.items() if k in names and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
    }


def _number(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Real:
    """A finite number in ``[lo, hi]`` (``(lo, ...`` with ``lo_open``), worded "a number ..." as TrainConfig
    has always said it."""
    if hi is None:
        where = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        where = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    return Real(lo, hi, lo_open=lo_open, type_label="a number", range_label=f"a number {where}")


_BETA = Real(0, 1, hi_open=True)


@dataclass(frozen=True)
class _Betas(Constraint):
    """AdamW's two moment coefficients: a tuple or list of two numbers in [0, 1)."""

    kind: str = "a tuple of two numbers"

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, (tuple, list)) and all(_BETA.is_kind(b) for b in value)

    def accepts(self, value: Any) -> bool:
        return len(value) == 2 and all(_BETA.accepts(b) for b in value)

    def describe(self) -> str:
        return "two numbers in [0, 1)"

    def convert(self, value: Any) -> tuple[float, float]:
        return (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class _CompileMode(Constraint):
    """``compile``: True, False or the string 'auto'."""

    kind: str = "True, False or 'auto'"

    def is_kind(self, value: Any) -> bool:
        return Flag().is_kind(value) or isinstance(value, str)

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, str) or value == "auto"

    def convert(self, value: Any) -> bool | str:
        return value if isinstance(value, str) else bool(value)


@dataclass(frozen=True)
class _Threads(Constraint):
    """``threads``: ``'auto'`` or a number of CPU threads >= 1."""

    kind: str = "'auto' or an int"

    def is_kind(self, value: Any) -> bool:
        return isinstance(value, str) or POSITIVE_INT.is_kind(value)

    def accepts(self, value: Any) -> bool:
        return value == "auto" if isinstance(value, str) else POSITIVE_INT.accepts(value)

    def describe(self) -> str:
        return "'auto' or a number of threads >= 1"

    def convert(self, value: Any) -> int | str:
        return value if isinstance(value, str) else POSITIVE_INT.convert(value)


#: The rule of each TrainConfig field, checked (and put in canonical form) when a TrainConfig is built.
#: Wrong kinds of value raise TypeError, values out of range ValueError, each naming ``TrainConfig.<field>``.
FIELD_RULES: dict[str, Constraint] = {
    "batch_size": POSITIVE_INT,
    "micro_batch_size": Nullable(POSITIVE_INT),
    "lr": _number(0, lo_open=True),
    "weight_decay": _number(0),
    "betas": _Betas(),
    "eps": _number(0, lo_open=True),
    "warmup_frac": _number(0, 1),
    "schedule": Options(SCHEDULES),
    "min_lr_ratio": _number(0, 1),
    "decay_frac": _number(0, 1),
    "grad_clip": Nullable(_number(0, lo_open=True)),
    "precision": Options(PRECISIONS),
    "compile": _CompileMode(),
    "eval_every": Nullable(NON_NEGATIVE_INT),
    "eval_batches": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "num_workers": NON_NEGATIVE_INT,
    "max_epochs": _number(0, lo_open=True),
    "log_every": POSITIVE_INT,
    "checkpoint_every_s": Nullable(_number(0)),
    "checkpoint_every_steps": Nullable(POSITIVE_INT),
    "divergence_factor": _number(1, lo_open=True),
    "threads": _Threads(),
    "warmup_steps": Nullable(NON_NEGATIVE_INT),
    "decay_steps": Nullable(POSITIVE_INT),
    "decay_shape": Options(DECAY_SHAPES),
}

#: How to fix a bad value, where the rule alone does not say.
_HINTS: dict[str, str] = {"betas": "e.g. (0.9, 0.95)", "threads": "e.g. 1, or 'auto'"}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and mechanics of one training run.

    Batch sizes count samples (dataset items); tokens per sample come from the data (see :func:`train`).

    Attributes:
        batch_size: global batch in samples per optimiser step, summed over all processes.
        micro_batch_size: samples per forward pass on one process; ``batch_size`` must be a multiple of
            ``micro_batch_size * world_size`` and the gradient is accumulated over the rest.
            ``None``: no accumulation (``batch_size / world_size`` per forward).
        lr: peak learning rate of AdamW (per-group base rates when the model supplies its own groups).
        weight_decay: decoupled AdamW weight decay, applied to the parameters with two or more dimensions.
        betas, eps: AdamW moment coefficients and epsilon.
        warmup_frac: fraction of the run's steps with a linear warm-up from ``lr / warmup_steps`` to ``lr``.
        warmup_steps: the warm-up's length in optimiser steps, instead of ``warmup_frac``; ``None`` uses
            ``warmup_frac``. Unlike a fraction it does not depend on the run's length, so runs of different
            lengths share their schedule up to their cooldowns (what WSD branches from one trunk need).
        schedule: ``"cosine"`` decays to ``min_lr_ratio * lr`` at exactly the last step of this run (the
            horizon matches the run, as Chinchilla requires); ``"wsd"`` holds ``lr`` then decays linearly to
            ``min_lr_ratio * lr`` over the last ``decay_frac`` of the steps; ``"constant"`` holds ``lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine and wsd).
        decay_frac: fraction of the steps spent in the final decay of ``"wsd"``.
        decay_steps: the final decay of ``"wsd"`` in optimiser steps, instead of ``decay_frac`` (at most the
            steps after warm-up); ``None`` uses ``decay_frac``. A cooldown branch from step ``b`` of a trunk
            of a run of ``S`` steps uses ``decay_steps = S - b``.
        decay_shape: how ``"wsd"`` decays: ``"linear"`` in the step, or ``"1-sqrt"`` (``r + (1 - r) (1 -
            sqrt(p))`` at progress ``p`` through the decay, Hägele et al. 2024).
        grad_clip: clip the global gradient L2 norm to this value; ``None`` disables clipping.
        precision: ``"auto"`` (bf16 autocast on CUDA devices that support it, else fp32), ``"fp32"``,
            ``"bf16"`` (autocast), or ``"fp16"`` (CUDA autocast with a gradient scaler).
        compile: ``torch.compile`` the model: ``"auto"`` compiles on CUDA only, where it pays; ``True`` or
            ``False`` force it. A model that fails to compile falls back to eager with a warning.
        eval_every: steps between validation evaluations (each adds a point to the loss curve);
            ``None`` spreads 16 evaluations evenly over the run; ``0`` evaluates only at the end.
        eval_batches: validation size in global batches: the validation loss is the mean over
            ``eval_batches * batch_size`` samples, the same samples at every evaluation.
        seed: seeds data order and the torch RNG (dropout etc.); the held-out slice does not depend on it.
        num_workers: DataLoader worker processes that load training batches (0: in the main process).
        max_epochs: passes over the training data the run may make; a run that needs more raises
            ValueError before training. Above 1, data repeats (logged as a warning with the epoch count).
        log_every: steps between host synchronisations: the loss is read back, checked for divergence and
            passed to the callbacks only every ``log_every`` steps, so the device never waits on the host.
        checkpoint_every_s: seconds between checkpoints of the run in flight (checked every ``log_every``
            steps); ``None`` disables time-based checkpoints. Needs ``checkpoint_path`` in :func:`train`.
        checkpoint_every_steps: additionally checkpoint every this many steps (rounded up to the next
            ``log_every`` boundary); ``None`` disables step-based checkpoints.
        divergence_factor: the run is stopped as ``diverged`` when the mean training loss of a
            ``log_every`` window exceeds this multiple of the loss at the first step (checked when that
            loss is positive), or when any loss is NaN or infinite.
        threads: torch intra-op CPU threads while this run trains (restored afterwards). ``"auto"``: one
            thread on the CPU when a step is small (``6 N`` FLOPs per token times the tokens of a step below
            ``flops_fit.training.loop.SMALL_STEP_FLOPS``, 1e12), where more threads only spin (on a busy
            2-core machine tiny models ran up to 100x slower on two), else torch's setting;
            ``OMP_NUM_THREADS`` wins over ``"auto"``. An int sets exactly that many. Speed only: it never
            changes experiment ids.
    """

    batch_size: int = 32
    micro_batch_size: int | None = None
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_frac: float = 0.02
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    grad_clip: float | None = 1.0
    precision: Precision = "auto"
    compile: bool | Literal["auto"] = "auto"
    eval_every: int | None = None
    eval_batches: int = 8
    seed: int = 0
    num_workers: int = 0
    max_epochs: float = 1.0
    log_every: int = 10
    checkpoint_every_s: float | None = 300.0
    checkpoint_every_steps: int | None = None
    divergence_factor: float = 3.0
    threads: int | Literal["auto"] = "auto"
    # fields added after release 0.1.0 (LATER_FIELDS): last, so positional construction keeps its meaning
    warmup_steps: int | None = None
    decay_steps: int | None = None
    decay_shape: DecayShape = "linear"

    def __post_init__(self) -> None:
        for name, rule in FIELD_RULES.items():
            value = getattr(self, name)
            checked = check(f"TrainConfig.{name}", value, rule, _HINTS.get(name, ""))
            # a plain int or float is kept as given (ids and plan files record it so); NumPy scalars,
            # lists of betas and numpy bools become their Python form
            if type(value) not in (int, float):
                object.__setattr__(self, name, checked)
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"TrainConfig.batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}); the gradient is accumulated over whole micro-batches"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able values."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


#: The names of TrainConfig's fields (what a mapping of its fields may hold).
FIELD_NAMES: frozenset[str] = frozenset(f.name for f in fields(TrainConfig))


def config_from_mapping(values: Mapping[str, Any], where: str) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping of some of its fields (a JSON list for ``betas``), the rest
    defaults. Unknown fields and bad values are errors naming ``where``."""
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ValueError(
            f"{where} has unknown TrainConfig field(s) {unknown}; allowed: {sorted(FIELD_NAMES)}"
        )
    kwargs = dict(values)
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return TrainConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc
