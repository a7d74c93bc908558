"""A Result's files in its folder: what :meth:`Result.save` writes and :meth:`Result.load` reads.

A folder holds each thing once (:mod:`flops_fit.core.sweepdir`). The Result adds the laws
(``scaling_laws.json``), its notes (``result.json``: primary approach, options, back-test, warnings), the
Chinchilla tables and the figures; the plan (``sweep.json``) and the ledger (``results.jsonl``) stay the
only copies of what they hold. The exports ``runs.json``/``runs.csv`` (the runs table) and ``plan.json``
(the plan) are written on request, or where the folder has no ledger / no plan of its own (a Result fitted to
a table in memory): the folder then still loads. Folders of flops-fit 0.1.0 (which held those copies
too) load as they are.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import Fit, fit_from_dict
from flops_fit.core import sweepdir
from flops_fit.core.io import atomic_write_json, atomic_write_text, read_json
from flops_fit.core.ledger import load_results
from flops_fit.core.sweepdir import SweepDir
from flops_fit.plan.sweep import SweepPlan, load_plan_runs
from flops_fit.report.backtest import Selection
from flops_fit.report.laws import (
    MALFORMED,
    ScalingAnalysis,
    check_uniform,
    malformed,
    read_laws,
    write_laws,
)
from flops_fit.report.view import ResultView

logger = logging.getLogger(__name__)

RESULT_VERSION = 1
#: The plan's export, written beside the runs export where the folder has no ``sweep.json`` of its own.
PLAN_EXPORT_FILE = sweepdir.LEGACY_PLAN_FILE


def _plain(value: Any) -> Any:
    """A JSON value for one table cell: NaN/inf -> None, NumPy scalars and arrays -> Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # timestamps and other objects: their text


def runs_to_records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The runs table as JSON-ready dicts, exactly (floats keep all their digits; NaN becomes null)."""
    return [{str(k): _plain(v) for k, v in row.items()} for row in runs.to_dict(orient="records")]


def sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Writing


def write_result(
    result: ResultView, directory: str | os.PathLike[str], *, plots: bool, export_runs: bool | None
) -> Path:
    """Write ``result``'s files to ``directory`` (see :meth:`Result.save`) and return the folder's path."""
    folder = SweepDir(directory)
    folder.root.mkdir(parents=True, exist_ok=True)
    laws = write_laws(folder.scaling_laws, result.to_analysis())
    backtest = result.last_backtest
    meta = {
        "version": RESULT_VERSION,
        "laws_sha256": sha256(laws),  # which scaling_laws.json these notes belong to
        "primary": result.primary,
        "synthetic": result.synthetic_banner,  # mock runs: what every view says first (None: real training)
        "budget_rtol": result.budget_rtol,
        "skipped": dict(result.skipped),
        "fit_options": dict(result.fit_options),
        "backtest": None if backtest is None else runs_to_records(backtest),
        "warnings": result.warnings,
        "design": result.layout.to_dict(),
        "selection": None if result.selection is None else result.selection.to_dict(),
        "variants": _plain(
            {name: fit.to_dict() for name, fit in result.variants.items()}
        ),  # strict JSON: NaN -> null
    }
    atomic_write_json(folder.result, meta, allow_nan=False)
    atomic_write_text(folder.table, result.tables_markdown())
    write_exports(result, folder, export_runs)
    if plots:
        result.plot(save_dir=folder.root)
    logger.info("saved the result to %s", folder.root)
    return folder.root


def write_exports(result: ResultView, folder: SweepDir, export_runs: bool | None) -> None:
    """The runs table as ``runs.json`` (loss curves included) and ``runs.csv`` (without), and the plan as
    ``plan.json``: always with ``export_runs=True``, never with False, and with None only where the folder
    lacks the ledger holding the result's runs (for the runs) or ``sweep.json`` (for the plan) that
    :func:`read_result` would read."""
    runs = not _ledger_holds(folder, result.runs) if export_runs is None else export_runs
    if runs:
        atomic_write_json(folder.runs_export, runs_to_records(result.runs), allow_nan=False)
        flat = result.runs.drop(columns=[c for c in ("curve",) if c in result.runs.columns])
        atomic_write_text(folder.runs_csv_export, flat.to_csv(index=False, float_format="%.17g"))
    plan = not folder.plan.is_file() if export_runs is None else export_runs
    if plan and result.plan is not None:
        result.plan.save(folder / PLAN_EXPORT_FILE)


def _ledger_holds(folder: SweepDir, runs: pd.DataFrame) -> bool:
    """Whether the folder's ledger has a record of every run in ``runs`` (so it need not be exported)."""
    ledger = folder.ledger_file()
    if ledger is None or "experiment_id" not in runs.columns:
        return False
    try:
        recorded = {str(r.get("experiment_id")) for r in load_results(ledger)}
    except (OSError, ValueError):
        return False
    return set(runs["experiment_id"].astype(str)) <= recorded


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True, eq=False)
class SavedResult:
    """What a result folder holds: the runs the laws were fitted to, the laws, the plan (None without one),
    the notes of ``result.json`` (empty when absent or written for earlier laws), their back-test, the
    variants fitted beside the approaches and why the primary answer is primary (None when not recorded)."""

    runs: pd.DataFrame
    analysis: ScalingAnalysis
    plan: SweepPlan | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    backtest: pd.DataFrame | None = None
    variants: Mapping[str, Fit] = field(default_factory=dict)
    selection: Selection | None = None


