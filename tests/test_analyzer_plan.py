"""The analyzer tests of the original test plan (the prototype's tests/test_analyzer.py), its calls as written.

Imported from ``flops_fit.analyzer``, the prototype's module path (kept importable by
``flops_fit.core.compat``). Where the plan encodes a defect that the prototype's audit names, the corrected
behaviour is asserted instead, and a comment says so.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from flops_fit.plan.planner import SweepPlanner
from flops_fit.training.runner import TrainingRunner

with warnings.catch_warnings():  # the old path warns once that it moved
    warnings.simplefilter("ignore", DeprecationWarning)
    from flops_fit.analyzer import PowerLawFit, ScalingAnalysis, ScalingLawAnalyzer


def _mock_pipeline(tmp_path):
    """Plan (1e17-1e19 FLOPs, 3 budgets, 4 sizes) -> mock training -> an analyzer of its results."""
    planner = SweepPlanner(min_flops=1e17, max_flops=1e19, num_compute_budgets=3, num_model_sizes=4)
    planner.plan().save(tmp_path / "sweep.json")
    runner = TrainingRunner(
        mode="mock", sweep_path=tmp_path / "sweep.json", output_dir=tmp_path, progress=False
    )
    # The plan seeds NumPy's global generator because the prototype's mock noise was unseeded (a defect the
    # audit names); the runner's mock noise now comes from its own seed (seed=0), so this changes nothing.
    np.random.seed(42)  # noqa: NPY002
    runner.run_sweep()
    return ScalingLawAnalyzer(runner.results_path, tmp_path)


def _run(experiment_id, compute_budget, num_params, final_loss, status="completed"):
    return {
        "experiment_id": experiment_id,
        "compute_budget": compute_budget,
        "num_params": num_params,
        "num_tokens": compute_budget / (6 * num_params),
        "final_loss": final_loss,
        "status": status,
    }


class TestScalingLawAnalyzer:
    def test_analyze_produces_valid_fits(self, tmp_path):
        analyzer = _mock_pipeline(tmp_path)
        analysis = analyzer.analyze()
        assert analysis.n_opt_fit.r_squared > 0
        assert analysis.d_opt_fit.r_squared > 0
        assert analysis.l_opt_fit.r_squared > 0
        assert isinstance(analysis.optimal_points, list) and len(analysis.optimal_points) > 0
        assert analysis.to_dict()["optimal_points"] == analysis.optimal_points
        assert analysis.optimal_ratio is not None and analysis.optimal_ratio > 0
        assert (tmp_path / "scaling_laws.json").is_file()

    def test_predict_returns_optimal_config(self, tmp_path):
        analyzer = _mock_pipeline(tmp_path)
        analyzer.analyze()
        result = analyzer.predict(1e20)
        for key in (
            "target_compute",
            "optimal_params",
            "optimal_tokens",
            "expected_loss",
            "tokens_per_param",
        ):
            assert key in result
        assert result["optimal_params"] > 0 and result["optimal_tokens"] > 0
        assert result["expected_loss"] > 0

    def test_find_optimal_per_budget_uses_2_decimal_rounding(self, tmp_path):
        # The plan characterises the prototype's np.round(np.log10(budget), 2) buckets, which disagreed with
        # the visualizer's 1-decimal buckets (a defect the audit names). Now one bucketing rule (relative
        # tolerance, flops_fit.analysis.bucketing) serves the fits, the table and the figures; 1.01e17 and
        # 1.04e17 still share a bucket, as the plan asserts.
        analyzer = ScalingLawAnalyzer(tmp_path / "results.jsonl", tmp_path)
        df = pd.DataFrame([_run("a", 1.01e17, 1e7, 3.1), _run("b", 1.04e17, 2e7, 3.0)])
        assert len(analyzer.find_optimal_per_budget(df)) == 1

    def test_find_optimal_per_budget_selects_min_loss(self, tmp_path):
        analyzer = ScalingLawAnalyzer(tmp_path / "results.jsonl", tmp_path)
        df = pd.DataFrame([_run("s", 1e18, 1e7, 3.2), _run("m", 1e18, 3e7, 2.9), _run("l", 1e18, 1e8, 3.05)])
        best = analyzer.find_optimal_per_budget(df)
        assert len(best) == 1
        assert best["final_loss"].iloc[0] == df["final_loss"].min()

    def test_load_results_filters_to_completed(self, tmp_path):
        rows = [_run(f"e{i}", 1e18, 10 ** (7 + i / 2), 3.0 - 0.1 * i) for i in range(3)]
        rows.append(_run("f", 1e18, 1e9, float("nan"), status="failed"))
        (tmp_path / "results.json").write_text(json.dumps(rows))
        analyzer = ScalingLawAnalyzer(tmp_path / "results.json", tmp_path)
        assert len(analyzer.load_results()) == 3

    def test_fit_power_law_requires_minimum_points(self, tmp_path):
        analyzer = ScalingLawAnalyzer(tmp_path / "results.jsonl", tmp_path)
        x = np.array([1e17, 0.0, -1e18, 1e19])
        y = np.array([1e7, 1e8, 1e9, -1.0])
        with pytest.raises(ValueError, match="Not enough valid points"):
            analyzer.fit_power_law(x, y)


class TestScalingAnalysis:
    @staticmethod
    def _analysis(**kwargs):
        fit = PowerLawFit(k=1.0, a=0.5, r_squared=1.0)
        return ScalingAnalysis(n_opt_fit=fit, d_opt_fit=fit, l_opt_fit=fit, **kwargs)

    def test_predict_optimal_size(self):
        result = self._analysis().predict_optimal_size(1e20)
        assert result["optimal_params"] == pytest.approx(1.0 * (1e20) ** 0.5)  # N_opt = 1e10
        assert result["optimal_tokens"] == pytest.approx(1e10)
        assert result["expected_loss"] == pytest.approx(1e10)

    def test_to_dict(self):
        d = self._analysis(optimal_points=[], optimal_ratio=1.0).to_dict()
        for key in ("n_opt_fit", "d_opt_fit", "l_opt_fit", "optimal_points", "optimal_ratio"):
            assert key in d
        assert d["optimal_points"] == [] and d["optimal_ratio"] == 1.0

    def test_optimal_points_as_records_or_dataframe(self):
        records = [{"compute_budget": 1e18, "optimal_params": 1e8, "optimal_tokens": 2e9}]
        from_records = self._analysis(optimal_points=records, optimal_ratio=20.0)
        from_frame = self._analysis(optimal_points=pd.DataFrame(records), optimal_ratio=20.0)
        assert from_records.to_dict()["optimal_points"] == from_frame.to_dict()["optimal_points"] == records
        assert from_records.optimal_points == from_frame.optimal_points == records
        assert from_frame.optimal_points_frame.equals(pd.DataFrame(records))
        again = ScalingAnalysis.from_dict(json.loads(json.dumps(from_records.to_dict())))
        assert again.to_dict()["optimal_points"] == records
        with pytest.raises(TypeError, match=r"optimal_points\[0\]"):
            self._analysis(optimal_points=[1e18])
        with pytest.raises(TypeError, match="optimal_points"):
            self._analysis(optimal_points="points")
