"""`flops-fit demo`, the README's first command: its defaults plan a sweep the planner has nothing to warn
about, and its output reads clean (log lines, intervals on every approach, the primary answer last)."""

import re
import subprocess
import sys
import warnings

import pytest
import torch

from flops_fit.examples import gpt_text

LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S")


@pytest.mark.parametrize("design", ["isoflop", "wsd"])
def test_the_default_sweep_gives_no_planner_warning(tmp_path, design):
    """Every planned size distinct after snapping to d_model multiples, every run >= 100 optimiser steps."""
    from flops_fit.plan.planner import FEW_STEPS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = gpt_text.demo_sweep(gpt_text.DEFAULT_BUDGETS, tmp_path / "demo", train=False, design=design)
    assert [str(w.message) for w in caught] == []
    assert min(e.num_steps for e in plan) >= FEW_STEPS
    for c in gpt_text.DEFAULT_BUDGETS:
        sizes = [e.size_value for e in plan if e.compute_budget == c]
        assert len(set(sizes)) == len(sizes) == gpt_text.NUM_MODEL_SIZES, (c, sizes)
    assert all((e.epochs or 0.0) <= 1.0 for e in plan)  # fresh data for every run


def test_one_cpu_thread_is_restored_and_yields_to_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with gpt_text.one_cpu_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    with gpt_text.one_cpu_thread():
        assert torch.get_num_threads() == before


@pytest.mark.slow  # a mock sweep with 200 bootstrap refits per approach, plots and report: ~20-90 s
def test_mock_demo_output_reads_clean(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "flops_fit.app.cli", "demo", "--mock", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "py.warnings" not in r.stderr and "Traceback" not in r.stderr
    assert not re.search(r"\.py:\d+", r.stderr), r.stderr
    assert all(LOG_LINE.match(line) for line in r.stderr.splitlines()), r.stderr
    assert "[1/20] experiment" in r.stderr  # progress, also when stderr is no terminal
    out = r.stdout
    assert "200 bootstrap resamples" in out and "bootstrap=" not in out  # no advice to re-run with bootstrap
    for name in ("Approach 1 (envelope)", "Approach 2 (IsoFLOP)", "Approach 3 (parametric)"):
        assert name in out
    for q in ("N_opt", "D_opt", "L_opt"):  # every approach's value at the largest budget has an interval
        (line,) = [x for x in out.splitlines() if x.strip().startswith(f"{q}: envelope")]
        assert line.count("[") == 3, line
    tail = out.rstrip().splitlines()[-4:]
    assert tail[0].startswith(  # a mock run says so on its last lines too
        "MOCK (synthetic losses, nothing trained): Prediction for C = 4.8e+12 FLOPs (10x the largest budget)"
    )
    assert all(re.search(r"= \S+ \[\S+, \S+\]", x) for x in tail[1:]), tail


@pytest.mark.slow  # a mock WSD sweep, its fits and report: ~20-90 s
def test_mock_demo_with_the_wsd_design_says_what_it_saved(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flops_fit.app.cli",
            "demo",
            "--mock",
            "--design",
            "wsd",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert all(LOG_LINE.match(line) for line in r.stderr.splitlines()), r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("WSD design:")]
    assert re.search(
        r"20 cooldown branches of \d+ constant-learning-rate trunks, \S+ FLOPs trained \(\d+% of", line
    ), line
