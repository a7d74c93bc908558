"""The optimiser: AdamW over the model's own parameter groups, or a sensible default split."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from flops_fit.core.train_config import TrainConfig

logger = logging.getLogger(__name__)


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weight decay on parameters with two or more dimensions (matrices, embeddings, conv
    kernels), none on the rest (biases, norm gains, other 1-D or scalar parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw_implementation(device: torch.device) -> dict[str, bool]:
    """``fused=True`` where torch has a fused AdamW kernel for the device (CUDA, CPU, MPS, ...), else the
    multi-tensor ``foreach`` path. On the 2-core test CPU the fused kernel stepped 3-6x faster than
    ``foreach`` (docs/training.md)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        fused_ok = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # older torch: fused kernels on CUDA only
        fused_ok = device.type == "cuda"
    return {"fused": True} if fused_ok else {"foreach": True}


def _accepted_kwargs(fn: Any, offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``offered`` that ``fn`` accepts (all of them if it takes ``**kwargs``).

    Returned groups get ``betas`` from the AdamW built here anyway, so a hook without a ``betas``
    argument (e.g. ``configure_optimizers(lr, weight_decay)``) loses nothing."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return offered
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return offered
    names = {p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return {k: v for k, v in offered.items() if k in names}


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW for ``model`` (already on ``device``).

    A model may choose its own parameter groups (e.g. per-layer learning rates for u-μP) by defining
    ``configure_optimizers(lr=..., weight_decay=..., betas=...)`` returning either parameter groups (an
    iterable of dicts with ``"params"`` and optional ``"lr"``/``"weight_decay"``, or of parameters) or a
    ready optimiser. Each group's learning rate is then scaled by the schedule.
    """
    hook = getattr(model, "configure_optimizers", None)
    if callable(hook):
        offered = {"lr": config.lr, "weight_decay": config.weight_decay, "betas": config.betas}
        result = hook(**_accepted_kwargs(hook, offered))
        if isinstance(result, torch.optim.Optimizer):
            return result
        try:
            groups = list(result)
        except TypeError as exc:
            raise TypeError(
                f"{type(model).__name__}.configure_optimizers must return a torch Optimizer or an iterable of "
                f"parameter groups, got {type(result).__name__}"
            ) from exc
        if not groups:
            raise ValueError(
                f"{type(model).__name__}.configure_optimizers returned no parameters to optimise"
            )
        logger.debug(
            "using %d parameter group(s) from %s.configure_optimizers", len(groups), type(model).__name__
        )
    else:
        groups = default_param_groups(model, config.weight_decay)
        if not groups:
            raise ValueError(
                "the model has no trainable parameters (every parameter has requires_grad=False)"
            )
    kwargs = {"lr": config.lr, "betas": config.betas, "eps": config.eps, "weight_decay": config.weight_decay}
    return torch.optim.AdamW(groups, **kwargs, **adamw_implementation(device))
