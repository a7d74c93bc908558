"""Result: fitting, predictions, tables, agreement between approaches, back-test, save/load."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from torch import nn

from flops_fit.analysis import fit_isoflop, fit_parametric
from flops_fit.core.runs import runs_from_arrays
from flops_fit.plan.flops import count_params
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.analyzer import ScalingLawAnalyzer
from flops_fit.report.result import Result, default_budgets, runs_to_records
from synth import TRUE, isoflop_sweep, true_a

BUDGETS = (1e17, 1e18, 1e19, 1e20)


def make_runs(budgets=BUDGETS, sizes=7, seed=0, p=TRUE, curves=True) -> pd.DataFrame:
    """A synthetic IsoFLOP sweep from a known law; each run's curve follows the same law along its tokens."""
    n, d, l, c = isoflop_sweep(budgets=budgets, sizes=sizes, seed=seed, p=p)
    runs = runs_from_arrays(n, d, l, c, ids=[f"exp-{i:03d}" for i in range(n.size)])
    if curves:
        runs["curve"] = [
            [
                [float(t), float(p["E"] + p["A"] / ni ** p["alpha"] + p["B"] / t ** p["beta"])]
                for t in np.geomspace(di / 30, di, 12)
            ]
            for ni, di in zip(n, d, strict=True)
        ]
    return runs


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture(scope="module")
def result(runs) -> Result:
    return Result.from_runs(runs, bootstrap=20, seed=0)


class Wide(nn.Module):
    """A model whose parameter count grows as width^2 (built on the meta device by the size search)."""

    def __init__(self, width: int, depth: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))


# ----------------------------------------------------------------------------------------------------
# Construction


def test_from_runs_fits_every_approach_and_recovers_the_exponent(result):
    assert list(result.fits) == ["envelope", "isoflop", "parametric"]
    # several candidates: the rolling back-test chose the primary one, the smallest score (ties: the order)
    sel = result.selection
    assert sel.rule == "backtest" and result.primary == sel.primary and result.last_backtest is not None
    assert (
        set(sel.scores) == set(result.candidates)
        and sel.scores[result.primary] <= min(sel.scores.values()) + 0.01
    )
    assert "back-test error at" in sel.reason
    assert result.fit_options == {"bootstrap": 20, "seed": 0, "exclude_outliers": True}
    for name in ("isoflop", "parametric"):
        lo, hi = (
            result.compare_approaches().set_index(["quantity", "approach"]).loc[("a", name), ["lo", "hi"]]
        )
        assert lo <= true_a() <= hi, name
    assert not any("disagree" in w for w in result.warnings)


def test_from_runs_accepts_a_results_file(tmp_path, runs):
    path = tmp_path / "runs.csv"
    runs.drop(columns="curve").to_csv(path, index=False)
    res = Result.from_runs(path, approach="isoflop")
    assert list(res.fits) == ["isoflop"]


def test_envelope_skipped_without_curves_but_raises_when_asked_alone(runs):
    plain = runs.drop(columns="curve")
    res = Result.from_runs(plain)
    assert "envelope" not in res.fits and "curve" in res.skipped["envelope"]
    assert any(w.startswith("Approach 1 (envelope) not fitted") for w in res.warnings)
    with pytest.raises(ValueError, match="loss curves"):
        Result.from_runs(plain, approach="envelope")


