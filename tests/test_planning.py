"""SweepPlanner: budgets, sizes, tokens, stable ids, serialisation, cost, and errors before any compute."""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from flops_fit.analysis.power_law import PowerLawFit
from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.plan.cost import CostEstimate
from flops_fit.plan.flops import TransformerShape, count_params
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec, PowerLawLR
from flops_fit.plan.sweep import SweepPlan

VOCAB, SEQ = 64, 16


class TinyLM(nn.Module):
    """One pre-norm attention + MLP block per layer; ``d_model`` sets the width."""

    def __init__(
        self, d_model: int, num_layers: int = 1, num_heads: int = 2, vocab_size: int = VOCAB
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(SEQ, d_model)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln": nn.LayerNorm(d_model),
                    "qkv": nn.Linear(d_model, 3 * d_model),
                    "out": nn.Linear(d_model, d_model),
                    "up": nn.Linear(d_model, 4 * d_model),
                    "down": nn.Linear(4 * d_model, d_model),
                }
            )
            for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, s = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(s, device=idx.device))
        for layer in self.layers:
            h = layer["ln"](x)
            q, k, v = layer["qkv"](h).view(b, s, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, -1)
            x = x + layer["out"](a)
            x = x + layer["down"](F.gelu(layer["up"](x)))
        return self.head(x)


