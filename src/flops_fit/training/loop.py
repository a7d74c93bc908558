"""Train one experiment: :func:`train`.

The loop (:meth:`_Run._train`) reads like nanoGPT's: for each step set the learning rate, take the step
(forward and backward over the micro-batches, clip, optimiser), then at a log boundary log, evaluate when
due, and checkpoint. Set-up, resume, evaluation, checkpoints and how a run ends are short helpers of
:class:`_Run` around it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from flops_fit.core.outcome import RunInfo, TrainOutcome
from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.core.schedule import lr_multiplier
from flops_fit.core.train_config import TrainConfig
from flops_fit.core.validate import POSITIVE, Instance, Nullable, Real, check
from flops_fit.plan.flops import count_params
from flops_fit.training.branching import (
    check_branch_points,
    check_branch_steps,
    load_trunk,
    matching_checkpoint,
    restore_run,
    run_fingerprint,
    write_branch_point,
)
from flops_fit.training.callbacks import Callback, ProgressCallback
from flops_fit.training.checkpoint import (
    CHECKPOINT_FORMAT,
    LoopState,
    capture_rng,
    discard_checkpoint,
    save_checkpoint,
)
from flops_fit.training.data import (
    Batch,
    DataExhaustedError,
    DataPlan,
    batch_layout,
    leading_length,
    move_to_device,
    prepare_data,
)
from flops_fit.training.device import autocast_dtype, cpu_threads, resolve_compile, resolve_precision
from flops_fit.training.distributed import SingleProcess, make_processes
from flops_fit.training.interrupt import InterruptGuard
from flops_fit.training.optim import build_optimizer

logger = logging.getLogger(__name__)

AUTO_EVALS = 16
"""Evaluations spread over a run when ``TrainConfig.eval_every`` is ``None``."""
#: ``TrainConfig(threads="auto")``: a run whose training step (``6 N`` FLOPs per token, or the given
#: ``flops_per_token``, times the tokens of one step on a process) is below this trains on one CPU thread.
#: On a busy 2-core machine one thread beat torch's default of two at every size measured (18-24x for GPTs of
#: 1e8-3e8 FLOPs per step, 1.8x at 2e11, 1.2x at 5e11: the crossing is near 1e12); docs/training.md.
SMALL_STEP_FLOPS = 1e12

_NUM_TOKENS = Real(0, lo_open=True, range_label="a positive finite number of training tokens")
_FLOPS_PER_TOKEN = Nullable(POSITIVE)
_PATH = Nullable(Instance(str, os.PathLike))


class _Diverged(Exception):
    """The loss became non-finite or exploded; the message says where."""


class _LossContractError(TypeError):
    """``loss_fn`` did not return a scalar tensor."""


class _Agreed(NamedTuple):
    """What all processes agreed on at a log boundary: write a checkpoint, stop (Ctrl-C)."""

    save: bool
    stop: bool


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
    """The callbacks as a list, after checking every argument of :func:`train` that is not data."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(model(inputs), targets), got {type(loss_fn).__name__}"
        )
    check("num_tokens", num_tokens, _NUM_TOKENS)
    check("config", config, Instance(TrainConfig))
    check("flops_per_token", flops_per_token, _FLOPS_PER_TOKEN, "None: 6 N")
    check("checkpoint_path", checkpoint_path, _PATH)
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError("callbacks must be a sequence of Callback objects, e.g. callbacks=[MyCallback()]")
    cbs = list(callbacks)
    for cb in cbs:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"every callback must subclass flops_fit.training.Callback, got {type(cb).__name__}"
            )
    return cbs


