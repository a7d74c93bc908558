"""find_optimal speaks one vocabulary (``size_param``, as ModelSpec, --size-param and the README do), and
says what is missing instead of silently returning a plan when it has no data to train on."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

from api_service_helpers import Wide
from flops_fit import Result, SweepPlan, find_optimal


def _data(n: int = 2_000) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, 0] * 2 + 0.1 * torch.randn(n, generator=g))


def _plan(tmp_path, **kwargs):
    args = {"dataset": _data(), "loss_fn": nn.functional.mse_loss, "compute_budgets": [1e8, 1e9],
            "num_model_sizes": 3, "train": False, "output_dir": tmp_path, **kwargs}  # fmt: skip
    return find_optimal(Wide, **args)


def test_size_param_keyword_plans(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        plan = _plan(tmp_path, size_param="width")
    assert isinstance(plan, SweepPlan)
    assert plan.model.size_param == "width"


def test_model_size_param_is_a_deprecated_alias_that_works(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"model_size_param.*size_param"):
        plan = _plan(tmp_path, model_size_param="width")
    assert [e.experiment_id for e in plan] == [e.experiment_id for e in _plan(tmp_path, size_param="width")]


def test_both_names_is_an_error(tmp_path):
    with pytest.raises(TypeError, match=r"pass size_param only.*model_size_param"):
        _plan(tmp_path, size_param="width", model_size_param="width")


def test_missing_size_param_names_it(tmp_path):
    with pytest.raises(TypeError, match=r"needs size_param.*d_model"):
        _plan(tmp_path)


def test_bad_size_param_message_says_size_param(tmp_path):
    with pytest.raises(TypeError, match=r"^size_param must name"):
        _plan(tmp_path, size_param="")


def test_missing_budgets_names_them(tmp_path):
    with pytest.raises(TypeError, match="compute_budgets"):
        find_optimal(Wide, "width", _data(), nn.functional.mse_loss, train=False, output_dir=tmp_path)


@pytest.mark.parametrize(
    ("dataset", "loss_fn", "missing"),
    [(None, None, "dataset and loss_fn are None"), ("data", None, "loss_fn is None"),
     (None, nn.functional.mse_loss, "dataset is None")],
)  # fmt: skip
def test_local_mode_without_data_says_what_is_missing(tmp_path, dataset, loss_fn, missing):
    data = _data() if dataset == "data" else dataset
    with pytest.raises(ValueError, match=missing) as err:
        find_optimal(Wide, "width", data, loss_fn, [1e8, 1e9], num_model_sizes=3, output_dir=tmp_path / "o")
    message = str(err.value)
    assert "dataset=..." in message and "mode='mock'" in message and "train=False" in message
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_without_data_train_false_still_plans(tmp_path):
    plan = find_optimal(Wide, "width", None, None, [1e8, 1e9], num_model_sizes=3, train=False,
                        tokens_per_sample=1, output_dir=tmp_path)  # fmt: skip
    assert isinstance(plan, SweepPlan)


def test_without_data_mock_mode_trains_and_says_when_it_fits_and_draws(tmp_path, one_torch_thread, caplog):
    """mode='mock' needs no data; after the last run, the fitting and drawing steps are announced (they take
    seconds, after the progress bar has reached 100%)."""
    caplog.set_level(logging.INFO, logger="flops_fit.app.pipeline")
    result = find_optimal(Wide, "width", None, None, [1e8, 1e9, 1e10], num_model_sizes=5, mode="mock",
                          approach="isoflop", tokens_per_sample=1, output_dir=tmp_path)  # fmt: skip
    assert isinstance(result, Result)
    assert result.predict(1e11)["optimal_params"] > 0
    said = [r.getMessage() for r in caplog.records if r.name == "flops_fit.app.pipeline"]
    assert any(m.startswith("fitting approaches isoflop") for m in said), said
    assert any(m.startswith("drawing figures and saving the result") for m in said), said
