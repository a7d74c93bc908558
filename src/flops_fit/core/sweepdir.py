"""The sweep folder: the one place that knows its file names.

A sweep folder holds each thing once::

    sweep.json           the plan (experiments, model spec, train config)          written by planning
    results.jsonl        the append-only ledger, one JSON record per finished run   written by training
    checkpoints/<id>.pt  in-flight checkpoints, removed when a run finishes          written by training
    checkpoints/<trunk>.b<step>.pt  a WSD trunk's state at a branch point, removed with its trunk's last branch
    scaling_laws.json    the fitted laws and the run ids they read                  written by the report
    result.json          the primary approach, back-test and options of a Result    written by the report
    chinchilla_table.md  the Chinchilla table of every fitted approach              written by the report
    report.html          the self-contained HTML report                             written by the report
    <figure>.png/.svg    the figures                                                written by the report
    .flops_fit.lock      held by the one runner working in the folder

Derived tables (``runs.json``, ``runs.csv``) are written only when a user asks for an export. Folders of
flops-fit 0.1.0 also hold ``plan.json`` (a copy of ``sweep.json``) and ``runs.json``/``runs.csv`` (copies
of the ledger); they are read only when the primary file is missing (see :meth:`SweepDir.plan_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PLAN_FILE = "sweep.json"
RESULTS_FILE = "results.jsonl"
CHECKPOINT_DIR = "checkpoints"
SCALING_LAWS_FILE = "scaling_laws.json"
RESULT_FILE = "result.json"
TABLE_FILE = "chinchilla_table.md"
REPORT_FILE = "report.html"
LOCK_FILE = ".flops_fit.lock"
#: A checkpoint's file name in the checkpoint folder is the experiment id with this suffix.
CHECKPOINT_SUFFIX = ".pt"
#: Exports of the runs table, written only on request (``Result.save(export_runs=True)``).
RUNS_FILE = "runs.json"
RUNS_CSV_FILE = "runs.csv"
#: Files of earlier releases, read as fallbacks: the plan's copy written by ``Result.save`` in 0.1.0, and the
#: ledger of the first prototype (one JSON list, rewritten after every run).
LEGACY_PLAN_FILE = "plan.json"
LEGACY_RESULTS_FILE = "results.json"

#: Every file name a sweep folder may hold that a tracker or an archive should carry along.
ARTIFACTS: tuple[str, ...] = (
    SCALING_LAWS_FILE,
    RESULT_FILE,
    RUNS_FILE,
    RUNS_CSV_FILE,
    TABLE_FILE,
    PLAN_FILE,
    LEGACY_PLAN_FILE,
    REPORT_FILE,
)


@dataclass(frozen=True)
class SweepDir:
    """A sweep's output folder; each property is the path of one of its files (nothing is created here)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def plan(self) -> Path:
        """``sweep.json``: the plan."""
        return self.root / PLAN_FILE

    @property
    def results(self) -> Path:
        """``results.jsonl``: the append-only ledger."""
        return self.root / RESULTS_FILE

    @property
    def legacy_results(self) -> Path:
        """``results.json``: the prototype's ledger, read when ``results.jsonl`` is absent."""
        return self.root / LEGACY_RESULTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def scaling_laws(self) -> Path:
        return self.root / SCALING_LAWS_FILE

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def table(self) -> Path:
        return self.root / TABLE_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def runs_export(self) -> Path:
        return self.root / RUNS_FILE

    @property
    def runs_csv_export(self) -> Path:
        return self.root / RUNS_CSV_FILE

    def checkpoint(self, experiment_id: str) -> Path:
        """``checkpoints/<experiment_id>.pt``: the checkpoint of a run in flight (see :func:`checkpoint_file`)."""
        return checkpoint_file(self.checkpoints, experiment_id)

    def figure(self, name: str, fmt: str = "png") -> Path:
        return self.root / f"{name}.{fmt}"

    def plan_file(self) -> Path | None:
        """The plan to read: ``sweep.json``, else a 0.1.0 folder's ``plan.json``; None when neither exists."""
        for path in (self.plan, self.root / LEGACY_PLAN_FILE):
            if path.is_file():
                return path
        return None

    def ledger_file(self) -> Path | None:
        """The ledger to read: ``results.jsonl``, else the prototype's ``results.json``; None if neither."""
        for path in (self.results, self.legacy_results):
            if path.is_file():
                return path
        return None


def checkpoint_file(checkpoint_dir: str | os.PathLike[str], experiment_id: str) -> Path:
    """The checkpoint of ``experiment_id`` in ``checkpoint_dir`` (the sweep's ``checkpoints/`` or a folder
    the user named, e.g. shared storage for a cluster)."""
    return Path(checkpoint_dir) / f"{experiment_id}{CHECKPOINT_SUFFIX}"


def branch_point_file(checkpoint_dir: str | os.PathLike[str], trunk_id: str, step: int) -> Path:
    """The checkpoint of trunk ``trunk_id`` after ``step`` optimiser steps, where a cooldown branch starts."""
    return Path(checkpoint_dir) / f"{trunk_id}.b{int(step)}{CHECKPOINT_SUFFIX}"


def branch_points(checkpoint_dir: str | os.PathLike[str], trunk_id: str) -> dict[int, Path]:
    """The branch-point files of trunk ``trunk_id`` present in ``checkpoint_dir``, by optimiser step (the
    inverse of :func:`branch_point_file`)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.glob(f"{trunk_id}.b*{CHECKPOINT_SUFFIX}"):
        step = path.name[len(trunk_id) + 2 : -len(CHECKPOINT_SUFFIX)]
        if step.isdigit():
            found[int(step)] = path
    return found
