"""Train one experiment for real: :func:`train` with a :class:`TrainConfig` gives a :class:`TrainOutcome`.

The loop handles devices (cuda > mps > cpu), bf16 autocast, ``torch.compile``, seeded resumable data
order, checkpoints of the run in flight, divergence detection, progress display and data-parallel
training under ``torchrun``/``accelerate launch``. See docs/training.md.
"""

from flops_fit.core.ledger import latest_records, load_results
from flops_fit.core.outcome import RunInfo, TrainOutcome
from flops_fit.core.schedule import lr_multiplier
from flops_fit.core.train_config import TrainConfig
from flops_fit.training.callbacks import Callback, ProgressCallback
from flops_fit.training.checkpoint import load_checkpoint, save_checkpoint
from flops_fit.training.data import HOLDOUT_SEED, DataPlan
from flops_fit.training.device import resolve_device, resolve_precision
from flops_fit.training.jobs import FunctionJob, LocalJob, MockJob
from flops_fit.training.loop import train
from flops_fit.training.mock import MockLaw
from flops_fit.training.optim import default_param_groups
from flops_fit.training.ray_executor import RayOptions
from flops_fit.training.runner import TrainingRunner

__all__ = [
    "HOLDOUT_SEED",
    "Callback",
    "DataPlan",
    "FunctionJob",
    "LocalJob",
    "MockJob",
    "MockLaw",
    "ProgressCallback",
    "RayOptions",
    "RunInfo",
    "TrainConfig",
    "TrainOutcome",
    "TrainingRunner",
    "default_param_groups",
    "latest_records",
    "load_checkpoint",
    "load_results",
    "lr_multiplier",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "train",
]
