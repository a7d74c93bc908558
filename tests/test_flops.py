"""FLOP conventions checked against torch.utils.flop_counter.FlopCounterMode on a reference transformer.

FlopCounterMode counts matrix multiplications and attention (2 FLOPs per multiply-add, backward included),
not embedding lookups, softmax, norms or element-wise ops. So on the reference model below:

* measured == 3 x (Chinchilla forward terms - embeddings - softmax), exactly;
* measured == 6 x (Linear weight parameters) + 12 L S d_attn, exactly (the attention logits and reduction
  are 4 S d_attn FLOPs per token and layer forward, x3 with backward);
* 6N counts biases and norm parameters as if they were matmul weights (about 1-2% here) and ignores the
  attention term, so it undercounts by ~12 L S d_attn / 6N.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flops_fit.plan.flops import (
    TransformerShape,
    chinchilla_flops_per_token,
    chinchilla_forward_breakdown,
    convention_name,
    count_params,
    flops_per_token,
    measure_flops,
    measure_flops_per_token,
)

VOCAB, SEQ = 97, 24


class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, d_ff: int, swiglu: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q = nn.Linear(d, heads * self.hd)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd)
        self.proj = nn.Linear(heads * self.hd, d)
        self.swiglu = swiglu
        if swiglu:
            self.gate = nn.Linear(d, d_ff, bias=False)
            self.up = nn.Linear(d, d_ff, bias=False)
            self.down = nn.Linear(d_ff, d, bias=False)
        else:
            self.up = nn.Linear(d, d_ff)
            self.down = nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.ln1(x)
        q = self.q(h).view(b, s, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, -1))
        h = self.ln2(x)
        y = self.down(F.silu(self.gate(h)) * self.up(h)) if self.swiglu else self.down(F.gelu(self.up(h)))
        return x + y


class RefTransformer(nn.Module):
    """A small GPT: learned token and position embeddings, pre-norm blocks, untied (or tied) head."""

    def __init__(
        self,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        d_ff: int | None = None,
        swiglu: bool = False,
        tied: bool = False,
        vocab_size: int = VOCAB,
        seq_len: int = SEQ,
    ) -> None:
        super().__init__()
        self.shape = TransformerShape(
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            d_ff=d_ff or 4 * d_model,
            vocab_size=vocab_size,
            seq_len=seq_len,
            num_kv_heads=num_kv_heads,
            ffn_matrices=3 if swiglu else 2,
        )
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            RefBlock(d_model, num_heads, num_kv_heads or num_heads, d_ff or 4 * d_model, swiglu)
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def sample(batch: int = 2, seq_len: int = SEQ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
    return x, torch.roll(x, -1, dims=1)


def meta_model(**kwargs) -> RefTransformer:
    with torch.device("meta"):
        return RefTransformer(**kwargs)


def linear_weights(model: nn.Module) -> int:
    seen = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return sum(seen.values())


CONFIGS = [
    {},
    {"swiglu": True, "d_ff": 96},
    {"num_heads": 8, "num_kv_heads": 2},
    {"d_model": 32, "num_layers": 3, "num_heads": 2, "swiglu": True, "tied": True},
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_chinchilla_formula_matches_flop_counter(cfg):
    model = meta_model(**cfg)
    measured = measure_flops_per_token(model, sample())
    parts = model.shape.breakdown()
    # FlopCounterMode does not count the embedding lookup nor the softmax; everything else is matmuls.
    expected = 3.0 * (math.fsum(parts.values()) - parts["embeddings"] - parts["softmax"])
    assert measured == pytest.approx(expected, rel=1e-12)
    assert chinchilla_flops_per_token(**vars(model.shape)) == pytest.approx(3.0 * math.fsum(parts.values()))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_6nd_against_flop_counter(cfg):
    model = meta_model(**cfg)
    shape = model.shape
    measured = measure_flops_per_token(model, sample())
    d_attn = shape.num_heads * (shape.d_model // shape.num_heads)
    attention = 12.0 * shape.num_layers * shape.seq_len * d_attn
    # Exact: every Linear weight is one multiply-add per token (x6 with backward) plus the attention term.
    assert measured == pytest.approx(6.0 * linear_weights(model) + attention, rel=1e-12)
    # 6N uses all non-embedding parameters (biases and norms too: within 3% here) and ignores attention;
    # a head tied to the embedding is not in N but its logits matmul is real work.
    six_n = flops_per_token(model, "6nd")
    assert six_n == 6.0 * count_params(model, "non_embedding")
    tied_head = 6.0 * shape.vocab_size * shape.d_model if cfg.get("tied") else 0.0
    assert six_n + attention + tied_head == pytest.approx(measured, rel=0.03)
    assert six_n < measured


def test_swiglu_needs_three_matrices():
    model = meta_model(swiglu=True, d_ff=96)
    measured = measure_flops_per_token(model, sample())
    shape = vars(model.shape)
    three = chinchilla_flops_per_token(**shape)
    two = chinchilla_flops_per_token(**{**shape, "ffn_matrices": 2})
    ffn_gap = 3.0 * shape["num_layers"] * 2 * shape["d_model"] * shape["d_ff"]
    assert three - two == pytest.approx(ffn_gap)
    # only the 3-matrix count is consistent with the measurement (up to the known embedding + softmax terms)
    parts = model.shape.breakdown()
    uncounted = 3.0 * (parts["embeddings"] + parts["softmax"])
    assert three - uncounted == pytest.approx(measured, rel=1e-12)
    assert abs(two - uncounted - measured) > 0.1 * measured


def test_breakdown_hand_computed():
    # d=8, L=1, H=2 (head_dim 4), d_ff=32, V=10, S=4
    parts = chinchilla_forward_breakdown(8, 1, 2, 32, 10, 4)
    assert parts == {
        "embeddings": 2 * 10 * 8,
        "qkv": 2 * 3 * 8 * 8,
        "attention_logits": 2 * 4 * 8,
        "softmax": 3 * 2 * 4,
        "attention_reduction": 2 * 4 * 8,
        "attention_output": 2 * 8 * 8,
        "feed_forward": 2 * 2 * 8 * 32,
        "final_logits": 2 * 8 * 10,
    }
    assert chinchilla_flops_per_token(8, 1, 2, 32, 10, 4) == 3 * sum(parts.values())
    gqa = chinchilla_forward_breakdown(8, 1, 2, 32, 10, 4, num_kv_heads=1)
    assert gqa["qkv"] == 2 * 8 * (2 + 2 * 1) * 4
    assert chinchilla_forward_breakdown(8, 3, 2, 32, 10, 4)["feed_forward"] == 3 * parts["feed_forward"]


def test_count_params_rule():
    model = meta_model()
    total, non_emb = count_params(model, "total"), count_params(model, "non_embedding")
    assert total - non_emb == VOCAB * 64 + SEQ * 64
    tied = meta_model(tied=True)
    # the tied head is owned by the embedding: counted once in total, not at all in non-embedding
    assert count_params(tied, "total") == total - VOCAB * 64
    assert count_params(tied, "non_embedding") == non_emb - VOCAB * 64
    with pytest.raises(ValueError, match="param_count"):
        count_params(model, "all")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        count_params("model")  # type: ignore[arg-type]


def test_measure_on_meta_matches_cpu_for_plain_matmuls():
    # A model of plain matmuls counts the same on the meta device (no memory) as on real tensors.
    torch.manual_seed(0)
    cpu = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    batch = (torch.randn(8, 16), torch.randint(0, 5, (8,)))
    # forward 2 x (16x32 + 32x5) per sample; backward 2x that, except that the first layer needs no input
    # gradient (the inputs are data): measured is slightly below "backward = 2 x forward" here.
    forward = 2 * 8 * (16 * 32 + 32 * 5)
    expected = 3 * forward - 2 * 8 * 16 * 32
    assert measure_flops(cpu, batch) == expected
    assert measure_flops(meta, batch) == expected
    assert all(p.grad is None for p in cpu.parameters())  # counting leaves no gradients behind
    assert measure_flops_per_token(meta, batch) == expected / 8


def test_flops_per_token_dispatch_and_errors():
    model = meta_model()
    assert flops_per_token(model, "chinchilla", shape=model.shape) == model.shape.flops_per_token()
    assert flops_per_token(model, "CHINCHILLA", shape=vars(model.shape)) == model.shape.flops_per_token()
    assert flops_per_token(model, "measured", sample=sample()) == measure_flops_per_token(model, sample())
    assert flops_per_token(model, lambda m, s: 123.0) == 123.0
    with pytest.raises(ValueError, match="needs the transformer shape"):
        flops_per_token(model, "chinchilla")
    with pytest.raises(ValueError, match="needs a sample"):
        flops_per_token(model, "measured")
    with pytest.raises(ValueError, match="positive"):
        flops_per_token(model, lambda m, s: 0.0)
    with pytest.raises(ValueError, match="flops must be one of"):
        flops_per_token(model, "kaplan")
    with pytest.raises(ValueError, match="0 FLOPs"):
        measure_flops_per_token(nn.LayerNorm(3), (torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="trainable"):
        measure_flops_per_token(nn.Flatten(0), (torch.zeros(2, 3), torch.zeros(6)))


def test_convention_names():
    assert convention_name("6ND") == "6nd"

    def my_rule(model, sample):
        return 1.0

    assert convention_name(my_rule) == f"callable:{__name__}.test_convention_names.<locals>.my_rule"
    with pytest.raises(TypeError):
        convention_name(3)  # type: ignore[arg-type]


def test_transformer_shape_validation():
    with pytest.raises(ValueError, match="divisible"):
        TransformerShape(d_model=10, num_layers=1, num_heads=3, d_ff=8, vocab_size=5, seq_len=4)
    assert TransformerShape(
        d_model=10, num_layers=1, num_heads=3, d_ff=8, vocab_size=5, seq_len=4, head_dim=4
    )
    with pytest.raises(ValueError, match="num_layers"):
        TransformerShape(d_model=8, num_layers=0, num_heads=2, d_ff=8, vocab_size=5, seq_len=4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        TransformerShape(
            d_model=8, num_layers=1, num_heads=4, d_ff=8, vocab_size=5, seq_len=4, num_kv_heads=3
        )
    with pytest.raises(ValueError, match="unknown"):
        TransformerShape.from_mapping({"d_model": 8, "n_layer": 2})
    with pytest.raises(ValueError, match="missing"):
        TransformerShape.from_mapping({"d_model": 8})