def test_an_approach_that_cannot_fit_is_skipped_with_its_reason():
    one_budget = make_runs(budgets=(1e18,), sizes=9, curves=True)
    res = Result.from_runs(one_budget, approach="all")
    assert list(res.fits) == ["envelope"] and res.primary == "envelope"
    assert "2 or more compute budgets" in res.skipped["isoflop"]
    assert "one IsoFLOP line" in res.skipped["parametric"]  # N and D move together on it
    assert any("Approach 2 (IsoFLOP) not fitted" in w for w in res.warnings)
    with pytest.raises(ValueError, match="4 or more compute budgets"):
        res.backtest()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fits": {}}, ValueError, "at least one fitted approach"),
        ({"fits": [1]}, TypeError, "mapping"),
        ({"fits": {"isoflop": "x"}}, TypeError, "IsoFLOPFit"),
        ({"fits": {"approach9": None}}, ValueError, "unknown approach"),
        ({"primary": "envelope"}, ValueError, "was not fitted"),
        ({"budget_rtol": -1}, ValueError, "budget_rtol"),
        ({"plan": "plan.json"}, TypeError, "SweepPlan"),
    ],
)
def test_bad_arguments_are_named(runs, result, kwargs, error, match):
    args = {"fits": {"isoflop": result.fits["isoflop"]}, **kwargs}
    with pytest.raises(error, match=match):
        Result(runs, args.pop("fits"), **args)


def test_from_runs_checks_its_options_before_fitting(runs):
    with pytest.raises(ValueError, match="bootstrap"):
        Result.from_runs(runs, bootstrap=-1)
    with pytest.raises(TypeError, match="seed"):
        Result.from_runs(runs, seed=0.5)
    with pytest.raises(ValueError, match="unknown approach"):
        Result.from_runs(runs, approach="approach7")


# ----------------------------------------------------------------------------------------------------
# Predictions and tables


def test_predict_matches_the_primary_fit(runs, result):
    result = Result.from_runs(runs, bootstrap=20, seed=0, primary="isoflop", variants=False)
    assert result.selection.rule == "asked" and result.last_backtest is None  # forced: no back-test
    pred = result.predict(1e21)
    opt = result.fits["isoflop"].optimal(1e21)
    assert pred["approach"] == "isoflop" and pred["target_compute"] == 1e21
    assert pred["optimal_params"] == pytest.approx(opt["optimal_params"])
    assert pred["expected_loss"] == pytest.approx(opt["optimal_loss"])
    assert pred["tokens_per_param"] == pytest.approx(pred["optimal_tokens"] / pred["optimal_params"])
    lo, hi = pred["optimal_params_ci"]
    assert lo < pred["optimal_params"] < hi
    assert pred["size_value"] is None and pred["size_value_params"] is None
    other = result.predict(1e21, approach="3")
    assert other["approach"] == "parametric"


@pytest.mark.parametrize("bad", [0, -1e20, math.nan, math.inf, "1e21", True, None, [1e21]])
def test_predict_rejects_bad_budgets(result, bad):
    with pytest.raises(ValueError, match="positive finite number of FLOPs"):
        result.predict(bad)


@pytest.mark.parametrize("approach", ["all", ["isoflop", "parametric"]])
def test_methods_of_one_approach_refuse_several(result, approach):
    for call in (
        lambda: result.predict(1e21, approach=approach),
        lambda: result.chinchilla_table(approach=approach),
    ):
        with pytest.raises(
            ValueError, match=r"approach must name one fitted approach, got .*; use one of \["
        ):
            call()


def wide_params(width: int, depth: int = 4) -> int:
    return depth * (width * width + width)


def test_predict_names_the_closest_size_of_the_users_model(runs, result):
    assert count_params(Wide(8), "non_embedding") == wide_params(8)
    spec = ModelSpec(Wide, "width", size_multiple=64)
    plan = SweepPlan(experiments=(), flops="6nd", param_count="non_embedding", model=spec)
    res = Result(runs, result.fits, plan=plan)
    pred = res.predict(1e21)
    width = pred["size_value"]
    assert width % 64 == 0
    assert pred["size_value_params"] == wide_params(width)
    target = math.log(pred["optimal_params"])
    gaps = [abs(math.log(wide_params(w)) - target) for w in (width - 64, width, width + 64)]
    assert gaps[1] == min(gaps)
    listed = ModelSpec(Wide, "width", size_values=[64, 128, 256])
    capped = Result(runs, result.fits, plan=SweepPlan((), "6nd", "non_embedding", model=listed)).predict(1e21)
    assert capped["size_value"] == 256  # beyond the listed sizes: the largest one


