"""FLOP accounting: how many training FLOPs one token costs, under an explicit convention.

Every compute budget C in flops-fit is paired with a convention that turns it into tokens,
D = C / flops_per_token. The convention is recorded in the plan and in the results.

``"6nd"``
    6 N per token (2 N forward, 4 N backward), N = non-embedding parameters (Kaplan et al., 2020).
    It ignores the attention logits and reduction (2 * 2 * n_ctx * d_attn per layer and token, forward)
    and every non-matmul operation, so it undercounts models with long contexts relative to their width.
``"chinchilla"``
    The per-token formula of Hoffmann et al. (2022), Appendix F: embeddings, QKV projections, attention
    logits, softmax, attention reduction, output projection, feed-forward and final logits, with the
    backward pass counted as twice the forward pass. Needs the transformer's shape
    (:class:`TransformerShape`); see :func:`chinchilla_flops_per_token`.
``"measured"``
    :class:`torch.utils.flop_counter.FlopCounterMode` over one forward + backward pass of a sample batch,
    divided by the tokens in the batch. Works for any architecture; counts matrix multiplications,
    convolutions and attention kernels (not element-wise ops, norms or the optimiser step). It runs on the
    ``meta`` device, so no memory is allocated and attention is counted through its math decomposition
    (on CPU tensors, PyTorch's fused CPU attention kernel is not in the FLOP registry and would count 0).
a callable ``flops_per_token(model, sample) -> float``
    Your own rule; ``model`` is built on the meta device and ``sample`` is ``(inputs, targets)`` or None.

Parameter counting (one rule, used everywhere): ``"total"`` counts every distinct parameter tensor once
(tied weights once); ``"non_embedding"`` drops the parameters owned by :class:`torch.nn.Embedding` /
:class:`torch.nn.EmbeddingBag` modules (token and learned position embeddings). An untied output
projection (an ``nn.Linear``) is not an embedding and is counted; a head tied to the token embedding is
owned by the embedding and is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from flops_fit.core.runs import FLOPS_PER_PARAM_TOKEN
from flops_fit.core.validate import POSITIVE_INT, Nullable, Options, check

CONVENTIONS: tuple[str, ...] = ("6nd", "chinchilla", "measured")
PARAM_COUNTS: tuple[str, ...] = ("non_embedding", "total")
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_PARAM_COUNT = Options(PARAM_COUNTS)

_OPTIONAL_COUNT = Nullable(POSITIVE_INT)

#: ``flops_per_token(model, sample) -> float``: a user-defined FLOP convention.
FlopsFn = Callable[[nn.Module, Any], float]


def count_params(model: nn.Module, param_count: str = "non_embedding") -> int:
    """Number of parameters of ``model`` (works on the meta device).

    ``param_count="total"`` counts every distinct parameter once; ``"non_embedding"`` excludes those
    owned by ``nn.Embedding`` / ``nn.EmbeddingBag`` modules (see the module docstring for the rule).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check("param_count", param_count, _PARAM_COUNT)
    excluded: set[int] = set()
    if param_count == "non_embedding":
        for module in model.modules():
            if isinstance(module, EMBEDDING_TYPES):
                excluded.update(id(p) for p in module.parameters(recurse=False))
    return int(sum(p.numel() for p in model.parameters() if id(p) not in excluded))


