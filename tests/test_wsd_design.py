"""The WSD sweep design (issue 19): trunks shared by cooldown branches, planned, saved and costed."""

from __future__ import annotations

import json
import math

import pytest

from flops_fit import SweepPlanner
from flops_fit.core.experiment import Experiment
from flops_fit.core.trunk import Trunk, cooldown_steps, training_flops
from flops_fit.plan.design import IsoFLOPDesign
from flops_fit.plan.sweep import SweepPlan
from flops_fit.plan.wsd import WSDDesign

BUDGETS = [1e15, 2e15, 4e15, 8e15]


def _plan(design: object = "wsd", **kwargs: object) -> SweepPlan:
    sizes = 5 if design is None or isinstance(design, (str, dict)) else None
    planner = SweepPlanner.from_budgets(
        BUDGETS, sizes, batch_size=8, tokens_per_sample=128, design=design, **kwargs
    )
    return planner.plan()


def test_sizes_are_shared_so_trunks_are_fewer_than_points() -> None:
    plan = _plan()
    assert plan.trunks and len(plan.trunks) < len(plan)
    assert all(e.is_branch for e in plan)
    for t in plan.trunks:
        branches = [e for e in plan if e.trunk_id == t.trunk_id]
        assert {e.num_params for e in branches} == {t.num_params}
        assert t.branch_steps == tuple(sorted({e.branch_step for e in branches}))
        assert t.num_steps == max(t.branch_steps)
        assert 0 < t.warmup_steps < min(t.branch_steps)
    # every budget keeps its IsoFLOP slice of 5 sizes with D = C / (6 N)
    for c in BUDGETS:
        runs = [e for e in plan if e.compute_budget == c]
        assert len(runs) == 5
        assert all(math.isclose(e.planned_flops, c, rel_tol=0.01) for e in runs)


def test_branch_leaves_its_trunk_a_cooldown_before_its_end() -> None:
    plan = _plan(design=WSDDesign(5, cooldown=0.1, decay_shape="1-sqrt"))
    for e in plan:
        assert e.branch_step == e.num_steps - cooldown_steps(e.num_steps, 0.1)
    assert {t.decay_shape for t in plan.trunks} == {"1-sqrt"}


def test_costs_split_over_branches_add_up_to_trunks_and_cooldowns() -> None:
    plan = _plan()
    by_hand = 0.0
    for t in plan.trunks:
        by_hand += t.planned_flops
        by_hand += math.fsum(e.flops_per_token * (e.num_steps - e.branch_step) * e.tokens_per_step
                             for e in plan if e.trunk_id == t.trunk_id)  # fmt: skip
    assert math.isclose(plan.total_flops, by_hand, rel_tol=1e-12)
    assert plan.total_flops < 0.8 * plan.equivalent_flops
    assert "this design needs" in plan.summary()
    assert set(plan.training_flops) == {e.experiment_id for e in plan}


def test_the_isoflop_plan_is_written_as_before() -> None:
    plan = _plan(design=None)
    d = plan.to_dict()
    assert "trunks" not in d and "trunk_id" not in d["experiments"][0]
    assert "design" not in d["config"]
    assert math.isclose(plan.total_flops, plan.equivalent_flops)
    assert list(plan.to_frame().columns)[-2:] == ["planned_flops", "tokens_per_param"]
    assert "trunk_id" not in plan.to_frame().columns


def test_wsd_plan_round_trips_and_its_config_replans_it(tmp_path) -> None:
    plan = _plan()
    path = plan.save(tmp_path / "sweep.json")
    back = SweepPlan.load(path)
    assert back.experiments == plan.experiments and back.trunks == plan.trunks
    assert plan.config["design"] == {"kind": "wsd", "cooldown": 0.2, "decay_shape": "linear"}
    again = SweepPlanner.from_config(json.loads(json.dumps(plan.config))).plan()
    assert [e.experiment_id for e in again] == [e.experiment_id for e in plan]
    assert isinstance(SweepPlanner.from_config({**plan.config, "design": None}).design, IsoFLOPDesign)


def test_ids_differ_from_the_isoflop_runs_of_the_same_points() -> None:
    iso = {e.experiment_id for e in _plan(design=None)}
    assert not iso & {e.experiment_id for e in _plan()}


