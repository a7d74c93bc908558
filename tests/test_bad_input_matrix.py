"""The bad-input matrix: every public entry point rejects bad input with an error that names the argument,
before any compute is spent.

One table (:data:`CASES`) covers ``find_optimal``, ``SweepPlanner`` / ``ModelSpec``, the four fits and the
Chinchilla table; two more cover the command lines (``flops-fit``: :data:`CLI_CASES`; the Hydra stage
commands ``ff-*``: :data:`STAGE_CASES`). Each row is one line: the bad input, the exception type (exit
status 2 for commands) and a substring of the message that names the argument.

"Before compute" is checked, not assumed: every expensive step (training a sweep, the multi-start fit of
Approach 3, every bootstrap, the power-law fits) is replaced by a trap that raises :class:`ComputeSpent`
(a BaseException, so no ``except Exception`` in the library can swallow it), the test model counts the
networks built on a real device and its forward passes, the dataset counts the items read, and the sweep's
output directory must not exist afterwards.

``docs/bad_input.md`` shows the same table; :func:`test_docs_show_the_matrix` keeps them in sync
(regenerate with ``python tests/test_bad_input_matrix.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flops_fit import ScalingLawAnalyzer, find_optimal
from flops_fit.analysis import (
    chinchilla_table,
    detect_outliers,
    fit_envelope,
    fit_isoflop,
    fit_parametric,
    fit_power_law,
)
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec
from flops_fit.report.result import Result
from flops_fit.training import Callback, TrainConfig
from synth import isoflop_sweep

#: The toy sweep of the find_optimal rows is short, and one row repeats a small dataset; the planner says so.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*fewer than 100 optimiser steps:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*more than one pass over:UserWarning"),
]
DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
VOCAB, SEQ = 11, 8


class ComputeSpent(BaseException):
    """Raised by the traps: a bad input got past validation into real work."""


#: (module, attribute) of every expensive step; each is replaced by a trap in every test of this file.
COMPUTE = (
    ("flops_fit.training.runner", "TrainingRunner.run_sweep"),
    ("flops_fit.training.jobs", "train"),
    ("flops_fit.training.loop", "train"),
    ("flops_fit.analysis.parametric", "_fit_clean"),
    ("flops_fit.analysis.isoflop", "_bootstrap"),
    ("flops_fit.analysis.envelope", "_bootstrap_laws"),
    ("flops_fit.analysis.power_law", "_fit_pure"),
    ("flops_fit.analysis.power_law", "_fit_offset"),
)


@pytest.fixture(autouse=True)
def traps(monkeypatch):
    import importlib

    def trap(name: str) -> Callable[..., Any]:
        def spent(*args: Any, **kwargs: Any) -> Any:
            raise ComputeSpent(f"{name} ran: the bad input was not rejected before compute")

        return spent

    for module, attr in COMPUTE:
        owner: Any = importlib.import_module(module)
        *path, last = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        monkeypatch.setattr(owner, last, trap(f"{module}.{attr}"))


@pytest.fixture(autouse=True)
def restore_logging():
    """The commands configure logging (root level, warnings capture); put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


# --------------------------------------------------------------------------------------------------
# what the entry points are called with


class Net(nn.Module):
    """Embedding -> Linear^depth -> logits; counts networks built on a real device and forward passes."""

    built = 0
    forwards = 0

    def __init__(self, width: int = 8, depth: int = 1):
        super().__init__()
        if torch.empty(0).device.type != "meta":
            Net.built += 1
        self.emb = nn.Embedding(VOCAB, width)
        self.body = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
        self.out = nn.Linear(width, VOCAB)

    def forward(self, x):
        Net.forwards += 1
        return self.out(self.body(self.emb(x)))


