"""Planning a run's data: check it against the contract and size the run before any compute is spent."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from flops_fit.core.train_config import TrainConfig
from flops_fit.training.data.batching import END, BatchLayout, item_stream, seeded_batches, take
from flops_fit.training.data.holdout import (
    IndexedEvalData,
    ListEvalData,
    build_eval,
    holdout_samples,
    split_holdout,
)
from flops_fit.training.data.items import (
    Batch,
    count_elements,
    dataset_length,
    declared_tokens_per_sample,
    leading_length,
    same_item,
    split_item,
)
from flops_fit.training.data.streams import IterableTrainData, LoaderTrainData, MapTrainData

logger = logging.getLogger(__name__)


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


def _check_epochs(needed: int, available: int, tokens_per_sample: int, max_epochs: float, unit: str) -> float:
    """Passes over the training data that ``needed`` samples or batches make, out of ``available``; a
    ValueError beyond ``max_epochs``, a warning beyond one."""
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
        prepare = _prepare_loader
    elif isinstance(dataset, IterableDataset) or (
        not hasattr(dataset, "__getitem__") and isinstance(dataset, Iterable)
    ):
        prepare = _prepare_iterable
    elif hasattr(dataset, "__getitem__"):
        prepare = _prepare_map
    else:
        raise TypeError(
            f"dataset must be a torch Dataset (map-style or iterable) or a DataLoader, got {type(dataset).__name__}"
        )
    return prepare(
        dataset, eval_dataset, num_tokens=num_tokens, config=config, layout=layout, pin_memory=pin_memory
    )


def _prepare_map(
    dataset: Any,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool,
) -> tuple[DataPlan, Any, Any]:
    """A map-style dataset: read in a seeded order, less the held-out slice when there is no eval_dataset."""
    n = dataset_length(dataset, "dataset")
    _, targets = split_item(dataset[0], "dataset[0]")
    tps = declared_tokens_per_sample(dataset) or count_elements(targets)
    tokens_per_step = tps * layout.batch_size
    total_steps = math.ceil(num_tokens / tokens_per_step)
    if eval_dataset is None:
        train_indices, held_out = split_holdout(n, config)
        eval_data: Any = IndexedEvalData(dataset, held_out, layout, config.num_workers, pin_memory)
    else:
        train_indices = np.arange(n, dtype=np.int64)
        eval_data = build_eval(eval_dataset, layout, config, pin_memory)
    epochs = _check_epochs(
        total_steps * layout.batch_size, train_indices.size, tps, config.max_epochs, "samples"
    )
    train = MapTrainData(dataset, train_indices, layout, config, pin_memory)
    train.tokens_per_step = tokens_per_step
    plan = DataPlan("map", tps, tokens_per_step, total_steps, int(train_indices.size), len(eval_data), epochs)
    return plan, train, eval_data


def _stream_head(dataset: Any, config: TrainConfig, wanted_eval: int) -> list[Any]:
    """The first ``wanted_eval + 1`` items of a re-iterable dataset, as training will read them (the
    held-out slice and one item to count tokens with); errors for data the stream cannot train on."""
    if iter(dataset) is dataset:
        raise TypeError(
            "dataset is a one-shot iterator (e.g. a generator); it must be re-iterable, since the held-out "
            "slice is read first and later epochs or a resumed run iterate it again: wrap it in an "
            "IterableDataset whose __iter__ starts a fresh pass"
        )
    # The held-out slice is the head of the stream training reads and skips: with DataLoader workers the
    # stream interleaves the workers' items, which is not the dataset's own order.
    head = take(item_stream(dataset, config.num_workers, config.seed, 0), wanted_eval + 1)
    workers = config.num_workers
    if workers > 1 and len(head) >= workers and all(same_item(head[0], item) for item in head[1:workers]):
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
    return head


def _prepare_iterable(
    dataset: Any,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool,
) -> tuple[DataPlan, Any, Any]:
    """An iterable dataset: read in its own order, its head held out when there is no eval_dataset."""
    wanted_eval = holdout_samples(config) if eval_dataset is None else 0
    head = _stream_head(dataset, config, wanted_eval)
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
        eval_data = build_eval(eval_dataset, layout, config, pin_memory)
    repeats = epochs is not None and epochs > 1  # _check_epochs already warned
    train = IterableTrainData(dataset, wanted_eval, samples_per_epoch, layout, config, needed, repeats)
    train.tokens_per_step = tokens_per_step
    plan = DataPlan("iterable", tps, tokens_per_step, total_steps, samples_per_epoch, len(eval_data), epochs)
    return plan, train, eval_data


def _loader_targets(loader: DataLoader, eval_dataset: Any, config: TrainConfig) -> Any:
    """The targets of the DataLoader's first batch, after checking the loader can be trained on as given."""
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
    first = next(iter(seeded_batches(loader, config.seed, 0)), END)
    if first is END:
        raise ValueError("dataset (a DataLoader) yields no batches")
    _, targets = split_item(first, "a DataLoader batch")
    return targets


def _prepare_loader(
    loader: DataLoader,
    eval_dataset: Any,
    *,
    num_tokens: int,
    config: TrainConfig,
    layout: BatchLayout,
    pin_memory: bool,
) -> tuple[DataPlan, Any, Any]:
    """The user's DataLoader: one loader batch per process per step, in the loader's own order."""
    targets = _loader_targets(loader, eval_dataset, config)
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
    eval_data = build_eval(eval_dataset, layout, config, pin_memory)
    samples = None if batches_per_epoch is None else batches_per_epoch * per_batch
    plan = DataPlan("loader", tps, tokens_per_step, total_steps, samples, len(eval_data), epochs)
    return plan, train, eval_data
