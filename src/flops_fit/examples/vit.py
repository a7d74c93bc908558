"""A small Vision Transformer (Dosovitskiy et al. 2021) sized by its width ``d_model``.

Architecture: non-overlapping ``patch_size`` x ``patch_size`` patches -> linear patch embedding (a strided
convolution) + learned position embedding -> ``num_layers`` pre-norm blocks of [LayerNorm ->
multi-head self-attention (fused QKV)] and [LayerNorm -> GELU MLP of width ``mlp_ratio * d_model``] ->
final LayerNorm -> mean over patches -> linear classifier ``head`` (initialised to zero). Weights start
from ``N(0, 0.02^2)``, residual output projections from ``N(0, (0.02/sqrt(2 L))^2)``, biases at zero.

Model contract of flops-fit: ``VisionTransformer(d_model=..., **kwargs)`` (``size_param="d_model"``);
``model(images)`` returns logits ``(batch, num_classes)`` and :func:`classification_loss` is the mean
cross-entropy in nats. D counts images; one image costs about ``6 * num_params() * num_patches``
training FLOPs (plus attention), because every weight is applied once per patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flops_fit.core.validate import check
from flops_fit.examples import DROPOUT, _check_positive_int, default_num_heads

__all__ = ["VisionTransformer", "classification_loss"]

INIT_STD = 0.02


class _Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = (
            self.qkv(x).view(batch, seq, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class _Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, num_heads)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = x + F.dropout(self.attn(self.attn_norm(x)), self.dropout, self.training)
        h = self.fc2(F.gelu(self.fc1(self.mlp_norm(x))))
        return x + F.dropout(h, self.dropout, self.training)


class VisionTransformer(nn.Module):
    """Vision Transformer classifier whose size is set by ``d_model``.

    Args:
        d_model: embedding width (the size parameter to sweep).
        image_size: input height and width in pixels (square images).
        patch_size: patch side in pixels; must divide ``image_size``.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        num_classes: output classes.
        num_layers: transformer blocks.
        num_heads: attention heads; default :func:`flops_fit.examples.default_num_heads` (head size
            64, 32, 16 or 8, whichever divides ``d_model`` first).
        mlp_ratio: MLP hidden width over ``d_model``.
        dropout: dropout probability on each residual branch's output during training.
    """

    def __init__(
        self,
        d_model: int,
        *,
        image_size: int = 28,
        patch_size: int = 4,
        in_channels: int = 1,
        num_classes: int = 10,
        num_layers: int = 4,
        num_heads: int | None = None,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("num_layers", num_layers),
            ("mlp_ratio", mlp_ratio),
        ):
            _check_positive_int(name, value)
        if image_size % patch_size != 0:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        num_heads = (
            default_num_heads(d_model) if num_heads is None else _check_positive_int("num_heads", num_heads)
        )
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        check("dropout", dropout, DROPOUT)
        self.d_model = d_model
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_emb = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.pos_emb = nn.Parameter(torch.empty(1, self.num_patches, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise weights (see the module docstring); the classifier starts at zero."""
        residual_std = INIT_STD / math.sqrt(2 * self.num_layers)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.fc2.weight, mean=0.0, std=residual_std)
        nn.init.normal_(self.pos_emb, mean=0.0, std=INIT_STD)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` for images ``(batch, C, H, W)`` (or ``(batch, H, W)`` if C=1)."""
        if images.dim() == 3 and self.in_channels == 1:
            images = images.unsqueeze(1)
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, *{expected}), got {tuple(images.shape)}")
        x = self.patch_emb(images).flatten(2).transpose(1, 2) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x).mean(dim=1))

    def num_params(self) -> int:
        """N for scaling laws: all trainable parameters (patch and position embeddings included)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"num_patches={self.num_patches}, num_heads={self.num_heads}, num_params={self.num_params():,}"


def classification_loss(output: Tensor | tuple[Tensor, ...], targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of logits ``(batch, classes)`` (or a tuple whose first item is them)."""
    logits = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("classification_loss expects (logits or a (logits, ...) tuple, targets tensor)")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (batch, classes) and targets (batch,); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return F.cross_entropy(logits.float(), targets.long())
