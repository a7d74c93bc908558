"""Training streams: each step's micro-batches for this process, resumable at any step.

:class:`MapTrainData` reads a map-style dataset in a seeded order, :class:`IterableTrainData` an iterable
dataset in its own order, :class:`LoaderTrainData` the user's DataLoader; all give ``steps(start_step,
total_steps)`` and ``position(step)`` (the data position a checkpoint records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from flops_fit.core.train_config import TrainConfig
from flops_fit.training.data.batching import (
    END,
    BatchLayout,
    chunks,
    item_stream,
    seeded_batches,
    seeded_generator,
)
from flops_fit.training.data.items import Batch, leading_length, split_item

logger = logging.getLogger(__name__)


class DataExhaustedError(RuntimeError):
    """A stream of unknown length ran out before the run had the tokens it needed."""


def _epoch_order(train_indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The training indices in the seeded order of ``epoch``."""
    return train_indices[np.random.default_rng([seed, epoch]).permutation(train_indices.size)]


class _SeededBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This process's micro-batches of dataset indices for steps ``start_step .. total_steps - 1``."""

    def __init__(
        self, train_indices: np.ndarray, seed: int, layout: BatchLayout, start_step: int, total_steps: int
    ):
        super().__init__()
        self.train_indices = train_indices
        self.seed = seed
        self.layout = layout
        self.start_step = start_step
        self.total_steps = total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.layout.accum_steps

    def __iter__(self) -> Iterator[list[int]]:
        lay = self.layout
        n = self.train_indices.size
        orders: dict[int, np.ndarray] = {}
        for step in range(self.start_step, self.total_steps):
            first = step * lay.batch_size + lay.rank * lay.per_rank
            positions = np.arange(first, first + lay.per_rank, dtype=np.int64)
            epochs, within = np.divmod(positions, n)
            picked = np.empty(lay.per_rank, dtype=np.int64)
            for epoch in np.unique(epochs):
                if epoch not in orders:
                    orders = {e: o for e, o in orders.items() if e >= epoch - 1}
                    orders[int(epoch)] = _epoch_order(self.train_indices, self.seed, int(epoch))
                mask = epochs == epoch
                picked[mask] = orders[int(epoch)][within[mask]]
            yield from (chunk.tolist() for chunk in chunks(picked, lay.micro_batch_size))


class MapTrainData:
    """Training batches from a map-style dataset, in a seeded order, loaded by a DataLoader."""

    kind = "map"

    def __init__(
        self,
        dataset: Dataset,
        train_indices: np.ndarray,
        layout: BatchLayout,
        config: TrainConfig,
        pin_memory: bool,
    ):
        self.dataset = dataset
        self.train_indices = train_indices
        self.layout = layout
        self.seed = config.seed
        self.num_workers = config.num_workers
        self.pin_memory = pin_memory
        self.tokens_per_step = 0  # set by prepare_data

    def steps(self, start_step: int, total_steps: int) -> Iterator[tuple[list[Batch], int]]:
        """Yield, for each step from ``start_step``, this process's micro-batches and the step's tokens."""
        sampler = _SeededBatchSampler(self.train_indices, self.seed, self.layout, start_step, total_steps)
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=seeded_generator(self.seed, start_step),
        )
        micro: list[Batch] = []
        for batch in loader:
            micro.append(split_item(batch, "a collated training batch"))
            if len(micro) == self.layout.accum_steps:
                yield micro, self.tokens_per_step
                micro = []

    def position(self, step: int) -> dict[str, int]:
        items = step * self.layout.batch_size
        epoch, index = divmod(items, self.train_indices.size)
        return {"samples_consumed": items, "epoch": epoch, "index": index}