def test_default_budgets_span_decades_to_100x_beyond_the_largest():
    assert default_budgets([3e16, 2e19]) == [1e17, 1e18, 1e19, 1e20, 1e21]
    assert default_budgets([1e18]) == [1e18, 1e19, 1e20]
    with pytest.raises(ValueError):
        default_budgets([math.nan])


def test_chinchilla_table_and_its_renderings(result):
    table = result.chinchilla_table()
    assert table["compute_budget"].tolist() == [1e17, 1e18, 1e19, 1e20, 1e21, 1e22]
    assert (table["optimal_params_lo"] < table["optimal_params"]).all()
    pred = result.predict(1e21)
    row = table.set_index("compute_budget").loc[1e21]
    assert row["optimal_params"] == pytest.approx(pred["optimal_params"])
    md = result.table_markdown([1e21])
    assert md.startswith("| FLOPs") and "1.00e21" in md and "[" in md
    tex = result.table_latex([1e21], approach="parametric")
    assert r"\begin{tabular}" in tex and "Approach 3" in tex
    with pytest.raises(ValueError, match="unknown approach"):
        result.chinchilla_table(approach="nope")


# ----------------------------------------------------------------------------------------------------
# Agreement and warnings


def test_approaches_that_disagree_beyond_their_intervals_are_called_out(runs):
    n, d, l, c = isoflop_sweep(budgets=BUDGETS, sizes=7, seed=0)
    iso = fit_isoflop(n, d, l, c, bootstrap=20, seed=0)
    other_law = {**TRUE, "alpha": 0.28, "beta": 0.34}  # the same data scale, the opposite allocation
    n2, d2, l2, _ = isoflop_sweep(budgets=BUDGETS, sizes=7, seed=1, p=other_law)
    par = fit_parametric(n2, d2, l2, bootstrap=20, seed=0)
    res = Result(runs.drop(columns="curve"), {"isoflop": iso, "parametric": par})
    notes = [w for w in res.warnings if "disagree" in w]
    assert any("exponent a" in w for w in notes) and any("N_opt at C = 1e+20" in w for w in notes)
    assert "disagree" in res.summary()


def test_approaches_that_disagree_on_the_loss_are_called_out(runs):
    """Same allocation, a loss floor 0.2 nats higher: the exponents agree, L_opt does not."""
    n, d, l, c = isoflop_sweep(budgets=BUDGETS, sizes=7, seed=0)
    iso = fit_isoflop(n, d, l, c, bootstrap=20, seed=0)
    n2, d2, l2, _ = isoflop_sweep(budgets=BUDGETS, sizes=7, seed=1, p={**TRUE, "E": TRUE["E"] + 0.2})
    par = fit_parametric(n2, d2, l2, bootstrap=20, seed=0)
    notes = [w for w in Result(runs.drop(columns="curve"), {"isoflop": iso, "parametric": par}).warnings]
    assert any("disagree on the loss L_opt at C = 1e+20" in w for w in notes)
    assert not any("exponent a" in w for w in notes)


def test_without_intervals_agreement_is_not_judged(runs):
    res = Result.from_runs(runs.drop(columns="curve"), bootstrap=0)
    assert any("not judged for Approach 3 (parametric)" in w for w in res.warnings)


