"""The module paths of release 0.1.0 still import (with a DeprecationWarning) after the move into layers."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import flops_fit
from flops_fit.core.compat import MOVED

#: An old path, a name it held, and where that name lives now.
CASES = [
    ("flops_fit.planning", "SweepPlanner", flops_fit.SweepPlanner),
    ("flops_fit.planning", "Experiment", flops_fit.Experiment),
    ("flops_fit.planning", "PLAN_FILE", "sweep.json"),
    ("flops_fit.result", "Result", flops_fit.Result),
    ("flops_fit.runs", "load_runs", flops_fit.load_runs),
    ("flops_fit.flops", "count_params", flops_fit.count_params),
    ("flops_fit.plotting", "ScalingVisualizer", flops_fit.ScalingVisualizer),
    ("flops_fit.api", "find_optimal", flops_fit.find_optimal),
    ("flops_fit.training.config", "TrainConfig", flops_fit.TrainConfig),
    ("flops_fit.analysis.analyzer", "ScalingLawAnalyzer", flops_fit.ScalingLawAnalyzer),
]


@pytest.mark.parametrize(("old", "name", "now"), CASES)
def test_old_module_paths_still_import_and_warn(old, name, now):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    assert getattr(module, name) == now


def test_every_moved_path_names_modules_that_exist():
    for targets in MOVED.values():
        for target in targets:
            importlib.import_module(target)


def test_a_moved_single_module_is_the_new_module_itself():
    """Monkeypatching through the old path reaches the code that runs (one module object, not a copy)."""
    sys.modules.pop("flops_fit.tracking", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("flops_fit.tracking")
    new = importlib.import_module("flops_fit.app.tracking")
    assert old is new and new.__spec__.name == "flops_fit.app.tracking"
    assert old.MLflowCallback is new.MLflowCallback


def test_names_that_left_a_package_still_import_from_it():
    with pytest.warns(DeprecationWarning, match="flops_fit.report.analyzer"):
        from flops_fit.analysis import ScalingLawAnalyzer
    from flops_fit.report import write_report

    assert ScalingLawAnalyzer is flops_fit.ScalingLawAnalyzer and write_report is flops_fit.write_report


def test_python_m_old_cli_path_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "flops_fit.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "flops-fit" in done.stdout
