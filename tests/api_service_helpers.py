"""A tiny model, data and service for the mode="api" tests (loaded by import path by the test server)."""

from __future__ import annotations

import functools
import sys
import time

import torch
from torch import nn

from flops_fit.training.jobs import LocalJob


class Wide(nn.Module):
    """A small regression MLP whose size grows with ``width``."""

    def __init__(self, width: int, depth: int = 2):
        super().__init__()
        layers = [nn.Linear(8, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def data(n: int = 4000, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x[:, 0] * 2) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def wide(width: int) -> nn.Module:
    return Wide(int(width))


def job() -> LocalJob:
    """The service's LocalJob: the Wide model on data(), MSE loss, on the CPU."""
    torch.set_num_threads(1)
    return LocalJob(model=wide, dataset=data(), loss_fn=nn.functional.mse_loss, device="cpu")


def slow_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE that takes 4 ms more a step, so that a test sees experiments while they run."""
    time.sleep(0.004)
    return nn.functional.mse_loss(outputs, targets)


def slow_job() -> LocalJob:
    """The Wide model trained slowly (``slow_loss``)."""
    torch.set_num_threads(1)
    return LocalJob(model=wide, dataset=data(), loss_fn=slow_loss, device="cpu")


def failing_model(width: int) -> nn.Module:
    raise RuntimeError(f"no model of width {width} here")


def failing_job() -> LocalJob:
    """A service whose every model build fails (the service reports each experiment failed)."""
    return LocalJob(model=failing_model, dataset=data(), loss_fn=nn.functional.mse_loss, device="cpu")


def main() -> None:
    """``python tests/api_service_helpers.py PORT STATE_DIR [job|slow_job|failing_job] [WORKERS]``: serve
    until killed."""
    from flops_fit.app.serve import serve

    port, state_dir = int(sys.argv[1]), sys.argv[2]
    factories = {"job": job, "slow_job": slow_job, "failing_job": failing_job}
    factory = factories[sys.argv[3] if len(sys.argv) > 3 else "job"]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    serve(functools.partial(factory), port=port, state_dir=state_dir, workers=workers)


if __name__ == "__main__":
    main()
