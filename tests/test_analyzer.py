import json

import numpy as np
import pandas as pd
import pytest

from flops_fit import ScalingAnalysis, ScalingLawAnalyzer
from flops_fit.analysis.approaches import resolve_approaches
from flops_fit.core.ledger import append_record
from synth import isoflop_sweep, true_a


@pytest.fixture
def results_jsonl(tmp_path):
    n, d, l, c = isoflop_sweep(noise=0.002, seed=2)
    path = tmp_path / "results.jsonl"
    for i, row in enumerate(zip(n, d, l, c, strict=True)):
        append_record(
            path,
            {
                "experiment_id": f"e{i}",
                "num_params": row[0],
                "num_tokens": row[1],
                "final_loss": row[2],
                "compute_budget": row[3],
                "status": "completed",
            },
        )
    append_record(
        path,
        {
            "experiment_id": "bad",
            "num_params": 1e8,
            "num_tokens": 1e9,
            "final_loss": None,
            "compute_budget": 6e17,
            "status": "diverged",
            "error": "nan at step 3",
        },
    )
    return path


def test_analyze_writes_scaling_laws_and_predicts(results_jsonl, tmp_path):
    analyzer = ScalingLawAnalyzer(results_jsonl, tmp_path / "out", approach="all")
    df = analyzer.load_results()
    assert len(df) == 54 and (df["status"] == "completed").all()
    best = analyzer.find_optimal_per_budget(df)
    assert len(best) == 6
    analysis = analyzer.analyze()
    assert isinstance(analysis, ScalingAnalysis)
    assert set(analysis.fits) == {"isoflop", "parametric"}  # no curves -> no envelope
    assert analysis.n_opt_fit.a == pytest.approx(true_a(), abs=0.03)
    assert 5 < analysis.optimal_ratio < 200
    saved = json.loads((tmp_path / "out" / "scaling_laws.json").read_text())
    assert saved["approach"] == "isoflop" and "parametric" in saved["fits"]
    pred = analyzer.predict(1e21)
    assert set(pred) >= {
        "target_compute",
        "optimal_params",
        "optimal_tokens",
        "expected_loss",
        "tokens_per_param",
    }
    assert pred["optimal_params"] == pytest.approx(analysis.predict_optimal_size(1e21)["optimal_params"])
    assert pred["tokens_per_param"] == pytest.approx(pred["optimal_tokens"] / pred["optimal_params"])
    assert "Approach 3" in analysis.summary()
    with pytest.raises(ValueError, match="target_compute"):
        analysis.predict_optimal_size(-1)


def test_parametric_primary_has_exact_laws(results_jsonl, tmp_path):
    analysis = ScalingLawAnalyzer(results_jsonl, tmp_path, approach="parametric").analyze()
    fit = analysis.fits["parametric"]
    for c in (1e19, 1e22):
        opt = fit.optimal(c)
        assert analysis.n_opt_fit.predict(c) == pytest.approx(opt["optimal_params"], rel=1e-9)
        assert analysis.d_opt_fit.predict(c) == pytest.approx(opt["optimal_tokens"], rel=1e-9)
        assert analysis.l_opt_fit.predict(c) == pytest.approx(opt["optimal_loss"], rel=1e-9)


def test_seed_api_fit_power_law(tmp_path, results_jsonl):
    analyzer = ScalingLawAnalyzer(results_jsonl, tmp_path)
    fit = analyzer.fit_power_law(np.array([1.0, 10.0, 100.0]), np.array([2.0, 20.0, 200.0]))
    assert fit.a == pytest.approx(1.0)


def test_reads_seed_results_json_list(tmp_path):
    n, d, l, c = isoflop_sweep()
    rows = [
        {
            "experiment_id": f"x{i}",
            "num_params": a,
            "num_tokens": b,
            "final_loss": e,
            "compute_budget": f,
            "status": "completed",
        }
        for i, (a, b, e, f) in enumerate(zip(n, d, l, c, strict=True))
    ]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    analysis = ScalingLawAnalyzer(tmp_path / "results.json", tmp_path).analyze()
    assert analysis.approach == "isoflop"