def read_result(
    directory: str | os.PathLike[str], runs: pd.DataFrame | str | os.PathLike[str] | None = None
) -> SavedResult:
    """Read a folder written by :meth:`Result.save`, ``flops-fit analyze`` or ``ScalingLawAnalyzer`` (see
    :meth:`Result.load`); ``runs``: the table or results file the laws were fitted to (default: the folder's)."""
    folder = SweepDir(directory)
    if not folder.scaling_laws.is_file():
        raise FileNotFoundError(
            f"{folder.scaling_laws} does not exist; write it with Result.save({str(folder.root)!r})"
        )
    analysis = read_laws(folder.scaling_laws)
    meta = _read_meta(folder, analysis)
    table = runs if isinstance(runs, pd.DataFrame) else _read_runs(folder, analysis, runs)
    try:
        backtest = pd.DataFrame.from_records(meta["backtest"]) if meta.get("backtest") else None
        variants = {name: fit_from_dict(d) for name, d in (meta.get("variants") or {}).items()}
        selection = Selection.from_dict(meta["selection"]) if meta.get("selection") else None
    except (ValueError, *MALFORMED) as exc:
        raise malformed(folder.result, exc) from None
    named = {*analysis.fits, *variants}
    if backtest is not None and not set(backtest["approach"].dropna()) <= named:
        unknown = sorted(set(backtest["approach"].dropna()) - named)
        raise ValueError(f"{folder.result}: the back-test names approaches that were not fitted: {unknown}")
    return SavedResult(table, analysis, _read_plan(folder), meta, backtest, variants, selection)


def _read_meta(folder: SweepDir, analysis: ScalingAnalysis) -> dict[str, Any]:
    """The notes of ``result.json``; empty when there is none or it belongs to earlier laws (logged)."""
    if not folder.result.is_file():
        return {}
    meta = read_json(folder.result)
    check_meta(meta, folder.result)
    if meta.get("version", RESULT_VERSION) > RESULT_VERSION:
        raise ValueError(f"{folder.result} is newer than this flops-fit understands; upgrade flops-fit")
    recorded = meta.get("laws_sha256")
    stale = (recorded is not None and recorded != sha256(folder.scaling_laws)) or (
        meta.get("primary") is not None and meta["primary"] not in analysis.fits
    )
    if stale:  # the laws were refitted since (e.g. by flops-fit analyze): its notes are not theirs
        logger.warning(
            "%s belongs to an earlier fit than %s; ignoring its primary approach, back-test and options",
            folder.result,
            folder.scaling_laws.name,
        )
        return {}
    return meta


#: The entries of ``result.json``: (allowed types, what it must be). Each may also be null or missing.
_META_SHAPE: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((int,), "an integer"),
    "laws_sha256": ((str,), "the hex sha256 of scaling_laws.json"),
    "primary": ((str,), "the primary approach's name"),
    "synthetic": ((str,), "the mock-results banner"),
    "budget_rtol": ((int, float), "a number"),
    "skipped": ((dict,), "an object: approach name -> why it was not fitted"),
    "fit_options": ((dict,), "an object of fit options"),
    "backtest": ((list,), "a list of objects, one per back-test row"),
    "warnings": ((list,), "a list of strings"),
    "design": ((dict,), "an object"),
    "selection": ((dict,), "an object with 'primary'"),
    "variants": ((dict,), "an object: variant name -> fit"),
}


