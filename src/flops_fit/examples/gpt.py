"""A small decoder-only GPT for scaling-law sweeps, in two parametrizations.

Architecture (LLaMA-style, pre-norm): token embedding ``token_emb`` -> ``num_layers`` blocks of
[RMSNorm -> causal self-attention with fused QKV and rotary position embeddings (RoPE)] and
[RMSNorm -> SwiGLU feed-forward], each added back to the residual stream -> final RMSNorm -> untied
readout ``lm_head`` (initialised to zero). No biases. The norms have no trainable gain (as in the u-μP
paper and OLMo), so both parametrizations have exactly the same parameters.

Parametrizations (``GPTConfig.parametrization``):

``"u-mup"``
    The Unit-Scaled Maximal Update Parametrization of Blake et al. (2024), "u-μP: The Unit-Scaled
    Maximal Update Parametrization" (arXiv:2407.17465), built from Graphcore's ``unit-scaling``
    package: unit-variance initialisation, ``1/sqrt(fan_in)`` multipliers in the forward pass, μP
    attention scaling ``1/d_head``, readout multiplier ``1/fan_in``, unit-scaled SwiGLU and residual
    branches weighted by the paper's default residual rule (Appendix G). Learning rates follow the
    paper's Adam rules (see :meth:`GPT.configure_optimizers`), so the best global learning rate should
    transfer across widths.
``"sp"``
    The standard GPT-2/nanoGPT parametrization: weights ``N(0, 0.02^2)``, residual output projections
    ``N(0, (0.02/sqrt(2 L))^2)`` (Radford et al. 2019), attention scale ``1/sqrt(d_head)`` and one
    global learning rate.

Parameter count (exact; :func:`estimate_params_from_config`): with ``d = d_model``, ``f = d_ff``,
``V = vocab_size``, ``L = num_layers``, each block has ``4 d^2`` attention weights (QKV ``3 d^2``,
output ``d^2``) and ``3 d f`` SwiGLU weights (gate, up, down); ``d_ff`` defaults to ``4 d``, so a block
has ``16 d^2`` parameters. The embedding and the readout have ``V d`` each. "Non-embedding" parameters
exclude ``token_emb`` only; the readout is counted because its matmul costs ``2 V d`` FLOPs per token,
so ``6 N D`` with ``N = num_params()`` accounts for it.

Model contract of flops-fit: ``GPT.from_config`` builds a model from keyword arguments (use it as
``model_cls`` with ``size_param="d_model"``); ``model(input_ids)`` returns ``(logits, None)`` and
:func:`lm_loss` turns that tuple (or bare logits) and the target ids into the mean cross-entropy in nats.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
import unit_scaling as uu
import unit_scaling.functional as U
from torch import Tensor, nn
from unit_scaling.core.functional import logarithmic_interpolation
from unit_scaling.scale import scale_bwd, scale_fwd

from flops_fit.core.validate import POSITIVE, Real, check
from flops_fit.examples import DROPOUT, _check_positive_int, default_num_heads
from flops_fit.plan.flops import TransformerShape

logger = logging.getLogger(__name__)

__all__ = [
    "GPT",
    "PARAMETRIZATIONS",
    "GPTConfig",
    "GPTConfigError",
    "apply_rope",
    "config_for_params",
    "create_model_for_scaling",
    "default_num_heads",
    "estimate_params_from_config",
    "lm_loss",
    "random_batch",
    "rope_cache",
    "transformer_shape",
]

PARAMETRIZATIONS: tuple[str, ...] = ("u-mup", "sp")
ROPE_BASE = 10_000.0
SP_INIT_STD = 0.02


#: Defaults of :class:`GPTConfig`: a small GPT in the spirit of the TinyStories models (Eldan & Li 2023)
#: that flops-fit's first prototype used (width 256, 6 layers, 4 heads of 64, context 256), with the
#: vocabulary of the built-in text corpus (``load_text_corpus(vocab_size=4096)``). Set ``vocab_size`` to
#: your tokenizer's size (e.g. ``corpus.vocab_size``; 50257 for the GPT-2 tokenizer).
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_D_MODEL = 256
DEFAULT_NUM_LAYERS = 6
DEFAULT_MAX_SEQ_LEN = 256


class GPTConfigError(ValueError, AssertionError):
    """An inconsistent :class:`GPTConfig` shape (heads that do not divide the width, an odd head size).

    A ValueError; also an AssertionError, which is what the prototype's ``GPTConfig`` raised for a head
    count that does not divide ``d_model``, so code written against it keeps working.
    """


@dataclass(frozen=True)
class GPTConfig:
    """Shape and parametrization of a :class:`GPT`; every field has a default: ``GPTConfig()`` is 256
    wide, 6 layers deep, with 4 heads, vocabulary 4096 and context 256 (7.3M non-embedding parameters,
    8.4M in all).

    Args:
        vocab_size: number of token ids (default 4096, the built-in corpus's vocabulary); must match the
            tokenizer.
        d_model: residual-stream width (default 256).
        num_layers: number of transformer blocks (default 6).
        num_heads: attention heads; must divide ``d_model`` with an even head size (RoPE rotates pairs).
            ``None`` (the default) means :func:`default_num_heads` (heads of 64 where the width allows:
            4 at width 256).
        max_seq_len: longest sequence the rotary cache covers, in tokens (default 256).
        d_ff: SwiGLU hidden width; ``None`` means ``4 * d_model``.
        parametrization: ``"u-mup"`` (Blake et al. 2024) or ``"sp"`` (GPT-2 style).
        dropout: probability of dropping elements of each residual branch's output during training.
    """

    vocab_size: int = DEFAULT_VOCAB_SIZE
    d_model: int = DEFAULT_D_MODEL
    num_layers: int = DEFAULT_NUM_LAYERS
    num_heads: int | None = None
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    d_ff: int | None = None
    parametrization: str = "u-mup"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_positive_int("d_model", self.d_model)
        if self.num_heads is None:
            object.__setattr__(self, "num_heads", default_num_heads(self.d_model))
        for name in ("vocab_size", "num_layers", "num_heads", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _check_positive_int("d_ff", self.d_ff)
        if self.d_model % self.num_heads != 0:
            raise GPTConfigError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                f"choose num_heads among the divisors of d_model (e.g. {_suggest_num_heads(self.d_model)})"
            )
        if self.head_dim % 2 != 0:
            raise GPTConfigError(
                f"head size d_model/num_heads = {self.head_dim} is odd; rotary embeddings need an even head "
                "size, so change num_heads or d_model"
            )
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {list(PARAMETRIZATIONS)}, got {self.parametrization!r}"
            )
        check("dropout", self.dropout, DROPOUT)

    @property
    def head_dim(self) -> int:
        """Size of one attention head, ``d_model // num_heads``."""
        assert self.num_heads is not None  # resolved in __post_init__
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (``d_ff`` resolved), e.g. for logging or a ledger."""
        return asdict(self)


def _suggest_num_heads(d_model: int) -> int:
    try:
        return default_num_heads(d_model)
    except ValueError:
        return 1


# ----------------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ----------------------------------------------------------------------------------------------------------


def rope_cache(
    seq_len: int, head_dim: int, base: float = ROPE_BASE, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables, each ``(seq_len, head_dim // 2)``, for rotary embeddings.

    Computed in float64 on the CPU and rounded once to ``dtype``.
    """
    cpu = torch.device("cpu")  # explicit: a default-device context (meta, MPS without float64) must not apply
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=cpu) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=cpu), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape ``(..., seq, head_dim)`` by position (half-split convention)."""
    seq_len = x.shape[-2]
    cos = cos[:seq_len].to(x.dtype)
    sin = sin[:seq_len].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _rope_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`apply_rope` of q and k as one autograd node in eager mode; under ``torch.compile`` the plain
    formula, which inductor fuses."""
    if torch.compiler.is_compiling() or cos.requires_grad or sin.requires_grad:
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    seq_len = q.shape[-2]
    return _RotaryQK.apply(q, k, cos[:seq_len].to(q.dtype), sin[:seq_len].to(q.dtype))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``cat(x1 cos - x2 sin, x2 cos + x1 sin)`` written into one output, without temporaries."""
    out = torch.empty_like(x)
    x1, x2 = x.chunk(2, dim=-1)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
    return out


class _RotaryQK(torch.autograd.Function):
    """Rotary embedding of queries and keys: the backward rotates the gradients by minus the angle."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor, grad_k: Tensor) -> tuple[Tensor, Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad_q, cos, -sin), _rotate(grad_k, cos, -sin), None, None


