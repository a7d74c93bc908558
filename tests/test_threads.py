"""TrainConfig.threads: torch's CPU threads per run, chosen from the size of a training step, restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flops_fit import TrainConfig, find_optimal
from flops_fit.training import Callback, train
from flops_fit.training.loop import SMALL_STEP_FLOPS, run_threads

CPU = torch.device("cpu")


@pytest.fixture
def two_threads(monkeypatch):
    """torch on two threads, OMP_NUM_THREADS unset, for the test (restored after)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class ThreadsSeen(Callback):
    """Records torch's thread count at the start of training and at every log line."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_start(self, info) -> None:
        self.seen.append(torch.get_num_threads())

    def on_log(self, step, tokens, train_loss, lr) -> None:
        self.seen.append(torch.get_num_threads())


def _train(config: TrainConfig, width: int = 4) -> list[int]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))
    seen = ThreadsSeen()
    outcome = train(model, data, nn.functional.mse_loss, num_tokens=640, config=config, device="cpu",
                    callbacks=[seen], progress=False)  # fmt: skip
    assert outcome.status == "completed"
    return seen.seen


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), ("many", ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_threads_is_checked(value, error):
    with pytest.raises(error, match=r"TrainConfig\.threads must be 'auto' or a number of threads"):
        TrainConfig(threads=value)


def test_threads_defaults_to_auto_and_takes_an_int():
    assert TrainConfig().threads == "auto"
    assert TrainConfig(threads=3).threads == 3


def test_auto_uses_one_thread_for_a_small_step_and_restores(two_threads):
    assert set(_train(TrainConfig(batch_size=32, eval_batches=1))) == {1}
    assert torch.get_num_threads() == 2


def test_an_explicit_thread_count_wins(two_threads):
    assert set(_train(TrainConfig(batch_size=32, eval_batches=1, threads=2))) == {2}
    torch.set_num_threads(1)
    assert set(_train(TrainConfig(batch_size=32, eval_batches=1, threads=2))) == {2}
    assert torch.get_num_threads() == 1


def test_auto_keeps_torch_setting_for_a_large_step(two_threads):
    with run_threads("auto", CPU, SMALL_STEP_FLOPS * 2) as used:
        assert used == 2 and torch.get_num_threads() == 2
    with run_threads("auto", CPU, SMALL_STEP_FLOPS / 2) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_auto_leaves_threads_alone_off_the_cpu_and_under_omp_num_threads(two_threads, monkeypatch):
    with run_threads("auto", torch.device("cuda"), 1.0):
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with run_threads("auto", CPU, 1.0):
        assert torch.get_num_threads() == 2
    with run_threads(1, CPU, 1.0):  # an explicit count still applies
        assert torch.get_num_threads() == 1


def test_threads_restored_when_the_run_raises(two_threads):
    with pytest.raises(RuntimeError), run_threads(1, CPU, 1.0):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_threads_do_not_change_experiment_ids(tmp_path):
    from api_service_helpers import Wide

    x = torch.randn(4_000, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x[:, 0])

    def ids(config: TrainConfig) -> list[str]:
        plan = find_optimal(Wide, "width", data, nn.functional.mse_loss,
                            [1e8, 1e9], num_model_sizes=3, train=False, train_config=config,
                            output_dir=tmp_path)  # fmt: skip
        return [e.experiment_id for e in plan]

    assert ids(TrainConfig(threads=1)) == ids(TrainConfig())
