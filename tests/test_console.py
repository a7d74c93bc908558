"""Warnings on the command line: every command shows a library warning as one log line with its message only
(app/console.py), while the Python API keeps raising them through ``warnings``."""

import logging
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from flops_fit.app.console import warnings_as_log_lines
from synth import isoflop_sweep

#: A log line as the commands write it: ``LEVEL logger: message``.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S")


def _assert_clean(err: str, needle: str) -> None:
    """``err`` shows ``needle`` on exactly one line, and no raw warning: no py.warnings logger, no
    ``file.py:LINE`` location, no source line, no traceback."""
    assert "py.warnings" not in err and "Traceback" not in err, err
    assert not re.search(r"\.py:\d+", err), err
    assert "warnings.warn(" not in err and "planner.plan()" not in err, err
    assert sum(needle in line for line in err.splitlines()) == 1, err


def test_a_warning_is_one_log_line_with_its_message_once(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings_as_log_lines()
        with caplog.at_level(logging.WARNING, logger="flops_fit"):
            for _ in range(2):  # the same text twice (from one place or two) is shown once
                warnings.warn("budget C=1e+20 left out\n    of the laws", UserWarning, stacklevel=1)
            warnings.warn("another problem", UserWarning, stacklevel=1)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("flops_fit", "WARNING", "budget C=1e+20 left out of the laws"),
        ("flops_fit", "WARNING", "another problem"),
    ]


def test_the_api_still_warns_through_warnings():
    """Only the commands render warnings as log lines: a library call raises a UserWarning as ever."""
    from flops_fit.plan.planner import SweepPlanner

    with pytest.warns(UserWarning, match="fewer than 100 optimiser steps"):
        SweepPlanner(1e12, 1e14, 3, 5, batch_size=256, tokens_per_sample=512).plan()


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flops_fit.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_fit_shows_a_flagged_budget_as_one_clean_line(tmp_path):
    n, d, loss, c = isoflop_sweep(budgets=(1e17, 1e18, 1e19, 1e20), sizes=7)
    above = (c == 1e20) & (np.arange(n.size) % 7 > 3)  # the top budget lacks its larger sizes: edge_large
    path = tmp_path / "flagged.csv"
    pd.DataFrame({"N": n[~above], "D": d[~above], "C": c[~above], "L": loss[~above]}).to_csv(
        path, index=False
    )
    r = _cli("fit", str(path), "--n-col", "N", "--d-col", "D", "--c-col", "C", "--loss-col", "L",
             "--approach", "isoflop")  # fmt: skip
    assert r.returncode == 0, r.stderr
    _assert_clean(r.stderr, "1 budget(s) left out of the power laws")
    assert all(LOG_LINE.match(line) for line in r.stderr.splitlines()), r.stderr


def test_plan_shows_the_planners_warning_as_one_clean_line(tmp_path):
    r = _cli("plan", "--out", str(tmp_path / "p"), "--min-flops", "1e12", "--max-flops", "1e14", "--sizes", "5",
             "--batch-size", "256", "--tokens-per-sample", "512")  # fmt: skip
    assert r.returncode == 0, r.stderr
    _assert_clean(r.stderr, "fewer than 100 optimiser steps")
    assert all(LOG_LINE.match(line) for line in r.stderr.splitlines()), r.stderr


def test_hydra_stage_shows_the_planners_warning_as_one_clean_line(tmp_path):
    code = "import sys; from flops_fit.app.stages import plan_main; sys.argv[0] = 'ff-plan'; plan_main()"
    overrides = [f"output.dir={tmp_path / 'p'}", "compute.min_flops=1e12", "compute.max_flops=1e14",
                 "sweep.num_model_sizes=5", "sweep.batch_size=256", "sweep.tokens_per_sample=512"]  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-c", code, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr
    _assert_clean(r.stdout + r.stderr, "fewer than 100 optimiser steps")