def test_unknown_approach_and_missing_laws(tmp_path):
    with pytest.raises(ValueError, match="unknown approach"):
        ScalingLawAnalyzer(tmp_path / "r.jsonl", tmp_path, approach="approach4")
    assert resolve_approaches("all") == ["envelope", "isoflop", "parametric"]
    assert resolve_approaches(["2", "3"]) == ["isoflop", "parametric"]
    with pytest.raises(FileNotFoundError, match="analyze"):
        ScalingLawAnalyzer(tmp_path / "r.jsonl", tmp_path).predict(1e20)


def test_round_trip_of_analysis(results_jsonl, tmp_path):
    analysis = ScalingLawAnalyzer(results_jsonl, tmp_path, approach="all", bootstrap=30).analyze()
    again = ScalingAnalysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    p1, p2 = analysis.predict_optimal_size(3e20), again.predict_optimal_size(3e20)
    assert p1["optimal_params"] == pytest.approx(p2["optimal_params"])
    assert p1["optimal_params_ci"] == pytest.approx(p2["optimal_params_ci"])
    assert isinstance(again.optimal_points, list) and len(again.optimal_points) == 6


def _sweep_into(out, budgets):
    """Plan a parameter-space sweep at ``budgets`` into ``out`` (same folder each time) and train it (mock)."""
    from flops_fit.core.sweepdir import PLAN_FILE
    from flops_fit.plan.planner import SweepPlanner
    from flops_fit.training.runner import TrainingRunner

    plan = SweepPlanner.from_budgets(budgets, 5).plan()
    plan.save(out / PLAN_FILE)
    TrainingRunner("mock", plan=plan, output_dir=out, progress=False).run_sweep()
    return plan


def test_a_plan_keeps_the_analysis_to_its_own_runs(tmp_path, caplog):
    """A ledger written by two plans in one folder: with the later plan, only its runs are fitted (ff-analyze
    passes the folder's sweep.json); without a plan, every run is."""
    import logging

    from flops_fit.app.stages import default_config, run_analyze

    _sweep_into(tmp_path, [1e17, 1e18, 1e19])
    plan = _sweep_into(tmp_path, [3e17, 3e18, 3e19])
    analyzer = ScalingLawAnalyzer(tmp_path / "results.jsonl", tmp_path, plan=tmp_path / "sweep.json")
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        runs = analyzer.load_results()
    assert set(runs["experiment_id"]) == {e.experiment_id for e in plan}
    assert "15 of 30 run(s)" in caplog.text and "belong to an earlier plan" in caplog.text
    every = ScalingLawAnalyzer(tmp_path / "results.jsonl", tmp_path).load_results()
    assert len(every) == 30
    analysis = run_analyze(default_config("analyzer", {"output.dir": str(tmp_path), "approach": "isoflop"}))
    assert sorted(analysis.optimal_points_frame["compute_budget"]) == pytest.approx(
        [3e17, 3e18, 3e19], rel=0.05
    )
    assert analysis.fits["isoflop"].minima["n_points"].tolist() == [5, 5, 5]
    from flops_fit.report.plots import ScalingVisualizer

    viz = ScalingVisualizer.from_files(tmp_path / "results.jsonl", analyzer.scaling_laws_path, plan=plan)
    assert len(viz.runs) == 15  # the figures show the runs the fit saw
    from flops_fit.report.result import Result

    assert len(Result.load(tmp_path).runs) == 15  # the report shows the runs ff-analyze fitted
    analysis = run_analyze(default_config("analyzer", {"output.dir": str(tmp_path), "plan": None}))
    assert analysis.fits["isoflop"].minima["n_points"].sum() == 30
    # a results file from elsewhere is never filtered by the output folder's plan
    other = tmp_path / "elsewhere"
    other.mkdir()
    every.drop(columns=["experiment_id", "curve"]).to_csv(other / "theirs.csv", index=False)
    analysis = run_analyze(
        default_config("analyzer", {"output.dir": str(tmp_path), "results": str(other / "theirs.csv")})
    )
    assert analysis.fits["isoflop"].minima["n_points"].sum() == 30
    with pytest.raises(ValueError, match="none of the 30 run"):
        plan.select_runs(every.assign(experiment_id="someone-else"), "theirs.csv")