class Constant(nn.Module):
    """Its 'dropout' does not change the parameter count."""

    def __init__(self, dropout: float, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lm_sample(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, VOCAB, (batch, SEQ))
    return x, torch.roll(x, -1, dims=1)


def lm_shape(model: TinyLM) -> TransformerShape:
    d = model.wte.embedding_dim
    return TransformerShape(
        d_model=d,
        num_layers=len(model.layers),
        num_heads=model.num_heads,
        d_ff=4 * d,
        vocab_size=VOCAB,
        seq_len=SEQ,
    )


def lm_spec(**kwargs) -> ModelSpec:
    base = {
        "model_cls": TinyLM,
        "size_param": "d_model",
        "model_kwargs": {"num_layers": 2},
        "size_multiple": 8,
    }
    return ModelSpec(**{**base, "sample_fn": lm_sample, "shape_fn": lm_shape, **kwargs})


def lm_planner(**kwargs) -> SweepPlanner:
    base = {
        "min_flops": 1e11,
        "max_flops": 1e13,
        "num_compute_budgets": 3,
        "num_model_sizes": 5,
        "batch_size": 4,
    }
    return SweepPlanner(**{**base, "model": lm_spec(), **kwargs})


# ---------------------------------------------------------------------------------------------------
# parameter space
# ---------------------------------------------------------------------------------------------------


def test_parameter_space_seed_usage():
    plan = SweepPlanner(min_flops=1e17, max_flops=1e19, num_compute_budgets=3, num_model_sizes=4).plan()
    assert len(plan) == 12
    assert plan.compute_budgets == (1e17, 1e18, 1e19)
    assert plan.flops == "6nd"
    for c, n_star in plan.expected_optimum:
        assert n_star == pytest.approx(math.sqrt(c / (6 * 20)))
        ns = np.array([e.num_params for e in plan if e.compute_budget == c], dtype=float)
        assert np.exp(np.log(ns).mean()) == pytest.approx(n_star, rel=1e-6)  # centred in log space
        assert ns.min() == pytest.approx(n_star / 8, rel=1e-6)
        assert ns.max() == pytest.approx(n_star * 8, rel=1e-6)
    for e in plan:
        assert e.flops_per_token == 6 * e.num_params
        assert e.num_tokens % e.tokens_per_step == 0
        assert abs(e.planned_flops - e.compute_budget) <= e.flops_per_token * e.tokens_per_step / 2
        assert e.size_value is None and e.epochs is None and e.learning_rate is None
    ids = [e.experiment_id for e in plan]
    assert len(set(ids)) == len(ids) and all(len(i) == 12 and int(i, 16) >= 0 for i in ids)


@settings(max_examples=40, deadline=None)
@given(
    lo=st.floats(1e12, 1e20),
    decades=st.floats(0.1, 4),
    k=st.integers(1, 6),
    n=st.integers(3, 9),
    span=st.floats(1.5, 20),
)
def test_parameter_space_properties(lo, decades, k, n, span):
    hi = lo * 10**decades if k > 1 else lo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = SweepPlanner(lo, hi, k, n, size_span=span).plan()
    budgets = plan.compute_budgets
    assert len(budgets) == k and budgets[0] == lo and budgets[-1] == hi
    if k > 2:
        # interior budgets are rounded to 6 significant digits
        assert np.allclose(np.diff(np.log(budgets)), np.log(hi / lo) / (k - 1), rtol=0, atol=2e-5)
    for c, n_star in plan.expected_optimum:
        ns = [e.num_params for e in plan if e.compute_budget == c]
        assert len(ns) == n and min(ns) < n_star < max(ns)
        assert max(ns) / min(ns) == pytest.approx(span**2, rel=1e-3)
    assert len({e.experiment_id for e in plan}) == len(plan)
    assert all(e.num_steps >= 1 for e in plan)


def test_budget_ids_survive_adding_budgets_and_change_with_definition():
    three = SweepPlanner(1e17, 1e19, 3, 4).plan()
    five = SweepPlanner(1e17, 1e19, 5, 4).plan()
    ids5 = {e.experiment_id: e for e in five}
    for e in three:  # 1e17, 1e18, 1e19 are in both plans: same runs, same ids
        assert ids5[e.experiment_id] == e
    base = {e.experiment_id for e in three}
    for change in (
        {"lr_rule": 3e-4},
        {"data_id": "c4-v2"},
        {"train_config": {"warmup_frac": 0.1}},
        {"seed": 1},
        {"batch_size": 64},
        {"dataset_tokens": 1e12},
    ):
        other = {e.experiment_id for e in SweepPlanner(1e17, 1e19, 3, 4, **change).plan()}
        assert not other & base, change


def test_train_config_fields_that_do_not_change_a_result_keep_the_ids():
    base = SweepPlanner(1e17, 1e19, 3, 4, train_config={"lr": 1e-3}).plan()
    # max_epochs is only a limit; micro-batching and workers change how a run runs, not what it computes
    other = SweepPlanner(
        1e17,
        1e19,
        3,
        4,
        train_config={"lr": 1e-3, "max_epochs": 4.0, "micro_batch_size": 2, "num_workers": 2},
    ).plan()
    assert [e.experiment_id for e in other] == [e.experiment_id for e in base]
    assert other.config["train_config"]["max_epochs"] == 4.0  # still recorded, for the runner
    changed = SweepPlanner(1e17, 1e19, 3, 4, train_config={"lr": 1e-3, "divergence_factor": 5.0}).plan()
    assert not {e.experiment_id for e in changed} & {e.experiment_id for e in base}


@pytest.mark.parametrize(
    "config, error, match",
    [
        (
            {"warmup": 100},
            ValueError,
            r"train_config has unknown TrainConfig field\(s\) \['warmup'\]; allowed: ",
        ),
        ({"lr": -1.0}, ValueError, r"train_config: TrainConfig.lr must be a number"),
    ],
)
def test_train_config_is_checked_against_train_config_fields(config, error, match):
    with pytest.raises(error, match=match):
        SweepPlanner(1e17, 1e19, 3, 4, train_config=config)


def test_experiment_id_is_canonical():
    a = experiment_id({"compute_budget": 1e18, "x": [1, 2.0], "cfg": {"b": 1, "a": 2}})
    b = experiment_id({"cfg": {"a": 2, "b": 1}, "x": [1, 2.0], "compute_budget": 1e18 * (1 + 1e-15)})
    assert a == b
    assert experiment_id({"compute_budget": 1.1e18}) != experiment_id({"compute_budget": 1e18})
    # a number is hashed by value, however it is written (a YAML 0 and a Python 0.0 are one run)
    for same in (
        (0, 0.0),
        (1, 1.0),
        (64, 64.0),
        (1.0, 1.0000000000000002),
        (0.1, 0.1 + 1e-17),
    ):
        assert experiment_id({"x": same[0]}) == experiment_id({"x": same[1]}), same
    assert experiment_id({"x": 1}) != experiment_id({"x": 1.5}) != experiment_id({"x": "1"})
    assert experiment_id({"seed": 10**13 + 1}) != experiment_id({"seed": 10**13 + 2})  # ints: exact


def test_prior_recentres_sweep():
    class Fit:
        def optimal(self, compute):
            return {"optimal_params": 0.1 * compute**0.5}

    plan = SweepPlanner(1e18, 1e20, 3, 5, prior=Fit()).plan()
    for c, n_star in plan.expected_optimum:
        assert n_star == pytest.approx(0.1 * c**0.5)
        ns = sorted(e.num_params for e in plan if e.compute_budget == c)
        assert ns[2] == pytest.approx(n_star, rel=1e-6)
    fit = PowerLawFit(k=0.1, a=0.5, r_squared=1.0)
    assert SweepPlanner(1e18, 1e20, 3, 5, prior=fit).plan().expected_optimum == plan.expected_optimum
    assert "Fit" in plan.config["prior"]
    with pytest.raises(TypeError, match="prior"):
        SweepPlanner(1e18, 1e20, 3, 5, prior=42)
    with pytest.raises(ValueError, match="positive"):
        SweepPlanner(1e18, 1e20, 3, 5, prior=lambda c: -1.0).plan()


def test_lr_rule_recorded_per_experiment():
    rule = PowerLawLR(base_lr=1e-3, base_params=1e6, exponent=0.5)
    plan = SweepPlanner(1e15, 1e17, 2, 3, lr_rule=rule).plan()
    for e in plan:
        assert e.learning_rate == pytest.approx(1e-3 * (e.num_params / 1e6) ** -0.5)
    as_mapping = SweepPlanner(
        1e15, 1e17, 2, 3, lr_rule={"base_lr": 1e-3, "base_params": 1e6, "exponent": 0.5}
    )
    assert [e.experiment_id for e in as_mapping.plan()] == [e.experiment_id for e in plan]
    assert plan.config["lr_rule"] == {"base_lr": 1e-3, "base_params": 1e6, "exponent": 0.5}
    const = SweepPlanner(1e15, 1e17, 2, 3, lr_rule=2e-4).plan()
    assert {e.learning_rate for e in const} == {2e-4}
    custom = SweepPlanner(1e15, 1e17, 2, 3, lr_rule=lambda n: 0.01 / math.log(n)).plan()
    assert all(e.learning_rate == pytest.approx(0.01 / math.log(e.num_params)) for e in custom)
    with pytest.raises(ValueError, match="unknown key"):
        SweepPlanner(1e15, 1e17, 2, 3, lr_rule={"base_lr": 1e-3, "alpha": 0.5})
    with pytest.raises(ValueError, match="positive"):
        SweepPlanner(1e15, 1e17, 2, 3, lr_rule=lambda n: -1.0).plan()


def test_repeated_data_is_flagged():
    with pytest.warns(UserWarning, match="more than one pass"):
        plan = SweepPlanner(1e17, 1e19, 3, 4, dataset_tokens=5e9).plan()
    repeated = [e for e in plan if e.repeats_data]
    assert repeated and all(e.epochs == pytest.approx(e.num_tokens / 5e9) for e in plan)
    assert all(e.epochs > 1 for e in repeated)
    assert "repeat data" in plan.summary()
    assert plan.to_frame()["epochs"].max() == pytest.approx(max(e.epochs for e in plan))


# ---------------------------------------------------------------------------------------------------
# serialisation and reporting
# ---------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    plan = SweepPlanner(
        1e15, 1e17, 3, 3, lr_rule=1e-3, data_id="owt", train_config={"weight_decay": 0.1}, dataset_tokens=1e12
    ).plan()
    path = plan.save(tmp_path / "sub" / "plan.json")
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and len(raw["experiments"]) == 9 and raw["flops"] == "6nd"
    loaded = SweepPlan.load(path)
    assert loaded.experiments == plan.experiments
    assert loaded.config == plan.config and loaded.expected_optimum == plan.expected_optimum
    again = SweepPlanner.from_config(loaded.config).plan()
    assert again.experiments == plan.experiments
    assert plan.get(plan.experiments[0].experiment_id) == plan.experiments[0]
    with pytest.raises(KeyError):
        plan.get("nope")