class FixedSize(nn.Module):
    """A model whose parameter count ignores its size argument."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Linear(16, 16)

    def forward(self, x):
        return self.body(x)


class Tokens(torch.utils.data.Dataset):
    """Ten million windows of a counting sequence (made on demand, so the sweeps never repeat data);
    counts the items read."""

    reads = 0

    def __len__(self) -> int:
        return 10_000_000

    def __getitem__(self, i: int):
        Tokens.reads += 1
        x = (torch.arange(SEQ) + i) % VOCAB
        return x, (x + 1) % VOCAB


class Empty(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(i)


def lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def per_token_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")


def nan_loss(out, y):
    return lm_loss(out, y) * float("nan")


N, D, L, C = isoflop_sweep(budgets=(1e17, 1e18, 1e19), sizes=5)
GRID = {"e": (0.5,), "a": (6.0,), "b": (6.0,), "alpha": (0.3,), "beta": (0.3,)}


def with_value(values: np.ndarray, index: int, value: float) -> np.ndarray:
    out = np.array(values, dtype=float)
    out[index] = value
    return out


def curve_runs() -> pd.DataFrame:
    """Runs of 8 sizes with loss curves (the input of Approach 1)."""
    rows = []
    for i, n in enumerate(np.geomspace(2e7, 2e9, 8)):
        tokens = np.geomspace(n, 200 * n, 30)
        loss = 1.69 + 406.4 / n**0.34 + 410.7 / tokens**0.28
        rows.append(
            {
                "experiment_id": f"r{i}",
                "compute_budget": 6 * n * tokens[-1],
                "num_params": n,
                "num_tokens": tokens[-1],
                "final_loss": loss[-1],
                "status": "completed",
                "curve": np.column_stack([tokens, loss]).tolist(),
            }
        )
    return pd.DataFrame(rows)


RUNS = curve_runs()
FIT = fit_isoflop(N, D, L, C)  # built before the traps are set, for the table and optimal(C) rows


def call_find_optimal(tmp: Path, **kwargs: Any) -> Any:
    """find_optimal with a good default for every argument but ``kwargs``; building the sweep's runner (which
    creates ``output_dir``) counts as compute too."""
    from flops_fit.training.runner import TrainingRunner

    def runner_built(*args: Any, **kwargs: Any) -> None:
        raise ComputeSpent("find_optimal built the TrainingRunner: the bad input was not rejected before")

    args = {
        "model_cls": Net,
        "size_param": "width",
        "dataset": Tokens(),
        "loss_fn": lm_loss,
        "compute_budgets": [1e9, 3e9, 1e10],
        "num_model_sizes": 3,
        "output_dir": tmp / "out",
        **kwargs,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainingRunner, "__init__", runner_built)
        return find_optimal(**args)


def call_planner(tmp: Path, **kwargs: Any) -> Any:
    args = {"min_flops": 1e12, "max_flops": 1e14, "num_compute_budgets": 3, "num_model_sizes": 3, **kwargs}
    return SweepPlanner(**args).plan()


TARGETS: dict[str, Callable[..., Any]] = {
    "find_optimal": call_find_optimal,
    "SweepPlanner": call_planner,
    "ModelSpec": lambda tmp, **kw: ModelSpec(**{"model_cls": Net, "size_param": "width", **kw}),
    "fit_isoflop": lambda tmp, **kw: fit_isoflop(**{"N": N, "D": D, "L": L, "C": C, "bootstrap": 50, **kw}),
    "fit_parametric": lambda tmp, **kw: fit_parametric(
        **{"N": N, "D": D, "L": L, "init_grid": GRID, "bootstrap": 50, **kw}
    ),
    "fit_envelope": lambda tmp, **kw: fit_envelope(**{"runs": RUNS, "bootstrap": 50, **kw}),
    "fit_power_law": lambda tmp, **kw: fit_power_law(**{"x": C, "y": N, "bootstrap": 50, **kw}),
    "chinchilla_table": lambda tmp, **kw: chinchilla_table(**{"fit": FIT, "budgets": [1e21], **kw}),
    "detect_outliers": lambda tmp, **kw: detect_outliers(**{"runs": RUNS, **kw}),
    "Result.from_runs": lambda tmp, **kw: Result.from_runs(**{"runs": RUNS, "approach": "isoflop", **kw}),
    "ScalingLawAnalyzer": lambda tmp, **kw: ScalingLawAnalyzer(
        **{"results_path": tmp / "results.jsonl", "output_dir": tmp / "fits", **kw}
    ),
    "IsoFLOPFit.optimal": lambda tmp, **kw: FIT.optimal(**kw),
}


@dataclass(frozen=True)
class Case:
    api: str  # a key of TARGETS
    what: str  # the bad input, as the docs show it
    kwargs: dict[str, Any] = field(repr=False)
    error: type[Exception]
    needle: str  # a substring of the message: the argument it names

    @property
    def id(self) -> str:
        return f"{self.api}: {self.what}"


#: One row-maker per API, so each row reads (bad input, kwargs, error, what the message names).
find = partial(Case, "find_optimal")
planner = partial(Case, "SweepPlanner")
spec = partial(Case, "ModelSpec")
iso = partial(Case, "fit_isoflop")
par = partial(Case, "fit_parametric")
env = partial(Case, "fit_envelope")
law = partial(Case, "fit_power_law")
table = partial(Case, "chinchilla_table")
outliers = partial(Case, "detect_outliers")
result = partial(Case, "Result.from_runs")
analyzer = partial(Case, "ScalingLawAnalyzer")
optimal = partial(Case, "IsoFLOPFit.optimal")

# fmt: off
CASES = [
    # find_optimal: budgets, model, data, loss, names; everything before the plan is trained
    find("compute_budgets=[]", {"compute_budgets": []}, ValueError, "compute_budgets"),
    find("a negative budget", {"compute_budgets": [-1e9, 1e10]}, ValueError, "compute_budgets"),
    find("a NaN budget", {"compute_budgets": [float("nan"), 1e10]}, ValueError, "compute_budgets"),
    find("one budget", {"compute_budgets": [1e10]}, ValueError, "compute_budgets"),
    find("budgets as a string", {"compute_budgets": "1e9,1e10"}, TypeError, "compute_budgets"),
    find("model_cls not callable", {"model_cls": 3}, TypeError, "model_cls"),
    find("a model instance", {"model_cls": Net(8)}, TypeError, "model_cls"),
    find("size param the model lacks", {"size_param": "d_model"}, TypeError, "'d_model'"),
    find("empty size param", {"size_param": ""}, TypeError, "size_param"),
    find("unknown model kwarg", {"model_kwargs": {"heads": 2}}, TypeError, "['heads']"),
    find("model_kwargs sets the size", {"model_kwargs": {"width": 4}}, TypeError, "'width'"),
    find("size does not change N", {"model_cls": FixedSize}, ValueError, "does not grow"),
    find("empty dataset", {"dataset": Empty()}, ValueError, "dataset is empty"),
    find("dataset not a Dataset", {"dataset": 5}, TypeError, "dataset must be"),
    find("items not (inputs, targets)", {"dataset": [torch.zeros(3)]}, TypeError, "dataset items"),
    find("loss_fn not callable", {"loss_fn": 3}, TypeError, "loss_fn"),
    find("loss is not a scalar", {"loss_fn": per_token_loss}, TypeError, "scalar"),
    find("loss is NaN", {"loss_fn": nan_loss}, ValueError, "loss_fn returned nan"),
    find("unknown mode", {"mode": "gpu"}, ValueError, "mode"),
    find("unknown executor", {"executor": "slurm"}, ValueError, "executor"),
    find("ray_address without executor='ray'", {"ray_address": "auto"}, ValueError, "ray_address"),
    find("Ray resources spelled num_gpus", {"executor": "ray", "resources": {"num_gpus": 1}}, ValueError, "GPU"),
    find("negative max_retries", {"executor": "ray", "max_retries": -1}, ValueError, "max_retries"),
    find("unknown approach", {"approach": "approach4"}, ValueError, "approach"),
    find("num_model_sizes=2", {"num_model_sizes": 2}, ValueError, "num_model_sizes"),
    find("unknown FLOP convention", {"flops": "7nd"}, ValueError, "flops"),
    find("negative tokens_per_param", {"tokens_per_param": -1.0}, ValueError, "tokens_per_param"),
    find("train_config as a dict", {"train_config": {"lr": 1e-3}}, TypeError, "train_config"),
    find("negative seed", {"seed": -1}, ValueError, "seed must be a non-negative int, got -1"),
    find("callbacks not Callbacks", {"callbacks": [3]}, TypeError, "callbacks"),
    find("mode='function' without train_fn", {"mode": "function"}, TypeError, "train_fn"),
    find("unknown keyword", {"sizes_span": 4.0}, TypeError, "find_optimal got unexpected keyword(s) ['sizes_span']"),
    find("unknown device", {"device": "tpu9"}, ValueError, "device 'tpu9'"),
    find("budget below one step", {"compute_budgets": [1e3, 1e4]}, ValueError, "min_flops"),
    find("budgets beyond the data (2,048 tokens)", {"dataset": torch.utils.data.Subset(Tokens(), range(256))},
         ValueError, "need more than max_epochs=1 pass(es)"),
    # SweepPlanner and ModelSpec
    planner("min_flops=0", {"min_flops": 0.0}, ValueError, "min_flops"),
    planner("min_flops=NaN", {"min_flops": float("nan")}, ValueError, "min_flops"),
    planner("min_flops as a string", {"min_flops": "1e12"}, TypeError, "min_flops"),
    planner("max_flops < min_flops", {"max_flops": 1e11}, ValueError, "max_flops"),
    planner("num_compute_budgets=0", {"num_compute_budgets": 0}, ValueError, "num_compute_budgets"),
    planner("num_model_sizes=2", {"num_model_sizes": 2}, ValueError, "num_model_sizes"),
    planner("num_model_sizes=3.0", {"num_model_sizes": 3.0}, TypeError, "num_model_sizes"),
    planner("num_model_sizes=100000", {"num_model_sizes": 100000}, ValueError, "num_model_sizes=100000"),
    planner("budgets too small for one step",
            {"min_flops": 1e8, "max_flops": 1e9, "batch_size": 32, "tokens_per_sample": 1024},
            ValueError, "min_flops"),
    planner("budget below one parameter", {"min_flops": 10.0, "max_flops": 100.0}, ValueError, "min_flops"),
    planner("size param the model lacks", {"model": ModelSpec(Net, "d_model")}, TypeError,
         "its signature is Net(width"),
    planner("size does not change N", {"model": ModelSpec(FixedSize, "width")}, ValueError,
         "does not grow with 'width'"),
    planner("model is a class, not a ModelSpec", {"model": Net}, TypeError, "ModelSpec"),
    planner("size_span=1", {"size_span": 1.0}, ValueError, "size_span"),
    planner("size_span=(2, 3)", {"size_span": (2.0, 3.0)}, ValueError, "size_span"),
    planner("batch_size=0", {"batch_size": 0}, ValueError, "batch_size"),
    planner("unknown FLOP convention", {"flops": "7nd"}, ValueError, "flops"),
    planner("'chinchilla' FLOPs without a model", {"flops": "chinchilla"}, ValueError, "needs a model"),
    planner("negative learning rate", {"lr_rule": -1.0}, ValueError, "lr_rule"),
    planner("explicit budgets that disagree", {"budgets": [1e12, 1e13]}, ValueError, "budgets"),
    planner("prior of the wrong kind", {"prior": 3}, TypeError, "prior"),
    spec("an instance, not a class", {"model_cls": Net(8)}, TypeError, "model_cls"),
    spec("size_param not an identifier", {"size_param": "1x"}, ValueError, "size_param"),
    spec("two size_values", {"size_values": [8, 16]}, ValueError, "size_values"),
    spec("size_multiple=0", {"size_multiple": 0}, ValueError, "size_multiple"),
    spec("unknown param_count", {"param_count": "all"}, ValueError, "param_count"),
    spec("model_kwargs not JSON", {"model_kwargs": {"depth": object()}}, TypeError, "model_kwargs"),
    # the fits (bootstrap=50 in every call: it must not start)
    iso("NaN in N", {"N": with_value(N, 2, np.nan)}, ValueError, "N[2] = nan"),
    iso("inf in D", {"D": with_value(D, 3, np.inf)}, ValueError, "D[3] = inf"),
    iso("zero loss", {"L": with_value(L, 0, 0.0)}, ValueError, "L[0] = 0.0"),
    iso("negative budget", {"C": with_value(C, 1, -5.0)}, ValueError, "C[1] = -5.0"),
    iso("lengths differ", {"L": L[:-1]}, ValueError, "same length"),
    iso("no points", {"N": [], "D": [], "L": [], "C": []}, ValueError, "Not enough valid points"),
    iso("one budget", {"N": N[:5], "D": D[:5], "L": L[:5], "C": C[:5]}, ValueError,
         "2 or more compute budgets"),
    iso("N is text", {"N": "abc"}, ValueError, "N must be a sequence of numbers"),
    iso("N is 2-D", {"N": np.ones((3, 5)), "C": None}, ValueError, "N must be 1-D"),
    iso("bootstrap=-1", {"bootstrap": -1}, ValueError, "bootstrap"),
    iso("bootstrap=2.5", {"bootstrap": 2.5}, TypeError, "bootstrap"),
    iso("seed='a'", {"seed": "a"}, TypeError, "seed"),
    iso("budget_rtol=-1", {"budget_rtol": -1.0}, ValueError, "budget_rtol"),
    iso("bootstrap=10**12", {"bootstrap": 10**12}, ValueError, "bootstrap=1000000000000"),
    iso("exclude='no'", {"exclude": "no"}, TypeError, "exclude must be True or False"),
    iso("ids of another length", {"ids": ["a", "b"]}, ValueError, "ids must name each"),
    par("NaN in N", {"N": with_value(N, 2, np.nan)}, ValueError, "N[2] = nan"),
    par("negative loss", {"L": with_value(L, 4, -1.0)}, ValueError, "L[4] = -1.0"),
    par("zero tokens", {"D": with_value(D, 0, 0.0)}, ValueError, "D[0] = 0.0"),
    par("lengths differ", {"D": D[:-2]}, ValueError, "same length"),
    par("4 points", {"N": N[:4], "D": D[:4], "L": L[:4]}, ValueError, "at least 5 points"),
    par("one model size", {"N": np.full(N.size, 1e8)}, ValueError, "2 distinct N"),
    par("one data size", {"D": np.full(D.size, 1e10)}, ValueError, "2 distinct D"),
    par("C of another length", {"C": C[:3]}, ValueError, "C must have one budget per point"),
    par("unknown init_grid", {"init_grid": "hoffmann"}, ValueError, "init_grid"),
    par("init_grid missing keys", {"init_grid": {"e": (1.0,)}}, ValueError, "init_grid"),
    par("huber_delta=0", {"huber_delta": 0.0}, ValueError, "huber_delta"),
    par("weights of another length", {"weights": [1.0, 2.0]}, ValueError, "weights"),
    par("negative weights", {"weights": -np.ones(N.size)}, ValueError, "weights"),
    par("bootstrap=-2", {"bootstrap": -2}, ValueError, "bootstrap"),
    par("seed=1.5", {"seed": 1.5}, TypeError, "seed"),
    par("seed=-1", {"seed": -1}, ValueError, "seed"),
    par("bootstrap=10**12", {"bootstrap": 10**12}, ValueError, "bootstrap=1000000000000"),
    par("exclude='no'", {"exclude": "no"}, TypeError, "exclude must be True or False"),
    par("ids as one string", {"ids": "abc"}, TypeError, "ids must be a sequence"),
    env("not a DataFrame", {"runs": [1, 2]}, TypeError, "runs must be a pandas DataFrame"),
    env("no curve column", {"runs": RUNS.drop(columns=["curve"])}, ValueError, "curve"),
    env("a required column missing", {"runs": RUNS.drop(columns=["num_params"])}, ValueError,
         "num_params"),
    env("curves not (tokens, loss) pairs", {"runs": RUNS.assign(curve=[[1, 2, 3]] * 8)},
         ValueError, "(tokens, loss) pairs"),
    env("one model size", {"runs": RUNS.assign(num_params=1e8)}, ValueError,
         "at least 2 model sizes"),
    env("non-numeric N", {"runs": RUNS.assign(num_params="big")}, ValueError, "num_params"),
    env("grid_points=3", {"grid_points": 3}, ValueError, "grid_points"),
    env("grid_points=10**9", {"grid_points": 10**9}, ValueError, "grid_points must be at most"),
    env("bootstrap=-1", {"bootstrap": -1}, ValueError, "bootstrap"),
    env("seed='a'", {"seed": "a"}, TypeError, "seed"),
    env("exclude='no'", {"exclude": "no"}, TypeError, "exclude must be True or False"),
    law("lengths differ", {"y": N[:3]}, ValueError, "same length"),
    law("one point", {"x": [1e18], "y": [1e9]}, ValueError, "Not enough valid points"),
    law("one distinct x", {"x": [1.0, 1.0, 1.0], "y": [1.0, 2.0, 3.0]}, ValueError,
         "2 distinct x"),
    law("all x NaN", {"x": np.full(C.size, np.nan)}, ValueError, "Not enough valid points"),
    law("all x negative", {"x": -C}, ValueError, "Not enough valid points"),
    law("2 points with an offset", {"x": [1.0, 2.0], "y": [1.0, 2.0], "offset": True},
         ValueError, "need at least 3"),
    law("x is text", {"x": "abc"}, ValueError, "x and y must be sequences of numbers"),
    law("bootstrap=-1", {"bootstrap": -1}, ValueError, "bootstrap"),
    law("bootstrap=1.5", {"bootstrap": 1.5}, TypeError, "bootstrap"),
    law("offset='no'", {"offset": "no"}, TypeError, "offset must be True or False"),
    table("budgets=[]", {"budgets": []}, ValueError, "budgets"),
    table("a negative budget", {"budgets": [-1.0]}, ValueError, "budgets"),
    table("budgets as text", {"budgets": "x"}, ValueError, "budgets"),
    table("not a fit", {"fit": 3}, TypeError, "fit must have an optimal(C) method"),
    outliers("residual_z='3'", {"residual_z": "3"}, TypeError, "residual_z"),
    outliers("residual_z=NaN", {"residual_z": float("nan")}, ValueError, "residual_z"),
    outliers("min_relative_residual=-1", {"min_relative_residual": -1.0}, ValueError, "min_relative_residual"),
    outliers("budget_rtol=-1", {"budget_rtol": -1.0}, ValueError, "budget_rtol"),
    result("exclude_outliers='no'", {"exclude_outliers": "no"}, TypeError, "exclude_outliers must be True or False"),
    result("seed=-1", {"seed": -1}, ValueError, "seed must be a non-negative int"),
    result("bootstrap=10**6", {"bootstrap": 10**6}, ValueError, "bootstrap=1000000"),
    analyzer("unknown approach", {"approach": "approach4"}, ValueError, "approach"),
    analyzer("approach=None", {"approach": None}, TypeError, "approach"),
    analyzer("bootstrap=2.7", {"bootstrap": 2.7}, TypeError, "bootstrap"),
    analyzer("seed=-1", {"seed": -1}, ValueError, "seed"),
    analyzer("budget_rtol='x'", {"budget_rtol": "x"}, TypeError, "budget_rtol"),
    analyzer("columns as a list", {"columns": ["a"]}, TypeError, "columns must map"),
    analyzer("exclude_outliers='no'", {"exclude_outliers": "no"}, TypeError, "exclude_outliers"),
    analyzer("a plan file that does not exist", {"plan": "no/such/sweep.json"}, FileNotFoundError,
             "no/such/sweep.json"),
    optimal("C=0", {"C": 0.0}, ValueError, "C must be positive"),
    optimal("C=NaN", {"C": float("nan")}, ValueError, "C must be positive"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_named_before_compute(case: Case, tmp_path: Path):
    Net.built = Net.forwards = Tokens.reads = 0
    with pytest.raises(case.error, match=re.escape(case.needle)):
        TARGETS[case.api](tmp_path, **case.kwargs)
    if case.api == "find_optimal":
        # at most the probe: one network on a real device, one forward pass on one batch read from the data
        assert Net.built <= 1 and Net.forwards <= 1 and Tokens.reads <= 1
        assert not (tmp_path / "out").exists(), "find_optimal wrote to output_dir before failing"
    else:
        assert Net.built == 0 and Net.forwards == 0


def test_the_traps_are_armed(tmp_path: Path):
    """A good input does reach the trapped compute (so a passing row above means something)."""
    with pytest.raises(ComputeSpent):
        call_find_optimal(tmp_path)
    with pytest.raises(ComputeSpent):
        TARGETS["fit_parametric"](tmp_path)
    with pytest.raises(ComputeSpent):
        TARGETS["fit_isoflop"](tmp_path)
    with pytest.raises(ComputeSpent):
        TARGETS["fit_envelope"](tmp_path)


def test_callbacks_and_train_config_of_the_right_type_pass_validation(tmp_path: Path):
    """The rows for callbacks and train_config fail for their type, not for something else."""
    with pytest.raises(ComputeSpent):
        call_find_optimal(tmp_path, callbacks=[Callback()], train_config=TrainConfig(batch_size=8))


# --------------------------------------------------------------------------------------------------
# commands: exit status 2 and the argument named. One row each: (arguments, substring of the message).


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Files for the command rows: garbage JSON, a CSV without the needed columns, one budget, a sweep
    directory with a plan and nothing else."""
    (tmp_path / "garbage.json").write_text("{not json")
    SweepPlanner(1e15, 1e17, 3, 3, batch_size=1).plan().save(tmp_path / "planned" / "sweep.json")
    (tmp_path / "notes.txt").write_text("loss went down")
    pd.DataFrame({"a": [1, 2], "b": [3, 4]}).to_csv(tmp_path / "columns.csv", index=False)
    pd.DataFrame({"num_params": N[:5], "num_tokens": D[:5], "final_loss": L[:5]}).to_csv(
        tmp_path / "one_budget.csv", index=False
    )
    return tmp_path


