"""Train one experiment: :func:`train`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flops_fit.core.outcome import RunInfo, TrainOutcome
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.core.train_config import TRAJECTORY_FIELDS, TrainConfig
from flops_fit.plan.flops import count_params
from flops_fit.training.callbacks import Callback, ProgressCallback
from flops_fit.training.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    discard_checkpoint,
    fingerprint,
    fingerprint_mismatch,
    load_checkpoint,
    model_signature,
    restore_rng,
    save_checkpoint,
)
from flops_fit.training.data import (
    DataExhaustedError,
    batch_layout,
    leading_length,
    move_to_device,
    prepare_data,
)
from flops_fit.training.device import autocast_dtype, cpu_threads, resolve_compile, resolve_precision
from flops_fit.training.distributed import SingleProcess, make_processes
from flops_fit.training.optim import build_optimizer
from flops_fit.training.schedule import lr_multiplier

logger = logging.getLogger(__name__)

AUTO_EVALS = 16
"""Evaluations spread over a run when ``TrainConfig.eval_every`` is ``None``."""


class _Diverged(Exception):
    """The loss became non-finite or exploded; the message says where."""


class _LossContractError(TypeError):
    """``loss_fn`` did not return a scalar tensor."""


@dataclass
class _Progress:
    """The mutable counters of a run, saved in checkpoints."""

    step: int = 0
    tokens_seen: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    init_loss: float | None = None
    train_loss: float = math.nan
    elapsed_s: float = 0.0

    def to_state(self) -> dict[str, Any]:
        return {
            "tokens_seen": self.tokens_seen,
            "curve": [[int(t), float(v)] for t, v in self.curve],
            "init_loss": self.init_loss,
            "train_loss": self.train_loss,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_state(cls, step: int, state: dict[str, Any]) -> _Progress:
        return cls(
            step=int(step),
            tokens_seen=int(state["tokens_seen"]),
            curve=[(int(t), float(v)) for t, v in state["curve"]],
            init_loss=state["init_loss"],
            train_loss=float(state["train_loss"]),
            elapsed_s=float(state["elapsed_s"]),
        )


class _InterruptGuard:
    """Turn the first Ctrl-C into a request to stop at the next step boundary (a second one stops at once).

    Stopping between steps keeps the model and optimiser consistent, so the checkpoint written on the way
    out is exact. Only the main thread can install signal handlers; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)


def _is_compile_error(exc: BaseException) -> bool:
    dynamo = getattr(getattr(torch, "_dynamo", None), "exc", None)
    return dynamo is not None and isinstance(exc, dynamo.TorchDynamoException)


def _check_args(
    model: Any,
    loss_fn: Any,
    num_tokens: Any,
    config: Any,
    flops_per_token: Any,
    callbacks: Any,
    checkpoint_path: Any,
) -> list[Callback]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(model(inputs), targets), got {type(loss_fn).__name__}"
        )
    if (
        isinstance(num_tokens, bool)
        or not isinstance(num_tokens, (int, float))
        or not math.isfinite(num_tokens)
        or num_tokens <= 0
    ):
        raise ValueError(
            f"num_tokens must be a positive finite number of training tokens, got {num_tokens!r}"
        )
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if flops_per_token is not None and (
        isinstance(flops_per_token, bool)
        or not isinstance(flops_per_token, (int, float))
        or not math.isfinite(flops_per_token)
        or flops_per_token <= 0
    ):
        raise ValueError(f"flops_per_token must be a positive number or None (6 N), got {flops_per_token!r}")
    if checkpoint_path is not None and not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a path or None, got {type(checkpoint_path).__name__}")
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError("callbacks must be a sequence of Callback objects, e.g. callbacks=[MyCallback()]")
    cbs = list(callbacks)
    for cb in cbs:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"every callback must subclass flops_fit.training.Callback, got {type(cb).__name__}"
            )
    return cbs


