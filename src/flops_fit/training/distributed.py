"""One process or data-parallel processes: the few collective operations the training loop needs.

Plain ``python`` runs one process on one device. Under a multi-process launch (``torchrun
--nproc_per_node K`` or ``accelerate launch --multi_gpu --num_processes K``, i.e. ``WORLD_SIZE > 1``),
Hugging Face Accelerate sets up the process group and the device of each process, and the model is
wrapped in DistributedDataParallel. Precision and compilation stay under :class:`TrainConfig`'s control
(Accelerate's own mixed-precision and dynamo settings are not used).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from flops_fit.training.device import resolve_device

_ACCELERATORS: dict[bool, Any] = {}


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by the launcher (1 under plain ``python``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class SingleProcess:
    """The trivial case: one process, collectives are identities."""

    world_size = 1
    rank = 0
    local_world_size = 1
    is_main = True

    def __init__(self, device: str | torch.device = "auto"):
        self.device = resolve_device(device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        yield


class AcceleratedProcesses(SingleProcess):
    """Data-parallel processes set up by :class:`accelerate.Accelerator` (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, device: str | torch.device = "auto"):
        try:
            from accelerate import Accelerator
        except ImportError as exc:
            raise ImportError(
                "multi-process training needs Hugging Face Accelerate: pip install accelerate"
            ) from exc
        requested = str(device)
        if requested not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"device={requested!r} cannot be used with several processes: the launcher gives each process its "
                "device; pass device='auto', 'cuda' or 'cpu'"
            )
        cpu = requested == "cpu" or (requested == "auto" and not torch.cuda.is_available())
        if cpu not in _ACCELERATORS:
            _ACCELERATORS[cpu] = Accelerator(cpu=cpu, mixed_precision="no", dynamo_backend="no")
        self.accelerator = _ACCELERATORS[cpu]
        self.device = self.accelerator.device
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.is_main = self.accelerator.is_main_process

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        return self.accelerator.prepare_model(model, device_placement=False)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        context = model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
        with context:
            yield


def make_processes(distributed: bool | None, device: str | torch.device) -> SingleProcess:
    """``distributed=None`` uses Accelerate when launched with ``WORLD_SIZE > 1``; ``True``/``False`` force it."""
    if distributed is None:
        distributed = launched_world_size() > 1
    if distributed:
        return AcceleratedProcesses(device)
    return SingleProcess(device)
