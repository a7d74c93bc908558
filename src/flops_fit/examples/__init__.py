"""Built-in example models and their data: a GPT on text and a Vision Transformer on images.

Submodules (imported on first use, so ``import flops_fit.examples`` stays light):

- :mod:`flops_fit.examples.gpt`: ``GPT``, ``GPTConfig``, ``lm_loss``, parameter counting and sizing.
- :mod:`flops_fit.examples.text`: ``load_text_corpus`` (State of the Union by default), ``TokenDataset``.
- :mod:`flops_fit.examples.vit`: ``VisionTransformer``, ``classification_loss``.
- :mod:`flops_fit.examples.images`: Fashion-MNIST / CIFAR-10 readers and ``ImageDataset``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "GPT",
    "DataNotFoundError",
    "GPTConfig",
    "ImageDataset",
    "TokenDataset",
    "VisionTransformer",
    "classification_loss",
    "default_num_heads",
    "lm_loss",
    "load_cifar10",
    "load_fashion_mnist",
    "load_text_corpus",
]


from flops_fit.core.validate import Integer, Real, check


class DataNotFoundError(FileNotFoundError):
    """A data set is not available on this machine; the message says how to get it."""


_HEAD_DIMS = (64, 32, 16, 8)


_SIZE = Integer(1, type_label="an int", range_label="a positive integer")
#: A dropout probability.
DROPOUT = Real(0.0, 1.0, hi_open=True)


def _check_positive_int(name: str, value: Any) -> int:
    return check(name, value, _SIZE)


def default_num_heads(d_model: int) -> int:
    """Head count used when none is given: ``d_model / h`` for the first head size h in 64, 32, 16, 8
    that divides ``d_model``. Raises ValueError when ``d_model`` is not a multiple of 8."""
    _check_positive_int("d_model", d_model)
    for head_dim in _HEAD_DIMS:
        if d_model % head_dim == 0:
            return d_model // head_dim
    raise ValueError(
        f"cannot choose a head count for d_model={d_model}: it is not a multiple of 8; "
        "pass num_heads= explicitly or use a d_model that is a multiple of 64"
    )


_LAZY = {
    "GPT": "gpt",
    "GPTConfig": "gpt",
    "lm_loss": "gpt",
    "TokenDataset": "text",
    "load_text_corpus": "text",
    "VisionTransformer": "vit",
    "classification_loss": "vit",
    "ImageDataset": "images",
    "load_fashion_mnist": "images",
    "load_cifar10": "images",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