def test_excluded_runs_are_named_by_their_own_ids(tmp_path, caplog):
    """Rows dropped before a fit (a non-positive loss) must not shift the names of the runs it excludes."""
    import logging

    n, d, l, c = isoflop_sweep(noise=0.002, seed=2, sizes=9)
    runs = pd.DataFrame(
        {
            "experiment_id": [f"exp{i:03d}" for i in range(n.size)],
            "num_params": n,
            "num_tokens": d,
            "final_loss": l,
            "compute_budget": c,
            "status": "completed",
        }
    )
    runs.loc[0, "final_loss"] = -1.0  # invalid: left out with a warning, before the fit
    runs.loc[13, "final_loss"] *= 1.25  # a profile outlier, named in the exclusion
    from flops_fit.analysis.approaches import run_approach

    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        iso = run_approach("isoflop", runs)
        par = run_approach("parametric", runs)
    assert iso.excluded["experiment_id"].tolist() == ["exp013"]
    assert par.excluded["experiment_id"].tolist() == ["exp013"]
    assert "left out 1 completed run(s)" in caplog.text and "exp000" in caplog.text
    assert "fit_parametric: excluded 1 run(s) {'profile_residual': 1}: exp013" in caplog.text


def test_nothing_to_fit_says_how_the_runs_ended():
    n, d, _, c = isoflop_sweep(noise=0.002, seed=2)
    runs = pd.DataFrame(
        {"num_params": n, "num_tokens": d, "final_loss": np.nan, "compute_budget": c, "status": "failed"}
    )
    runs.insert(0, "experiment_id", [f"r{i}" for i in range(n.size)])
    from flops_fit.analysis.approaches import run_approach

    with pytest.raises(
        ValueError, match=rf"nothing to fit: none of the {n.size} run\(s\).*'failed': {n.size}"
    ):
        run_approach("isoflop", runs)


def test_all_picks_the_primary_as_a_result_does_and_skips_what_cannot_be_fitted(tmp_path, caplog):
    """With curves every approach fits and Approach 2 is primary (not Approach 1, first by number); with
    one budget Approaches 2 and 3 cannot fit, so they are skipped with their reasons and 1 is kept."""
    _sweep_into(tmp_path / "many", [1e17, 1e18, 1e19])
    analysis = ScalingLawAnalyzer(
        tmp_path / "many" / "results.jsonl", tmp_path / "many", approach="all"
    ).analyze()
    assert set(analysis.fits) == {"envelope", "isoflop", "parametric"} and analysis.approach == "isoflop"

    _sweep_into(tmp_path / "one", [1e18])
    analyzer = ScalingLawAnalyzer(tmp_path / "one" / "results.jsonl", tmp_path / "one", approach="all")
    with caplog.at_level("WARNING", logger="flops_fit"):
        analysis = analyzer.analyze()
    assert set(analysis.fits) == {"envelope"} and analysis.approach == "envelope"
    assert "skipping isoflop: Approach 2 needs runs at 2 or more compute budgets" in caplog.text
    assert "skipping parametric: Approach 3 needs runs at 2 or more compute budgets" in caplog.text
    with pytest.raises(ValueError, match="2 or more compute budgets"):  # asked for alone: an error
        ScalingLawAnalyzer(tmp_path / "one" / "results.jsonl", tmp_path / "one", approach="isoflop").analyze()


