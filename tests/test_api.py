"""find_optimal, the one call: plan -> train -> analyze -> report."""

import json
import logging
import warnings

import pytest
import torch
from torch import nn

import flops_fit
from api_service_helpers import Wide  # the tiny regression MLP, shared with the api-mode service
from flops_fit import Result, SweepPlan, TrainConfig, find_optimal


def _data(n=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x[:, 0] * 2) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _wide_sweep(tmp_path, **kwargs):
    """find_optimal on the Wide model and _data() at budgets 1e8, 1e9 (train=False unless given)."""
    return find_optimal(
        Wide,
        "width",
        _data(),
        nn.functional.mse_loss,
        [1e8, 1e9],
        **{"output_dir": tmp_path, "train": False, **kwargs},
    )


def test_train_false_returns_the_plan(tmp_path):
    plan = _wide_sweep(tmp_path, num_model_sizes=4)
    assert isinstance(plan, SweepPlan) and len(plan.experiments) == 8
    assert not (tmp_path / "results.jsonl").exists()
    # with its cost in FLOPs (nothing trained at plan time; plan.estimate_cost(device) times real steps)
    assert plan.cost.method == "uncalibrated" and plan.cost.total_seconds is None
    assert plan.cost.total_flops == pytest.approx(sum(e.planned_flops for e in plan))
    # the data the runs will see: training holds eval_batches x batch_size samples out (no eval_dataset)
    cfg = TrainConfig()
    assert plan.config["dataset_tokens"] == 20_000 - cfg.eval_batches * cfg.batch_size


def test_planning_needs_no_training_device(tmp_path):
    """A plan (train=False) or a mock sweep for a GPU cluster can be made on a machine without the GPU."""
    plan = _wide_sweep(tmp_path, num_model_sizes=3, device="cuda:7")
    assert len(plan.experiments) == 6
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _wide_sweep(tmp_path / "local", num_model_sizes=3, device="cuda:7", train=True)
        assert not (tmp_path / "local").exists()


def test_mock_sweep_end_to_end_and_resume(tmp_path):
    result = find_optimal(
        Wide,
        "width",
        _data(),
        nn.functional.mse_loss,
        [1e9, 3e9, 1e10, 3e10],
        mode="mock",
        num_model_sizes=5,
        output_dir=tmp_path,
    )
    assert isinstance(result, Result)
    assert {"isoflop", "parametric"} <= set(result.fits)
    pred = result.predict(1e11)
    assert pred["optimal_params"] > 0 and pred["tokens_per_param"] > 0
    assert pred["size_value"] is not None  # the model's closest width
    for name in ("sweep.json", "results.jsonl", "scaling_laws.json", "chinchilla_table.md", "isoflop.png"):
        assert (tmp_path / name).is_file(), name
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    again = find_optimal(
        Wide,
        "width",
        _data(),
        nn.functional.mse_loss,
        [1e9, 3e9, 1e10, 3e10],
        mode="mock",
        num_model_sizes=5,
        output_dir=tmp_path,
    )
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines  # resumed: nothing re-run
    assert again.predict(1e11)["optimal_params"] == pred["optimal_params"]


def test_runs_of_an_earlier_plan_in_the_same_folder_stay_out_of_the_fit(tmp_path, caplog):
    def sweep(budgets):
        return find_optimal(
            Wide,
            "width",
            _data(),
            nn.functional.mse_loss,
            budgets,
            mode="mock",
            num_model_sizes=5,
            output_dir=tmp_path,
        )

    first = sweep([1e9, 3e9, 1e10])
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        second = sweep([1e11, 3e11, 1e12])  # same folder, a new plan: the first plan's runs are orphans
    ledger = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(ledger) == len(first.runs) + len(second.runs)  # nothing deleted from the ledger
    assert set(second.runs["compute_budget"]) == {1e11, 3e11, 1e12}
    assert (
        f"{len(first.runs)} of {len(ledger)} run(s) in {tmp_path / 'results.jsonl'} belong to an earlier plan"
        in caplog.text
    )


