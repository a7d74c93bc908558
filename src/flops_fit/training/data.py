"""From the user's data to seeded, resumable, per-process batches.

Data contract: a map-style or iterable :class:`torch.utils.data.Dataset`, or a
:class:`~torch.utils.data.DataLoader`, whose items (batches) are ``(inputs, targets)`` pairs.

Token counting: a sample holds ``dataset.tokens_per_sample`` tokens when the dataset defines it, else
``targets.numel()`` (a language-model window: its length; a classification sample: 1). Samples of one
dataset are assumed to hold the same number of tokens.

Order: map-style datasets are read in a seeded permutation per epoch (``numpy.random.default_rng([seed,
epoch])``); global batch ``k`` is the samples ``k * batch_size ... (k + 1) * batch_size - 1`` of the
concatenated epochs, and process ``r`` of ``W`` takes the ``r``-th of ``W`` equal slices, so the global
batch, and hence the run, does not depend on the number of processes. Iterable datasets and DataLoaders
are read in their own order; every process reads the whole stream and keeps its share, and a resumed run
skips what was consumed. The data position at step ``k`` is therefore ``k * batch_size`` samples.

Held-out validation slice (no ``eval_dataset``): ``eval_batches * batch_size`` samples picked with a fixed
seed (:data:`HOLDOUT_SEED`, independent of the run's seed, so every experiment of a sweep is scored on the
same samples) from a map-style dataset, or the first that many samples of an iterable one; they are
never trained on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from flops_fit.core.train_config import TrainConfig

logger = logging.getLogger(__name__)

HOLDOUT_SEED = 2022_03_29
"""Seed of the held-out validation slice; fixed so that all runs of a sweep share it."""

Batch = tuple[Any, Any]


class DataExhaustedError(RuntimeError):
    """A stream of unknown length ran out before the run had the tokens it needed."""


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


def holdout_samples(config: TrainConfig) -> int:
    """Samples a map-style dataset gives up for validation when no eval_dataset is passed."""
    return config.eval_batches * config.batch_size


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


@dataclass(frozen=True)
class DataPlan:
    """What the data implies for the run, known before the first step.

    Attributes:
        kind: ``"map"``, ``"iterable"`` or ``"loader"``.
        tokens_per_sample: tokens in one sample (``None`` for a DataLoader without ``tokens_per_sample``).
        tokens_per_step: tokens in one global batch.
        total_steps: optimiser steps, ``ceil(num_tokens / tokens_per_step)``.
        train_samples: samples in one epoch of the training split (``None`` when unknown).
        eval_samples: samples in the validation set actually used.
        epochs: passes over the training split the run makes (``None`` when unknown).
    """

    kind: str
    tokens_per_sample: int | None
    tokens_per_step: int
    total_steps: int
    train_samples: int | None
    eval_samples: int
    epochs: float | None


# --------------------------------------------------------------------------------------------------
# items and tokens


def split_item(item: Any, where: str) -> Batch:
    """Check that ``item`` is an ``(inputs, targets)`` pair and return it."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = f"a {type(item).__name__}" + (
            f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
        )
        raise TypeError(
            f"{where} must be an (inputs, targets) pair so that loss_fn(model(inputs), targets) works; got {got}. "
            "Return `return x, y` from __getitem__/__iter__ (or wrap the dataset)."
        )
    return item[0], item[1]


def count_elements(targets: Any) -> int:
    """Number of target elements: ``numel`` of a tensor or array, 1 for a Python number."""
    if isinstance(targets, torch.Tensor):
        return targets.numel()
    if isinstance(targets, np.ndarray):
        return int(targets.size)
    if isinstance(targets, (int, float, np.number)) and not isinstance(targets, bool):
        return 1
    try:
        return torch.as_tensor(targets).numel()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"cannot count the tokens of targets of type {type(targets).__name__}; return a tensor, "
            "or set a `tokens_per_sample` attribute on the dataset"
        ) from exc


def leading_length(targets: Any) -> int:
    """Samples in a collated batch: the first dimension of its targets."""
    if isinstance(targets, (torch.Tensor, np.ndarray)) and targets.ndim >= 1:
        return int(targets.shape[0])
    if isinstance(targets, (list, tuple)):
        return len(targets)
    raise TypeError(
        f"cannot tell the batch size of targets of type {type(targets).__name__}; return a tensor"
    )