@dataclass(frozen=True)
class TransformerShape:
    """The shape of a decoder-only transformer, as the ``"chinchilla"`` convention needs it.

    ``head_dim`` defaults to ``d_model // num_heads`` and ``num_kv_heads`` to ``num_heads`` (set it lower
    for grouped-query attention). ``ffn_matrices`` is the number of ``d_model x d_ff`` matrices in the
    feed-forward block: 2 for a plain MLP (up, down), 3 for a gated one such as SwiGLU or GeGLU
    (gate, up, down). ``seq_len`` is the training context length (the attention terms grow with it).
    """

    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    vocab_size: int
    seq_len: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_matrices: int = 2

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "num_heads", "d_ff", "vocab_size", "seq_len", "ffn_matrices"):
            check(name, getattr(self, name), POSITIVE_INT)
        for name in ("num_kv_heads", "head_dim"):
            check(name, getattr(self, name), _OPTIONAL_COUNT)
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; pass head_dim explicitly"
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @classmethod
    def from_mapping(cls, shape: TransformerShape | Mapping[str, Any]) -> TransformerShape:
        """Accept a :class:`TransformerShape` or a mapping with its field names (unknown keys are an error)."""
        if isinstance(shape, TransformerShape):
            return shape
        if not isinstance(shape, Mapping):
            raise TypeError(
                f"a transformer shape must be a TransformerShape or a mapping, got {type(shape).__name__}"
            )
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(shape) - allowed)
        if unknown:
            raise ValueError(f"unknown transformer shape key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted(
            k
            for k in ("d_model", "num_layers", "num_heads", "d_ff", "vocab_size", "seq_len")
            if k not in shape
        )
        if missing:
            raise ValueError(f"transformer shape is missing key(s) {missing}")
        return cls(**dict(shape))

    def breakdown(self) -> dict[str, float]:
        """Forward FLOPs per token by component (see :func:`chinchilla_forward_breakdown`)."""
        return chinchilla_forward_breakdown(**asdict(self))

    def flops_per_token(self) -> float:
        """Training (forward + backward) FLOPs per token under the ``"chinchilla"`` convention."""
        return chinchilla_flops_per_token(**asdict(self))


def chinchilla_forward_breakdown(
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    vocab_size: int,
    seq_len: int,
    *,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    ffn_matrices: int = 2,
) -> dict[str, float]:
    """Forward-pass FLOPs per token of each component in Hoffmann et al. (2022), Appendix F.

    A multiply-add is 2 FLOPs. Per token, with ``d_attn = num_heads * head_dim``:
    ``embeddings`` 2 V d; per layer ``qkv`` 2 d (num_heads + 2 num_kv_heads) head_dim, ``attention_logits``
    2 seq_len d_attn, ``softmax`` 3 num_heads seq_len, ``attention_reduction`` 2 seq_len d_attn,
    ``attention_output`` 2 d_attn d, ``feed_forward`` 2 ffn_matrices d d_ff; ``final_logits`` 2 d V.
    The per-layer entries are already multiplied by ``num_layers``. Attention is counted over the full
    ``seq_len x seq_len`` score matrix, as in the paper (no saving for causal masking).
    """
    shape = TransformerShape(
        d_model, num_layers, num_heads, d_ff, vocab_size, seq_len, num_kv_heads, head_dim, ffn_matrices
    )
    hd = shape.head_dim if shape.head_dim is not None else d_model // num_heads
    kv = shape.num_kv_heads if shape.num_kv_heads is not None else num_heads
    d_attn = num_heads * hd
    per_layer = {
        "qkv": 2.0 * d_model * (num_heads + 2 * kv) * hd,
        "attention_logits": 2.0 * seq_len * d_attn,
        "softmax": 3.0 * num_heads * seq_len,
        "attention_reduction": 2.0 * seq_len * d_attn,
        "attention_output": 2.0 * d_attn * d_model,
        "feed_forward": 2.0 * ffn_matrices * d_model * d_ff,
    }
    out = {"embeddings": 2.0 * vocab_size * d_model}
    out.update({k: num_layers * v for k, v in per_layer.items()})
    out["final_logits"] = 2.0 * d_model * vocab_size
    return out


def chinchilla_flops_per_token(
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    vocab_size: int,
    seq_len: int,
    *,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    ffn_matrices: int = 2,
) -> float:
    """Training FLOPs per token of a transformer, Hoffmann et al. (2022) Appendix F.

    Forward FLOPs (:func:`chinchilla_forward_breakdown`, summed) times 3: the backward pass is counted
    as twice the forward pass. ``ffn_matrices=3`` for gated feed-forward blocks (SwiGLU has three
    ``d_model x d_ff`` matrices, so its feed-forward costs 1.5x a plain MLP of the same ``d_ff``).
    """
    parts = chinchilla_forward_breakdown(
        d_model,
        num_layers,
        num_heads,
        d_ff,
        vocab_size,
        seq_len,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        ffn_matrices=ffn_matrices,
    )
    return 3.0 * math.fsum(parts.values())


def default_loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension for integer targets (LMs, classifiers); MSE for float targets."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}, not a tensor; pass loss_fn(output, targets) that handles it"
        )
    if targets.is_floating_point():
        return F.mse_loss(output, targets)
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))