@pytest.mark.parametrize(
    ("design", "message"),
    [
        ({"kind": "wsd", "cooldown": 0.7}, "cooldown"),
        ({"kind": "wsd", "shape": "linear"}, "unknown key"),
        ("wsdd", "design must be"),
        ({"kind": "wsd", "decay_shape": "cosine"}, "decay_shape"),
    ],
)
def test_bad_design_is_named(design: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _plan(design=design)


def test_train_config_that_sets_the_cooldown_is_refused() -> None:
    with pytest.raises(ValueError, match="decay_steps"):
        _plan(train_config={"decay_steps": 10})


def test_too_few_steps_for_warmup_and_cooldown_is_refused() -> None:
    planner = SweepPlanner.from_budgets([4e7, 8e7], 3, batch_size=8, tokens_per_sample=128, design="wsd")
    with pytest.raises(ValueError, match="1 warm-up steps, a stable phase and a cooldown"):
        planner.plan()


def _branch(**changes: object) -> dict:
    e = _plan().experiments[0].to_dict()
    return {**e, **changes}


def test_branch_records_are_checked_when_read() -> None:
    good = _branch()
    assert Experiment.from_dict(good).is_branch
    with pytest.raises(ValueError, match="below num_steps"):
        Experiment.from_dict(_branch(branch_step=good["num_steps"]))
    with pytest.raises(ValueError, match="safe file name"):
        Experiment.from_dict(_branch(trunk_id="../x"))
    with pytest.raises(ValueError, match="both trunk_id and branch_step"):
        Experiment.from_dict({k: v for k, v in good.items() if k != "branch_step"})


def test_a_branch_without_its_trunk_is_refused() -> None:
    plan = _plan()
    with pytest.raises(ValueError, match="trunks do not hold"):
        SweepPlan(experiments=plan.experiments, flops=plan.flops, param_count=plan.param_count)
    with pytest.raises(ValueError, match="does not hold"):
        training_flops(plan.experiments, plan.trunks[:1])


def test_trunk_records_are_checked_when_read() -> None:
    t = _plan().trunks[0].to_dict()
    assert Trunk.from_dict(t) == _plan().trunks[0]
    with pytest.raises(ValueError, match="ascend"):
        Trunk.from_dict({**t, "branch_steps": [*list(reversed(t["branch_steps"])), t["num_steps"] + 1]})
    with pytest.raises(ValueError, match="safe file name"):
        Trunk.from_dict({**t, "trunk_id": "a/b"})


def test_plan_command_and_ff_plan_config_take_the_design(tmp_path, capsys) -> None:
    from flops_fit.app.cli import main
    from flops_fit.app.stages import default_config, run_plan

    args = [
        "plan",
        "--budgets",
        "1e15,2e15,4e15",
        "--sizes",
        "5",
        "--batch-size",
        "8",
        "--tokens-per-sample",
        "128",
    ]
    assert main([*args, "--design", "wsd", "--cooldown", "0.1", "--out", str(tmp_path / "cli")]) == 0
    plan = SweepPlan.load(tmp_path / "cli" / "sweep.json")
    assert plan.trunks and plan.config["design"]["cooldown"] == 0.1
    assert "this design needs" in capsys.readouterr().out
    assert main([*args, "--cooldown", "0.1", "--out", str(tmp_path / "bad")]) == 2
    assert "--cooldown: only with --design wsd" in capsys.readouterr().err
    config = default_config(
        "planner",
        {
            "compute.budgets": BUDGETS,
            "sweep.num_model_sizes": 5,
            "sweep.design": "wsd",
            "output.dir": str(tmp_path / "ff"),
        },
    )
    run_plan(config)
    assert SweepPlan.load(tmp_path / "ff" / "sweep.json").trunks


def test_validation_runs_retrain_the_branch_nearest_the_optimum_of_the_largest_budgets() -> None:
    plan = _plan(design={"kind": "wsd", "validate": 2})
    checks = [e for e in plan if e.validates is not None]
    centres = dict(plan.expected_optimum)
    assert sorted(e.compute_budget for e in checks) == BUDGETS[-2:]
    for e in checks:
        branch = plan.get(e.validates)
        assert e.trunk_id is None and branch.is_branch
        assert (e.num_params, e.num_tokens, e.compute_budget) == (
            branch.num_params,
            branch.num_tokens,
            branch.compute_budget,
        )
        slice_ = [b for b in plan if b.is_branch and b.compute_budget == e.compute_budget]
        assert branch == min(slice_, key=lambda b: abs(math.log(b.num_params / centres[e.compute_budget])))
    assert plan.config["design"]["validate"] == 2
    assert SweepPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).experiments == plan.experiments
    with pytest.raises(ValueError, match="more validation runs than the 4 budgets"):
        _plan(design={"kind": "wsd", "validate": 5})
    with pytest.raises(ValueError, match="not a branch of this plan"):
        SweepPlan(experiments=checks, flops=plan.flops, param_count=plan.param_count)


def test_cost_estimate_counts_what_the_design_trains() -> None:
    plan = _plan()
    cost = plan.estimate_cost(flops_per_second=1e12)
    assert math.isclose(cost.total_flops, plan.total_flops) and cost.total_flops < plan.equivalent_flops
    assert math.isclose(cost.total_seconds, plan.total_flops / 1e12)