def test_failed_runs_outliers_and_the_flop_convention_are_reported():
    runs = make_runs(sizes=9, curves=False)
    bad = runs.index[(runs["compute_budget"] == 1e19)][4]
    runs.loc[bad, "final_loss"] *= 1.3  # one badly tuned run in the middle of a profile
    extra = pd.DataFrame(
        [
            {"experiment_id": "boom", "compute_budget": 1e19, "num_params": 1e8, "num_tokens": 1.6e10,
             "final_loss": math.nan, "status": "diverged", "error": "loss is nan"},
            {"experiment_id": "oom", "compute_budget": 1e19, "num_params": 2e8, "num_tokens": 8e9,
             "final_loss": math.nan, "status": "failed", "error": "out of memory"},
        ]
    )  # fmt: skip
    runs = pd.concat([runs, extra], ignore_index=True)
    runs["compute_budget"] *= 8 / 6  # budgets counted with another convention than 6ND
    res = Result.from_runs(runs, approach=["isoflop", "parametric"])
    text = "\n".join(res.warnings)
    assert "2 run(s) did not complete (1 failed, 1 diverged)" in text
    assert "excluded 1 run(s) as outliers (1 profile_residual)" in text
    assert "not 6ND FLOPs (median C / (6 N D) = 1.33)" in text
    excluded = res.excluded_runs()
    assert excluded["experiment_id"].tolist() == [runs.loc[bad, "experiment_id"]]
    assert excluded["approaches"].iloc[0] == "isoflop,parametric"


def test_flagged_budgets_are_warned_about():
    runs = make_runs(budgets=(1e17, 1e18, 1e19, 1e20), curves=False)
    n_star = runs[runs["compute_budget"] == 1e20]["num_params"].median()
    runs = runs[
        ~((runs["compute_budget"] == 1e20) & (runs["num_params"] > n_star * 0.99))
    ]  # no larger models
    with pytest.warns(UserWarning, match="left out"):
        res = Result.from_runs(runs, approach="isoflop")
    assert any("edge_large" in w and "extend the sweep" in w for w in res.warnings)


# ----------------------------------------------------------------------------------------------------
# Back-test


def test_backtest_rolls_the_origin_over_the_budgets(result, runs):
    table = result.backtest()
    assert set(table["approach"]) == set(result.candidates)
    assert table["error"].isna().all()
    opt = table[table["kind"] == "optimum"]
    # 4 budgets: one origin (the third budget) predicting the fourth, a decade out
    assert np.allclose(opt["origin_budget"], 1e19) and np.allclose(opt["held_out_budget"], 1e20)
    assert np.allclose(opt["distance"], 10.0) and (opt["fit_budgets"] == 3).all()
    assert (opt["measured_from"] == "IsoFLOP minimum").all()
    assert np.allclose(opt["predicted_params"] / opt["measured_params"] - 1, opt["params_rel_error"])
    assert np.allclose(np.log(opt["predicted_params"] / opt["measured_params"]), opt["params_log_error"])
    # The synthetic law is exact, so every approach extrapolates one decade to within 15% in N_opt.
    base = opt.set_index("approach").loc[list(result.fits)]
    assert (base["params_rel_error"].abs() < 0.15).all()
    assert abs(base.loc["parametric", "loss_rel_error"]) < 0.01
    runs_rows = table[table["kind"] == "runs"]  # Approach 3 also predicts each later run's loss
    assert set(runs_rows["approach"]) <= {"parametric", "parametric:alpha=beta"} and len(runs_rows)
    assert (runs_rows["n_runs"] == 7).all() and (runs_rows["loss_log_error"] < 0.01).all()
    # The measured optimum is the parabola vertex of the held-out budget's runs.
    top = runs[runs["compute_budget"] == 1e20]
    best = top.loc[top["final_loss"].idxmin()]
    assert (opt["measured_loss"] <= best["final_loss"]).all()
    assert opt["measured_params"].iloc[0] == pytest.approx(best["num_params"], rel=0.5)
    assert "Backtest (rolling origin" in result.summary()  # from_runs carries the back-test it chose by


def test_backtest_returns_its_table_and_leaves_the_result_as_it_is(tmp_path, runs):
    res = Result.from_runs(runs, approach="isoflop")
    before = res.summary()
    table = res.backtest()
    assert res.last_backtest is None and res.summary() == before
    out = res.save(tmp_path / "plain", plots=False)
    assert json.loads((out / "result.json").read_text())["backtest"] is None
    carried = res.with_backtest(table)
    assert carried is not res and res.last_backtest is None
    pd.testing.assert_frame_equal(carried.last_backtest, table)
    assert "Backtest" in carried.summary() and "Backtest" not in res.summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.primary = "parametric"