def _prepare(
    dataset: Any, eval_dataset: Any, num_tokens: float, config: TrainConfig, procs: SingleProcess
) -> tuple[DataPlan, Any, Any]:
    """This process's share of the data (:func:`prepare_data`), warning when whole batches overshoot the
    ``num_tokens`` tokens asked for by more than 5%."""
    layout = batch_layout(config, procs.world_size, procs.rank)
    prepared = prepare_data(
        dataset,
        eval_dataset,
        num_tokens=num_tokens,
        config=config,
        layout=layout,
        pin_memory=procs.device.type == "cuda",
    )
    plan = prepared[0]
    planned = plan.total_steps * plan.tokens_per_step
    if planned > num_tokens * 1.05:
        logger.warning(
            "num_tokens=%s is not a multiple of the %s tokens per step: training %s tokens (+%.1f%%)",
            f"{num_tokens:,.0f}",
            f"{plan.tokens_per_step:,}",
            f"{planned:,}",
            100 * (planned / num_tokens - 1),
        )
    return prepared


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
    branch_points: Mapping[int, str | os.PathLike[str]] | None = None,
    init_checkpoint: str | os.PathLike[str] | None = None,
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
        branch_points: ``{step: path}``: after optimiser step ``step`` (1 to the last) also write a full,
            kept checkpoint to ``path`` (one of that step and run is left alone): a WSD trunk's branch points.
        init_checkpoint: a trunk's branch point to continue when ``checkpoint_path`` holds none of this run:
            the same run but for horizon and cooldown, with its learning rate before it (:mod:`~.branching`).

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
    # long: the docstring documents every argument of the public entry point; the code is 25 lines
    user_callbacks = _check_args(
        model, loss_fn, num_tokens, config, flops_per_token, callbacks, checkpoint_path
    )
    check("init_checkpoint", init_checkpoint, _PATH)
    points = check_branch_points(branch_points, checkpoint_path)
    procs = make_processes(distributed, device)
    precision = resolve_precision(config.precision, procs.device)
    prepared = _prepare(dataset, eval_dataset, num_tokens, config, procs)
    with _threads_of_run(model, config, procs, flops_per_token, prepared[0]):
        return _Run(
            model,
            loss_fn,
            config,
            procs,
            precision,
            prepared,
            num_tokens=math.ceil(num_tokens),
            checkpoint_path=None if checkpoint_path is None else Path(checkpoint_path),
            flops_per_token=flops_per_token,
            callbacks=[*user_callbacks, ProgressCallback()] if progress else user_callbacks,
            keep_checkpoint=bool(keep_checkpoint),
            branch_points=points,
            init_checkpoint=None if init_checkpoint is None else Path(init_checkpoint),
        ).run()


def _step_flops(model: nn.Module, flops_per_token: float | None, tokens_per_step: float) -> float:
    """Training FLOPs of one step on one process: FLOPs per token (default ``6 N``) times its tokens."""
    per_token = (
        flops_per_token
        if flops_per_token is not None
        else FLOPS_PER_PARAM_TOKEN * count_params(model, "non_embedding")
    )
    return float(per_token) * tokens_per_step


@contextlib.contextmanager
def _threads_of_run(
    model: nn.Module, config: TrainConfig, procs: SingleProcess, flops_per_token: float | None, data: DataPlan
) -> Iterator[None]:
    """The CPU threads of one run: capped per process on a node, then ``config.threads`` (:func:`run_threads`)."""
    step_flops = _step_flops(model, flops_per_token, data.tokens_per_step / procs.world_size)
    with (
        cpu_threads(procs.device, procs.local_world_size),
        run_threads(config.threads, procs.device, step_flops),
    ):
        yield


@contextlib.contextmanager
def run_threads(threads: int | str, device: torch.device, step_flops: float) -> Iterator[int]:
    """torch's intra-op CPU threads while one run trains (process-global: restored afterwards); yields them.

    ``threads`` is ``TrainConfig.threads``: an int sets exactly that many; ``"auto"`` sets one on the CPU
    when a step is below :data:`SMALL_STEP_FLOPS` (FLOPs) and ``OMP_NUM_THREADS`` is unset, else keeps
    torch's setting."""
    previous = torch.get_num_threads()
    if threads != "auto":
        wanted = int(threads)
    elif device.type == "cpu" and step_flops < SMALL_STEP_FLOPS and not os.environ.get("OMP_NUM_THREADS"):
        wanted = 1
    else:
        wanted = previous
    if wanted == previous:
        yield previous
        return
    logger.debug("training on %d CPU thread(s) (was %d; %.3g FLOPs per step)", wanted, previous, step_flops)
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


