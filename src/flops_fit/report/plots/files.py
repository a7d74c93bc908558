"""The figures' files: reading the runs and fits an analysis wrote, and writing figures atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from flops_fit.analysis.approaches import FIT_TYPES, fit_from_dict
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.core.io import atomic_write, read_json
from flops_fit.report.laws import MALFORMED, ScalingAnalysis, check_laws, malformed


def read_analysis(
    results_path: str | os.PathLike[str],
    scaling_laws_path: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None,
    budget_rtol: float | None,
    plan: Any,
) -> tuple[pd.DataFrame, dict[str, Any], float]:
    """(runs, fits, budget_rtol) of a results file and the scaling-laws file the analyzer wrote from it.

    The runs are exactly those the analysis read when it recorded their ids, else ``plan``'s runs (a
    plan file path or a SweepPlan; None: every run). ``budget_rtol`` defaults to the IsoFLOP fit's own,
    else the recorded one, else the library default.
    """
    from flops_fit.plan.sweep import load_plan_runs

    if not Path(results_path).is_file():
        raise FileNotFoundError(f"results file {str(results_path)!r} does not exist")
    data = _read_laws(Path(scaling_laws_path))
    try:
        # a variant that was primary rides along under its own name (e.g. "parametric:alpha=beta"): not drawn
        fits = {name: fit_from_dict(d) for name, d in data["fits"].items() if name in FIT_TYPES}
        analysis = ScalingAnalysis.from_dict(data) if isinstance(data.get("run_ids"), list) else None
    except (ValueError, *MALFORMED) as exc:
        raise malformed(scaling_laws_path, exc) from None
    if analysis is not None:  # exactly the runs the analysis read, whatever the plan
        runs = analysis.runs_of(load_plan_runs(results_path, None, columns))
    else:
        runs = load_plan_runs(results_path, plan, columns)
    if budget_rtol is None:
        budget_rtol = _grouping_of(fits, data.get("budget_rtol"))
    return runs, fits, budget_rtol


def _read_laws(path: Path) -> dict[str, Any]:
    """The JSON of a scaling-laws file, checked (:func:`check_laws`) to hold a non-empty ``fits`` mapping."""
    if not path.is_file():
        raise FileNotFoundError(
            f"scaling laws file {str(path)!r} does not exist; run ScalingLawAnalyzer(...).analyze() first"
        )
    data = read_json(path)
    check_laws(data, path, primary_laws=False)  # the figures read the fits only
    fit_dicts = data.get("fits")
    if not isinstance(fit_dicts, Mapping) or not fit_dicts:
        raise ValueError(
            f"{path} has no 'fits' mapping of approach name to fit; write it with "
            "ScalingLawAnalyzer(...).analyze()"
        )
    return data


def _grouping_of(fits: Mapping[str, Any], recorded: Any) -> float:
    """The budget_rtol the analysis grouped budgets with."""
    iso = fits.get("isoflop")
    if isinstance(iso, IsoFLOPFit):
        return iso.budget_rtol
    return DEFAULT_BUDGET_RTOL if recorded is None else float(recorded)


def check_formats(formats: Iterable[str] | str) -> list[str]:
    """The file formats (``"png"``, ``".SVG"``, ...) as lower-case names matplotlib can write, deduplicated."""
    if isinstance(formats, str):
        formats = (formats,)
    try:
        fmts = [str(f).lower().lstrip(".") for f in formats]
    except TypeError:
        raise TypeError(
            f"formats must be a sequence of file formats such as ('png', 'svg'), got {formats!r}"
        ) from None
    supported = Figure().canvas.get_supported_filetypes()
    unknown = [f for f in fmts if f not in supported]
    if unknown or not fmts:
        raise ValueError(f"formats must name at least one of {sorted(supported)}, got {list(formats)}")
    return list(dict.fromkeys(fmts))


def save_atomic(fig: Figure, path: Path, fmt: str, dpi: float) -> None:
    """Save the figure to ``path`` atomically (never a half-written file; see :mod:`flops_fit.core.io`).

    SVG and PDF files carry no date, so the same figure gives the same bytes."""
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi, metadata=metadata))