# ----------------------------------------------------------------------------------------------------
# Text, HTML, figures


def test_summary_and_repr(result):
    text = result.summary()
    for needle in (
        "Approach 1 (envelope)",
        "Approach 2 (IsoFLOP)",
        "Approach 3 (parametric)",
        "a = 0.4",
        "Chinchilla table",
        "| FLOPs",
        "Warnings",
        "20 bootstrap resamples",
        "L(N, D) = E + A / N^alpha",
    ):
        assert needle in text, needle  # fmt: skip
    assert repr(result).startswith("Result(runs=28, usable=28, budgets=4")
    html = result._repr_html_()
    assert html.startswith('<div class="flops-fit-result">') and "<table>" in html and "Approach 2" in html


def test_plot_returns_and_saves_every_supported_figure(tmp_path, result):
    figures = result.plot(save_dir=tmp_path, formats="png")
    assert set(figures) == {"isoflop", "optimal", "parametric", "residuals", "envelope", "backtest"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in figures)


# ----------------------------------------------------------------------------------------------------
# Files


def test_save_and_load_round_trip(tmp_path, runs, result):
    result = result.with_backtest(bootstrap=0)
    out = result.save(tmp_path / "out", plots=False)
    names = {p.name for p in out.iterdir()}
    assert names == {"scaling_laws.json", "result.json", "runs.json", "runs.csv", "chinchilla_table.md"}
    assert "## Approach 3 (parametric)" in (out / "chinchilla_table.md").read_text()
    assert "curve" not in pd.read_csv(out / "runs.csv").columns
    meta = json.loads((out / "result.json").read_text())
    assert meta["primary"] == result.primary and meta["fit_options"]["bootstrap"] == 20
    assert meta["design"]["design"] == "isoflop" and meta["selection"]["rule"] == "backtest"
    back = Result.load(out)
    assert back.output_dir == out and back.primary == result.primary
    assert list(back.fits) == list(result.fits) and list(back.variants) == list(result.variants)
    assert back.selection == result.selection
    for c in (1e18, 1e21):
        for name in result.fits:
            a, b = result.predict(c, approach=name), back.predict(c, approach=name)
            assert (
                a["optimal_params"] == b["optimal_params"]
                and a["optimal_params_ci"] == b["optimal_params_ci"]
            )
    assert runs_to_records(back.runs) == runs_to_records(result.runs)  # curves included, every digit kept
    pd.testing.assert_frame_equal(back.last_backtest, result.last_backtest, check_dtype=False)
    assert back.warnings == result.warnings
    # The laws file is the analyzer's format.
    analysis = ScalingLawAnalyzer(out / "runs.json", out).load_analysis()
    assert analysis.approach == result.primary and set(analysis.fits) == set(result.fits) | {result.primary}
    assert analysis.predict_optimal_size(1e21)["optimal_params"] == pytest.approx(
        result.predict(1e21)["optimal_params"]
    )


def test_save_writes_the_plan_and_figures(tmp_path, runs, result):
    plan = SweepPlan((), "6nd", "non_embedding", model=ModelSpec(Wide, "width", size_multiple=64))
    res = Result(runs, {"isoflop": result.fits["isoflop"]}, plan=plan, output_dir=tmp_path)
    res.save()
    assert (
        (tmp_path / "plan.json").is_file()
        and (tmp_path / "isoflop.png").is_file()
        and (tmp_path / "optimal.svg").is_file()
    )
    back = Result.load(tmp_path)
    assert back.plan is not None and back.plan.model.size_param == "width"
    assert back.predict(1e21)["size_value"] is None  # a saved plan's model is not imported unless trusted
    trusted = Result.load(tmp_path, trust_plan=True)
    assert trusted.predict(1e21)["size_value"] == res.predict(1e21)["size_value"]


