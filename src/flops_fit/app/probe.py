"""What ``find_optimal`` learns from the user's data before it plans: one item (is it an
``(inputs, targets)`` pair? how many tokens does it hold?), a probe forward/backward of the loss, whether
the 6ND convention fits the model, and the default data id that enters experiment ids."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.plan.spec import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One item of the dataset: ``item`` is ``(inputs, targets)`` (a whole batch when ``batched``, i.e. the
    dataset is a DataLoader); ``tokens`` is the tokens per sample (D counts these)."""

    item: Any
    batched: bool
    tokens: int

    @classmethod
    def read(cls, dataset: Any, tokens_per_sample: int | None = None) -> Sample:
        """The first item of ``dataset``, checked; ``tokens_per_sample`` overrides what the item says."""
        item, batched = first_item(dataset)
        check_item(item)
        tokens = tokens_per_sample if tokens_per_sample is not None else count_tokens(dataset, item, batched)
        return cls(item, batched, tokens)

    def batch(self) -> Any:
        """A batch of two (or the loader's own batch)."""
        return self.item if self.batched else torch.utils.data.default_collate([self.item, self.item])

    def sample_fn(self) -> Callable[[int], Any] | None:
        """``sample_fn(batch_size)`` repeating this item (for measured FLOPs), or None for a loader's batch."""
        return None if self.batched else RepeatedItem(self.item)


@dataclass(frozen=True, eq=False)
class RepeatedItem:
    """``sample_fn(batch_size)``: a batch of one dataset item repeated; a module-level class, so a model spec
    holding it can be pickled to worker processes (``workers=k``)."""

    item: Any

    def __call__(self, batch_size: int) -> Any:
        return torch.utils.data.default_collate([self.item] * batch_size)


def first_item(dataset: Any) -> tuple[Any, bool]:
    """The first (inputs, targets) item of a Dataset, IterableDataset or DataLoader (batched for loaders)."""
    if isinstance(dataset, torch.utils.data.DataLoader):
        return next(iter(dataset)), True
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        if len(dataset) == 0:
            raise ValueError("dataset is empty; give a Dataset whose items are (inputs, targets)")
        return dataset[0], False
    if hasattr(dataset, "__iter__"):
        try:
            return next(iter(dataset)), False
        except StopIteration:
            raise ValueError("dataset is empty; give a Dataset whose items are (inputs, targets)") from None
    raise TypeError(
        f"dataset must be a torch Dataset, IterableDataset or DataLoader of (inputs, targets), got "
        f"{type(dataset).__name__}"
    )


