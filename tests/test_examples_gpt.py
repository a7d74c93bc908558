"""Tests for the example GPT: shapes, exact parameter counts, RoPE buffers, u-μP rules, sizing."""

from __future__ import annotations

import math

import pytest
import torch
import unit_scaling as uu

from flops_fit.examples.gpt import (
    GPT,
    GPTConfig,
    apply_rope,
    config_for_params,
    create_model_for_scaling,
    default_num_heads,
    estimate_params_from_config,
    lm_loss,
    rope_cache,
)

PARAMETRIZATIONS = ["u-mup", "sp"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def tiny(parametrization: str = "u-mup", **overrides) -> GPT:
    kwargs = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)
    kwargs.update(overrides)
    return GPT(GPTConfig(parametrization=parametrization, **kwargs))


def randomize_head(model: GPT, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator))


# ---------------------------------------------------------------------------------------------- config


def test_config_defaults_and_validation():
    config = GPTConfig(vocab_size=10, d_model=64, num_layers=1, num_heads=2, max_seq_len=8)
    assert config.d_ff == 256
    assert config.head_dim == 32
    assert config.parametrization == "u-mup"
    assert config.to_dict()["d_ff"] == 256
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        GPTConfig(vocab_size=10, d_model=64, num_layers=1, num_heads=3, max_seq_len=8)
    with pytest.raises(ValueError, match="odd"):
        GPTConfig(vocab_size=10, d_model=12, num_layers=1, num_heads=4, max_seq_len=8)
    with pytest.raises(ValueError, match="parametrization"):
        GPTConfig(vocab_size=10, d_model=64, num_layers=1, num_heads=2, max_seq_len=8, parametrization="mup")
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(vocab_size=10, d_model=64, num_layers=1, num_heads=2, max_seq_len=8, dropout=1.0)
    with pytest.raises(TypeError, match="d_model must be an int"):
        GPTConfig(vocab_size=10, d_model=64.0, num_layers=1, num_heads=2, max_seq_len=8)
    with pytest.raises(ValueError, match="num_layers must be a positive"):
        GPTConfig(vocab_size=10, d_model=64, num_layers=0, num_heads=2, max_seq_len=8)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"d_model": 64})


def test_default_num_heads():
    assert default_num_heads(256) == 4
    assert default_num_heads(96) == 3
    assert default_num_heads(200) == 25
    with pytest.raises(ValueError, match="multiple of 8"):
        default_num_heads(100)


def test_from_config_is_a_model_cls():
    model_cls, size_param = GPT.from_config, "d_model"
    kwargs = dict(vocab_size=50, num_layers=1, max_seq_len=8, parametrization="sp")
    model = model_cls(**{size_param: 128}, **kwargs)
    assert model.config.num_heads == 2 and model.config.d_model == 128
    model = GPT.from_config(d_model=96, head_dim=32, **kwargs)
    assert model.config.num_heads == 3
    with pytest.raises(ValueError, match="either num_heads or head_dim"):
        GPT.from_config(d_model=96, head_dim=32, num_heads=3, **kwargs)
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        GPT.from_config(d_model=96, head_dim=64, **kwargs)
    with pytest.raises(TypeError, match="accepted arguments"):
        GPT.from_config(d_model=96, width=3, **kwargs)


# ------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
@pytest.mark.parametrize(
    ("d_model", "num_layers", "num_heads", "vocab_size", "d_ff"),
    [(32, 1, 2, 50, None), (64, 3, 4, 257, None), (96, 2, 3, 1000, 256), (128, 4, 2, 31, 200)],
)
def test_estimate_matches_module_exactly(parametrization, d_model, num_layers, num_heads, vocab_size, d_ff):
    config = GPTConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        max_seq_len=8,
        d_ff=d_ff,
        parametrization=parametrization,
    )
    estimate = estimate_params_from_config(d_model, num_layers, vocab_size, d_ff)
    model = GPT(config)
    assert estimate["total"] == sum(p.numel() for p in model.parameters())
    assert estimate["non_embedding"] == model.count_parameters(non_embedding=True) == model.num_params()
    assert estimate["total"] == model.count_parameters(non_embedding=False)
    assert estimate["embedding"] == model.token_emb.weight.numel()
    assert estimate["lm_head"] == model.lm_head.weight.numel()
    assert estimate["per_layer"] == sum(p.numel() for p in model.blocks[0].parameters())
    assert estimate["attention"] == sum(p.numel() for p in model.blocks[0].attn.parameters())
    assert estimate["mlp"] == sum(p.numel() for p in model.blocks[0].mlp.parameters())
    with torch.device("meta"):
        meta_model = GPT(config)
    assert sum(p.numel() for p in meta_model.parameters()) == estimate["total"]
    assert all(p.device.type == "meta" for p in meta_model.parameters())


