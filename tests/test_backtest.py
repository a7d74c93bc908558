"""The rolling-origin back-test (report/backtest.py), the candidates it judges (analysis/approaches.py) and
the primary answer it chooses."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from flops_fit.analysis.approaches import (
    VARIANTS,
    Variant,
    available_variants,
    candidate_order,
    fallback_order,
    run_approach,
)
from flops_fit.analysis.layout import classify_runs
from flops_fit.core.runs import runs_from_arrays
from flops_fit.report.backtest import (
    BACKTEST_COLUMNS,
    MAX_ORIGINS,
    Selection,
    backtest_lines,
    band_summary,
    choose_primary,
    levels_of,
    origins_of,
    rolling_backtest,
)
from flops_fit.report.plots import ScalingVisualizer
from flops_fit.report.result import Result
from real_data import olmo_ladder_runs
from synth import isoflop_sweep
from test_layout import checkpoint_grid

FIVE_BUDGETS = tuple(np.geomspace(1e17, 1e20, 5))


def sweep(budgets=FIVE_BUDGETS, sizes=7) -> pd.DataFrame:
    n, d, l, c = isoflop_sweep(budgets=budgets, sizes=sizes)
    return runs_from_arrays(n, d, l, c)


@pytest.fixture(scope="module")
def five() -> Result:
    """A 7-size, 5-budget sweep, every approach and variant, primary chosen by back-test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Result.from_runs(sweep())


# ----------------------------------------------------------------------------------------------------
# Budgets and origins


def test_origins_start_at_the_third_budget_and_are_capped():
    assert origins_of(3) == [] and origins_of(4) == [2] and origins_of(6) == [2, 3, 4]
    many = origins_of(30)
    assert len(many) == MAX_ORIGINS and many[0] == 2 and many[-1] == 28 and many == sorted(set(many))


def test_levels_are_the_designed_profiles_or_factor_2_bins():
    runs = sweep()
    levels = levels_of(runs, classify_runs(runs))
    assert [lv.designed for lv in levels] == [True] * 5
    assert np.allclose([lv.budget for lv in levels], np.geomspace(1e17, 1e20, 5))
    grid = checkpoint_grid()
    bins = levels_of(grid, classify_runs(grid))
    c = grid["compute_budget"].to_numpy()
    assert not any(lv.designed for lv in bins)
    assert all(lv.cut / lv.start < 2.0 for lv in bins) and sum(lv.members.sum() for lv in bins) == len(grid)
    assert len(bins) == int(np.floor(np.log2(c.max() / c.min()))) + 1


# ----------------------------------------------------------------------------------------------------
# The table


def test_every_origin_predicts_every_later_budget(five):
    table = five.last_backtest
    assert list(table.columns) == list(BACKTEST_COLUMNS)
    assert set(table["approach"]) == set(five.candidates) == {
        "isoflop", "parametric", *available_variants(["isoflop", "parametric"])
    }  # fmt: skip
    opt = table[table["kind"] == "optimum"]
    # 5 budgets: origins at the third (two later budgets) and the fourth (one), for every candidate
    per_origin = opt.groupby(["approach", "fit_budgets"]).size().unstack()
    assert list(per_origin.columns) == [3, 4] and (per_origin[3] == 2).all() and (per_origin[4] == 1).all()
    assert np.allclose(opt["distance"], opt["held_out_budget"] / opt["origin_budget"])
    assert (opt["distance"] > 1).all() and (opt["measured_from"] == "IsoFLOP minimum").all()
    assert table["error"].isna().all()
    runs_rows = table[table["kind"] == "runs"]
    assert set(runs_rows["approach"]) <= {"parametric", "parametric:alpha=beta"}
    assert (runs_rows["n_runs"] == 7).all() and runs_rows["predicted_params"].isna().all()


def test_refits_use_the_runs_at_or_below_the_origin_only():
    runs = sweep()
    # a wildly wrong run at the largest budget cannot move a prediction made from the smaller budgets
    spoiled = runs.copy()
    spoiled.loc[spoiled["compute_budget"] == spoiled["compute_budget"].max(), "final_loss"] *= 1.3
    fits = {"isoflop": run_approach("isoflop", runs)}
    a = rolling_backtest(runs, fits, budget_rtol=0.05)
    b = rolling_backtest(spoiled, fits, budget_rtol=0.05)
    np.testing.assert_allclose(a["predicted_params"], b["predicted_params"])
    assert not np.allclose(a["measured_loss"], b["measured_loss"])


def test_a_grid_is_backtested_on_the_loss_of_later_runs():
    grid = checkpoint_grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Result.from_runs(grid)
    table = res.last_backtest
    assert set(table["kind"]) == {"runs"} and set(table["approach"]) == set(res.candidates)
    assert (table["distance"] > 1).all() and (table["loss_log_error"] >= 0).all()
    assert res.selection.rule == "backtest" and res.primary.startswith("parametric")
    assert "in the loss of later runs" in res.selection.reason