def declared_tokens_per_sample(dataset: Any) -> int | None:
    """``dataset.tokens_per_sample`` if the dataset sets it (checked to be a positive integer)."""
    value = getattr(dataset, "tokens_per_sample", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"dataset.tokens_per_sample must be a positive integer, got {value!r}")
    return int(value)


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside (nested tuples, lists, dicts of) ``obj`` to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to_device(v, device, non_blocking) for v in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    return obj


def _epoch_order(train_indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The training indices in the seeded order of ``epoch``."""
    return train_indices[np.random.default_rng([seed, epoch]).permutation(train_indices.size)]


def _holdout_indices(n: int, size: int) -> np.ndarray:
    """``size`` sorted indices of ``range(n)`` chosen with the fixed :data:`HOLDOUT_SEED`."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    picked = np.random.default_rng(HOLDOUT_SEED).choice(n, size=size, replace=False)
    return np.sort(picked).astype(np.int64)


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from several integers (used for DataLoader worker seeds)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# training streams


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
            yield from (chunk.tolist() for chunk in _chunks(picked, lay.micro_batch_size))


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
            generator=_generator(self.seed, start_step),
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


def _item_stream(dataset: Iterable[Any], num_workers: int, seed: int, epoch: int) -> Iterator[Any]:
    """The items of an iterable dataset, read by ``num_workers`` DataLoader workers when asked."""
    if num_workers == 0:
        return iter(dataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, generator=_generator(seed, epoch))
    return iter(loader)


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
        self._warned_repeat = False

    def _samples(self) -> Iterator[Any]:
        epoch = 0
        while True:
            stream = _item_stream(self.dataset, self.num_workers, self.seed, epoch)
            for _ in range(self.skip_per_epoch):
                if next(stream, _END) is _END:
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
                for chunk in _chunks(batch, lay.micro_batch_size)
            ]
            yield micro, self.tokens_per_step

    def position(self, step: int) -> dict[str, int]:
        items = step * self.layout.batch_size
        if self.samples_per_epoch:
            epoch, index = divmod(items, self.samples_per_epoch)
        else:
            epoch, index = 0, items
        return {"samples_consumed": items, "epoch": epoch, "index": index}


_END = object()


def _seeded_batches(loader: DataLoader, seed: int, epoch: int) -> Iterator[Any]:
    """Iterate ``loader`` with the global torch RNG seeded by ``(seed, epoch)`` while it draws its order.

    A shuffling DataLoader draws its sampler seed from the global RNG when the first batch is requested,
    so this makes its order reproducible without disturbing the caller's RNG stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(_generator(seed, epoch).initial_seed()))
        iterator = iter(loader)
        first = next(iterator, _END)
    if first is _END:
        return
    yield first
    yield from iterator


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
            for raw in _seeded_batches(self.loader, self.seed, epoch):
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


# --------------------------------------------------------------------------------------------------
# validation sets


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
            batch_sampler=list(_chunks(mine, self.layout.micro_batch_size)),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=_generator(HOLDOUT_SEED),
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
        for chunk in _chunks(mine, self.layout.micro_batch_size):
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
        for i, batch in enumerate(_seeded_batches(self.loader, HOLDOUT_SEED, 0)):
            if i >= self.num_batches:
                break
            if i % self.layout.world_size == self.layout.rank:
                yield split_item(batch, "a validation DataLoader batch")


def _same_item(a: Any, b: Any) -> bool:
    """Exact equality of two dataset items (tensors, arrays, numbers, or tuples/lists/dicts of them)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_item(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_item(a[k], b[k]) for k in a)
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return False


def _take(iterable: Iterable[Any], count: int) -> list[Any]:
    out = []
    for item in iterable:
        if len(out) >= count:
            break
        out.append(item)
    return out


def _build_eval(eval_dataset: Any, layout: BatchLayout, config: TrainConfig, pin_memory: bool) -> Any:
    wanted = config.eval_batches * layout.batch_size
    if isinstance(eval_dataset, DataLoader):
        data = LoaderEvalData(eval_dataset, config.eval_batches, layout)
        first = next(iter(_seeded_batches(eval_dataset, HOLDOUT_SEED, 0)), _END)
        if first is _END:
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
        items = _take(eval_dataset, wanted)
        if not items:
            raise ValueError("eval_dataset yields no samples")
        split_item(items[0], "an eval_dataset item")
        return ListEvalData(items, layout)
    n = _length(eval_dataset, "eval_dataset")
    split_item(eval_dataset[0], "an eval_dataset item")
    return IndexedEvalData(eval_dataset, _holdout_indices(n, wanted), layout, config.num_workers, pin_memory)