def test_swiglu_block_is_16_d_squared():
    counts = estimate_params_from_config(d_model=256, num_layers=6, vocab_size=1000)
    assert counts["per_layer"] == 16 * 256**2
    assert counts["non_embedding"] == 6 * 16 * 256**2 + 1000 * 256
    assert counts["total"] == counts["non_embedding"] + 1000 * 256
    with pytest.raises(ValueError, match="d_ff"):
        estimate_params_from_config(64, 2, 100, d_ff=0)


@pytest.mark.parametrize("target", [3e5, 1e6, 5e6, 2e7, 1e8])
@pytest.mark.parametrize("non_embedding", [True, False])
def test_config_for_params_picks_the_nearest_allowed_width(target, non_embedding):
    key = "non_embedding" if non_embedding else "total"
    config = config_for_params(target, 4, vocab_size=4096, max_seq_len=32, non_embedding=non_embedding)
    assert config.d_model % 64 == 0 and config.d_model % config.num_heads == 0
    assert config.num_heads == config.d_model // 64

    def error(d: int) -> float:
        return abs(math.log(estimate_params_from_config(d, 4, 4096)[key] / target))

    assert all(error(config.d_model) <= error(d) for d in range(64, 64 * 40, 64))
    if target >= 2e7:  # on the fine part of the grid the nearest width is close
        assert error(config.d_model) < math.log(1.1)


def test_create_model_for_scaling_builds_the_model_and_respects_heads(caplog):
    model = create_model_for_scaling(
        2e6, 2, vocab_size=512, max_seq_len=16, num_heads=6, parametrization="sp"
    )
    assert model.config.d_model % 192 == 0  # lcm(64, 2 * 6)
    assert model.config.num_heads == 6
    assert model.num_params() == estimate_params_from_config(model.config.d_model, 2, 512)["non_embedding"]
    with caplog.at_level("WARNING"):
        config_for_params(10, 2, vocab_size=512, max_seq_len=16)
    assert "off the grid" in caplog.text
    with pytest.raises(ValueError, match="target_params"):
        config_for_params(-1, 2, vocab_size=512, max_seq_len=16)


# ---------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_forward_shapes_and_initial_loss(parametrization):
    torch.manual_seed(0)
    model = tiny(parametrization)
    ids = torch.randint(0, 97, (3, 16))
    logits, loss = model(ids)
    assert logits.shape == (3, 16, 97) and loss is None
    assert torch.count_nonzero(model.lm_head.weight) == 0
    logits, loss = model(ids, labels=ids)
    # A zero readout predicts the uniform distribution: loss ln(V) exactly.
    assert loss.item() == pytest.approx(math.log(97), abs=1e-5)
    assert lm_loss((logits, None), ids).item() == pytest.approx(loss.item())
    assert lm_loss(logits, ids).item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(16, dtype=torch.long))


def test_lm_loss_ignores_minus_100_and_checks_shapes():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    masked = targets.clone()
    masked[:, -1] = -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), targets[:, :-1].reshape(-1))
    assert lm_loss(logits, masked).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        lm_loss(logits, targets[:, :-1])
    with pytest.raises(TypeError):
        lm_loss("logits", targets)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_attention_is_causal(parametrization):
    torch.manual_seed(1)
    model = tiny(parametrization).eval()
    randomize_head(model)
    ids = torch.randint(0, 97, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 97
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_cache(32, 8)
    generator = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=generator).unbind(0)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.expand(1, 1, 32, 8), cos, sin)[0, 0, m]
        kn = apply_rope(k.expand(1, 1, 32, 8), cos, sin)[0, 0, n]
        return float(qm @ kn)

    assert score(5, 3) == pytest.approx(score(12, 10), rel=1e-5)
    assert score(5, 3) != pytest.approx(score(5, 1), rel=1e-3)
    torch.testing.assert_close(apply_rope(q, cos, sin), q)  # position 0 is not rotated


def test_model_sees_token_order():
    # Without positional information the last position would be invariant to swapping earlier tokens.
    torch.manual_seed(2)
    model = tiny("sp", num_layers=1).eval()
    randomize_head(model)
    with torch.no_grad():
        a, _ = model(torch.tensor([[3, 7, 11]]))
        b, _ = model(torch.tensor([[7, 3, 11]]))
    assert not torch.allclose(a[0, -1], b[0, -1], atol=1e-5)


def test_rope_buffers_follow_device_and_dtype_but_are_not_saved():
    model = tiny("u-mup")
    assert "rope_cos" not in model.state_dict() and "rope_sin" not in model.state_dict()
    assert model.rope_cos.shape == (16, 4)
    model = model.to(torch.float64)
    assert model.rope_cos.dtype == torch.float64 and model.token_emb.weight.dtype == torch.float64
    logits, _ = model(torch.randint(0, 97, (1, 8)))
    assert logits.dtype == torch.float64
    model = model.to("meta")
    assert model.rope_cos.device.type == "meta" and model.rope_sin.device.type == "meta"


