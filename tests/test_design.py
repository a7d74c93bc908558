"""Sweep designs: the IsoFLOP design plans exactly what the planner planned before designs were objects,
and a second design plugs into SweepPlanner(design=...) without touching the planner."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import pytest

from flops_fit.plan.design import DesignContext, DesignedSweep, IsoFLOPDesign, SweepDesign
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec, PowerLawLR
from flops_fit.plan.sweep import SweepPlan

#: A model every torch install can import by path: N = 17 * out_features (a 16 -> out Linear with bias).
LINEAR = ModelSpec("torch.nn:Linear", "out_features", {"in_features": 16}, size_multiple=4)
LINEAR_VALUES = ModelSpec(
    "torch.nn:Linear",
    "out_features",
    {"in_features": 16},
    size_values=[8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512],
)


def digest(plan: SweepPlan) -> str:
    """A short hash of every run's id, budget, size, N, tokens, steps and learning rate."""
    rows = [
        [
            e.experiment_id,
            e.compute_budget,
            e.size_value,
            e.num_params,
            e.num_tokens,
            e.num_steps,
            e.learning_rate,
        ]
        for e in plan
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# the IsoFLOP design is today's planner
# ---------------------------------------------------------------------------------------------------

#: Ids of SweepPlanner(1e15, 1e17, 3, 5).plan() as the planner gave them before sweep designs were objects.
PARAMETER_SPACE_IDS = [
    "7f0df3800c63",
    "25879aa04277",
    "8e0f84913229",
    "ec5672af82a5",
    "02e9a02ffe8a",
    "34c257fd8995",
    "815fd8fcb2d1",
    "310213c76dc9",
    "1e18081f8f92",
    "82c9606fbbfe",
    "fb4a0030c87f",
    "cc6bb761458c",
    "c6af94fbcb62",
    "358c1a9960d5",
    "b18624be0421",
]

#: (budgets, num_model_sizes, size_span, other planner keywords, digest and run count before the split).
CONFIGS = {
    "parameter space, a pair span, lr rule, data and train config": (
        (1e17, 1e19, 4),
        7,
        (0.3, 5.0),
        {"lr_rule": PowerLawLR(1e-3, 1e6, 0.3), "data_id": "d", "seed": 3, "train_config": {"lr": 1e-3}},
        "32520aaabbd59cdc",
        28,
    ),
    "a model by multiples of 4": (
        (1e9, 1e11, 3),
        5,
        8.0,
        {"model": LINEAR, "batch_size": 4, "tokens_per_sample": 16},
        "d26bb41e0b474757",
        15,
    ),
    "a model by listed sizes, exact budgets": (
        [1e8, 1e9],
        4,
        3.0,
        {"model": LINEAR_VALUES, "batch_size": 2, "tokens_per_sample": 8},
        "bb75fb5cd0590ccd",
        8,
    ),
}


def planner(budgets, num_model_sizes, size_span, kwargs, design: SweepDesign | None = None) -> SweepPlanner:
    if design is not None:
        num_model_sizes, kwargs = None, dict(kwargs)
    else:
        kwargs = {**kwargs, "size_span": size_span}
    if isinstance(budgets, list):
        return SweepPlanner.from_budgets(budgets, num_model_sizes, design=design, **kwargs)
    return SweepPlanner(*budgets, num_model_sizes, design=design, **kwargs)


def test_isoflop_design_gives_the_ids_of_the_planner_before_the_split():
    for design in (None, IsoFLOPDesign(5), IsoFLOPDesign(num_model_sizes=5, size_span=8.0)):
        plan = (
            SweepPlanner(1e15, 1e17, 3, 5) if design is None else SweepPlanner(1e15, 1e17, 3, design=design)
        ).plan()
        assert [e.experiment_id for e in plan] == PARAMETER_SPACE_IDS
        assert plan.config["num_model_sizes"] == 5 and plan.config["size_span"] == 8.0
        assert plan.config["design"] is None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_isoflop_design_plans_what_the_keywords_planned(name):
    budgets, sizes, span, kwargs, expected, count = CONFIGS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs; the warnings are the planner's, tested elsewhere
        by_keywords = planner(budgets, sizes, span, kwargs).plan()
        by_design = planner(budgets, sizes, span, kwargs, IsoFLOPDesign(sizes, span)).plan()
    assert len(by_keywords) == count and digest(by_keywords) == expected
    assert by_design.experiments == by_keywords.experiments
    assert by_design.expected_optimum == by_keywords.expected_optimum
    assert by_design.config == by_keywords.config


def test_isoflop_design_checks_its_arguments():
    with pytest.raises(ValueError, match=r"num_model_sizes must be at least 3 .*parabola"):
        IsoFLOPDesign(2)
    with pytest.raises(TypeError, match="num_model_sizes"):
        IsoFLOPDesign(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_model_sizes=1000"):
        IsoFLOPDesign(1000)
    with pytest.raises(ValueError, match="size_span"):
        IsoFLOPDesign(5, 1.0)
    with pytest.raises(ValueError, match="bracket"):
        IsoFLOPDesign(5, (0.5, 0.9))
    assert IsoFLOPDesign(5, 4.0).size_span == (0.25, 4.0)
    assert isinstance(IsoFLOPDesign(5), SweepDesign)


# ---------------------------------------------------------------------------------------------------
# a second design is a new class
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedSizes:
    """A toy design: the same target sizes (parameters) at every budget, each trained to the budget."""

    targets: tuple[float, ...]

    def experiments(self, context: DesignContext) -> DesignedSweep:
        runs = []
        for c in context.budgets:
            for target in self.targets:
                size = context.sizes.nearest_size(target)
                steps = max(1, round(c / size.flops_per_token / context.experiment.tokens_per_step))
                runs.append(context.experiment(c, size, steps))
        optimum = tuple((c, context.expected_optimum(c)) for c in context.budgets)
        return DesignedSweep(tuple(runs), optimum)


def test_a_second_design_plugs_into_the_planner(tmp_path):
    design = FixedSizes((1e5, 1e6))
    plan = SweepPlanner(1e15, 1e17, 3, design=design).plan()
    assert [e.num_params for e in plan] == [100_000, 1_000_000] * 3
    assert plan.compute_budgets == (1e15, 1e16, 1e17)
    assert all(e.num_tokens == e.num_steps * 32 for e in plan)
    assert len({e.experiment_id for e in plan}) == 6
    assert "FixedSizes" in plan.config["design"] and plan.config["num_model_sizes"] is None
    assert SweepPlan.load(plan.save(tmp_path / "sweep.json")) == plan
    with pytest.raises(ValueError, match="design was recorded as"):
        SweepPlanner.from_config(plan.config)
    assert SweepPlanner.from_config(plan.config, design=design).plan().experiments == plan.experiments


def test_a_second_design_gets_the_models_sizes():
    plan = SweepPlanner(1e9, 1e10, 2, model=LINEAR, batch_size=4, design=FixedSizes((2e3, 8e3))).plan()
    assert [e.size_value for e in plan] == [116, 472, 116, 472]  # N = 17 x out_features, nearest in log N
    assert [e.num_params for e in plan] == [1972, 8024, 1972, 8024]


def test_runs_a_design_tells_apart_get_their_own_ids():
    seen = {}

    @dataclass(frozen=True)
    class Branches:
        """Two runs of one size and length, told apart only by a branch field in their ids."""

        def experiments(self, context: DesignContext) -> DesignedSweep:
            size = context.sizes.nearest_size(1e6)
            runs = tuple(context.experiment(1e17, size, 10, {"branch": b}) for b in (0, 1))
            seen["plain"] = context.experiment(1e17, size, 10)
            return DesignedSweep(runs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 10 steps: the planner warns about short runs
        plan = SweepPlanner(1e17, 1e17, 1, design=Branches()).plan()
    ids = {e.experiment_id for e in plan} | {seen["plain"].experiment_id}
    assert len(ids) == 3 and plan.experiments[0].num_tokens == plan.experiments[1].num_tokens


def test_design_arguments_are_checked():
    with pytest.raises(TypeError, match="design must be None or SweepDesign"):
        SweepPlanner(1e15, 1e17, 3, design=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="belong to the design"):
        SweepPlanner(1e15, 1e17, 3, 5, design=IsoFLOPDesign(5))
    with pytest.raises(ValueError, match="belong to the design"):
        SweepPlanner(1e15, 1e17, 3, design=IsoFLOPDesign(5), size_span=4.0)
    with pytest.raises(TypeError, match="num_model_sizes"):
        SweepPlanner(1e15, 1e17, 3)
    with pytest.raises(ValueError, match="num_model_sizes"):
        SweepPlanner.from_config({"min_flops": 1e15, "max_flops": 1e17, "num_compute_budgets": 3})