def check_meta(meta: Any, path: Path) -> None:
    """The shape of a ``result.json`` before anything is converted; a ValueError naming ``path``."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object (a Result's notes), got {type(meta).__name__}")
    for key, (types, what) in _META_SHAPE.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f"{path}: {key!r} must be {what}, got {value!r:.60}")
    nested = {
        "backtest": all(isinstance(row, dict) for row in meta.get("backtest") or []),
        "warnings": all(isinstance(w, str) for w in meta.get("warnings") or []),
        "variants": all(isinstance(v, dict) for v in (meta.get("variants") or {}).values()),
        "skipped": all(isinstance(v, str) for v in (meta.get("skipped") or {}).values()),
        "selection": isinstance((meta.get("selection") or {"primary": ""}).get("primary"), str)
        and isinstance((meta.get("selection") or {}).get("scores") or {}, dict),
    }
    for key, ok in nested.items():
        if not ok:
            raise ValueError(f"{path}: {key!r} must be {_META_SHAPE[key][1]}")
    _check_backtest(meta.get("backtest") or [], path)
    check_uniform(meta.get("variants") or {}, f"{path}: variants")


#: Back-test columns holding text, and those holding true/false; every other column holds numbers.
_KIND_NAMES = {(True, False): "text", (False, True): "true or false", (False, False): "a number"}
_TEXT_COLUMNS = frozenset({"approach", "kind", "measured_from", "error"})
_FLAG_COLUMNS = frozenset({"params_within_ci", "loss_within_ci"})


def _check_backtest(rows: list[dict[str, Any]], path: Path) -> None:
    """The back-test rows of ``result.json``: the same columns in each, each value null or of its column's
    kind (text, true/false, or a number)."""
    for i, row in enumerate(rows):
        if set(row) != set(rows[0]) or "approach" not in row:
            raise ValueError(
                f"{path}: backtest[{i}] must have the columns of backtest[0], 'approach' among them"
            )
        for key, value in row.items():
            kind = str if key in _TEXT_COLUMNS else bool if key in _FLAG_COLUMNS else (int, float)
            if value is not None and (
                not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
            ):
                what = _KIND_NAMES[key in _TEXT_COLUMNS, key in _FLAG_COLUMNS]
                raise ValueError(f"{path}: backtest[{i}][{key!r}] must be null or {what}, got {value!r:.40}")


def _read_runs(
    folder: SweepDir, analysis: ScalingAnalysis, runs: str | os.PathLike[str] | None
) -> pd.DataFrame:
    """The runs the laws were fitted to, from ``runs`` (a results file) or the folder: its ledger, else its
    runs export (a Result fitted in memory, or a ledger that lacks some of the runs)."""
    if runs is not None:
        paths = [Path(runs)]
    else:
        paths = [p for p in (folder.ledger_file(), folder.runs_export) if p is not None and p.is_file()]
        if not paths:
            raise FileNotFoundError(
                f"neither {folder.results} nor {folder.runs_export} exists; pass runs= (the results file the "
                "laws were fitted to)"
            )
    if analysis.run_ids is None:  # laws from before run ids were kept: filter by the folder's plan
        own = paths[0] == folder.results and folder.plan.is_file()
        return load_plan_runs(paths[0], folder.plan if own else None)
    return analysis.runs_of(_table_holding(paths, set(analysis.run_ids)))


def _table_holding(paths: list[Path], run_ids: set[str]) -> pd.DataFrame:
    """The runs table of the first of ``paths`` that holds every run of ``run_ids``; else of the first one
    that can be read (the missing runs are then logged by :meth:`ScalingAnalysis.runs_of`)."""
    first: pd.DataFrame | None = None
    error: ValueError | None = None
    for path in paths:
        try:
            table = load_plan_runs(path, None)
        except ValueError as exc:  # e.g. a ledger with no run yet: the export may hold them
            error = error or exc
            continue
        if run_ids <= set(table["experiment_id"].astype(str)):
            return table
        first = table if first is None else first
    if first is None:
        assert error is not None
        raise error
    return first


def _read_plan(folder: SweepDir) -> SweepPlan | None:
    """The folder's plan (``sweep.json``, else the ``plan.json`` of an export or of 0.1.0), or None; a plan
    that cannot be read is logged and left out (it only names the closest model size)."""
    path = folder.plan_file()
    if path is None:
        return None
    try:
        return SweepPlan.load(path)
    except ValueError as exc:
        logger.warning("cannot read the plan %s (%s); loading the result without it", path, exc)
        return None