def gap(*row: str, reason: str, raises: type[BaseException] | None = None) -> Any:
    """A row that does not behave yet: a strict expected failure, so fixing it makes the test say so."""
    return pytest.param(*row, marks=pytest.mark.xfail(strict=True, raises=raises, reason=reason))


# fmt: off
CLI_CASES = [
    ("fit", "file"),
    ("fit {tmp}/missing.csv", "missing.csv"),
    ("fit {tmp}/garbage.json", "garbage.json is not valid JSON"),
    ("fit {tmp}/notes.txt", "'.txt'"),
    ("fit {tmp}/columns.csv", "missing required column"),
    ("fit {tmp}/one_budget.csv --approach isoflop", "2 or more compute budgets"),
    ("fit chinchilla --approach nope", "unknown approach 'nope'"),
    ("fit chinchilla --bootstrap -1", "--bootstrap"),
    ("fit chinchilla --bootstrap many", "--bootstrap"),
    ("fit chinchilla --bootstrap 1000000000000", "--bootstrap"),
    ("fit chinchilla --seed 1.5", "--seed"),
    ("fit chinchilla --budgets 1e21,abc", "--budgets"),
    ("fit chinchilla --budgets -5", "--budgets"),
    ("fit chinchilla --budgets nan", "--budgets"),
    ("fit chinchilla --n-col 'No Such'", "'No Such'"),
    ("fit chinchilla --loss-col nope", "'nope'"),
    ("fit chinchilla --frobnicate", "--frobnicate"),
    ("fit chinchilla --approach isoflop --json {tmp}/no/such/dir/fits.json", "--json"),
    ("fit chinchilla --approach isoflop --json {tmp}", "is a folder"),
    ("plan --out {tmp}/o --min-flops -5", "--min-flops"),
    ("plan --out {tmp}/o --sizes 2", "--sizes must be at least 3"),
    ("plan --out {tmp}/o --num-budgets 0", "--num-budgets must be at least 1"),
    ("plan --out {tmp}/o --tokens-per-sample 0", "--tokens-per-sample"),
    ("plan --out {tmp}/o --num-budgets x", "--num-budgets"),
    ("plan --out {tmp}/o --budgets abc", "--budgets"),
    ("plan --out {tmp}/o --flops 7nd", "flops"),
    ("plan --out {tmp}/o --batch-size 0", "--batch-size"),
    ("plan --out {tmp}/o --model torch.nn.Linear", "--size-param"),
    ("plan --out {tmp}/o --model torch.nn.Linear --size-param width", "'width'"),
    ("plan --out {tmp}/o --model torch.nn.Linear --size-param n --model-kwargs 1", "--model-kwargs"),
    ("plan --out {tmp}/o --model no_such_module_xyz.Net --size-param width", "--model"),
    ("plan --out {tmp}/garbage.json", "--out"),
    ("plan --out {tmp}/o --model-kwargs '{\"a\": 1}'", "--model-kwargs need(s) --model"),
    ("plan --out {tmp}/o --size-param width", "--size-param need(s) --model"),
    ("plan --out {tmp}/o --flops chinchilla --shape-fn flops_fit.examples.gpt.transformer_shape",
     "--shape-fn need(s) --model"),
    ("plan --out {tmp}/o --shape-fn flops_fit.examples.gpt.transformer_shape", "read only by --flops chinchilla"),
    ("plan --out {tmp}/o --sample-kwargs '{\"seq_len\": 8}'", "--sample-kwargs needs --sample-fn"),
    ("train {tmp}/nowhere", "is not a directory"),
    ("train {tmp}", "sweep.json"),
    ("train {tmp}/planned --mode gpu", "mode"),
    ("train {tmp}/planned --mode local", "dataset"),
    ("analyze {tmp}/nowhere", "is not a directory"),
    ("analyze {tmp}/planned", "results.jsonl"),
    ("analyze {tmp}/planned --bootstrap -1", "--bootstrap"),
    ("analyze {tmp}/planned --approach nope", "unknown approach 'nope'"),
    ("analyze {tmp}/planned --budgets x", "--budgets"),
    ("plot {tmp}/nowhere", "is not a directory"),
    ("plot {tmp}/planned", "run `flops-fit analyze"),
    ("report {tmp}/nowhere", "is not a directory"),
    ("report {tmp}/planned", "run `flops-fit analyze"),
    ("demo --budgets abc", "--budgets"),
    ("demo --budgets -5", "--budgets"),
    ("", "COMMAND"),
    ("frobnicate", "'frobnicate'"),
]
# fmt: on


