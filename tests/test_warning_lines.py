"""Warnings on the command line: one clean line each, printed once, with advice that works where it is
printed (issue 20, items 6 and 9)."""

from __future__ import annotations

import subprocess
import sys

from flops_fit.core.runs import runs_from_arrays
from synth import isoflop_sweep


def _runs_csv(path, budgets):
    n, d, l, c = isoflop_sweep(budgets=budgets, sizes=5, noise=0.003, seed=0)
    runs_from_arrays(n, d, l, c).to_csv(path, index=False)
    return path


def _fit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flops_fit.app.cli", "fit", *args], capture_output=True, text=True, timeout=300
    )


def test_a_warning_is_printed_once(tmp_path):
    proc = _fit(str(_runs_csv(tmp_path / "runs.csv", (1e18, 1e19))), "--approach", "isoflop")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert text.count("no intervals: 2 budgets") == 1
    assert ".py:" not in proc.stderr


def test_the_bootstrap_advice_names_the_flag(tmp_path):
    proc = _fit(str(_runs_csv(tmp_path / "runs.csv", (1e17, 1e18, 1e19))), "--approach", "all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agreement between approaches not judged" in proc.stdout and "--bootstrap 200" in proc.stdout
    rerun = _fit(
        str(tmp_path / "runs.csv"), "--approach", "all", "--bootstrap", "200"
    )  # the advice, followed
    assert rerun.returncode == 0 and "--bootstrap 200" not in rerun.stdout
    # what resampling cannot give (L_opt of 3 budgets) is said without advising a bootstrap again
    assert "agreement with Approach 2 (IsoFLOP) not judged on L_opt" in rerun.stdout


def test_advice_in_errors_names_the_command_line_flag_too():
    """Advice printed on the command line must be doable there: the flag beside the Python keyword."""
    import pytest

    from flops_fit.training.jobs import LocalJob

    with pytest.raises(ValueError, match=r"dataset= \(--dataset on the command line.*--mode mock"):
        LocalJob(model=None, dataset=None)


def test_few_steps_warning_names_the_budget_flags():
    import warnings

    from flops_fit.plan.planner import SweepPlanner

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SweepPlanner(1e12, 1e14, 3, 5, batch_size=256, tokens_per_sample=512).plan()
    texts = [str(w.message) for w in caught if "optimiser steps" in str(w.message)]
    assert texts and all("--min-flops or the smallest of --budgets" in t for t in texts)
