"""Device, precision, compilation and CPU-thread choices, made once per run."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks ``cuda`` > ``mps`` > ``cpu``; anything else is checked and returned as a device."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", torch.cuda.current_device())
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"device {device!r} is not a torch device string ('auto', 'cpu', 'cuda', 'cuda:1', 'mps')"
            ) from exc
    else:
        raise TypeError(
            f"device must be 'auto', a device string or a torch.device, got {type(device).__name__}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(dev)!r} was requested but CUDA is not available; use device='auto' or 'cpu'"
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(dev)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                "device 'mps' was requested but MPS is not available; use device='auto' or 'cpu'"
            )
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve ``"auto"`` to ``"bf16"`` on CUDA devices with bf16 support, else ``"fp32"``.

    On CPU, ``"auto"`` stays fp32: on a 2-core AVX-512-BF16 CPU bf16 autocast was slower for models of
    width up to 128 and only paid from width 256 (see docs/training.md), and on CPUs without native bf16 it
    is much slower; ask for ``"bf16"`` explicitly where it pays. ``"fp16"`` needs CUDA (gradient scaler).
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision='fp16' needs a CUDA device (it uses a gradient scaler), not {device.type!r}; use 'bf16' or 'fp32'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "precision='bf16' was requested but this CUDA device does not support bf16; use 'fp16' or 'fp32'"
        )
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or ``None`` for plain fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def resolve_compile(compile_: bool | str, device: torch.device) -> bool:
    """``"auto"`` compiles on CUDA only (on CPU the compile time was not repaid by small models)."""
    if compile_ == "auto":
        return device.type == "cuda"
    return bool(compile_)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(device: torch.device, processes_per_node: int = 1) -> Iterator[int]:
    """On CPU with several processes per node, cap each at ``cores // processes_per_node`` intra-op threads
    (torch's default, one per core in every process, oversubscribes the cores); restore afterwards.

    One process keeps torch's setting (one thread per core unless the user chose otherwise), and
    ``OMP_NUM_THREADS`` always wins. Yields the thread count in use.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") or processes_per_node <= 1:
        yield previous
        return
    wanted = max(1, min(previous, available_cpus() // processes_per_node))
    if wanted != previous:
        torch.set_num_threads(wanted)
        logger.debug("using %d CPU threads per process (was %d)", wanted, previous)
    try:
        yield wanted
    finally:
        if wanted != previous:
            torch.set_num_threads(previous)