def train(
    model: nn.Module,
    dataset: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    num_tokens: float,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen, never mutated)
    eval_dataset: Any = None,
    device: str | torch.device = "auto",
    callbacks: Sequence[Callback] = (),
    checkpoint_path: str | os.PathLike[str] | None = None,
    flops_per_token: float | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    keep_checkpoint: bool = False,
) -> TrainOutcome:
    """Train ``model`` on ``num_tokens`` tokens of ``dataset`` and report the validation loss.

    Args:
        model: the network; moved (parameters and buffers) to the device and trained in place.
        dataset: a map-style or iterable torch Dataset, or a DataLoader, of ``(inputs, targets)`` items;
            ``loss_fn(model(inputs), targets)`` must be a scalar tensor. See :mod:`flops_fit.training.data`
            for token counting, order and the held-out slice.
        loss_fn: the training and validation loss (mean over the batch).
        num_tokens: training tokens D. The run takes ``ceil(num_tokens / tokens_per_step)`` full global
            batches, so it trains on ``tokens_seen >= num_tokens`` tokens (less than one batch more); every
            batch is full, so the gradient noise is the same at every step.
        config: hyper-parameters (:class:`TrainConfig`).
        eval_dataset: validation data (Dataset or DataLoader); ``None`` holds out a fixed slice of ``dataset``.
        device: ``"auto"`` (cuda > mps > cpu), or a device such as ``"cpu"``, ``"cuda:1"``.
        callbacks: :class:`Callback` objects, run on the main process.
        checkpoint_path: where to keep this run's checkpoint (``None``: no checkpoints). An existing,
            matching checkpoint is resumed; one from a different run (its fingerprint: tokens, config,
            seed, model shapes, data sizes) or an unreadable one is discarded with a warning. Completed and
            diverged runs delete it (unless ``keep_checkpoint``); failed runs keep it, so a retry resumes.
        flops_per_token: training FLOPs per token for ``TrainOutcome.flops``; ``None`` uses the transformer
            convention ``6 N`` with N the parameters outside ``nn.Embedding`` modules (pass your own count
            for other architectures, e.g. convolutional networks).
        progress: show an experiment-level progress bar (plain log lines when not on a terminal).
        distributed: ``None`` uses Accelerate data parallelism when launched with several processes
            (``WORLD_SIZE > 1``); ``True``/``False`` force or forbid it.
        keep_checkpoint: keep the checkpoint of a completed or diverged run too; the caller deletes it once
            the result is safely recorded (the sweep runner does, after its ledger append, so a crash in
            between costs at most one checkpoint interval of recomputation, not the whole run).

    The model is trained in place (on return it holds the trained weights). Torch's global RNG is seeded
    with ``config.seed`` (plus the process rank) before training, so dropout and the like are reproducible.

    Returns:
        A :class:`TrainOutcome`. Exceptions raised by user code (model, data, loss, callbacks) during
        training give ``status="failed"``; a non-finite loss, or a ``log_every``-window mean above
        ``config.divergence_factor`` times the first step's loss, gives ``status="diverged"``.

    Raises:
        TypeError, ValueError: bad arguments or data that breaks the contract, before training starts.
        KeyboardInterrupt: on Ctrl-C, after finishing the current step and writing a checkpoint (when
            ``checkpoint_path`` is set); calling ``train`` again with the same arguments resumes.
    """
    user_callbacks = _check_args(
        model, loss_fn, num_tokens, config, flops_per_token, callbacks, checkpoint_path
    )
    procs = make_processes(distributed, device)
    dev = procs.device
    precision = resolve_precision(config.precision, dev)
    layout = batch_layout(config, procs.world_size, procs.rank)
    plan, train_data, eval_data = prepare_data(
        dataset,
        eval_dataset,
        num_tokens=num_tokens,
        config=config,
        layout=layout,
        pin_memory=dev.type == "cuda",
    )
    planned = plan.total_steps * plan.tokens_per_step
    if planned > num_tokens * 1.05:
        logger.warning(
            "num_tokens=%s is not a multiple of the %s tokens per step: training %s tokens (+%.1f%%)",
            f"{num_tokens:,.0f}",
            f"{plan.tokens_per_step:,}",
            f"{planned:,}",
            100 * (planned / num_tokens - 1),
        )
    with cpu_threads(dev, procs.local_world_size):
        return _Run(
            model,
            loss_fn,
            config,
            procs,
            precision,
            plan,
            train_data,
            eval_data,
            num_tokens=math.ceil(num_tokens),
            checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
            flops_per_token=flops_per_token,
            callbacks=[*user_callbacks, ProgressCallback()] if progress else user_callbacks,
            keep_checkpoint=bool(keep_checkpoint),
        ).run()