def test_load_never_imports_the_model_class(tmp_path):
    spec = ModelSpec(
        "torch.nn.modules.linear:Linear",
        "out_features",
        {"in_features": 8},
        size_values=[4, 8, 16, 32, 64, 128, 256],
    )
    plan = SweepPlanner(1e7, 1e8, 2, 3, model=spec, batch_size=1, tokens_per_sample=1, size_span=4).plan()
    data = plan.to_dict()
    data["model"]["model_cls"] = "no_such_package_xyz.models:Net"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    loaded = SweepPlan.load(path)  # no import happens here
    assert loaded.model is not None and loaded.model.model_cls == "no_such_package_xyz.models:Net"
    with pytest.raises(ImportError, match="no_such_package_xyz"):
        loaded.model.resolve()
    good = SweepPlan.load(plan.save(tmp_path / "good.json"))
    assert good.model.resolve() is nn.Linear
    e = good.experiments[0]
    assert good.model.build(e.size_value).out_features == e.size_value


def test_load_rejects_other_versions(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"version": 99, "experiments": []}))
    with pytest.raises(ValueError, match="version 99"):
        SweepPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid plan"):
        SweepPlan.load(path)
    with pytest.raises(ValueError, match="missing field"):
        Experiment.from_dict({"experiment_id": "x"})


