"""Configuration of one training run (:class:`TrainConfig`), checked when it is built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Schedule = Literal["cosine", "wsd", "constant"]
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
)


#: Fields that change a run's result, and so enter experiment ids: the trajectory, and the arithmetic
#: precision (a checkpoint resumes across precisions, but a bf16 and an fp32 run are different experiments).
#: Micro-batching and compilation change the result only by float reassociation (~1e-7), so changing
#: them to fit memory or speed keeps a sweep's ids.
RESULT_FIELDS: tuple[str, ...] = (*TRAJECTORY_FIELDS, "precision")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        schedule: ``"cosine"`` decays to ``min_lr_ratio * lr`` at exactly the last step of this run (the
            horizon matches the run, as Chinchilla requires); ``"wsd"`` holds ``lr`` then decays linearly to
            ``min_lr_ratio * lr`` over the last ``decay_frac`` of the steps; ``"constant"`` holds ``lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine and wsd).
        decay_frac: fraction of the steps spent in the final decay of ``"wsd"``.
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

    def __post_init__(self) -> None:
        def positive_int(name: str, *, allow_none: bool = False, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            low = 0 if allow_zero else 1
            if not _is_int(value) or value < low:
                what = "a non-negative integer" if allow_zero else "a positive integer"
                raise ValueError(
                    f"TrainConfig.{name} must be {what}{' or None' if allow_none else ''}, got {value!r}"
                )

        def real_in(
            name: str, low: float, high: float, *, low_open: bool = False, allow_none: bool = False
        ) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            ok = _is_real(value) and math.isfinite(value) and value <= high
            ok = ok and (value > low if low_open else value >= low)
            if not ok:
                bracket = "(" if low_open else "["
                raise ValueError(
                    f"TrainConfig.{name} must be a number in {bracket}{low}, {high}], got {value!r}"
                )

        positive_int("batch_size")
        positive_int("micro_batch_size", allow_none=True)
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"TrainConfig.batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}); the gradient is accumulated over whole micro-batches"
            )
        real_in("lr", 0.0, math.inf, low_open=True)
        real_in("weight_decay", 0.0, math.inf)
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(_is_real(b) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(
                f"TrainConfig.betas must be two numbers in [0, 1), e.g. (0.9, 0.95); got {betas!r}"
            )
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        real_in("eps", 0.0, math.inf, low_open=True)
        real_in("warmup_frac", 0.0, 1.0)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        real_in("min_lr_ratio", 0.0, 1.0)
        real_in("decay_frac", 0.0, 1.0)
        real_in("grad_clip", 0.0, math.inf, low_open=True, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"TrainConfig.compile must be True, False or 'auto', got {self.compile!r}")
        positive_int("eval_every", allow_none=True, allow_zero=True)
        positive_int("eval_batches")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be a non-negative integer, got {self.seed!r}")
        positive_int("num_workers", allow_zero=True)
        real_in("max_epochs", 0.0, math.inf, low_open=True)
        positive_int("log_every")
        real_in("checkpoint_every_s", 0.0, math.inf, allow_none=True)
        positive_int("checkpoint_every_steps", allow_none=True)
        real_in("divergence_factor", 1.0, math.inf, low_open=True)

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
