import json

import numpy as np
import pandas as pd
import pytest

from flops_fit import ScalingAnalysis, ScalingLawAnalyzer
from flops_fit.analysis.approaches import resolve_approaches
from flops_fit.ledger import append_record
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
    assert isinstance(again.optimal_points, pd.DataFrame) and len(again.optimal_points) == 6
