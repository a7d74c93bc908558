"""The GPT tests of the original test plan (the prototype's tests/test_model.py), its calls as written.

Imported from ``flops_fit.model``, the prototype's module path (kept importable by ``flops_fit.core.compat``;
the model is :mod:`flops_fit.examples.gpt`). Where the plan encodes a defect that the prototype's audit
names, the corrected behaviour is asserted instead, and a comment says so.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

with warnings.catch_warnings():  # the old path warns once that it moved
    warnings.simplefilter("ignore", DeprecationWarning)
    from flops_fit.model import GPT, GPTConfig, create_model_for_scaling, estimate_params_from_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _small_config(**overrides):
    kwargs = dict(vocab_size=100, d_model=64, num_layers=2, num_heads=2, max_seq_len=32)
    kwargs.update(overrides)
    return GPTConfig(**kwargs)


class TestGPTConfig:
    def test_default_d_ff(self):
        config = GPTConfig(d_model=256)
        assert config.d_ff == 1024

    def test_custom_d_ff(self):
        config = GPTConfig(d_model=256, d_ff=512)
        assert config.d_ff == 512

    def test_head_divisibility_assertion(self):
        with pytest.raises(AssertionError):
            GPTConfig(d_model=256, num_heads=3)


class TestGPT:
    def test_forward_output_shape(self):
        model = GPT(_small_config())
        input_ids = torch.randint(0, 100, (2, 16))
        with torch.no_grad():
            logits, loss = model(input_ids)
        assert logits.shape == (2, 16, 100)
        assert loss is None

    def test_forward_with_labels_computes_loss(self):
        model = GPT(_small_config())
        input_ids = torch.randint(0, 100, (2, 16))
        labels = torch.randint(0, 100, (2, 16))
        with torch.no_grad():
            _, loss = model(input_ids, labels=labels)
        assert loss is not None
        assert loss.item() > 0
        assert torch.isfinite(loss)

    def test_count_parameters_non_embedding(self):
        config = _small_config()
        model = GPT(config)
        non_embedding = model.count_parameters(non_embedding=True)
        total = model.count_parameters(non_embedding=False)
        assert 0 < non_embedding < total
        assert total - non_embedding == config.vocab_size * config.d_model

    def test_count_parameters_total(self):
        config = _small_config()
        model = GPT(config)
        estimate = estimate_params_from_config(
            d_model=config.d_model, num_layers=config.num_layers, vocab_size=config.vocab_size
        )
        assert model.count_parameters(non_embedding=False) == estimate["total"]

    def test_umup_initialization_lm_head_is_zero(self):
        model = GPT(_small_config(parametrization="u-mup"))
        assert torch.all(model.lm_head.weight == 0)

    def test_umup_initialization_embedding_nonzero(self):
        model = GPT(_small_config(parametrization="u-mup"))
        assert not torch.all(model.token_emb.weight == 0)

    def test_sp_initialization(self):
        model = GPT(_small_config(parametrization="sp"))
        assert torch.all(model.lm_head.weight == 0)

    def test_from_config_classmethod(self):
        model = GPT.from_config(d_model=64, num_layers=2, num_heads=2, vocab_size=100, max_seq_len=32)
        assert isinstance(model, GPT)
        assert model.config.d_model == 64


class TestCreateModelForScaling:
    def test_creates_model_near_target(self):
        # The plan's comment characterises the prototype's N = 12 L d^2 approximation (which undercounts a
        # SwiGLU block: 16 d^2), and so expects actual > target. The audit names that defect; sizing now
        # uses the exact count, so the model is the one on the d_model grid (multiples of 64) nearest the
        # target, and within 2x of it as the plan asserts.
        target = 1_000_000
        model = create_model_for_scaling(target_params=1_000_000, num_layers=4)
        actual = model.count_parameters(non_embedding=True)
        assert target / 2 <= actual <= target * 2
        config = model.config
        assert actual == estimate_params_from_config(config.d_model, 4, config.vocab_size)["non_embedding"]

        def error(d_model):
            count = estimate_params_from_config(d_model, 4, config.vocab_size)["non_embedding"]
            return abs(math.log(count / target))

        assert all(error(config.d_model) <= error(d) for d in range(64, 64 * 20, 64))

    def test_d_model_is_multiple_of_64(self):
        for target_params in (3e5, 1e6, 5e6, 2e7):
            model = create_model_for_scaling(target_params=target_params, num_layers=4)
            assert model.config.d_model % 64 == 0

    def test_d_model_divisible_by_num_heads(self):
        model = create_model_for_scaling(target_params=1_000_000, num_layers=4)
        assert model.config.d_model % model.config.num_heads == 0


class TestEstimateParamsFromConfig:
    def test_estimate_matches_actual_model(self):
        model = GPT(GPTConfig(vocab_size=100, d_model=128, num_layers=4, num_heads=4))
        estimate = estimate_params_from_config(d_model=128, num_layers=4, vocab_size=100)
        assert estimate["total"] == model.count_parameters(non_embedding=False)
