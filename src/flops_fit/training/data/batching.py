"""How a global batch is split over processes and micro-batches, and seeded reading of datasets and loaders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from flops_fit.core.train_config import TrainConfig

END = object()
"""Returned by ``next(iterator, END)`` when an iterator is exhausted."""


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch of ``batch_size`` samples is split over processes and micro-batches."""

    batch_size: int
    world_size: int
    rank: int
    micro_batch_size: int
    accum_steps: int

    @property
    def per_rank(self) -> int:
        """Samples one process handles per optimiser step."""
        return self.micro_batch_size * self.accum_steps


def batch_layout(config: TrainConfig, world_size: int = 1, rank: int = 0) -> BatchLayout:
    """Split ``config.batch_size`` over ``world_size`` processes and ``config.micro_batch_size``."""
    if config.batch_size % world_size:
        raise ValueError(
            f"TrainConfig.batch_size ({config.batch_size}) must be a multiple of the number of processes "
            f"({world_size}); it is the global batch, split evenly over processes"
        )
    per_rank = config.batch_size // world_size
    micro = config.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(
            f"TrainConfig.micro_batch_size ({micro}) must divide the per-process batch "
            f"(batch_size {config.batch_size} / {world_size} processes = {per_rank})"
        )
    return BatchLayout(config.batch_size, world_size, rank, micro, per_rank // micro)


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``seq`` of ``size`` items (the last may be shorter)."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from several integers (used for DataLoader worker seeds)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def seeded_batches(loader: DataLoader, seed: int, epoch: int) -> Iterator[Any]:
    """Iterate ``loader`` with the global torch RNG seeded by ``(seed, epoch)`` while it draws its order.

    A shuffling DataLoader draws its sampler seed from the global RNG when the first batch is requested,
    so this makes its order reproducible without disturbing the caller's RNG stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeded_generator(seed, epoch).initial_seed()))
        iterator = iter(loader)
        first = next(iterator, END)
    if first is END:
        return
    yield first
    yield from iterator


def item_stream(dataset: Iterable[Any], num_workers: int, seed: int, epoch: int) -> Iterator[Any]:
    """The items of an iterable dataset, read by ``num_workers`` DataLoader workers when asked."""
    if num_workers == 0:
        return iter(dataset)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=num_workers, generator=seeded_generator(seed, epoch)
    )
    return iter(loader)


def take(iterable: Iterable[Any], count: int) -> list[Any]:
    """The first ``count`` items of ``iterable`` (fewer if it ends first), reading no item beyond them."""
    out = []
    for item in iterable:
        if len(out) >= count:
            break
        out.append(item)
    return out