def move_to(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor in a (nested) tuple / list / dict to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping of inputs, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def split_sample(sample: Any) -> tuple[Any, Any]:
    """Check that a sample is an ``(inputs, targets)`` pair and return it."""
    if not isinstance(sample, Sequence) or isinstance(sample, (str, bytes)) or len(sample) != 2:
        raise TypeError(
            f"sample_fn(batch_size) must return an (inputs, targets) pair, got {type(sample).__name__}"
        )
    return sample[0], sample[1]


def measure_flops(
    model: nn.Module, sample: Any, loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
) -> int:
    """FLOPs of one forward + backward pass of ``model`` on ``sample = (inputs, targets)``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode`. For no memory cost, build the model
    under ``torch.device("meta")``; the sample is moved to the model's device.
    """
    inputs, targets = split_sample(sample)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs, targets = move_to(inputs, device), move_to(targets, device)
    loss_fn = default_loss if loss_fn is None else loss_fn
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.train()
    try:
        with counter:
            loss = loss_fn(call_model(model, inputs), targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("loss_fn(output, targets) must return a scalar tensor")
            if not loss.requires_grad:
                raise ValueError("the loss does not depend on any trainable parameter; nothing to train")
            loss.backward()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def measure_flops_per_token(
    model: nn.Module,
    sample: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    *,
    tokens: int | None = None,
) -> float:
    """Training FLOPs per token measured by FlopCounterMode (``"measured"`` convention).

    ``tokens`` is the number of tokens in ``sample`` (default: the number of elements of the targets,
    which is right for language models with ``(batch, seq_len)`` targets and classifiers with ``(batch,)``).
    """
    n_tokens = tokens if tokens is not None else int(_targets_numel(sample))
    if n_tokens < 1:
        raise ValueError(f"the sample must hold at least one token, got {n_tokens}")
    total = measure_flops(model, sample, loss_fn)
    if total <= 0:
        raise ValueError(
            "FlopCounterMode counted 0 FLOPs for one training step; the model uses no operation it knows "
            "(matmul, convolution, attention). Use flops='6nd' or a callable convention instead."
        )
    return total / n_tokens


def _targets_numel(sample: Any) -> int:
    _, targets = split_sample(sample)
    if not isinstance(targets, torch.Tensor):
        raise TypeError("cannot infer tokens per sample from non-tensor targets; pass tokens_per_sample")
    return targets.numel()


def convention_name(flops: str | FlopsFn) -> str:
    """The recorded name of a FLOP convention: ``"6nd"``, ``"chinchilla"``, ``"measured"`` or
    ``"callable:<module>.<qualname>"`` for a user function."""
    if isinstance(flops, str):
        key = flops.lower()
        if key not in CONVENTIONS:
            raise ValueError(
                f"flops must be one of {list(CONVENTIONS)} or a callable(model, sample), got {flops!r}"
            )
        return key
    if callable(flops):
        module = getattr(flops, "__module__", None) or type(flops).__module__
        qualname = getattr(flops, "__qualname__", None) or type(flops).__qualname__
        return f"callable:{module}.{qualname}"
    raise TypeError(
        f"flops must be a convention name or a callable(model, sample), got {type(flops).__name__}"
    )


def flops_per_token(
    model: nn.Module,
    flops: str | FlopsFn,
    *,
    sample: Any = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    tokens: int | None = None,
    shape: TransformerShape | Mapping[str, Any] | None = None,
) -> float:
    """Training FLOPs per token of ``model`` under the convention ``flops``.

    ``"6nd"`` needs only the model, ``"chinchilla"`` its ``shape``, ``"measured"`` a ``sample`` (and
    ``tokens``, the tokens in it; default the number of target elements), a callable gets
    ``(model, sample)``.
    """
    name = convention_name(flops)
    if name == "6nd":
        value = FLOPS_PER_PARAM_TOKEN * count_params(model, "non_embedding")
    elif name == "chinchilla":
        if shape is None:
            raise ValueError("flops='chinchilla' needs the transformer shape (d_model, num_layers, ...)")
        value = TransformerShape.from_mapping(shape).flops_per_token()
    elif name == "measured":
        if sample is None:
            raise ValueError("flops='measured' needs a sample batch (inputs, targets)")
        value = measure_flops_per_token(model, sample, loss_fn, tokens=tokens)
    else:
        assert callable(flops)
        value = flops(model, sample)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"FLOP convention {name} returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"FLOP convention {name} gave {value} FLOPs per token; it must be positive and finite"
        )
    return value