class IterableTrainData:
    """Training batches from an iterable dataset, read in its own order; re-iterated per epoch."""

    kind = "iterable"

    def __init__(
        self,
        dataset: Iterable[Any],
        skip_per_epoch: int,
        samples_per_epoch: int | None,
        layout: BatchLayout,
        config: TrainConfig,
        needed_samples: int,
        warned_repeat: bool = False,
    ):
        self.dataset = dataset
        self.skip_per_epoch = skip_per_epoch
        self.samples_per_epoch = samples_per_epoch
        self._declared = samples_per_epoch  # from len(dataset), when it has one
        self.layout = layout
        self.seed = config.seed
        self.num_workers = config.num_workers
        self.max_epochs = config.max_epochs
        self.needed_samples = needed_samples
        self.tokens_per_step = 0
        self._warned_repeat = warned_repeat  # True: the caller already warned that data repeats

    def _samples(self) -> Iterator[Any]:
        epoch = 0
        while True:
            stream = item_stream(self.dataset, self.num_workers, self.seed, epoch)
            for _ in range(self.skip_per_epoch):
                if next(stream, END) is END:
                    break
            count = 0
            for item in stream:
                count += 1
                if self.num_workers > 1 and self._declared is not None and count > self._declared:
                    raise ValueError(
                        f"the iterable dataset yielded more than its len() of {self._declared + self.skip_per_epoch} "
                        f"samples in one pass with num_workers={self.num_workers}: every DataLoader worker "
                        "iterates a copy of it, so it must split its items between workers "
                        "(torch.utils.data.get_worker_info()), or use num_workers=0"
                    )
                yield item
            if count == 0:
                raise DataExhaustedError("the iterable dataset yielded no training samples in an epoch")
            self.samples_per_epoch = count
            epochs_needed = self.needed_samples / count
            if epochs_needed > self.max_epochs:
                raise DataExhaustedError(
                    f"the dataset has {count} training samples per epoch but the run needs {self.needed_samples} "
                    f"({epochs_needed:.2f} epochs) and TrainConfig.max_epochs is {self.max_epochs}; "
                    "raise max_epochs to allow repeating data, or train on fewer tokens"
                )
            if not self._warned_repeat:
                logger.warning(
                    "repeating data: the run makes %.2f passes over %d training samples", epochs_needed, count
                )
                self._warned_repeat = True
            epoch += 1

    def steps(self, start_step: int, total_steps: int) -> Iterator[tuple[list[Batch], int]]:
        lay = self.layout
        samples = self._samples()
        for _ in range(start_step * lay.batch_size):
            next(samples)
        lo, hi = lay.rank * lay.per_rank, (lay.rank + 1) * lay.per_rank
        for _ in range(start_step, total_steps):
            batch = [next(samples) for _ in range(lay.batch_size)][lo:hi]
            micro = [
                split_item(
                    default_collate([split_item(x, "a dataset item") for x in chunk]), "a collated batch"
                )
                for chunk in chunks(batch, lay.micro_batch_size)
            ]
            yield micro, self.tokens_per_step

    def position(self, step: int) -> dict[str, int]:
        items = step * self.layout.batch_size
        if self.samples_per_epoch:
            epoch, index = divmod(items, self.samples_per_epoch)
        else:
            epoch, index = 0, items
        return {"samples_consumed": items, "epoch": epoch, "index": index}


class LoaderTrainData:
    """Training batches from the user's DataLoader: one loader batch per process per step, round-robin."""

    kind = "loader"

    def __init__(
        self,
        loader: DataLoader,
        layout: BatchLayout,
        config: TrainConfig,
        tokens_of: Callable[[Any], int],
        batches_per_epoch: int | None,
    ):
        self.loader = loader
        self.layout = layout
        self.seed = config.seed
        self.max_epochs = config.max_epochs
        self.tokens_of = tokens_of
        self.batches_per_epoch = batches_per_epoch
        self.tokens_per_step = 0
        self.needed_batches = 0

    def _batches(self) -> Iterator[Batch]:
        """Full batches only, as (inputs, targets): a short one (the last of an epoch with ``drop_last=False``) is skipped, so every
        optimiser step sees ``batch_size`` samples and ``tokens_seen`` follows the plan."""
        expected = self.layout.batch_size // self.layout.world_size
        epoch = 0
        while True:
            count = short = 0
            for raw in seeded_batches(self.loader, self.seed, epoch):
                batch = split_item(raw, "a DataLoader batch")
                if leading_length(batch[1]) != expected:
                    short += 1
                    continue
                count += 1
                yield batch
            if short and epoch == 0:
                logger.warning(
                    "skipping %d DataLoader batch(es) per epoch with a number of samples other than %d (e.g. the "
                    "short last batch; pass drop_last=True to the DataLoader): every step is a full batch",
                    short,
                    expected,
                )
            if count == 0:
                raise DataExhaustedError("the DataLoader yielded no full batches in an epoch")
            self.batches_per_epoch = count
            if self.needed_batches / count > self.max_epochs:
                raise DataExhaustedError(
                    f"the DataLoader has {count} batches per epoch but the run needs {self.needed_batches} "
                    f"({self.needed_batches / count:.2f} epochs) and TrainConfig.max_epochs is {self.max_epochs}; "
                    "raise max_epochs to allow repeating data, or train on fewer tokens"
                )
            epoch += 1

    def steps(self, start_step: int, total_steps: int) -> Iterator[tuple[list[Batch], int]]:
        world, rank = self.layout.world_size, self.layout.rank
        batches = self._batches()
        for _ in range(start_step * world):
            next(batches)
        for _ in range(start_step, total_steps):
            group = [next(batches) for _ in range(world)]
            yield [group[rank]], sum(self.tokens_of(b) for b in group)

    def position(self, step: int) -> dict[str, int]:
        consumed = step * self.layout.world_size
        if self.batches_per_epoch:
            epoch, index = divmod(consumed, self.batches_per_epoch)
        else:
            epoch, index = 0, consumed
        return {"batches_consumed": consumed, "epoch": epoch, "index": index}