def _length(dataset: Any, name: str) -> int:
    try:
        n = len(dataset)
    except TypeError as exc:
        raise TypeError(
            f"{name} is indexable but has no len(); make it a map-style Dataset with __len__, "
            "or an IterableDataset"
        ) from exc
    if n == 0:
        raise ValueError(f"{name} is empty")
    return n


# --------------------------------------------------------------------------------------------------
# planning


def _check_epochs(needed: int, available: int, tokens_per_sample: int, max_epochs: float, unit: str) -> float:
    epochs = needed / available
    if epochs > max_epochs * (1 + 1e-12):
        raise ValueError(
            f"the run needs {needed * tokens_per_sample:,} training tokens ({needed:,} {unit}) but the training "
            f"data holds {available * tokens_per_sample:,} tokens ({available:,} {unit}), i.e. {epochs:.3g} epochs, "
            f"and TrainConfig.max_epochs is {max_epochs:g}. Use more data, train on fewer tokens, or allow "
            f"repetition with TrainConfig(max_epochs={math.ceil(epochs * 100) / 100:g})."
        )
    if epochs > 1:
        logger.warning(
            "repeating data: the run makes %.3g passes over its %d training %s", epochs, available, unit
        )
    return epochs


def prepare_data(
    dataset: Any,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool = False,
) -> tuple[DataPlan, Any, Any]:
    """Check the data against the contract and plan the run before any compute is spent.

    Returns the plan, the training stream (``steps(start_step, total_steps)``, ``position(step)``) and the
    validation set (``batches()``). Raises TypeError/ValueError for data that breaks the contract, an
    empty dataset, or too few tokens for ``num_tokens`` within ``config.max_epochs``.
    """
    if isinstance(dataset, DataLoader):
        return _prepare_loader(
            dataset, eval_dataset, num_tokens=num_tokens, config=config, layout=layout, pin_memory=pin_memory
        )
    if isinstance(dataset, IterableDataset) or (
        not hasattr(dataset, "__getitem__") and isinstance(dataset, Iterable)
    ):
        return _prepare_iterable(
            dataset, eval_dataset, num_tokens=num_tokens, config=config, layout=layout, pin_memory=pin_memory
        )
    if not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a torch Dataset (map-style or iterable) or a DataLoader, got {type(dataset).__name__}"
        )
    n = _length(dataset, "dataset")
    _, targets = split_item(dataset[0], "dataset[0]")
    tps = declared_tokens_per_sample(dataset) or count_elements(targets)
    tokens_per_step = tps * layout.batch_size
    total_steps = math.ceil(num_tokens / tokens_per_step)
    if eval_dataset is None:
        n_eval = holdout_samples(config)
        if n_eval > n // 2:
            raise ValueError(
                f"the dataset has {n} samples, too few to hold out eval_batches * batch_size = {n_eval} for "
                "validation (at most half may be held out); pass eval_dataset=..., or lower "
                "TrainConfig.eval_batches or batch_size"
            )
        holdout = _holdout_indices(n, n_eval)
        keep = np.ones(n, dtype=bool)
        keep[holdout] = False
        train_indices = np.flatnonzero(keep).astype(np.int64)
        eval_data: Any = IndexedEvalData(dataset, holdout, layout, config.num_workers, pin_memory)
    else:
        train_indices = np.arange(n, dtype=np.int64)
        eval_data = _build_eval(eval_dataset, layout, config, pin_memory)
    epochs = _check_epochs(
        total_steps * layout.batch_size, train_indices.size, tps, config.max_epochs, "samples"
    )
    train = MapTrainData(dataset, train_indices, layout, config, pin_memory)
    train.tokens_per_step = tokens_per_step
    plan = DataPlan("map", tps, tokens_per_step, total_steps, int(train_indices.size), len(eval_data), epochs)
    return plan, train, eval_data