def test_frame_and_summary():
    plan = SweepPlanner(1e17, 1e19, 3, 4, lr_rule=1e-3).plan()
    frame = plan.to_frame()
    assert len(frame) == 12
    expected = {"experiment_id", "compute_budget", "num_params", "num_tokens", "flops_per_token", "epochs"}
    expected |= {"learning_rate", "batch_size", "planned_flops", "tokens_per_param", "flops", "seed"}
    assert expected <= set(frame.columns)
    text = plan.summary()
    assert "12 experiments" in text and plan.experiments[-1].experiment_id in text and "'6nd'" in text


def test_cost_without_calibration():
    plan = SweepPlanner(1e17, 1e19, 3, 4).plan()
    est = plan.estimate_cost()
    assert isinstance(est, CostEstimate) and est.method == "uncalibrated" and est.total_seconds is None
    assert est.total_flops == pytest.approx(sum(e.planned_flops for e in plan))
    assert est.total_flops == pytest.approx(4 * (1e17 + 1e18 + 1e19), rel=1e-6)
    assert "12 experiments" in str(est) and "not calibrated" in str(est)
    fixed = plan.estimate_cost(flops_per_second=1e15)
    assert fixed.total_seconds == pytest.approx(est.total_flops / 1e15)
    assert str(fixed).endswith("~12.3 h at an assumed 1e+15 FLOP/s")
    with pytest.raises(ValueError, match="flops_per_second"):
        plan.estimate_cost(flops_per_second=0)


# ---------------------------------------------------------------------------------------------------
# with a model
# ---------------------------------------------------------------------------------------------------