def test_the_olmo_ladder_is_a_grid_where_approach_3_answers(data_dir):
    """The OLMo ladder (5 sizes at 0.5-10x Chinchilla tokens, with loss curves): Approach 2 is skipped,
    Approach 1 is fitted but cannot be judged (no measured optimum), an Approach 3 candidate is primary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Result.from_runs(olmo_ladder_runs(data_dir))
    assert res.layout.design == "grid" and "isoflop" in res.skipped and "envelope" in res.fits
    assert res.primary.startswith("parametric") and res.selection.rule == "backtest"
    assert "not judged" in res.selection.reason and "Approach 1 (envelope)" in res.selection.reason
    assert set(res.last_backtest["approach"]) == {"parametric", "parametric:alpha=beta"} & set(res.candidates)


def test_too_few_budgets_fall_back_to_the_documented_order_and_say_so():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Result.from_runs(sweep(budgets=(1e17, 1e18, 1e19)))
    assert res.last_backtest is None and res.selection.rule == "order" and res.primary == "isoflop"
    assert "4 or more compute budgets" in res.selection.reason
    assert "chosen by order" in res.summary()


def test_bootstrap_in_the_backtest_only_when_asked(five):
    table = five.backtest(bootstrap=20)
    iso = table[(table["approach"] == "isoflop") & (table["kind"] == "optimum")]
    assert np.isfinite(iso["predicted_params_lo"]).all() and iso["params_within_ci"].notna().all()
    plain = five.last_backtest
    par = plain[(plain["approach"] == "parametric") & (plain["kind"] == "optimum")]
    assert par["predicted_params_lo"].isna().all()  # Approach 3 without bootstrap has no interval


# ----------------------------------------------------------------------------------------------------
# Choosing the primary answer


def _table(rows: list[tuple[str, float, float, float, float]], kind: str = "optimum") -> pd.DataFrame:
    """A back-test table of (approach, origin, target, |ln N error|, |ln L error|) rows at IsoFLOP minima."""
    out = pd.DataFrame(
        [
            {"approach": a, "kind": kind, "origin_budget": o, "held_out_budget": t, "distance": t / o,
             "measured_from": "IsoFLOP minimum", "params_log_error": en, "loss_log_error": el, "error": None}
            for a, o, t, en, el in rows
        ]
    )  # fmt: skip
    return out.reindex(columns=list(BACKTEST_COLUMNS))


def test_the_smallest_far_error_wins():
    table = _table(
        [("isoflop", 1, 2, 0.0, 0.0), ("parametric", 1, 2, 0.5, 0.0),  # near: not judged
         ("isoflop", 1, 5, 0.20, 0.02), ("parametric", 1, 5, 0.05, 0.01),
         ("isoflop", 1, 10, -0.30, 0.02), ("parametric", 1, 10, 0.10, -0.01)]
    )  # fmt: skip
    sel = choose_primary(table, ["isoflop", "parametric"], "isoflop")
    assert sel.primary == "parametric" and sel.rule == "backtest"
    assert sel.scores["parametric"] == pytest.approx(0.075 + 0.01)
    assert sel.scores["isoflop"] == pytest.approx(0.25 + 0.02)
    assert "5x-10x" in sel.reason and "7.5% in N_opt" in sel.reason


def test_without_far_predictions_the_farther_half_is_judged():
    table = _table(
        [("isoflop", 1, 1.5, 0.0, 0.0), ("parametric", 1, 1.5, 0.3, 0.0),
         ("isoflop", 1, 2.5, 0.2, 0.0), ("parametric", 1, 2.5, 0.1, 0.0)]
    )  # fmt: skip
    sel = choose_primary(table, ["isoflop", "parametric"], "isoflop")
    assert sel.primary == "parametric" and "2.5x" in sel.reason


def test_ties_go_to_the_documented_order_of_the_design():
    table = _table([("isoflop", 1, 10, 0.105, 0.0), ("parametric", 1, 10, 0.100, 0.0)])
    sel = choose_primary(table, ["parametric", "isoflop"], "isoflop")
    assert sel.primary == "isoflop" and "documented order" in sel.reason  # 0.005 apart: tied
    assert choose_primary(table, ["parametric", "isoflop"], "mixed").primary == "parametric"


def test_approach_2_is_never_chosen_on_runs_without_designed_profiles():
    table = _table([("isoflop", 1, 10, 0.0, 0.0), ("parametric", 1, 10, 0.5, 0.1)])
    assert choose_primary(table, ["isoflop", "parametric"], "isoflop").primary == "isoflop"
    for design in ("grid", "scattered"):
        assert choose_primary(table, ["isoflop", "parametric"], design).primary == "parametric"


def test_candidates_without_comparable_predictions_are_not_judged():
    table = _table([("parametric", 1, 10, 0.1, 0.0), ("envelope", 1, 10, math.nan, math.nan)])
    sel = choose_primary(table, ["envelope", "parametric"], "isoflop")
    assert sel.primary == "parametric" and "not judged" in sel.reason and "Approach 1" in sel.reason
    failed = _table([("parametric", 1, 10, 0.1, 0.0), ("isoflop", 1, 10, 0.0, 0.0)])
    failed.loc[1, "error"] = "Approach 2 needs at least 2 budgets"
    assert choose_primary(failed, ["isoflop", "parametric"], "isoflop").primary == "parametric"


def test_no_evidence_the_order_and_a_single_candidate():
    sel = choose_primary(None, ["parametric", "isoflop", "envelope"], "isoflop", no_table="too few budgets")
    assert sel.primary == "isoflop" and sel.rule == "order" and "too few budgets" in sel.reason
    assert choose_primary(None, ["envelope", "parametric"], "grid").primary == "parametric"
    only = choose_primary(None, ["envelope"], "isoflop")
    assert only.primary == "envelope" and only.rule == "only"


def test_the_registry_and_its_order():
    assert fallback_order("isoflop")[0] == "isoflop" and fallback_order("grid")[-1] == "isoflop"
    assert candidate_order(["parametric:alpha=beta", "envelope", "parametric", "isoflop"], "grid") == [
        "parametric", "parametric:alpha=beta", "envelope", "isoflop"
    ]  # fmt: skip
    for name, variant in VARIANTS.items():
        assert variant.name == name and name.split(":")[0] == variant.approach
    # a variant is available only where the installed fit function takes its options
    absent = Variant("parametric:x", "parametric", ({"no_such_option": 1},), "x")
    assert absent.options() is None
    spelled = Variant("parametric:y", "parametric", ({"no_such_option": 1}, {"huber_delta": 1e-2}), "y")
    assert spelled.options() == {"huber_delta": 1e-2}
    assert all(VARIANTS[v].options() is not None for v in available_variants(["isoflop", "parametric"]))


def test_a_selection_round_trips_and_a_variant_can_be_primary(tmp_path, five):
    sel = five.selection
    assert Selection.from_dict(sel.to_dict()) == sel
    variant = next(iter(five.variants))
    forced = Result(five.runs, dict(five.fits), variants=dict(five.variants), primary=variant)
    assert forced.primary == variant and forced.selection.rule == "asked"
    assert forced.predict(1e21)["approach"] == variant
    assert forced.predict(1e21)["optimal_params"] == five.variants[variant].optimal(1e21)["optimal_params"]
    back = Result.load(forced.save(tmp_path, plots=False))
    assert back.primary == variant and set(back.variants) == set(five.variants)
    assert back.predict(1e21)["optimal_params"] == pytest.approx(forced.predict(1e21)["optimal_params"])
    with pytest.raises(ValueError, match="unknown variant"):
        Result(five.runs, dict(five.fits), variants={"parametric:nope": five.fits["parametric"]})
    with pytest.raises(TypeError, match="ParametricFit"):
        Result(five.runs, dict(five.fits), variants={"parametric:alpha=beta": five.fits["isoflop"]})


# ----------------------------------------------------------------------------------------------------
# Words and the figure


def test_the_summary_says_the_design_the_choice_and_the_errors_by_distance(five):
    text = five.summary()
    assert "Design: an IsoFLOP sweep" in text and "chosen by back-test" in text
    assert "Backtest (rolling origin" in text and "at 3-10x" in text
    bands = band_summary(five.last_backtest)
    assert (
        set(bands["band"]) <= {"1-3x", "3-10x", ">=10x"}
        and (bands["n_bracketed"] <= bands["n_optimum"]).all()
    )


def test_a_backtest_table_of_an_earlier_flops_fit_still_reads():
    old = pd.DataFrame(
        [{"approach": "isoflop", "held_out_budget": 1e20, "fit_budgets": 3, "measured_from": "IsoFLOP minimum",
          "predicted_params": 1.1e9, "predicted_params_lo": None, "predicted_params_hi": None,
          "measured_params": 1e9, "params_rel_error": 0.1, "params_within_ci": None, "predicted_loss": 2.0,
          "predicted_loss_lo": None, "predicted_loss_hi": None, "measured_loss": 2.01, "loss_rel_error": -0.005,
          "loss_within_ci": None, "error": None}]
    )  # fmt: skip
    lines = backtest_lines(old)
    assert lines[0].startswith("Backtest: refitted on the 3 budgets below C = 1e+20") and "+10.0%" in lines[1]


def test_the_backtest_figure(five):
    viz = ScalingVisualizer(five.runs, five.fits, backtest=five.last_backtest)
    assert "backtest" in viz.available_figures()
    fig = viz.plot_backtest()
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # N_opt, L_opt, loss of later runs
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    with pytest.raises(ValueError, match="needs a rolling back-test table"):
        ScalingVisualizer(five.runs, five.fits).plot_backtest()
