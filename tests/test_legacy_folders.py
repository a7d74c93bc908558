"""Sweep folders written by flops-fit 0.1.0 (tests/data/legacy_v0_1, see its README) still load, report and
resume; and a folder written now holds each thing once (one plan file, one ledger)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flops_fit.app.cli import main
from flops_fit.core.sweepdir import (
    LEGACY_PLAN_FILE,
    PLAN_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    RUNS_CSV_FILE,
    RUNS_FILE,
    SCALING_LAWS_FILE,
    SweepDir,
)
from flops_fit.report.laws import ScalingAnalysis
from flops_fit.report.result import Result

LEGACY = Path(__file__).parent / "data" / "legacy_v0_1"
FOLDERS = ("cli_v0_1", "find_optimal_v0_1")
BUDGETS = (1e10, 1e12, 1e15, 1e21)


@pytest.fixture(params=FOLDERS)
def folder(request, tmp_path) -> Path:
    """A copy of one 0.1.0 folder (the kept test data is never written to)."""
    return Path(shutil.copytree(LEGACY / request.param, tmp_path / request.param))


def saved_laws(folder: Path) -> ScalingAnalysis:
    return ScalingAnalysis.from_dict(json.loads((folder / SCALING_LAWS_FILE).read_text(encoding="utf-8")))


def assert_predicts_as_saved(result: Result, laws: ScalingAnalysis) -> None:
    """Every fitted approach predicts, at every budget (FLOPs), what the saved laws file predicts."""
    assert result.primary == laws.approach and set(result.fits) == set(laws.fits)
    for c in BUDGETS:
        assert result.predict(c) == {
            **laws.predict_optimal_size(c),
            "size_value": None,
            "size_value_params": None,
        }
        for name, fit in laws.fits.items():
            expected = fit.optimal(c)
            got = result.predict(c, approach=name)
            assert got["optimal_params"] == expected["optimal_params"], (name, c)
            assert got["expected_loss"] == expected["optimal_loss"], (name, c)


def test_a_legacy_folder_loads_and_predicts_as_saved(folder):
    laws = saved_laws(folder)
    result = Result.load(folder)
    assert_predicts_as_saved(result, laws)
    assert sorted(result.runs["experiment_id"]) == sorted(laws.run_ids)
    assert result.plan is not None and len(result.plan) == len(laws.run_ids)  # its sweep.json
    result.summary()


def test_a_legacy_result_folder_without_its_ledger_reads_its_runs_and_plan_copies(tmp_path):
    """0.1.0's find_optimal also wrote plan.json and runs.json: they are read where the primary files lack."""
    folder = Path(shutil.copytree(LEGACY / "find_optimal_v0_1", tmp_path / "copy"))
    full = Result.load(folder)
    (folder / RESULTS_FILE).unlink()
    (folder / PLAN_FILE).unlink()
    alone = Result.load(folder)
    assert_predicts_as_saved(alone, saved_laws(folder))
    assert alone.runs["experiment_id"].tolist() == full.runs["experiment_id"].tolist()
    assert alone.plan is not None and alone.plan.to_dict() == full.plan.to_dict()


def test_the_report_command_writes_a_report_of_a_legacy_folder(folder, capsys):
    assert main(["report", str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out
    html = (folder / REPORT_FILE).read_text(encoding="utf-8")
    assert 'id="table"' in html and 'id="backtest"' in html and 'id="runs"' in html


def test_a_legacy_folder_resumes_trains_nothing_new_and_refits(folder):
    ledger, plan = (folder / RESULTS_FILE).read_bytes(), (folder / PLAN_FILE).read_bytes()
    before = saved_laws(folder)
    assert main(["train", str(folder), "--mode", "mock", "--no-progress"]) == 0
    assert (folder / RESULTS_FILE).read_bytes() == ledger  # every run was finished: none trained again
    assert (folder / PLAN_FILE).read_bytes() == plan  # the plan format is the release's: nothing rewritten
    (folder / SCALING_LAWS_FILE).unlink()
    assert main(["analyze", str(folder)]) == 0
    after = saved_laws(folder)
    assert sorted(after.run_ids) == sorted(before.run_ids)
    for c in BUDGETS:  # the same runs give the same IsoFLOP laws
        assert after.fits["isoflop"].optimal(c)["optimal_params"] == pytest.approx(
            before.fits["isoflop"].optimal(c)["optimal_params"], rel=1e-9
        )
    assert_predicts_as_saved(Result.load(folder), after)


# ----------------------------------------------------------------------------------------------------
# One sweep folder


def test_saving_into_a_sweep_folder_copies_neither_the_plan_nor_the_runs(tmp_path):
    folder = Path(shutil.copytree(LEGACY / "cli_v0_1", tmp_path / "sweep"))
    Result.load(folder).save(folder, plots=False)
    assert not {RUNS_FILE, RUNS_CSV_FILE, LEGACY_PLAN_FILE} & {p.name for p in folder.iterdir()}
    assert_predicts_as_saved(Result.load(folder), saved_laws(folder))
    Result.load(folder).save(folder, plots=False, export_runs=True)  # an export, on request
    assert {RUNS_FILE, RUNS_CSV_FILE, LEGACY_PLAN_FILE} <= {p.name for p in folder.iterdir()}


def test_a_result_saved_into_another_sweeps_folder_exports_its_runs(tmp_path):
    """The folder's ledger holds other runs than the result's: the result's runs are exported, so it loads."""
    other = Path(shutil.copytree(LEGACY / "cli_v0_1", tmp_path / "other"))
    source = Result.load(LEGACY / "find_optimal_v0_1")
    source.save(other, plots=False)
    assert SweepDir(other).runs_export.is_file()
    back = Result.load(other)
    assert sorted(back.runs["experiment_id"]) == sorted(source.runs["experiment_id"])
    assert back.predict(1e15) == source.predict(1e15)


def test_a_result_saved_away_from_its_ledger_writes_the_runs_it_needs_to_load(tmp_path):
    source = Result.load(LEGACY / "find_optimal_v0_1")
    out = source.save(tmp_path / "elsewhere", plots=False)
    folder = SweepDir(out)
    assert folder.runs_export.is_file() and (folder / LEGACY_PLAN_FILE).is_file()
    assert not folder.results.exists() and not folder.plan.exists()
    back = Result.load(out)
    assert back.runs["experiment_id"].tolist() == source.runs["experiment_id"].tolist()
    assert back.predict(1e15) == source.predict(1e15)
    bare = source.save(tmp_path / "bare", plots=False, export_runs=False)
    with pytest.raises(FileNotFoundError, match="pass runs="):
        Result.load(bare)
    assert Result.load(bare, runs=source.runs).predict(1e15) == source.predict(1e15)