def test_model_sizes_snap_to_candidates():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = lm_planner().plan()
    spec = plan.model
    assert plan.param_count == "non_embedding" and plan.config["tokens_per_sample"] == SEQ

    @functools.cache
    def n_of(d_model: int) -> int:
        with torch.device("meta"):
            return count_params(TinyLM(d_model, num_layers=2), "non_embedding")

    for c, n_star in plan.expected_optimum:
        group = [e for e in plan if e.compute_budget == c]
        assert 3 <= len(group) <= 5
        assert len({e.size_value for e in group}) == len(group)
        ns = [e.num_params for e in group]
        assert min(ns) < n_star < max(ns)  # the expected optimum is bracketed
        for e in group:
            assert e.size_value % 8 == 0
            assert e.num_params == n_of(e.size_value)
            assert e.flops_per_token == 6 * e.num_params
        # each log-spaced target (N*/8 .. 8 N*) maps to the multiple of 8 whose N is nearest in log space
        targets = n_star * np.exp(np.linspace(math.log(1 / 8), math.log(8), 5))
        chosen = {e.size_value for e in group}
        for t in targets:
            best = min(range(8, 1025, 8), key=lambda v: abs(math.log(n_of(v) / t)))
            assert best in chosen
    # the centre is where D/N = 20 on the candidates' N(v) curve
    for c, n_star in plan.expected_optimum:
        assert n_star == pytest.approx(math.sqrt(c / (6 * 20)), rel=0.02)
    assert spec.model_path == f"{__name__}:TinyLM"