class _Run:
    """One call of :func:`train` after its arguments were checked: set-up, resume, loop, outcome."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        config: TrainConfig,
        procs: SingleProcess,
        precision: str,
        plan: Any,
        train_data: Any,
        eval_data: Any,
        *,
        num_tokens: int,
        checkpoint_path: Path | None,
        flops_per_token: float | None,
        callbacks: list[Callback],
        keep_checkpoint: bool = False,
    ):
        self.keep_checkpoint = keep_checkpoint
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.procs = procs
        self.device = procs.device
        self.precision = precision
        self.plan = plan
        self.train_data = train_data
        self.eval_data = eval_data
        self.num_tokens = num_tokens
        self.checkpoint_path = checkpoint_path
        self.callbacks = callbacks if procs.is_main else []
        self.total_steps = plan.total_steps
        if config.eval_every is None:
            self.eval_every = max(1, math.ceil(self.total_steps / AUTO_EVALS))
        else:
            self.eval_every = config.eval_every
        self.num_params = count_params(model, "non_embedding")
        self.flops_per_token = (
            float(flops_per_token) if flops_per_token is not None else FLOPS_PER_PARAM_TOKEN * self.num_params
        )
        dtype = autocast_dtype(precision)
        self._autocast = (
            (lambda: torch.autocast(self.device.type, dtype=dtype))
            if dtype is not None
            else contextlib.nullcontext
        )
        self._reduce_dtype = torch.float32 if self.device.type == "mps" else torch.float64

    # ---------------------------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        torch.manual_seed(self.config.seed + self.procs.rank)
        self.model.to(self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.config, self.device)
        self.base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.fingerprint = fingerprint(
            format=CHECKPOINT_FORMAT,
            num_tokens=self.num_tokens,
            total_steps=self.total_steps,
            tokens_per_step=self.plan.tokens_per_step,
            config={k: v for k, v in self.config.to_dict().items() if k in TRAJECTORY_FIELDS},
            eval_every=self.eval_every,
            precision=self.precision,
            model=model_signature(self.model),
            optimizer=[
                type(self.optimizer).__name__,
                [len(g["params"]) for g in self.optimizer.param_groups],
            ],
            data=[
                self.plan.kind,
                self.plan.tokens_per_sample,
                self.plan.train_samples,
                self.plan.eval_samples,
            ],
        )
        self.state = _Progress()
        self.resumed_from: int | None = None
        self._resume()
        self.ddp_model = self.procs.wrap(self.model)
        self.compiled = resolve_compile(self.config.compile, self.device)
        self.forward_model: Callable[[Any], Any] = (
            torch.compile(self.ddp_model) if self.compiled else self.ddp_model
        )
        # Validation bypasses DistributedDataParallel: processes may hold different numbers of validation
        # batches, and DDP's forward can run collectives (buffer broadcasts) that would then not match.
        if self.ddp_model is self.model:
            self.eval_model: Callable[[Any], Any] = self.forward_model
        else:
            self.eval_model = torch.compile(self.model) if self.compiled else self.model

    def _resume(self) -> None:
        if self.checkpoint_path is None:
            return
        saved = load_checkpoint(self.checkpoint_path, discard_corrupt=self.procs.is_main)
        if saved is None:
            return
        differing = fingerprint_mismatch(saved["fingerprint"], self.fingerprint)
        if differing:
            logger.warning(
                "checkpoint %s belongs to a different run (differs in %s); ignoring it and starting from scratch",
                self.checkpoint_path,
                ", ".join(differing),
            )
            return
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.scaler is not None and saved.get("scaler") is not None:
                self.scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RuntimeError(
                f"checkpoint {self.checkpoint_path} matches this run's fingerprint but could not be loaded ({exc}); "
                "delete it to start the experiment from scratch"
            ) from exc
        rng = saved["rng"]
        if len(rng) == self.procs.world_size:
            restore_rng(rng[self.procs.rank])
        else:
            logger.warning(
                "checkpoint was written by %d process(es), now %d: random streams (dropout) restart from the seed",
                len(rng),
                self.procs.world_size,
            )
        self.state = _Progress.from_state(saved["step"], saved["loop"])
        self.resumed_from = self.state.step
        logger.info("resuming %s at step %d of %d", self.checkpoint_path, self.state.step, self.total_steps)

    # ---------------------------------------------------------------------------------------------- steps

    def _forward(self, inputs: Any, training: bool) -> Any:
        try:
            return (self.forward_model if training else self.eval_model)(inputs)
        except Exception as exc:
            if not self.compiled or not _is_compile_error(exc):
                raise
            # A failed forward produced no gradients, so nothing needs undoing before the eager retry.
            logger.warning(
                "torch.compile failed (%s: %s); continuing without compilation",
                type(exc).__name__,
                str(exc)[:300],
            )
            self.forward_model, self.eval_model, self.compiled = self.ddp_model, self.model, False
            return (self.forward_model if training else self.eval_model)(inputs)

    def _loss(self, inputs: Any, targets: Any, training: bool = True) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        inputs = move_to_device(inputs, self.device, non_blocking)
        targets = move_to_device(targets, self.device, non_blocking)
        with self._autocast():
            loss = self.loss_fn(self._forward(inputs, training), targets)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise _LossContractError(
                f"loss_fn must return a scalar tensor (mean over the batch), got {shape}; reduce it, e.g. "
                "with .mean(), or use reduction='mean'"
            )
        return loss

    def _train_step(self, micro_batches: list[tuple[Any, Any]]) -> torch.Tensor:
        """One optimiser step over this process's micro-batches; returns the mean loss (on the device)."""
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, (inputs, targets) in enumerate(micro_batches):
            sync = self.procs.no_sync(self.ddp_model) if i < accum - 1 else contextlib.nullcontext()
            with sync:
                loss = self._loss(inputs, targets)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach().float()
        if self.config.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                self.params, self.config.grad_clip, foreach=self.device.type != "mps"
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / accum

    def _evaluate(self) -> float:
        """Mean validation loss over the fixed validation samples (all processes agree on it)."""
        self.ddp_model.eval()
        sums = torch.zeros(2, device=self.device, dtype=self._reduce_dtype)
        with torch.no_grad():
            for inputs, targets in self.eval_data.batches():
                count = leading_length(targets)
                sums[0] += self._loss(inputs, targets, training=False).detach().to(self._reduce_dtype) * count
                sums[1] += count
        self.ddp_model.train()
        total, count = self.procs.all_reduce_sum(sums).tolist()
        return total / count if count > 0 else math.nan

    # ---------------------------------------------------------------------------------------------- events

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def _save(self, step: int) -> None:
        rng = self.procs.gather(capture_rng())
        if not self.procs.is_main or self.checkpoint_path is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "data": self.train_data.position(step),
            "loop": {**self.state.to_state(), "elapsed_s": self._elapsed()},
        }
        start = time.perf_counter()
        try:
            save_checkpoint(self.checkpoint_path, state)
        except OSError as exc:
            logger.warning(
                "could not write checkpoint %s (%s); training continues", self.checkpoint_path, exc
            )
            return
        self.checkpoint_s += time.perf_counter() - start
        self._emit("on_checkpoint", step, self.checkpoint_path)

    def _elapsed(self) -> float:
        return self.state.elapsed_s + (time.perf_counter() - self._segment_start)

    def _check_divergence(self, first: int, losses: list[float]) -> None:
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise _Diverged(f"training loss became {value} at step {first + i + 1} of {self.total_steps}")
        if self.state.init_loss is None:
            self.state.init_loss = losses[0]
        mean = sum(losses) / len(losses)
        limit = self.config.divergence_factor * self.state.init_loss
        if self.state.init_loss > 0 and mean > limit:
            raise _Diverged(
                f"mean training loss {mean:.4g} over steps {first + 1}-{first + len(losses)} of {self.total_steps} "
                f"exceeds {self.config.divergence_factor:g} x the first step's loss {self.state.init_loss:.4g}"
            )

    # ---------------------------------------------------------------------------------------------- loop

    def run(self) -> TrainOutcome:
        self._setup()
        self.checkpoint_s = 0.0
        self._segment_start = time.perf_counter()
        info = RunInfo(
            total_steps=self.total_steps,
            start_step=self.state.step,
            num_tokens=self.num_tokens,
            tokens_per_step=self.plan.tokens_per_step,
            device=str(self.device),
            precision=self.precision,
            compiled=self.compiled,
            world_size=self.procs.world_size,
            num_params=self.num_params,
        )
        status, error = "completed", None
        final_loss = math.nan
        stream: Iterator[Any] | None = None
        consistent = True
        saved_step = -1
        save_now = stop_now = False
        with _InterruptGuard() as interrupt:
            try:
                self._emit("on_train_start", info)
                if self._evaluation_missed():
                    self._record_eval(self.state.step)
                stream = self.train_data.steps(self.state.step, self.total_steps)
                window: list[torch.Tensor] = []
                window_start = self.state.step
                last_save_step, last_save_time = self.state.step, time.monotonic()
                while self.state.step < self.total_steps:
                    micro, step_tokens = next(stream)
                    multiplier = lr_multiplier(
                        self.state.step,
                        self.total_steps,
                        schedule=self.config.schedule,
                        warmup_frac=self.config.warmup_frac,
                        min_lr_ratio=self.config.min_lr_ratio,
                        decay_frac=self.config.decay_frac,
                    )
                    for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                        group["lr"] = base * multiplier
                    consistent = False
                    window.append(self._train_step(micro))
                    self.state.step += 1
                    self.state.tokens_seen += step_tokens
                    consistent = True
                    step = self.state.step
                    boundary = step % self.config.log_every == 0 or step == self.total_steps
                    boundary = boundary or (interrupt.requested and self.procs.world_size == 1)
                    if boundary:
                        due = (
                            self.config.checkpoint_every_steps is not None
                            and step - last_save_step >= self.config.checkpoint_every_steps
                        ) or (
                            self.config.checkpoint_every_s is not None
                            and time.monotonic() - last_save_time >= self.config.checkpoint_every_s
                        )
                        flags = torch.tensor(
                            [
                                float(due and self.procs.is_main and step < self.total_steps),
                                float(interrupt.requested),
                            ],
                            device=self.device,
                        )
                        packed = self.procs.all_reduce_sum(torch.cat([torch.stack(window), flags]))
                        values = packed.tolist()
                        losses = [v / self.procs.world_size for v in values[: len(window)]]
                        save_now, stop_now = values[-2] > 0, values[-1] > 0
                        self._check_divergence(window_start, losses)
                        self.state.train_loss = sum(losses) / len(losses)
                        self._emit(
                            "on_log",
                            step,
                            self.state.tokens_seen,
                            self.state.train_loss,
                            self.optimizer.param_groups[0]["lr"],
                        )
                        window, window_start = [], step
                    if self.eval_every and step % self.eval_every == 0 and step < self.total_steps:
                        self._record_eval(step)
                    if boundary and (save_now or stop_now) and self.checkpoint_path is not None:
                        self._save(step)
                        saved_step, last_save_step, last_save_time = step, step, time.monotonic()
                    if boundary and stop_now:
                        raise KeyboardInterrupt
                final_loss = self._record_eval(self.total_steps)
                if not math.isfinite(final_loss):
                    raise _Diverged(
                        f"validation loss is {final_loss} after the last step ({self.total_steps})"
                    )
            except _Diverged as exc:
                status, error = "diverged", str(exc)
                final_loss = math.nan
            except _LossContractError:
                raise
            except KeyboardInterrupt:
                raise self._interrupted(saved_step, consistent) from None
            except DataExhaustedError as exc:
                status, error = "failed", str(exc)
                final_loss = math.nan
            except Exception as exc:
                if interrupt.requested:  # e.g. DataLoader workers killed by the same Ctrl-C
                    raise self._interrupted(saved_step, consistent) from exc
                status, error = (
                    "failed",
                    f"{type(exc).__name__}: {exc} (at step {self.state.step + 1} of {self.total_steps})",
                )
                final_loss = math.nan
                logger.debug("training failed", exc_info=True)
            finally:
                if stream is not None and hasattr(stream, "close"):
                    stream.close()
        return self._finish(status, error, final_loss)

    def _evaluation_missed(self) -> bool:
        """True when a resumed run's checkpoint sits at an evaluation step whose evaluation was interrupted
        (a Ctrl-C between the step and its evaluation): it is made up before training goes on."""
        step, curve = self.state.step, self.state.curve
        return (
            self.resumed_from is not None
            and bool(self.eval_every)
            and 0 < step < self.total_steps
            and step % self.eval_every == 0
            and (not curve or curve[-1][0] < self.state.tokens_seen)
        )

    def _record_eval(self, step: int) -> float:
        value = self._evaluate()
        self.state.curve.append((self.state.tokens_seen, value))
        self._emit("on_eval", step, self.state.tokens_seen, value)
        if not math.isfinite(value):
            raise _Diverged(f"validation loss became {value} at step {step} of {self.total_steps}")
        return value

    def _interrupted(self, saved_step: int, consistent: bool) -> KeyboardInterrupt:
        """Checkpoint the last completed step if that was not done yet (one process, between steps) and
        return the KeyboardInterrupt to re-raise, with a message saying how to resume."""
        step = self.state.step
        if (
            saved_step != step
            and consistent
            and self.procs.world_size == 1
            and self.checkpoint_path is not None
        ):
            self._save(step)
            saved_step = step
        message = self._interrupt_message(step, saved_step == step)
        for cb in self.callbacks:
            try:
                cb.on_interrupt(step)
            except Exception:
                logger.exception("callback %s failed in on_interrupt (ignored)", type(cb).__name__)
        logger.warning("%s", message)
        return KeyboardInterrupt(message)

    def _interrupt_message(self, step: int, saved: bool) -> str:
        where = f"interrupted at step {step} of {self.total_steps}"
        if saved:
            return (
                f"{where}; checkpoint saved to {self.checkpoint_path}: run the same command again to resume"
            )
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            return f"{where}; the last checkpoint ({self.checkpoint_path}) is kept: run the same command again to resume from it"
        return f"{where}; no checkpoint (pass checkpoint_path= to make runs resumable)"

    def _finish(self, status: str, error: str | None, final_loss: float) -> TrainOutcome:
        wall = self._elapsed()
        finished = status in ("completed", "diverged")
        if self.checkpoint_path is not None and finished and self.procs.is_main and not self.keep_checkpoint:
            discard_checkpoint(self.checkpoint_path)  # read-only storage: the run stays finished
        elif status == "failed" and self.checkpoint_path is not None and self.checkpoint_path.exists():
            logger.info(
                "keeping checkpoint %s of the failed run: a retry resumes from it", self.checkpoint_path
            )
        if self.checkpoint_s and wall > 0:
            logger.debug(
                "checkpointing took %.3f s (%.2f%% of %.1f s)",
                self.checkpoint_s,
                100 * self.checkpoint_s / wall,
                wall,
            )
        outcome = TrainOutcome(
            status=status,
            final_loss=final_loss,
            train_loss=self.state.train_loss,
            tokens_seen=self.state.tokens_seen,
            steps=self.state.step,
            flops=self.flops_per_token * self.state.tokens_seen,
            wall_time_s=wall,
            tokens_per_s=self.state.tokens_seen / wall if wall > 0 else math.nan,
            curve=list(self.state.curve),
            error=error,
            num_params=self.num_params,
            flops_per_token=self.flops_per_token,
            resumed_from_step=self.resumed_from,
        )
        for cb in self.callbacks:
            try:
                cb.on_train_end(outcome)
            except Exception:
                logger.exception("callback %s failed in on_train_end (ignored)", type(cb).__name__)
        return outcome