def test_real_local_sweep_on_a_tiny_model(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(batch_size=64, lr=3e-3, warmup_frac=0.05, eval_batches=4, weight_decay=0.0)
    result = find_optimal(
        Wide,
        "width",
        _data(200_000),
        nn.functional.mse_loss,
        [2e8, 6e8],
        num_model_sizes=3,
        train_config=cfg,
        approach="all",
        output_dir=tmp_path,
        size_span=3.0,
    )
    runs = result.runs
    assert len(runs) == 6 and (runs["status"] == "completed").all()
    assert (runs["final_loss"] < 1.5).all()  # learned something (the target's variance is about 1.5)
    assert result.fits  # whatever the toy's profiles look like, some approach was fitted ...
    assert "isoflop" in result.fits or any("isoflop" in w.lower() or "edge" in w for w in result.warnings)


def test_top_level_names():
    for name in (
        "find_optimal",
        "Result",
        "SweepPlanner",
        "TrainingRunner",
        "ScalingLawAnalyzer",
        "fit_isoflop",
        "fit_parametric",
        "fit_envelope",
        "PowerLawFit",
        "ScalingVisualizer",
        "chinchilla_table",
    ):
        assert hasattr(flops_fit, name), name


def test_bookkeeping_settings_do_not_change_experiment_ids(tmp_path):
    def ids(cfg):
        plan = find_optimal(
            Wide,
            "width",
            _data(),
            nn.functional.mse_loss,
            [1e8, 1e9],
            train=False,
            num_model_sizes=3,
            train_config=cfg,
            output_dir=tmp_path,
        )
        return [e.experiment_id for e in plan.experiments]

    base = ids(TrainConfig())
    assert ids(TrainConfig(checkpoint_every_s=5.0, log_every=3)) == base
    assert ids(TrainConfig(lr=1e-2)) != base  # the learning rate defines the run


def test_default_data_id_tells_datasets_of_the_same_size_apart():
    """Without data_id=, other data of the same type and size (or another held-out set or loss) gives
    other ids; the same data gives the same; data drawn at random on each read falls back to type and size."""
    from torch.utils.data import Dataset, TensorDataset

    from flops_fit.app.probe import data_id as _data_id

    def counting() -> TensorDataset:
        return TensorDataset(torch.arange(1024 * 9).reshape(1024, 9), torch.zeros(1024))

    noise = TensorDataset(
        torch.randint(0, 11, (1024, 9), generator=torch.Generator().manual_seed(0)), torch.zeros(1024)
    )
    assert _data_id(counting()) == _data_id(counting()) != _data_id(noise)
    assert _data_id(counting(), noise) != _data_id(counting(), counting())
    assert _data_id(counting(), loss_fn=torch.nn.functional.cross_entropy) != _data_id(
        counting(), loss_fn=torch.nn.functional.mse_loss
    )

    class Augmented(Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            return torch.rand(3), torch.tensor(0)

    assert _data_id(Augmented()).endswith("Augmented[10]")


def test_six_nd_far_from_the_models_real_cost_is_called_out(tmp_path):
    """A ViT classifies one target per image but runs its 16 patches: under the default 6nd convention
    each run would train ~16x its budget. The plan warns and says how to count the real FLOPs."""
    from torch.utils.data import TensorDataset

    from flops_fit.examples.vit import VisionTransformer

    images = TensorDataset(torch.randn(4096, 1, 28, 28), torch.randint(0, 10, (4096,)))

    def plan(**kwargs):
        return find_optimal(
            VisionTransformer,
            "d_model",
            images,
            torch.nn.functional.cross_entropy,
            [1e10, 3e10],
            model_kwargs={"patch_size": 7, "num_layers": 1, "num_heads": 1},
            num_model_sizes=3,
            train=False,
            output_dir=tmp_path,
            size_multiple=2,
            **kwargs,
        )

    with pytest.warns(
        UserWarning, match=r"flops='6nd' counts 6 N .* per target .*\(1\dx\).*flops='measured'"
    ):
        plan()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flops='6nd'")
        plan(flops="measured")


def test_tokens_per_sample_without_a_dataset_reaches_the_planner(tmp_path):
    """A plan without data (train=False, or a mock/function sweep) takes tokens_per_sample as given."""
    plan = find_optimal(Wide, "width", None, None, [1e9, 1e10], mode="mock", train=False, tokens_per_sample=4,
                        output_dir=tmp_path)  # fmt: skip
    assert isinstance(plan, SweepPlan)
    assert all(e.num_tokens % 4 == 0 for e in plan)  # whole samples of 4 tokens
    assert plan.config["tokens_per_sample"] == 4