def count_tokens(dataset: Any, item: Any, batched: bool) -> int:
    """Tokens per sample: ``dataset.tokens_per_sample`` if set, else the targets' element count."""
    tps = getattr(dataset, "tokens_per_sample", None)
    if tps is None and isinstance(dataset, torch.utils.data.DataLoader):
        tps = getattr(dataset.dataset, "tokens_per_sample", None)
    if tps is not None:
        return int(tps)
    targets = torch.as_tensor(item[1])
    if batched:
        return max(1, targets.numel() // max(1, targets.shape[0] if targets.ndim else 1))
    return max(1, targets.numel())


def check_item(item: Any) -> None:
    """A TypeError unless ``item`` is an ``(inputs, targets)`` pair."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise TypeError(
            f"dataset items must be (inputs, targets) pairs, got {type(item).__name__}"
            + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
        )


def probe_loss(model: nn.Module, item: Any, batched: bool, loss_fn: Callable[..., Any]) -> None:
    """One forward/backward on one small batch: the loss must be a finite scalar with a gradient."""
    if batched:
        inputs, targets = item
    else:
        inputs, targets = torch.utils.data.default_collate([item, item])
    try:
        loss = loss_fn(model(inputs), targets)
    except Exception as exc:
        raise TypeError(
            f"probe of loss_fn(model(inputs), targets) on one batch failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TypeError(f"loss_fn must return a scalar tensor, got {shape}; reduce it (e.g. .mean())")
    if not loss.requires_grad:
        raise TypeError("loss_fn returned a tensor without a gradient; compute it from the model output")
    if not torch.isfinite(loss.detach()):
        raise ValueError(f"loss_fn returned {loss.item()} on the first batch of a freshly built model")
    loss.backward()


#: A model whose measured training FLOPs per target differ from 6N by more than this factor gets a warning
#: under the default ``flops="6nd"`` (a ViT's patches, a CNN's convolutions): its budgets would be off as much.
SIX_ND_TOLERANCE = 2.0


def check_six_nd(
    spec: ModelSpec, smallest: Any, item: Any, batched: bool, loss_fn: Callable[..., Any]
) -> None:
    """Warn when 6 N FLOPs per target (the 6nd convention) is far from what the model really costs."""
    from flops_fit.plan.flops import measure_flops_per_token

    sample = item if batched else torch.utils.data.default_collate([item, item])
    try:
        measured = measure_flops_per_token(spec.build(smallest.size_value, "meta"), sample, loss_fn)
    except Exception as exc:  # the check is advice: a model FlopCounterMode cannot follow is not an error
        logger.debug("could not measure FLOPs to check the 6nd convention: %s", exc)
        return
    ratio = measured / (FLOPS_PER_PARAM_TOKEN * smallest.num_params)
    if not 1 / SIX_ND_TOLERANCE <= ratio <= SIX_ND_TOLERANCE:
        warnings.warn(
            f"flops='6nd' counts 6 N = {FLOPS_PER_PARAM_TOKEN * smallest.num_params:.3g} FLOPs per target for the "
            f"smallest model, but one training step measures {measured:.3g} per target ({ratio:.2g}x): every "
            "run would train that much more (or less) compute than its budget. Pass flops='measured' (or a "
            "callable) to count the model's real FLOPs.",
            UserWarning,
            stacklevel=3,
        )


#: Items of a map-style dataset whose contents enter its default data id (first, evenly spaced, last).
_FINGERPRINT_ITEMS = 5


def data_id(dataset: Any, eval_dataset: Any = None, loss_fn: Any = None) -> str | None:
    """What the runs train on, for experiment ids when the user names no ``data_id``: the dataset (and the
    held-out set) by its ``data_id`` attribute, else by type, size and a hash of a few of its items, and
    the loss function by import name; so other data of the same size, or another loss, are other runs."""
    if dataset is None:
        return None
    parts = [_dataset_id(dataset)]
    if eval_dataset is not None:
        parts.append(f"eval={_dataset_id(eval_dataset)}")
    if loss_fn is not None:
        parts.append(
            f"loss={getattr(loss_fn, '__module__', '?')}.{getattr(loss_fn, '__qualname__', type(loss_fn).__qualname__)}"
        )
    return "; ".join(parts)


def _dataset_id(dataset: Any) -> str:
    explicit = getattr(dataset, "data_id", None)
    if isinstance(explicit, str):
        return explicit
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return f"{name}[stream]"  # reading a stream to hash it could consume it: name data_id= instead
    n = len(dataset)
    picks = sorted(
        {round(k * (n - 1) / (_FINGERPRINT_ITEMS - 1)) for k in range(_FINGERPRINT_ITEMS)} if n else set()
    )
    reads = []
    for _ in range(2):  # twice: items drawn at random on each access (augmentation) cannot name the data
        digest = hashlib.sha256()
        for i in picks:
            _hash_item(digest, dataset[i])
        reads.append(digest.hexdigest()[:12])
    if reads[0] != reads[1]:
        logger.info("%s gives different items on each read; naming it by type and size (pass data_id=)", name)
        return f"{name}[{n}]"
    return f"{name}[{n}, {reads[0]}]"


def _hash_item(digest: Any, item: Any) -> None:
    """Feed a data item's contents (tensors, arrays, numbers, strings, nested sequences) to ``digest``."""
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif hasattr(item, "tobytes") and hasattr(item, "dtype"):  # NumPy arrays and scalars
        digest.update(f"{item.dtype}{getattr(item, 'shape', ())}".encode() + item.tobytes())
    elif isinstance(item, (bool, int, float, str, bytes)) or item is None:
        digest.update(repr(item).encode())
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            digest.update(repr(key).encode())
            _hash_item(digest, item[key])
    elif isinstance(item, (list, tuple)):
        digest.update(f"{type(item).__name__}{len(item)}".encode())
        for part in item:
            _hash_item(digest, part)
    else:  # an object whose repr may hold its address: its type only
        digest.update(type(item).__qualname__.encode())