def run_cli(argv: list[str]) -> tuple[int, str]:
    from flops_fit.app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return int(code), err.getvalue()


@pytest.mark.parametrize("command, needle", CLI_CASES)
def test_flops_fit_command_exits_2_naming_the_argument(command: str, needle: str, files: Path):
    code, stderr = run_cli(shlex.split(command.replace("{tmp}", str(files))))
    assert code == 2, stderr
    assert needle in stderr
    assert not list(files.rglob("results.jsonl")) and not list(files.rglob("scaling_laws.json"))


STAGES = {"ff-plan": "plan_main", "ff-train": "train_main", "ff-analyze": "analyze_main"}
STAGES["ff-visualize"] = "visualize_main"


# fmt: off
STAGE_CASES = [
    ("ff-plan", "compute.min_flops=-5", "min_flops"),
    ("ff-plan", "compute.max_flops=1e10", "max_flops"),
    ("ff-plan", "compute.budgets=[]", "budgets"),
    ("ff-plan", "sweep.num_model_sizes=2", "num_model_sizes"),
    ("ff-plan", "sweep.batch_size=0", "batch_size"),
    ("ff-plan", "sweep.flops=7nd", "flops"),
    ("ff-plan", "+sweep.typo=3", "sweep.typo"),
    ("ff-plan", "compute.min_flopz=1", "unknown config key 'compute.min_flopz'"),
    ("ff-analyze", "bootstrapp=10", "unknown config key 'bootstrapp'"),
    ("ff-plan", "'model={_target_: torch.nn.Linear, size_param: width, kwargs: {}}'", "'width'"),
    ("ff-train", "mode=gpu", "mode"),
    ("ff-train", "progress=true", "sweep.json"),
    ("ff-train", "mode=local 'dataset={_target_: no_such_module_xyz.data}'", "dataset 'no_such_module_xyz.data' could not be built"),
    ("ff-train", "'dataset={_target_: no_such_module_xyz.data}'", "dataset is read only by mode=local (mode=mock here)"),
    ("ff-train", "+train.batch_size=64", "train.batch_size is set per experiment by the plan"),
    ("ff-train", "+train.lrr=1", "train has unknown TrainConfig field(s) ['lrr']"),
    ("ff-analyze", "results={tmp}/missing.jsonl", "missing.jsonl"),
    ("ff-analyze", "results={tmp}/garbage.json", "garbage.json"),
    ("ff-analyze", "results={tmp}/columns.csv approach=nope", "unknown approach 'nope'"),
    ("ff-analyze", "results={tmp}/columns.csv bootstrap=-1", "bootstrap"),
    ("ff-analyze", "+typo=1", "typo"),
    ("ff-analyze", "results={tmp}/columns.csv table_budgets=[-1]", "table_budgets"),
    ("ff-analyze", "results={tmp}/columns.csv plan={tmp}/no_plan.json", "no_plan.json"),
    ("ff-analyze", "results={tmp}/columns.csv plan=7", "plan must be"),
    ("ff-visualize", "results={tmp}/missing.jsonl", "missing.jsonl"),
    ("ff-plan", "'model={_target_: no_such_module_xyz.Net, size_param: width, kwargs: {}}'", "model._target_"),
]
# fmt: on