class _Run:
    """One call of :func:`train` after its arguments were checked: set-up, resume, loop, outcome."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        config: TrainConfig,
        procs: SingleProcess,
        precision: str,
        prepared: tuple[DataPlan, Any, Any],
        *,
        num_tokens: int,
        checkpoint_path: Path | None,
        flops_per_token: float | None,
        callbacks: list[Callback],
        keep_checkpoint: bool = False,
        branch_points: Mapping[int, Path] | None = None,
        init_checkpoint: Path | None = None,
    ):
        self.keep_checkpoint = keep_checkpoint
        self.branch_points, self.init_checkpoint = dict(branch_points or {}), init_checkpoint
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.procs = procs
        self.device = procs.device
        self.precision = precision
        self.plan, self.train_data, self.eval_data = prepared
        self.num_tokens = num_tokens
        self.checkpoint_path = checkpoint_path
        self.callbacks = callbacks if procs.is_main else []
        self.total_steps = self.plan.total_steps
        check_branch_steps(self.branch_points, self.total_steps)
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
        # The loop's own position, never checkpointed: the last step saved (-1: none), whether the model and
        # optimiser are between steps (a Ctrl-C then checkpoints them), the open data stream.
        self.saved_step = -1
        self.consistent = True
        self.stream: Iterator[tuple[list[Batch], int]] | None = None

    # ---------------------------------------------------------------------------------------------- loop

    def run(self) -> TrainOutcome:
        """Set up, train, and turn how training ended into the outcome (Ctrl-C is re-raised)."""
        self._setup()
        self.checkpoint_s = 0.0
        self._segment_start = time.perf_counter()
        with InterruptGuard() as self.interrupt:
            try:
                ended = ("completed", None, self._train())
            except _LossContractError:
                raise
            except KeyboardInterrupt:
                raise self._interrupted() from None
            except Exception as exc:
                if self.interrupt.requested and not isinstance(exc, (_Diverged, DataExhaustedError)):
                    raise self._interrupted() from exc  # e.g. DataLoader workers killed by the same Ctrl-C
                ended = self._failure(exc)
            finally:
                if self.stream is not None and hasattr(self.stream, "close"):
                    self.stream.close()
        return self._finish(*ended)

    def _train(self) -> float:
        """The loop: set the learning rate, step, log, evaluate, checkpoint. Returns the final validation loss."""
        stream = self._start()
        while self.state.step < self.total_steps:
            micro_batches, tokens = next(stream)
            self._set_lr(self.state.step)
            self._step(micro_batches, tokens)
            step = self.state.step
            agreed = self._log(step) if self._log_due(step) else None
            if self._eval_due(step):
                self._record_eval(step)
            if step in self.branch_points:
                self._write_branch_point(step)
            if agreed is not None:
                self._checkpoint_or_stop(step, agreed)
        return self._record_eval(self.total_steps)

    def _start(self) -> Iterator[tuple[list[Batch], int]]:
        """Announce the run, make up an evaluation a Ctrl-C skipped, and open the data stream."""
        self._emit("on_train_start", self._info())
        if self._evaluation_missed():
            self._record_eval(self.state.step)
        if self.state.step in self.branch_points and not self.from_trunk:
            self._write_branch_point(self.state.step)  # a Ctrl-C saved the step before its branch point
        self.stream = self.train_data.steps(self.state.step, self.total_steps)
        self.window: list[torch.Tensor] = []  # the losses (on the device) since the last log
        self.window_start = self.state.step
        self.last_save_step, self.last_save_time = self.state.step, time.monotonic()
        return self.stream

    def _set_lr(self, step: int) -> None:
        """Every parameter group's learning rate for the update at 0-based ``step``: its base times the schedule."""
        multiplier = lr_multiplier(
            step,
            self.total_steps,
            schedule=self.config.schedule,
            warmup_frac=self.config.warmup_frac,
            min_lr_ratio=self.config.min_lr_ratio,
            decay_frac=self.config.decay_frac,
            warmup_steps=self.config.warmup_steps,
            decay_steps=self.config.decay_steps,
            decay_shape=self.config.decay_shape,
        )
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * multiplier

    def _step(self, micro_batches: list[Batch], tokens: int) -> None:
        """One optimiser step on ``tokens`` tokens (all processes): forward and backward, clip, update."""
        self.consistent = False  # the model and optimiser are mid-update until the step is counted
        loss = self._forward_backward(micro_batches)
        self._clip_gradients()
        self._update()
        self.window.append(loss)
        self.state.step += 1
        self.state.tokens_seen += tokens
        self.consistent = True

    def _log_due(self, step: int) -> bool:
        """Every ``log_every`` steps, after the last, and (one process) as soon as Ctrl-C was pressed."""
        if step % self.config.log_every == 0 or step == self.total_steps:
            return True
        return self.interrupt.requested and self.procs.world_size == 1

    def _log(self, step: int) -> _Agreed:
        """Reduce the window's losses over processes (with the checkpoint and stop wishes, one collective),
        check them for divergence and report their mean to the callbacks."""
        wishes = [
            float(self._checkpoint_due(step) and self.procs.is_main and step < self.total_steps),
            float(self.interrupt.requested),
        ]
        flags = torch.tensor(wishes, device=self.device)
        values = self.procs.all_reduce_sum(torch.cat([torch.stack(self.window), flags])).tolist()
        losses = [v / self.procs.world_size for v in values[: len(self.window)]]
        agreed = _Agreed(save=values[-2] > 0, stop=values[-1] > 0)
        self._check_divergence(self.window_start, losses)
        self.state.train_loss = sum(losses) / len(losses)
        lr = self.optimizer.param_groups[0]["lr"]
        self._emit("on_log", step, self.state.tokens_seen, self.state.train_loss, lr)
        self.window, self.window_start = [], step
        return agreed

    def _eval_due(self, step: int) -> bool:
        """Every ``eval_every`` steps before the last (the last step's evaluation ends the run)."""
        return bool(self.eval_every) and step % self.eval_every == 0 and step < self.total_steps

    def _checkpoint_due(self, step: int) -> bool:
        """``checkpoint_every_steps`` steps or ``checkpoint_every_s`` seconds since the last checkpoint."""
        every_steps, every_s = self.config.checkpoint_every_steps, self.config.checkpoint_every_s
        if every_steps is not None and step - self.last_save_step >= every_steps:
            return True
        return every_s is not None and time.monotonic() - self.last_save_time >= every_s

    def _checkpoint_or_stop(self, step: int, agreed: _Agreed) -> None:
        """Write the checkpoint the processes agreed on (a stop writes one too), then stop if asked."""
        if (agreed.save or agreed.stop) and self.checkpoint_path is not None:
            self._save(step)
            self.saved_step, self.last_save_step, self.last_save_time = step, step, time.monotonic()
        if agreed.stop:
            raise KeyboardInterrupt

    # ---------------------------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        """Seed, place the model, build the optimiser, resume from a checkpoint, then wrap and compile."""
        torch.manual_seed(self.config.seed + self.procs.rank)
        self.model.to(self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.config, self.device)
        self.base_lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.fingerprint = self._fingerprint()
        self.state = LoopState()
        self.resumed_from: int | None = None
        self.from_trunk = False
        saved = matching_checkpoint(self.checkpoint_path, self.fingerprint, self.procs.is_main)
        if saved is not None:
            self._restore(saved, self.checkpoint_path, "resuming %s at step %d of %d")
        elif self.init_checkpoint is not None:
            trunk = load_trunk(self.init_checkpoint, self.fingerprint, self.total_steps)
            self._restore(trunk, self.init_checkpoint, "starting from trunk checkpoint %s at step %d of %d")
            self.from_trunk = True
        self._wrap()

    def _fingerprint(self) -> dict[str, Any]:
        """What this run is (tokens, steps, trajectory config, model and optimiser shapes, data sizes)."""
        plan = self.plan
        return run_fingerprint(
            self.model,
            self.optimizer,
            self.config,
            [plan.kind, plan.tokens_per_sample, plan.train_samples, plan.eval_samples],
            num_tokens=self.num_tokens,
            total_steps=self.total_steps,
            tokens_per_step=plan.tokens_per_step,
            eval_every=self.eval_every,
            precision=self.precision,
        )

    def _wrap(self) -> None:
        """The data-parallel model, compiled where asked; the model validation runs (never DDP's)."""
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

    def _restore(self, saved: dict[str, Any], path: Path, message: str) -> None:
        """Load the model, optimiser, scaler, random streams and counters of a checkpoint (this run's, or
        its trunk's); ``message`` logs it (path, step, total steps)."""
        self.state = restore_run(saved, path, self.model, self.optimizer, self.scaler, self.procs)
        self.resumed_from = self.state.step
        logger.info(message, path, self.state.step, self.total_steps)

    def _info(self) -> RunInfo:
        return RunInfo(
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

    def _forward_backward(self, micro_batches: list[Batch]) -> torch.Tensor:
        """Accumulate the gradients of this process's micro-batches (DDP syncs on the last); returns their
        mean loss, on the device."""
        accum = len(micro_batches)
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, (inputs, targets) in enumerate(micro_batches):
            sync = self.procs.no_sync(self.ddp_model) if i < accum - 1 else contextlib.nullcontext()
            with sync:
                loss = self._loss(inputs, targets)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach().float()
        return total / accum

    def _clip_gradients(self) -> None:
        """Clip the global gradient norm to ``config.grad_clip`` (unscaled first under fp16)."""
        if self.config.grad_clip is None:
            return
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=self.device.type != "mps")

    def _update(self) -> None:
        """The optimiser step (through the fp16 gradient scaler when there is one), then clear the gradients."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

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

    def _record_eval(self, step: int) -> float:
        """Evaluate, add the point to the curve and tell the callbacks; a non-finite loss diverges the run."""
        value = self._evaluate()
        self.state.curve.append((self.state.tokens_seen, value))
        self._emit("on_eval", step, self.state.tokens_seen, value)
        if not math.isfinite(value):
            raise _Diverged(f"validation loss became {value} at step {step} of {self.total_steps}")
        return value

    def _evaluation_missed(self) -> bool:
        """True when a resumed run's checkpoint sits at an evaluation step whose evaluation was interrupted
        (a Ctrl-C between the step and its evaluation): it is made up before training goes on."""
        step, curve = self.state.step, self.state.curve
        return (
            self.resumed_from is not None
            and not self.from_trunk
            and bool(self.eval_every)
            and 0 < step < self.total_steps
            and step % self.eval_every == 0
            and (not curve or curve[-1][0] < self.state.tokens_seen)
        )

    def _check_divergence(self, first: int, losses: list[float]) -> None:
        """Raise :class:`_Diverged` for a non-finite loss, or a window mean above ``divergence_factor`` times
        the first step's loss."""
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

    # ---------------------------------------------------------------------------------------------- events

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def _emit_ignoring_errors(self, event: str, *args: Any) -> None:
        """:meth:`_emit` for the last event of a run: a failing callback is logged, the others still run."""
        for cb in self.callbacks:
            try:
                getattr(cb, event)(*args)
            except Exception:
                logger.exception("callback %s failed in %s (ignored)", type(cb).__name__, event)

    def _save(self, step: int) -> None:
        """Checkpoint the state after ``step`` steps (every process gives its RNG state; the main one writes)."""
        rng = self.procs.gather(capture_rng())
        if not self.procs.is_main or self.checkpoint_path is None:
            return
        start = time.perf_counter()
        try:
            save_checkpoint(self.checkpoint_path, self._checkpoint_state(step, rng))
        except OSError as exc:
            logger.warning(
                "could not write checkpoint %s (%s); training continues", self.checkpoint_path, exc
            )
            return
        self.checkpoint_s += time.perf_counter() - start
        self._emit("on_checkpoint", step, self.checkpoint_path)

    def _write_branch_point(self, step: int) -> None:
        """Write the trunk checkpoint of branch point ``step`` (every process gives its RNG state; the main
        one writes, unless the file holds it already). A failed write fails the run: its branches need it."""
        rng = self.procs.gather(capture_rng())
        if self.procs.is_main:
            start = time.perf_counter()
            write_branch_point(self.branch_points[step], self._checkpoint_state(step, rng))
            self.checkpoint_s += time.perf_counter() - start

    def _checkpoint_state(self, step: int, rng: list[Any]) -> dict[str, Any]:
        """A checkpoint of the state after ``step`` steps (``rng``: every process's random streams)."""
        return {
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

    def _elapsed(self) -> float:
        return self.state.elapsed_s + (time.perf_counter() - self._segment_start)

    # ---------------------------------------------------------------------------------------------- endings

    def _failure(self, exc: Exception) -> tuple[str, str, float]:
        """Status, error and final loss of a run that ``exc`` ended: diverged, or failed."""
        if isinstance(exc, _Diverged):
            return "diverged", str(exc), math.nan
        if isinstance(exc, DataExhaustedError):
            return "failed", str(exc), math.nan
        logger.debug("training failed", exc_info=exc)
        where = f"at step {self.state.step + 1} of {self.total_steps}"
        return "failed", f"{type(exc).__name__}: {exc} ({where})", math.nan

    def _interrupted(self) -> KeyboardInterrupt:
        """Checkpoint the last completed step if that was not done yet (one process, between steps) and
        return the KeyboardInterrupt to re-raise, with a message saying how to resume."""
        step = self.state.step
        if (
            self.saved_step != step
            and self.consistent
            and self.procs.world_size == 1
            and self.checkpoint_path is not None
        ):
            self._save(step)
            self.saved_step = step
        message = self._interrupt_message(step, self.saved_step == step)
        self._emit_ignoring_errors("on_interrupt", step)
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
        """Tidy the checkpoint away (kept for a failed run's retry), build the outcome, tell the callbacks."""
        wall = self._elapsed()
        self._tidy_checkpoint(status)
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
        self._emit_ignoring_errors("on_train_end", outcome)
        return outcome

    def _tidy_checkpoint(self, status: str) -> None:
        """Delete a finished run's checkpoint (unless ``keep_checkpoint``); keep a failed run's for a retry."""
        if self.checkpoint_path is None:
            return
        finished = status in ("completed", "diverged")
        if finished and self.procs.is_main and not self.keep_checkpoint:
            discard_checkpoint(self.checkpoint_path)  # read-only storage: the run stays finished
        elif status == "failed" and self.checkpoint_path.exists():
            logger.info(
                "keeping checkpoint %s of the failed run: a retry resumes from it", self.checkpoint_path
            )