def test_rope_cache_is_computed_on_the_cpu_whatever_the_default_device():
    """float64 tables: MPS has no float64, so the default-device context must not reach rope_cache."""
    with torch.device("meta"):
        cos, sin = rope_cache(16, 8)
    assert cos.device.type == "cpu" and sin.device.type == "cpu"


def test_rope_tables_survive_casts_and_meta_construction():
    """A bf16 -> fp32 round trip leaves exact tables, and a model built on the meta device gets real ones
    when materialised (to_empty + reset_parameters), not uninitialised memory."""
    exact = rope_cache(16, 8)  # max_seq_len 16, head_dim 32 / 4 heads
    model = tiny("u-mup").to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.bfloat16
    model = model.to(torch.float32)
    torch.testing.assert_close(model.rope_cos, exact[0], rtol=0, atol=0)
    torch.testing.assert_close(model.rope_sin, exact[1], rtol=0, atol=0)
    with torch.device("meta"):
        meta = tiny("u-mup")
    meta = meta.to_empty(device="cpu")
    meta.reset_parameters()
    torch.testing.assert_close(meta.rope_cos, exact[0], rtol=0, atol=0)
    torch.testing.assert_close(meta.rope_sin, exact[1], rtol=0, atol=0)
    with torch.device("meta"):
        loaded = tiny("u-mup")
    loaded.load_state_dict(tiny("u-mup").state_dict(), assign=True)  # weights arrive; tables are rebuilt
    torch.testing.assert_close(loaded.rope_cos, exact[0], rtol=0, atol=0)


def test_state_dict_round_trip():
    torch.manual_seed(3)
    a = tiny("u-mup")
    randomize_head(a)
    b = tiny("u-mup")
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 97, (2, 8))
    torch.testing.assert_close(a(ids)[0], b(ids)[0])


def test_dropout_only_in_training():
    torch.manual_seed(4)
    model = tiny("u-mup", dropout=0.5)
    randomize_head(model)
    ids = torch.randint(0, 97, (2, 8))
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0])
    model.train()
    assert not torch.allclose(model(ids)[0], model(ids)[0])


def test_unit_scaled_residual_stream_has_unit_scale_at_any_width():
    # u-μP's defining property: activations are O(1) at initialisation independently of width.
    torch.manual_seed(5)
    for width in (64, 256):
        model = GPT.from_config(vocab_size=256, d_model=width, num_layers=2, max_seq_len=32, head_dim=32)
        captured: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output, store=captured):
            store["x"] = inputs[0]

        model.final_norm.register_forward_hook(hook)
        model(torch.randint(0, 256, (4, 32)))
        assert 0.5 < captured["x"].std().item() < 2.0


# ------------------------------------------------------------------------------------------- optimizers


def test_umup_learning_rates_match_unit_scaling_package():
    model = tiny("u-mup", num_layers=3)
    groups = model.configure_optimizers(lr=2.0)
    ours = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(ours) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        expected = 2.0 * uu.optim.lr_scale_func_adam(param)  # the package's tags on a fresh model
        assert ours[id(param)] == pytest.approx(expected), name
    by_name = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert by_name["lm_head.weight"] == 2.0
    assert by_name["token_emb.weight"] == pytest.approx(2.0 / math.sqrt(32))
    assert by_name["blocks.0.mlp.down.weight"] == pytest.approx(2.0 / math.sqrt(128) / math.sqrt(3))


def test_umup_rules_survive_meta_construction():
    with torch.device("meta"):
        model = tiny("u-mup")
    model.to_empty(device="cpu")
    model.reset_parameters()
    groups = model.configure_optimizers(lr=1.0)
    lrs = sorted(g["lr"] for g in groups)
    assert lrs == pytest.approx(sorted({1.0, 32**-0.5, 32**-0.5 / math.sqrt(2), 128**-0.5 / math.sqrt(2)}))


def test_weight_decay_conventions():
    sp = tiny("sp").configure_optimizers(lr=1e-3, weight_decay=0.1)
    assert len(sp) == 1 and sp[0]["lr"] == 1e-3 and sp[0]["weight_decay"] == 0.1
    for group in tiny("u-mup").configure_optimizers(lr=0.5, weight_decay=0.1):
        # independent weight decay: lr * wd is the same 0.1 decay per step for every group
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr"):
        tiny().configure_optimizers(lr=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        tiny().configure_optimizers(lr=1.0, weight_decay=-1.0)


@pytest.mark.parametrize(("parametrization", "lr"), [("u-mup", 1.0), ("sp", 3e-3)])
def test_a_few_steps_learn_a_fixed_batch(parametrization, lr):
    torch.manual_seed(6)
    model = tiny(parametrization)
    optimizer = torch.optim.AdamW(model.configure_optimizers(lr=lr))
    ids = torch.randint(0, 97, (4, 16))
    x, y = ids[:, :-1], ids[:, 1:]
    first = None
    for _ in range(40):
        loss = lm_loss(model(x), y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.parameters())
    assert loss.item() < 0.7 * first