def run_stage(stage: str, overrides: list[str], monkeypatch) -> tuple[int, str]:
    from flops_fit.app import stages

    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # no log files, no logging setup
    monkeypatch.setattr(sys, "argv", [stage, *overrides, *quiet])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            getattr(stages, STAGES[stage])()
            code = 0
        except SystemExit as exc:
            code = exc.code
    return int(code), err.getvalue()


@pytest.mark.parametrize("stage, overrides, needle", STAGE_CASES)
def test_stage_command_exits_2_naming_the_key(
    stage: str, overrides: str, needle: str, files: Path, monkeypatch
):
    out = files / "out"
    args = [f"output.dir={out}", *shlex.split(overrides.replace("{tmp}", str(files)))]
    code, stderr = run_stage(stage, args, monkeypatch)
    assert code == 2, stderr
    assert needle in stderr
    assert not (out / "results.jsonl").exists() and not (out / "sweep.json").exists()


# --------------------------------------------------------------------------------------------------
# the docs show the matrix


def render_matrix() -> str:
    """The Markdown tables of docs/bad_input.md, generated from CASES, CLI_CASES and STAGE_CASES."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| API | bad input | error | the message names |", "|---|---|---|---|"]
    lines += [f"| `{c.api}` | {cell(c.what)} | `{c.error.__name__}` | `{cell(c.needle)}` |" for c in CASES]
    lines += ["", "| command | exit | the message names |", "|---|---|---|"]

    def rows(cases: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
        """(exit column, row values): an expected failure shows its reason beside the status it should get."""
        out = []
        for c in cases:
            if hasattr(c, "values"):
                reason = next(m.kwargs["reason"] for m in c.marks if m.name == "xfail")
                out.append((f"2 (not yet: {reason})", tuple(c.values)))
            else:
                out.append(("2", c))
        return out

    for status, (command, needle) in rows(CLI_CASES):
        shown = f"flops-fit {command.replace('{tmp}', 'DIR')}".strip()
        lines.append(f"| `{cell(shown)}` | {status} | `{cell(needle)}` |")
    for status, (stage, overrides, needle) in rows(STAGE_CASES):
        shown = f"{stage} {overrides.replace('{tmp}', 'DIR')}"
        lines.append(f"| `{cell(shown)}` | {status} | `{cell(needle)}` |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- matrix: begin -->\n", "<!-- matrix: end -->"


def test_docs_show_the_matrix():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lacks the {BEGIN.strip()} ... {END} markers"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert shown == render_matrix(), (
        "docs/bad_input.md is out of date: run python tests/test_bad_input_matrix.py"
    )


if __name__ == "__main__":  # rewrite the table in docs/bad_input.md
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + render_matrix() + END + rest.split(END, 1)[1], encoding="utf-8")
    print(f"updated {DOC}")