# ----------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------


def _linear(config: GPTConfig, fan_in: int, fan_out: int) -> nn.Linear:
    if config.parametrization == "u-mup":
        return uu.Linear(fan_in, fan_out)  # unit init, 1/sqrt(fan_in) forward multiplier
    return nn.Linear(fan_in, fan_out, bias=False)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection and RoPE on queries and keys."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.unit_scaled = config.parametrization == "u-mup"
        self.qkv = _linear(config, config.d_model, 3 * config.d_model)
        self.proj = _linear(config, config.d_model, config.d_model)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, seq_len, width = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
        q, k = _rope_qk(q, k, cos, sin)
        if self.unit_scaled:
            y = U.scaled_dot_product_attention(q, k, v, is_causal=True)  # μP 1/d_head scale, unit output
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq_len, width))


class GateUp(nn.Module):
    """SwiGLU's gate and up projections as one ``(2 d_ff, d_model)`` weight (rows ``[:d_ff]`` gate, then up),
    one matmul; ``forward`` returns ``[gate(x), up(x)]`` on the last axis. Initialised half by half like
    the two layers it replaces (``uu.Linear``: unit normal; ``nn.Linear``: its uniform), so seeded models
    are unchanged; in u-μP each half keeps ``uu.Linear(constraint=None)``'s scales: output
    ``1/sqrt(d_model)``, input gradient ``1/sqrt(d_ff)``, weight gradient ``1/sqrt(tokens)``."""

    def __init__(self, d_model: int, d_ff: int, unit_scaled: bool) -> None:
        super().__init__()
        self.d_ff = d_ff
        self.unit_scaled = unit_scaled
        weight = torch.empty(2 * d_ff, d_model)
        self.weight = uu.Parameter(weight, mup_type="weight") if unit_scaled else nn.Parameter(weight)
        self.reset_parameters()

    def halves(self) -> tuple[Tensor, Tensor]:  # views (d_ff, d_model): gate, up
        return self.weight[: self.d_ff], self.weight[self.d_ff :]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for half in self.halves():  # unit normal (uu.Linear) or nn.Linear's default uniform
            nn.init.normal_(half) if self.unit_scaled else nn.init.kaiming_uniform_(half, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if not self.unit_scaled:
            return F.linear(x, self.weight)
        weight = scale_bwd(self.weight, (x.numel() // x.shape[-1]) ** -0.5)
        return scale_fwd(F.linear(scale_bwd(x, self.d_ff**-0.5), weight), x.shape[-1] ** -0.5)


class SwiGLU(nn.Module):
    """Gated feed-forward ``down(silu(gate(x)) * up(x))`` (Shazeer 2020); gate and up fused (:class:`GateUp`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.d_ff is not None
        self.unit_scaled = config.parametrization == "u-mup"
        # In u-μP the forward and backward constraints of {up, gate} and down mirror each other, so the
        # matmuls may scale forward and backward independently (constraint=None), as in uu.MLP.
        self.gate_up = GateUp(config.d_model, config.d_ff, self.unit_scaled)
        if self.unit_scaled:
            self.down = uu.Linear(config.d_ff, config.d_model, constraint=None)
        else:
            self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.gate_up(x)
        if torch.compiler.is_compiling():  # the plain formula, which inductor fuses
            gate, up = y.chunk(2, dim=-1)
            return self.down(U.silu_glu(up, gate) if self.unit_scaled else F.silu(gate) * up)
        return self.down(_SiluGLU.apply(y, SILU_GLU_SCALE if self.unit_scaled else 1.0))


#: Output (and input-gradient) scale of ``unit_scaling.functional.silu_glu`` at ``mult=1`` (2^0.75).
SILU_GLU_SCALE = logarithmic_interpolation(alpha=0.5, lower=2.0, upper=2.0**0.5)


class _SiluGLU(torch.autograd.Function):
    """``scale * silu(gate) * up`` of ``y = [gate, up]``, ``scale`` on both passes as in u-μP's ``silu_glu``
    (SP: 1); the backward writes both gradients into one tensor shaped like ``y`` (no concatenation)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, scale: float) -> Tensor:
        gate, up = y.chunk(2, dim=-1)
        silu = F.silu(gate)
        out = silu * up if scale == 1.0 else (silu * up).mul_(scale)
        ctx.save_for_backward(y, silu)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, silu = ctx.saved_tensors
        gate, up = y.chunk(2, dim=-1)
        grad_y = torch.empty_like(y)
        grad_gate, grad_up = grad_y.chunk(2, dim=-1)
        torch.mul(grad, silu, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return (grad_y if ctx.scale == 1.0 else grad_y.mul_(ctx.scale)), None


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU, each on a residual branch."""

    def __init__(self, config: GPTConfig, index: int) -> None:
        super().__init__()
        self.unit_scaled = config.parametrization == "u-mup"
        self.dropout = config.dropout
        self.attn_norm = nn.RMSNorm(config.d_model, eps=1e-5, elementwise_affine=False)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=1e-5, elementwise_affine=False)
        self.mlp = SwiGLU(config)
        self.attn_tau = self.mlp_tau = 1.0
        if self.unit_scaled:
            # Blake et al. (2024), Appendix G: embedding, all attention and all MLP branches contribute
            # equally to the residual stream; tau is the branch weight relative to the skip path.
            rule = uu.transformer_residual_scaling_rule()
            self.attn_tau = rule(2 * index, 2 * config.num_layers)
            self.mlp_tau = rule(2 * index + 1, 2 * config.num_layers)

    def _branch(self, x: Tensor, norm: nn.Module, fn: Any, tau: float, *args: Tensor) -> Tensor:
        if self.unit_scaled:
            residual, skip = U.residual_split(x, tau=tau)
            residual = fn(norm(residual), *args)
            if self.dropout:
                residual = U.dropout(residual, self.dropout, self.training)
            return U.residual_add(residual, skip, tau=tau)
        return x + F.dropout(fn(norm(x), *args), self.dropout, self.training)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = self._branch(x, self.attn_norm, self.attn, self.attn_tau, cos, sin)
        return self._branch(x, self.mlp_norm, self.mlp, self.mlp_tau)


class GPT(nn.Module):
    """Decoder-only transformer language model; see the module docstring for the architecture."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(
                f"config must be a GPTConfig, got {type(config).__name__}; "
                "use GPT.from_config(**kwargs) to build from keyword arguments"
            )
        self.config = config
        unit_scaled = config.parametrization == "u-mup"
        self.token_emb = (
            uu.Embedding(config.vocab_size, config.d_model)
            if unit_scaled
            else nn.Embedding(config.vocab_size, config.d_model)
        )
        blocks = [Block(config, i) for i in range(config.num_layers)]
        # DepthModuleList tags every block parameter with the depth, as u-μP's depth rules expect.
        self.blocks = uu.DepthModuleList(blocks) if unit_scaled else nn.ModuleList(blocks)
        self.final_norm = nn.RMSNorm(config.d_model, eps=1e-5, elementwise_affine=False)
        self.lm_head = (
            uu.LinearReadout(config.d_model, config.vocab_size)
            if unit_scaled
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        # Non-persistent buffers: not in state_dict; they follow .to(device) and .to(dtype), and are
        # recomputed from scratch after every such move (see _apply), by reset_parameters and after
        # load_state_dict, on the device of the parameters: a bf16 -> fp32 round trip leaves no rounding
        # behind, and a model built on the meta device gets real tables when it is materialised.
        shape = (config.max_seq_len, config.head_dim // 2)
        self.register_buffer("rope_cos", torch.empty(shape), persistent=False)  # the default device
        self.register_buffer("rope_sin", torch.empty(shape), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._fill_rope())
        self.reset_parameters()

    @torch.no_grad()
    def _fill_rope(self) -> None:
        device, dtype = self.token_emb.weight.device, self.rope_cos.dtype
        cos, sin = rope_cache(self.config.max_seq_len, self.config.head_dim, dtype=dtype)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def _apply(self, fn: Any, recurse: bool = True) -> GPT:
        super()._apply(fn, recurse)
        self._fill_rope()
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise all weights as the parametrization prescribes; ``lm_head`` starts at zero."""
        self._fill_rope()
        if self.config.parametrization == "u-mup":
            for module in self.modules():
                if isinstance(module, (uu.Linear, uu.Embedding)):
                    nn.init.normal_(module.weight, mean=0.0, std=1.0)
                elif isinstance(module, GateUp):
                    module.reset_parameters()  # unit normal, half by half
        else:
            residual_std = SP_INIT_STD / math.sqrt(2 * self.config.num_layers)
            nn.init.normal_(self.token_emb.weight, mean=0.0, std=SP_INIT_STD)
            for block in self.blocks:
                for weight in (block.attn.qkv.weight, *block.mlp.gate_up.halves()):
                    nn.init.normal_(weight, mean=0.0, std=SP_INIT_STD)
                for linear in (block.attn.proj, block.mlp.down):
                    nn.init.normal_(linear.weight, mean=0.0, std=residual_std)
        nn.init.zeros_(self.lm_head.weight)

    @classmethod
    def from_config(cls, **kwargs: Any) -> GPT:
        """Build a model from :class:`GPTConfig` keyword arguments.

        ``num_heads`` may be omitted (then :func:`default_num_heads` picks it) or replaced by
        ``head_dim=``; this makes ``GPT.from_config`` usable as a flops-fit ``model_cls`` swept over
        ``d_model``.
        """
        head_dim = kwargs.pop("head_dim", None)
        if head_dim is not None:
            if kwargs.get("num_heads") is not None:
                raise ValueError("pass either num_heads or head_dim, not both")
            _check_positive_int("head_dim", head_dim)
            d_model = kwargs.get("d_model")
            _check_positive_int("d_model", d_model)
            if d_model % head_dim != 0:
                raise ValueError(f"d_model={d_model} is not a multiple of head_dim={head_dim}")
            kwargs["num_heads"] = d_model // head_dim
        elif kwargs.get("num_heads") is None and "d_model" in kwargs:
            kwargs["num_heads"] = default_num_heads(kwargs["d_model"])
        try:
            config = GPTConfig(**kwargs)
        except TypeError as exc:
            if "unexpected keyword" in str(exc) or "missing" in str(exc):
                fields = list(GPTConfig.__dataclass_fields__)
                raise TypeError(
                    f"GPT.from_config: {exc}; accepted arguments are {fields} and head_dim"
                ) from exc
            raise
        return cls(config)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits ``(batch, seq, vocab)`` for token ids ``(batch, seq)``, and the loss when labels are given.

        ``labels`` are the next-token targets aligned with ``input_ids`` (position t predicts
        ``labels[:, t]``; no shifting happens here); ids equal to -100 are ignored. The loss is the mean
        cross-entropy in nats, computed in float32.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        seq_len = input_ids.shape[1]
        if seq_len > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_len={self.config.max_seq_len}; "
                "build the model with a larger max_seq_len"
            )
        x = self.token_emb(input_ids)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        logits = self.lm_head(self.final_norm(x))
        loss = lm_loss(logits, labels) if labels is not None else None
        return logits, loss

    def count_parameters(self, non_embedding: bool = True) -> int:
        """Number of parameters; ``non_embedding=True`` leaves out ``token_emb`` only (not ``lm_head``)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.token_emb.weight.numel()
        return total

    def num_params(self) -> int:
        """N for scaling laws: the non-embedding parameter count (``lm_head`` included)."""
        return self.count_parameters(non_embedding=True)

    def _lr_multipliers(self) -> Iterator[tuple[str, nn.Parameter, float]]:
        """Yield ``(name, parameter, learning-rate multiplier)`` under the model's parametrization.

        u-μP, Adam family (Blake et al. 2024, Table 2 / Section 4.4): hidden weights
        ``1/sqrt(fan_in)``, embedding ``1/sqrt(fan_out) = 1/sqrt(d_model)``, readout ``1``, and every
        parameter inside the residual blocks additionally ``1/sqrt(num_layers)`` (depth rule). This is
        ``unit_scaling.optim.lr_scale_func_adam`` applied to the same modules, derived here from the
        module structure so that it survives ``to_empty``/meta-device construction, which drops the
        package's parameter tags. SP: multiplier 1 everywhere.
        """
        unit_scaled = self.config.parametrization == "u-mup"
        depth_scale = self.config.num_layers**-0.5
        for name, param in self.named_parameters():
            if not unit_scaled:
                yield name, param, 1.0
            elif name == "lm_head.weight":
                yield name, param, 1.0
            elif name == "token_emb.weight":
                yield name, param, self.config.d_model**-0.5
            elif param.dim() == 2:  # (fan_out, fan_in) weight of a block linear
                yield name, param, depth_scale * param.shape[1] ** -0.5
            else:
                yield name, param, depth_scale

    def configure_optimizers(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Parameter groups for ``torch.optim.AdamW`` (or Adam) that apply the parametrization's LR rules.

        Args:
            lr: global (base) learning rate. Each group's ``lr`` is ``lr`` times its multiplier (see
                ``_lr_multipliers``); learning-rate schedulers scale all groups together.
            weight_decay: for ``"sp"``, PyTorch's AdamW coefficient (decay per step ``lr * wd``) on all
                weight matrices. For ``"u-mup"`` it is *independent* of the learning rate, as in the
                u-μP paper and ``unit_scaling.optim.AdamW``: every weight shrinks by the factor
                ``1 - weight_decay`` per step at peak learning rate.

        Example: ``torch.optim.AdamW(model.configure_optimizers(lr=2.0), betas=(0.9, 0.95))``.
        """
        check("lr", lr, POSITIVE)
        check("weight_decay", weight_decay, Real(0))
        independent = self.config.parametrization == "u-mup"
        groups: dict[tuple[float, float], dict[str, Any]] = {}
        for name, param, multiplier in self._lr_multipliers():
            if not param.requires_grad:
                continue
            group_lr = lr * multiplier
            decay = weight_decay if param.dim() >= 2 else 0.0
            if independent and decay:
                decay = decay / group_lr
            key = (group_lr, decay)
            group = groups.setdefault(
                key, {"params": [], "param_names": [], "lr": group_lr, "weight_decay": decay}
            )
            group["params"].append(param)
            group["param_names"].append(name)
        return list(groups.values())

    def extra_repr(self) -> str:
        return f"parametrization={self.config.parametrization!r}, num_params={self.num_params():,}"


def lm_loss(output: Tensor | tuple[Tensor, ...], targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats) of a model output against target ids; -100 is ignored.

    ``output`` is what :meth:`GPT.forward` returns (a ``(logits, loss)`` tuple; the logits are used)
    or bare logits ``(..., vocab)``; ``targets`` has the logits' shape without the vocab axis.

    For u-μP this is the ordinary mean cross-entropy; the unit-scaled loss of the paper differs only by
    a constant factor on the backward pass, which Adam-type optimizers are invariant to (up to eps).
    """
    logits = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("lm_loss expects (logits or a (logits, ...) tuple, targets tensor)")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match; targets must "
            "have the logits' shape without the final vocab dimension"
        )
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()
    if torch.compiler.is_compiling():  # inductor fuses the up-cast into the loss kernels
        return F.cross_entropy(logits.float(), targets)
    with_grad = torch.is_grad_enabled() and logits.requires_grad
    return _CrossEntropy.apply(logits, targets, with_grad)


#: Eager cross-entropy chunks on a CPU: about 8 MiB of fp32 logits (>= 8 rows); few, since each op costs a
#: thread wake-up on a busy machine. Other devices take all rows at once.
_CE_CHUNK_BYTES = 8 << 20


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy (float32) of ``(rows, vocab)`` logits by chunks of rows, never up-casting all of
    them: per chunk the fp32 log-softmax (as ``F.cross_entropy`` of up-cast logits) and, for a gradient,
    ``(softmax - one_hot) / count`` in the logits' dtype; the backward only scales that."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, with_grad: bool) -> Tensor:
        rows, vocab = logits.shape
        valid = targets != -100
        safe = torch.where(valid, targets, 0).unsqueeze(1)
        count = valid.sum()
        step = max(8, _CE_CHUNK_BYTES // (4 * vocab)) if logits.device.type == "cpu" else max(rows, 1)
        grad = torch.empty_like(logits) if with_grad else None
        losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            logp = torch.log_softmax(logits[chunk].float(), dim=-1)
            losses[chunk] = logp.gather(1, safe[chunk]).squeeze(1).neg()
            if grad is not None:
                keep = valid[chunk].unsqueeze(1)
                probs = logp.exp_().scatter_add_(1, safe[chunk], keep.float().neg())
                grad[chunk] = probs.mul_(keep / count)
        ctx.save_for_backward(grad)
        return torch.where(valid, losses, 0.0).sum() / count

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        if grad_output.device.type == "cpu" and grad_output.item() == 1.0:
            return grad, None, None
        return grad * grad_output.to(grad.dtype), None, None


def transformer_shape(model: GPT) -> TransformerShape:
    """The shape the ``"chinchilla"`` FLOP convention needs (``ModelSpec(shape_fn=transformer_shape)``).

    The context is ``max_seq_len`` (train on sequences of that length) and the SwiGLU block has three
    ``d_model x d_ff`` matrices.
    """
    c = model.config
    return TransformerShape(
        d_model=c.d_model,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        d_ff=c.d_ff,
        vocab_size=c.vocab_size,
        seq_len=c.max_seq_len,
        ffn_matrices=3,
    )


def random_batch(batch_size: int, *, vocab_size: int, seq_len: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``batch_size`` sequences of random token ids and their next-token targets, each ``(batch, seq_len)``.

    A ``sample_fn`` for the ``"measured"`` FLOP convention and for cost calibration (FLOPs do not depend
    on the token values); bind the shape first, e.g. ``functools.partial(random_batch, vocab_size=4096,
    seq_len=128)``, or in a planner config ``{_target_: flops_fit.examples.gpt.random_batch, _partial_:
    true, vocab_size: 4096, seq_len: 128}``.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


# ----------------------------------------------------------------------------------------------------------
# Parameter counting and sizing
# ----------------------------------------------------------------------------------------------------------


def estimate_params_from_config(
    d_model: int, num_layers: int, vocab_size: int, d_ff: int | None = None
) -> dict[str, int]:
    """Exact parameter counts of a :class:`GPT` with these shapes (no model is built).

    Returns a dict with ``attention`` and ``mlp`` (per block), ``per_layer``, ``norm`` (0: the RMSNorms
    have no gain), ``embedding`` (``token_emb``), ``lm_head``, ``non_embedding`` (everything but
    ``token_emb``) and ``total``. ``d_ff`` defaults to ``4 * d_model``.
    """
    for name, value in (("d_model", d_model), ("num_layers", num_layers), ("vocab_size", vocab_size)):
        _check_positive_int(name, value)
    d_ff = 4 * d_model if d_ff is None else d_ff
    _check_positive_int("d_ff", d_ff)
    attention = 4 * d_model * d_model
    mlp = 3 * d_model * d_ff
    per_layer = attention + mlp
    embedding = vocab_size * d_model
    lm_head = vocab_size * d_model
    non_embedding = num_layers * per_layer + lm_head
    return {
        "attention": attention,
        "mlp": mlp,
        "norm": 0,
        "per_layer": per_layer,
        "embedding": embedding,
        "lm_head": lm_head,
        "non_embedding": non_embedding,
        "total": non_embedding + embedding,
    }


def config_for_params(
    target_params: float,
    num_layers: int = DEFAULT_NUM_LAYERS,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    num_heads: int | None = None,
    head_dim: int = 64,
    multiple_of: int = 64,
    non_embedding: bool = True,
    parametrization: str = "u-mup",
    dropout: float = 0.0,
) -> GPTConfig:
    """The :class:`GPTConfig` whose exact parameter count is nearest (in log ratio) to ``target_params``.

    ``d_model`` is a multiple of ``multiple_of`` and divisible by the head count: ``num_heads`` when
    given, else ``d_model / head_dim`` heads. ``d_ff = 4 d_model``. The count is non-embedding by
    default (``non_embedding=False`` targets the total). Logs a warning when the nearest shape is more
    than 25% off the target (e.g. a target below the smallest allowed width). ``num_layers``,
    ``vocab_size`` and ``max_seq_len`` default as in :class:`GPTConfig` (6, 4096, 256).

    The count is exact (:func:`estimate_params_from_config`: ``16 d^2`` per SwiGLU block plus the
    ``V d`` readout), not the ``12 L d^2`` rule of thumb, which undercounts a SwiGLU block by a quarter.
    """
    check("target_params", target_params, POSITIVE)
    for name, value in (
        ("num_layers", num_layers),
        ("vocab_size", vocab_size),
        ("max_seq_len", max_seq_len),
        ("head_dim", head_dim),
        ("multiple_of", multiple_of),
    ):
        _check_positive_int(name, value)
    if num_heads is not None:
        _check_positive_int("num_heads", num_heads)
        step = math.lcm(multiple_of, 2 * num_heads)
    else:
        step = math.lcm(multiple_of, head_dim)
    key = "non_embedding" if non_embedding else "total"

    def count(d: int) -> int:
        return estimate_params_from_config(d, num_layers, vocab_size)[key]

    # count(d) = a d^2 + b d with a = 16 L and b = V (or 2 V for the total): solve, then round to the grid.
    a, b = 16 * num_layers, vocab_size * (1 if non_embedding else 2)
    d_real = (-b + math.sqrt(b * b + 4 * a * target_params)) / (2 * a)
    k = max(1, math.floor(d_real / step))
    candidates = [step * j for j in (k, k + 1) if j >= 1]
    d_model = min(candidates, key=lambda d: abs(math.log(count(d) / target_params)))
    achieved = count(d_model)
    if abs(math.log(achieved / target_params)) > math.log(1.25):
        logger.warning(
            "nearest GPT to %.3g %s parameters with %d layers has %d (d_model=%d); the target is off the "
            "grid of d_model multiples of %d",
            target_params,
            key,
            num_layers,
            achieved,
            d_model,
            step,
        )
    heads = num_heads if num_heads is not None else d_model // head_dim
    return GPTConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=heads,
        max_seq_len=max_seq_len,
        parametrization=parametrization,
        dropout=dropout,
    )


def create_model_for_scaling(
    target_params: float,
    num_layers: int = DEFAULT_NUM_LAYERS,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    num_heads: int | None = None,
    head_dim: int = 64,
    multiple_of: int = 64,
    non_embedding: bool = True,
    parametrization: str = "u-mup",
    dropout: float = 0.0,
) -> GPT:
    """Build the :class:`GPT` chosen by :func:`config_for_params` (same arguments)."""
    return GPT(
        config_for_params(
            target_params,
            num_layers,
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            num_heads=num_heads,
            head_dim=head_dim,
            multiple_of=multiple_of,
            non_embedding=non_embedding,
            parametrization=parametrization,
            dropout=dropout,
        )
    )
