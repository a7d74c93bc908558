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

The modules, one job each: :mod:`.items` (the item contract, token counting), :mod:`.batching` (how a
global batch is split, seeded reading), :mod:`.streams` (training streams), :mod:`.holdout` (validation
sets) and :mod:`.prepare` (:func:`prepare_data`: checking the data and sizing the run).
"""

from flops_fit.training.data.batching import BatchLayout, batch_layout
from flops_fit.training.data.holdout import HOLDOUT_SEED, holdout_samples
from flops_fit.training.data.items import (
    Batch,
    count_elements,
    declared_tokens_per_sample,
    leading_length,
    move_to_device,
    split_item,
)
from flops_fit.training.data.prepare import DataPlan, prepare_data
from flops_fit.training.data.streams import DataExhaustedError

__all__ = [
    "HOLDOUT_SEED",
    "Batch",
    "BatchLayout",
    "DataExhaustedError",
    "DataPlan",
    "batch_layout",
    "count_elements",
    "declared_tokens_per_sample",
    "holdout_samples",
    "leading_length",
    "move_to_device",
    "prepare_data",
    "split_item",
]