def _prepare_iterable(
    dataset: Any,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool,
) -> tuple[DataPlan, Any, Any]:
    if iter(dataset) is dataset:
        raise TypeError(
            "dataset is a one-shot iterator (e.g. a generator); it must be re-iterable, since the held-out "
            "slice is read first and later epochs or a resumed run iterate it again: wrap it in an "
            "IterableDataset whose __iter__ starts a fresh pass"
        )
    wanted_eval = holdout_samples(config) if eval_dataset is None else 0
    # The held-out slice is the head of the stream training reads and skips: with DataLoader workers the
    # stream interleaves the workers' items, which is not the dataset's own order.
    head = _take(_item_stream(dataset, config.num_workers, config.seed, 0), wanted_eval + 1)
    workers = config.num_workers
    if workers > 1 and len(head) >= workers and all(_same_item(head[0], item) for item in head[1:workers]):
        raise ValueError(
            f"every one of the {workers} DataLoader workers starts with the same sample: the iterable dataset "
            "does not split its items between workers (torch.utils.data.get_worker_info()), so each worker "
            "yields all of them and every sample would be trained on num_workers times; split them, or use "
            "num_workers=0"
        )
    if len(head) <= wanted_eval:
        raise ValueError(
            f"the iterable dataset yields {len(head)} samples, too few to hold out eval_batches * batch_size = "
            f"{wanted_eval} for validation and train on the rest; pass eval_dataset=..., or lower TrainConfig.eval_batches"
        )
    _, targets = split_item(head[-1], "a dataset item")
    tps = declared_tokens_per_sample(dataset) or count_elements(targets)
    tokens_per_step = tps * layout.batch_size
    total_steps = math.ceil(num_tokens / tokens_per_step)
    needed = total_steps * layout.batch_size
    try:
        samples_per_epoch: int | None = len(dataset) - wanted_eval
    except TypeError:
        samples_per_epoch = None
    epochs = None
    if samples_per_epoch is not None:
        if samples_per_epoch <= 0:
            raise ValueError(
                f"the iterable dataset has {len(dataset)} samples, none left for training after the held-out slice"
            )
        epochs = _check_epochs(needed, samples_per_epoch, tps, config.max_epochs, "samples")
    if eval_dataset is None:
        eval_data: Any = ListEvalData(head[:wanted_eval], layout)
    else:
        eval_data = _build_eval(eval_dataset, layout, config, pin_memory)
    train = IterableTrainData(dataset, wanted_eval, samples_per_epoch, layout, config, needed)
    train.tokens_per_step = tokens_per_step
    train._warned_repeat = epochs is not None and epochs > 1  # _check_epochs already warned
    plan = DataPlan("iterable", tps, tokens_per_step, total_steps, samples_per_epoch, len(eval_data), epochs)
    return plan, train, eval_data


def _prepare_loader(
    loader: DataLoader,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool,
) -> tuple[DataPlan, Any, Any]:
    if eval_dataset is None:
        raise ValueError(
            "dataset is a DataLoader, so flops-fit cannot hold out a validation slice of it; pass "
            "eval_dataset=... (a Dataset or DataLoader), or pass the Dataset itself instead of a DataLoader"
        )
    if config.micro_batch_size is not None:
        raise ValueError(
            "TrainConfig.micro_batch_size must be None when dataset is a DataLoader: each loader batch is one "
            "forward pass; set the DataLoader's batch_size instead"
        )
    first = next(iter(_seeded_batches(loader, config.seed, 0)), _END)
    if first is _END:
        raise ValueError("dataset (a DataLoader) yields no batches")
    _, targets = split_item(first, "a DataLoader batch")
    tps = declared_tokens_per_sample(loader.dataset)

    def tokens_of(batch: Batch) -> int:
        return tps * leading_length(batch[1]) if tps is not None else count_elements(batch[1])

    per_batch = leading_length(targets)
    if per_batch * layout.world_size != config.batch_size:
        raise ValueError(
            f"TrainConfig.batch_size is {config.batch_size} but the DataLoader yields batches of {per_batch} samples "
            f"on each of {layout.world_size} process(es) = {per_batch * layout.world_size} per step; set "
            f"TrainConfig(batch_size={per_batch * layout.world_size}) or rebuild the DataLoader"
        )
    tokens_per_step = tokens_of((None, targets)) * layout.world_size
    total_steps = math.ceil(num_tokens / tokens_per_step)
    try:
        batches_per_epoch: int | None = len(loader)
    except TypeError:
        batches_per_epoch = None
    epochs = None
    needed = total_steps * layout.world_size
    if batches_per_epoch is not None:
        epochs = _check_epochs(
            needed, batches_per_epoch, tokens_per_step // layout.world_size, config.max_epochs, "batches"
        )
    train = LoaderTrainData(loader, layout, config, tokens_of, batches_per_epoch)
    train.tokens_per_step = tokens_per_step
    train.needed_batches = needed
    eval_data = _build_eval(eval_dataset, layout, config, pin_memory)
    plan = DataPlan(
        "loader",
        tps,
        tokens_per_step,
        total_steps,
        None if batches_per_epoch is None else batches_per_epoch * per_batch,
        len(eval_data),
        epochs,
    )
    return plan, train, eval_data
