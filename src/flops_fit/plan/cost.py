"""What a planned sweep costs: total FLOPs and, when it can be known, wall time.

The wall time comes from a throughput you give (FLOP/s) or from a calibration: the smallest and largest
models of the plan each train a few real optimiser steps on the target device, and the FLOP/s they reach
is interpolated in log N for the sizes between.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from flops_fit.core.experiment import Experiment
from flops_fit.core.validate import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Nullable, check
from flops_fit.plan.flops import call_model, default_loss, move_to, split_sample
from flops_fit.plan.spec import LossFn, ModelSpec, SampleFn

logger = logging.getLogger(__name__)


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
        """Wall time in hours, or None when not known."""
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


def _cost_frame(experiments: Sequence[Experiment], flops: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per experiment with the FLOPs it costs to train (``flops`` by id; default its planned FLOPs)."""
    return pd.DataFrame(
        {
            "experiment_id": [e.experiment_id for e in experiments],
            "compute_budget": [e.compute_budget for e in experiments],
            "size_value": [e.size_value for e in experiments],
            "num_params": [e.num_params for e in experiments],
            "num_tokens": [e.num_tokens for e in experiments],
            "num_steps": [e.num_steps for e in experiments],
            "flops": [e.planned_flops if flops is None else flops[e.experiment_id] for e in experiments],
        }
    )


def estimate_cost(
    experiments: Sequence[Experiment],
    model: ModelSpec | None,
    device: torch.device | str | None = None,
    *,
    sample_fn: SampleFn | None = None,
    loss_fn: LossFn | None = None,
    flops_per_second: float | None = None,
    steps: int = 3,
    warmup: int = 1,
    flops: Mapping[str, float] | None = None,
) -> CostEstimate:
    """Total and per-experiment FLOPs of a plan's ``experiments`` (``flops``: what each costs to train, by id,
    e.g. a WSD branch's share; default its planned FLOPs), and wall time when it can be known by training a
    few steps of its ``model`` (see :meth:`flops_fit.plan.sweep.SweepPlan.estimate_cost`)."""
    check("steps", steps, POSITIVE_INT)
    check("warmup", warmup, NON_NEGATIVE_INT)
    check("flops_per_second", flops_per_second, Nullable(POSITIVE))
    frame = _cost_frame(experiments, flops)
    total = float(math.fsum(frame["flops"]))
    if flops_per_second is not None:
        frame["seconds"] = frame["flops"] / float(flops_per_second)
        seconds = float(frame["seconds"].sum())
        return CostEstimate(total, frame, "throughput", seconds, None if device is None else str(device))
    sample_fn = sample_fn if sample_fn is not None else (model.sample_fn if model else None)
    if model is None or sample_fn is None or not experiments:
        if experiments:
            logger.info("wall time not calibrated: no model or no sample_fn; reporting FLOPs only")
        return CostEstimate(total, frame, "uncalibrated")
    if not callable(sample_fn):
        raise TypeError(f"sample_fn must be callable, got {type(sample_fn).__name__}")
    loss_fn = loss_fn if loss_fn is not None else (model.loss_fn or default_loss)
    dev = torch.device(device) if device is not None else default_device()
    by_size = sorted(experiments, key=lambda e: e.num_params)
    chosen = [by_size[0]] if by_size[0].num_params == by_size[-1].num_params else [by_size[0], by_size[-1]]
    seed = experiments[0].seed
    points = tuple(calibrate(model, e, dev, sample_fn, loss_fn, steps, warmup, seed) for e in chosen)
    log_n = np.log([p.num_params for p in points])
    log_fps = np.log([p.flops_per_second for p in points])
    fps = np.exp(np.interp(np.log(frame["num_params"].to_numpy(float)), log_n, log_fps))
    frame["seconds"] = frame["flops"] / fps
    return CostEstimate(total, frame, "calibrated", float(frame["seconds"].sum()), str(dev), points)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch inside the block without disturbing the caller's RNG state."""
    devices: list[int] = []
    device_type = "cuda"
    if device is not None and device.type not in ("cpu", "meta"):
        device_type = device.type
        devices = [device.index if device.index is not None else 0]
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so a timer measures it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type not in ("cpu", "meta") and torch.accelerator.is_available():
        torch.accelerator.synchronize()


def calibrate(
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
    with seeded(seed, device):
        model = spec.build(e.size_value, device=device)
        inputs, targets = split_sample(sample_fn(e.batch_size))
        inputs, targets = move_to(inputs, device), move_to(targets, device)
        opt = torch.optim.AdamW(model.parameters(), lr=e.learning_rate or 1e-3)
        model.train()
        times = []
        for i in range(warmup + steps):
            synchronize(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(call_model(model, inputs), targets)
            loss.backward()
            opt.step()
            synchronize(device)
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