def test_load_an_analyzer_directory_with_runs(tmp_path, runs):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(runs_to_records(runs.drop(columns="curve"))))
    analysis = ScalingLawAnalyzer(path, tmp_path / "laws", approach="isoflop").analyze()
    with pytest.raises(FileNotFoundError, match="pass runs="):
        Result.load(tmp_path / "laws")
    res = Result.load(tmp_path / "laws", runs=path)
    assert res.primary == "isoflop"
    assert res.predict(1e21)["optimal_params"] == pytest.approx(
        analysis.predict_optimal_size(1e21)["optimal_params"]
    )


def test_save_and_load_errors(tmp_path, result):
    with pytest.raises(ValueError, match="needs a directory"):
        Result(result.runs, result.fits).save()
    with pytest.raises(FileNotFoundError, match=r"scaling_laws\.json"):
        Result.load(tmp_path)


def test_plot_show_hands_the_figures_to_pyplot(monkeypatch, runs, result):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.get_fignums()))
    iso_only = Result(runs, {"isoflop": result.fits["isoflop"]})
    figures = iso_only.plot(show=True)
    try:
        assert len(shown) == 1 and len(shown[0]) == len(figures) == 3
        assert all(fig.canvas.manager is not None for fig in figures.values())
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_backtest_measures_an_unbracketed_budget_by_its_lowest_loss_run_and_does_not_judge_by_it():
    runs = make_runs(budgets=(1e17, 1e18, 1e19, 1e20, 1e21), curves=False)
    top = runs.index[runs["compute_budget"] == 1e21]
    edge = runs.drop(index=top[4:])  # the four smallest sizes at 1e21: the minimum sits at the edge
    res = Result.from_runs(edge, approach=["isoflop", "parametric"], variants=False)
    table = res.last_backtest
    at_top = table[(table["kind"] == "optimum") & np.isclose(table["held_out_budget"], 1e21)]
    assert (at_top["measured_from"] == "lowest-loss run (profile: edge_large)").all()
    kept = edge[edge["compute_budget"] == 1e21]
    assert (at_top["measured_loss"] == kept["final_loss"].min()).all()
    assert sorted(table["origin_budget"].unique()) == pytest.approx([1e19, 1e20])
    # the choice reads bracketed optima only: the one at 1e20, 10x from the origin 1e19
    assert res.selection.rule == "backtest" and "10x extrapolation" in res.selection.reason
    thin = runs.drop(index=top[[0, 1, 2, 5, 6]])  # two runs left at 1e21: not a profile, not a budget
    with pytest.raises(ValueError, match="4 or more compute budgets"):
        Result.from_runs(thin[thin["compute_budget"] != 1e17], approach="parametric").backtest()


def test_a_result_cannot_be_changed_in_place_and_still_copies_and_pickles(runs):
    import copy
    import pickle

    res = Result.from_runs(runs, approach="isoflop")
    before = res.summary()
    with pytest.raises(TypeError):
        res.fits["parametric"] = res.fits["isoflop"]
    with pytest.raises(TypeError):
        res.fit_options["bootstrap"] = 9
    with pytest.raises(ValueError):
        res.budgets[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.primary = "parametric"
    assert res.summary() == before
    for twin in (copy.deepcopy(res), pickle.loads(pickle.dumps(res))):
        assert twin.summary() == before and twin.predict(1e21) == res.predict(1e21)


def test_only_mock_runs_carry_the_synthetic_banner():
    from synth import isoflop_sweep

    n, d, l, c = isoflop_sweep(budgets=(1e17, 1e18, 1e19), sizes=5, seed=0)
    runs = runs_from_arrays(n, d, l, c).assign(mode="local")
    real = Result.from_runs(runs, approach="isoflop")
    assert real.synthetic_banner is None and "MOCK" not in real.summary()
    mixed = Result.from_runs(runs.assign(mode=["mock"] * 3 + ["local"] * (len(runs) - 3)), approach="isoflop")
    assert mixed.synthetic_banner.startswith(f"MOCK RESULTS: 3 of {len(runs)} runs")
    assert mixed.summary().startswith("MOCK RESULTS") and "MOCK RESULTS" in mixed.tables_markdown()