def test_reports_and_plots_of_a_folder_show_the_runs_the_analysis_read(tmp_path, caplog):
    """Analysed without the plan filter (plan=None), a folder's ledger holds two plans' runs; Result.load
    and the visualizer then read back exactly those runs, not the folder's current plan's."""
    from flops_fit.report.plots import ScalingVisualizer
    from flops_fit.report.result import Result

    out = tmp_path / "mix"
    first = _sweep_into(out, [1e17, 1e18, 1e19])
    second = _sweep_into(out, [1e18, 1e19, 1e20])  # sweep.json now holds the second plan
    ledger = out / "results.jsonl"
    analysis = ScalingLawAnalyzer(ledger, out, approach="isoflop").analyze()
    every = {e.experiment_id for e in first} | {e.experiment_id for e in second}
    assert set(analysis.run_ids) == every
    assert set(Result.load(out).runs["experiment_id"]) == every
    for plan in (None, out / "sweep.json"):  # the CLI's plan: auto gives the folder's plan; the ids win
        viz = ScalingVisualizer.from_files(ledger, out / "scaling_laws.json", plan=plan)
        assert set(viz.runs["experiment_id"]) == every

    # A Result saved here, then refitted by the analyzer: its notes (primary, options) belong to the old
    # laws and are ignored, with a warning.
    Result.load(out).save(out, plots=False)
    ScalingLawAnalyzer(ledger, out, approach="parametric").analyze()
    with caplog.at_level("WARNING", logger="flops_fit"):
        again = Result.load(out)
    assert again.primary == "parametric" and "belongs to an earlier fit" in caplog.text


def test_a_saved_result_refitted_on_more_runs_reports_the_runs_of_the_new_fit(tmp_path, caplog):
    """A folder saved by Result.save (its runs.json), then extended and refitted by the analyzer: the report
    reads the runs the new laws were fitted to (the ledger), not the older runs.json."""
    from flops_fit.report.result import Result

    out = tmp_path / "grow"
    _sweep_into(out, [1e17, 1e18, 1e19])
    Result.from_runs(out / "results.jsonl", approach="isoflop").save(out, plots=False)
    _sweep_into(out, [1e17, 1e18, 1e19, 1e20])
    analysis = ScalingLawAnalyzer(
        out / "results.jsonl", out, approach="isoflop", plan=out / "sweep.json"
    ).analyze()
    with caplog.at_level("WARNING", logger="flops_fit"):
        loaded = Result.load(out)
    assert set(loaded.runs["experiment_id"]) == set(analysis.run_ids) and len(loaded.budgets) == 4


def test_with_several_approaches_the_back_test_names_the_primary_one(tmp_path):
    n, d, l, c = isoflop_sweep(budgets=tuple(np.geomspace(1e17, 1e20, 5)), sizes=7)
    path = tmp_path / "runs.csv"
    pd.DataFrame({"num_params": n, "num_tokens": d, "final_loss": l, "compute_budget": c}).to_csv(
        path, index=False
    )
    analyzer = ScalingLawAnalyzer(path, tmp_path / "out", approach="all")
    analysis = analyzer.analyze()
    result = analyzer.result_
    assert result.selection.rule == "backtest" and analyzer.approach == result.primary == analysis.approach
    laws = json.loads((tmp_path / "out" / "scaling_laws.json").read_text())
    assert laws["approach"] == result.primary and result.primary in laws["fits"]
    pred = analyzer.predict(1e21)
    assert pred["approach"] == result.primary
    assert pred["optimal_params"] == pytest.approx(result.predict(1e21)["optimal_params"])


def test_approach_2_alone_on_a_checkpoint_grid_is_an_error_naming_the_design(tmp_path):
    from test_layout import checkpoint_grid

    path = tmp_path / "grid.csv"
    checkpoint_grid().to_csv(path, index=False)
    with pytest.raises(ValueError, match="checkpoint / over-training grid"):
        ScalingLawAnalyzer(path, tmp_path / "out", approach="isoflop").analyze()
    analysis = ScalingLawAnalyzer(path, tmp_path / "out2", approach="all").analyze()
    assert analysis.approach.startswith("parametric") and "isoflop" not in analysis.fits