def test_size_values_respected_and_ids_shared_when_recentred():
    values = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    spec = lm_spec(size_values=values, size_multiple=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = lm_planner(model=spec).plan()
        shifted = {c: n * 1.3 for c, n in a.expected_optimum}
        b = lm_planner(model=spec, prior=lambda c: shifted[c]).plan()
    assert {e.size_value for e in a} <= set(values)
    common = {(e.compute_budget, e.size_value) for e in a} & {(e.compute_budget, e.size_value) for e in b}
    assert common
    ids_a = {(e.compute_budget, e.size_value): e.experiment_id for e in a}
    ids_b = {(e.compute_budget, e.size_value): e.experiment_id for e in b}
    assert all(ids_a[k] == ids_b[k] for k in common)


def test_total_param_count_changes_n_not_flops():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ne = lm_planner().plan()
        tot = lm_planner(model=lm_spec(param_count="total")).plan()
    assert tot.param_count == "total"
    e = tot.experiments[0]
    with torch.device("meta"):
        model = TinyLM(e.size_value, num_layers=2)
    assert e.num_params == count_params(model, "total")
    assert e.flops_per_token == 6 * count_params(model, "non_embedding")  # 6ND always uses non-embedding N
    assert {x.experiment_id for x in ne}.isdisjoint(x.experiment_id for x in tot)


@pytest.mark.parametrize("flops", ["chinchilla", "measured"])
def test_other_conventions(flops):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = lm_planner(flops=flops).plan()
    assert plan.flops == flops and all(e.flops == flops for e in plan)
    for e in plan:
        with torch.device("meta"):
            model = TinyLM(e.size_value, num_layers=2)
        shape = lm_shape(model)
        attention = 12.0 * shape.num_layers * SEQ * shape.d_model
        if flops == "chinchilla":
            assert e.flops_per_token == pytest.approx(shape.flops_per_token())
        else:  # matmuls: Linear weights + attention, no embeddings, no softmax
            linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
            assert e.flops_per_token == pytest.approx(6.0 * linear + attention)
        assert abs(e.planned_flops - e.compute_budget) <= e.flops_per_token * e.tokens_per_step / 2


def test_callable_convention():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = lm_planner(flops=lambda model, sample: 10.0 * count_params(model)).plan()
    assert plan.flops.startswith("callable:")
    assert all(e.flops_per_token == 10.0 * e.num_params for e in plan)


def test_calibrated_cost_on_cpu():
    spec = lm_spec(model_kwargs={"num_layers": 1}, size_values=[8, 16, 32, 64, 128], size_multiple=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = SweepPlanner(1e10, 1e11, 2, 3, model=spec, batch_size=2, size_span=4).plan()
    state = torch.random.get_rng_state()
    est = plan.estimate_cost("cpu", steps=2)
    assert torch.equal(state, torch.random.get_rng_state())  # calibration does not disturb the caller's RNG
    assert est.method == "calibrated" and est.device == "cpu" and len(est.calibration) == 2
    assert est.calibration[0].num_params < est.calibration[1].num_params
    assert all(p.seconds_per_step > 0 and p.flops_per_second > 0 for p in est.calibration)
    assert est.total_seconds == pytest.approx(est.per_experiment["seconds"].sum())
    assert "on cpu (calibrated" in str(est)


def test_deterministic_and_from_config_with_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = lm_planner(flops="measured", seed=3).plan()
        b = SweepPlanner.from_config(a.config, model=lm_spec()).plan()
    assert a.experiments == b.experiments
    with pytest.raises(ValueError, match="unknown planner config key"):
        SweepPlanner.from_config({**a.config, "num_sizes": 3})


# ---------------------------------------------------------------------------------------------------
# bad input, caught before anything runs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_flops": 0}, "min_flops"),
        ({"min_flops": -1e17}, "min_flops"),
        ({"max_flops": 1e16}, "max_flops"),
        ({"num_model_sizes": 2}, "parabola"),
        ({"max_flops": 1e17}, "num_compute_budgets=1"),
        ({"num_compute_budgets": 1}, "min_flops .* != max_flops"),
        ({"size_span": 1.0}, "size_span"),
        ({"size_span": (0.5, 0.9)}, "bracket"),
        ({"tokens_per_param": 0}, "tokens_per_param"),
        ({"flops": "kaplan"}, "flops must be one of"),
        ({"flops": "chinchilla"}, "needs a model"),
        ({"flops": "measured"}, "needs a model"),
    ],
)
def test_bad_planner_input(kwargs, match):
    args = {"min_flops": 1e17, "max_flops": 1e19, "num_compute_budgets": 3, "num_model_sizes": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        SweepPlanner(**args)


def test_bad_types():
    with pytest.raises(TypeError, match="min_flops"):
        SweepPlanner("1e17", 1e19, 3, 4)
    with pytest.raises(TypeError, match="ModelSpec"):
        SweepPlanner(1e17, 1e19, 3, 4, model=TinyLM)
    with pytest.raises(TypeError, match="JSON"):
        ModelSpec(TinyLM, "d_model", {"dtype": torch.float32})
    with pytest.raises(TypeError, match="class"):
        ModelSpec(TinyLM(8), "d_model")


def test_budget_too_small_for_one_step():
    with pytest.raises(ValueError, match="one optimiser step"):
        SweepPlanner(1e6, 1e8, 3, 4, batch_size=1024, tokens_per_sample=2048).plan()


def test_size_param_not_accepted_shows_signature():
    with pytest.raises(TypeError, match=r"'width'.*signature is TinyLM\(d_model"):
        SweepPlanner(1e11, 1e13, 3, 4, model=ModelSpec(TinyLM, "width"))
    with pytest.raises(TypeError, match="n_layer"):
        SweepPlanner(1e11, 1e13, 3, 4, model=ModelSpec(TinyLM, "d_model", {"n_layer": 2}))
    with pytest.raises(ValueError, match="size parameter"):
        ModelSpec(TinyLM, "d_model", {"d_model": 8})


def test_params_must_grow_with_size_param():
    spec = ModelSpec(Constant, "dropout", size_values=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="does not grow with 'dropout'"):
        SweepPlanner(1e9, 1e10, 2, 3, model=spec).plan()


def test_too_few_distinct_sizes():
    spec = lm_spec(size_values=[8, 256, 512], size_multiple=None)
    with pytest.raises(ValueError, match="a parabola needs 3"):
        lm_planner(model=spec).plan()


def test_model_spec_checks():
    with pytest.raises(ValueError, match="at least 3"):
        ModelSpec(TinyLM, "d_model", size_values=[8, 16])
    with pytest.raises(ValueError, match="multiples"):
        ModelSpec(TinyLM, "d_model", size_values=[8, 12, 16], size_multiple=8)
    with pytest.raises(ValueError, match="size_multiple"):
        ModelSpec(TinyLM, "d_model", size_multiple=0)
    with pytest.raises(ValueError, match="param_count"):
        ModelSpec(TinyLM, "d_model", param_count="all")
    with pytest.raises(ValueError, match="shape"):
        SweepPlanner(1e11, 1e13, 3, 4, model=ModelSpec(TinyLM, "d_model"), flops="chinchilla")
    with pytest.raises(ValueError, match="sample_fn"):
        SweepPlanner(1e11, 1e13, 3, 4, model=ModelSpec(TinyLM, "d_model"), flops="measured")
    spec = lm_spec()
    assert ModelSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    with pytest.raises(ValueError, match="unknown key"):
        ModelSpec.from_dict({**spec.to_dict(), "extra": 1})


def make_lm(width: int, depth: int = 1) -> TinyLM:
    """A factory function works as well as a class."""
    return TinyLM(d_model=width, num_layers=depth)


def test_factory_function_as_model():
    spec = ModelSpec(make_lm, "width", {"depth": 2}, size_multiple=8)
    assert spec.model_path == f"{__name__}:make_lm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = SweepPlanner(1e11, 1e13, 3, 5, model=spec, batch_size=4, tokens_per_sample=SEQ).plan()
        same = lm_planner().plan()
    # same architecture, so the same sizes; the model identity differs, so do the ids
    assert [e.size_value for e in plan] == [e.size_value for e in same]
    assert [e.num_params for e in plan] == [e.num_params for e in same]
    assert {e.experiment_id for e in plan}.isdisjoint(e.experiment_id for e in same)
    assert isinstance(ModelSpec(f"{__name__}:make_lm", "width").resolve()(8), TinyLM)


def test_config_keys_match_the_signature():
    params = set(inspect.signature(SweepPlanner).parameters)
    assert set(SweepPlanner.CONFIG_KEYS) == params
    assert set(SweepPlanner(1e17, 1e19, 3, 4).plan().config) == params


class Picky(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        if width % 3:
            raise ValueError("width must be a multiple of 3")
        self.lin = nn.Linear(width, width)


def test_rejected_size_value_suggests_a_fix():
    with pytest.raises(ValueError, match=r"rejects width=1 .*size_multiple"):
        SweepPlanner(1e9, 1e10, 2, 3, model=ModelSpec(Picky, "width")).plan()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = SweepPlanner(1e9, 1e10, 2, 3, model=ModelSpec(Picky, "width", size_multiple=3)).plan()
    assert all(e.size_value % 3 == 0 for e in plan)


def test_from_budgets_plans_exactly_the_given_budgets():
    from flops_fit import SweepPlanner

    plan = SweepPlanner.from_budgets([3e16, 1e16, 1e17, 1e16], 5).plan()
    assert plan.compute_budgets == (1e16, 3e16, 1e17)
    assert plan.config["budgets"] == [1e16, 3e16, 1e17]
    with pytest.raises(ValueError, match="positive finite"):
        SweepPlanner.from_budgets([1e16, float("nan")], 5)
    with pytest.raises(ValueError, match="empty"):
        SweepPlanner.from_budgets([], 5)
    with pytest.raises(ValueError, match="agree"):
        SweepPlanner(1e16, 1e18, 3, 5, budgets=[1e16, 1e17])


def test_model_spec_from_dict_names_missing_keys():
    from flops_fit.plan.spec import ModelSpec

    with pytest.raises(ValueError, match="model_cls"):
        ModelSpec.from_dict({"size_param": "width"})
