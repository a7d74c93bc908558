"""The validation set: a fixed held-out slice of the training data, or the user's ``eval_dataset``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from flops_fit.core.train_config import TrainConfig
from flops_fit.training.data.batching import END, BatchLayout, chunks, seeded_batches, seeded_generator, take
from flops_fit.training.data.items import Batch, dataset_length, leading_length, split_item

HOLDOUT_SEED = 2022_03_29
"""Seed of the held-out validation slice; fixed so that all runs of a sweep share it."""


def holdout_samples(config: TrainConfig) -> int:
    """Samples a map-style dataset gives up for validation when no eval_dataset is passed."""
    return config.eval_batches * config.batch_size


def holdout_indices(n: int, size: int) -> np.ndarray:
    """``size`` sorted indices of ``range(n)`` chosen with the fixed :data:`HOLDOUT_SEED`."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    picked = np.random.default_rng(HOLDOUT_SEED).choice(n, size=size, replace=False)
    return np.sort(picked).astype(np.int64)


def split_holdout(n: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and held-out indices of a map-style dataset of ``n`` samples (at most half held out)."""
    n_eval = holdout_samples(config)
    if n_eval > n // 2:
        raise ValueError(
            f"the dataset has {n} samples, too few to hold out eval_batches * batch_size = {n_eval} for "
            "validation (at most half may be held out); pass eval_dataset=..., or lower "
            "TrainConfig.eval_batches or batch_size"
        )
    held_out = holdout_indices(n, n_eval)
    keep = np.ones(n, dtype=bool)
    keep[held_out] = False
    return np.flatnonzero(keep).astype(np.int64), held_out


class IndexedEvalData:
    """A fixed list of dataset indices, this process's share evaluated in micro-batches."""

    def __init__(
        self, dataset: Dataset, indices: np.ndarray, layout: BatchLayout, num_workers: int, pin_memory: bool
    ):
        self.dataset = dataset
        self.indices = indices
        self.layout = layout
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return int(self.indices.size)

    def batches(self) -> Iterator[Batch]:
        mine = self.indices[self.layout.rank :: self.layout.world_size].tolist()
        if not mine:
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=list(chunks(mine, self.layout.micro_batch_size)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=seeded_generator(HOLDOUT_SEED),
        )
        for batch in loader:
            yield split_item(batch, "a collated validation batch")


class ListEvalData:
    """Validation samples held in memory (the head of an iterable dataset)."""

    def __init__(self, items: list[Any], layout: BatchLayout):
        self.items = items
        self.layout = layout

    def __len__(self) -> int:
        return len(self.items)

    def batches(self) -> Iterator[Batch]:
        mine = self.items[self.layout.rank :: self.layout.world_size]
        for chunk in chunks(mine, self.layout.micro_batch_size):
            yield split_item(
                default_collate([split_item(x, "a validation item") for x in chunk]), "a validation batch"
            )


class LoaderEvalData:
    """The first ``num_batches`` batches of a validation DataLoader, round-robin over processes."""

    def __init__(self, loader: DataLoader, num_batches: int, layout: BatchLayout):
        self.loader = loader
        self.num_batches = num_batches
        self.layout = layout
        self.samples = 0

    def __len__(self) -> int:
        return self.samples

    def batches(self) -> Iterator[Batch]:
        for i, batch in enumerate(seeded_batches(self.loader, HOLDOUT_SEED, 0)):
            if i >= self.num_batches:
                break
            if i % self.layout.world_size == self.layout.rank:
                yield split_item(batch, "a validation DataLoader batch")


def build_eval(eval_dataset: Any, layout: BatchLayout, config: TrainConfig, pin_memory: bool) -> Any:
    wanted = config.eval_batches * layout.batch_size
    if isinstance(eval_dataset, DataLoader):
        data = LoaderEvalData(eval_dataset, config.eval_batches, layout)
        first = next(iter(seeded_batches(eval_dataset, HOLDOUT_SEED, 0)), END)
        if first is END:
            raise ValueError("eval_dataset (a DataLoader) yields no batches")
        _, targets = split_item(first, "an eval_dataset batch")
        try:
            n_batches = min(len(eval_dataset), config.eval_batches)
        except TypeError:
            n_batches = config.eval_batches
        data.samples = leading_length(targets) * n_batches
        return data
    if isinstance(eval_dataset, IterableDataset) or not hasattr(eval_dataset, "__getitem__"):
        if not isinstance(eval_dataset, Iterable):
            raise TypeError(
                f"eval_dataset must be a Dataset or a DataLoader, got {type(eval_dataset).__name__}"
            )
        items = take(eval_dataset, wanted)
        if not items:
            raise ValueError("eval_dataset yields no samples")
        split_item(items[0], "an eval_dataset item")
        return ListEvalData(items, layout)
    n = dataset_length(eval_dataset, "eval_dataset")
    split_item(eval_dataset[0], "an eval_dataset item")
    return IndexedEvalData(eval_dataset, holdout_indices(n, wanted), layout, config.num_workers, pin_memory)
