"""Scaling-law fits: Chinchilla Approaches 1 (envelope), 2 (IsoFLOP) and 3 (parametric), with uncertainty."""

from typing import Any

from flops_fit.analysis.annealing import AnnealingFit, LossCurve, fit_annealing
from flops_fit.analysis.approaches import APPROACHES, fit_from_dict, resolve_approaches, run_approach
from flops_fit.analysis.bucketing import bucket_budgets
from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from flops_fit.analysis.power_law import PowerLawFit, fit_power_law
from flops_fit.analysis.table import chinchilla_table, to_latex, to_markdown
from flops_fit.core import compat


def __getattr__(name: str) -> Any:
    # Release 0.1.0 exported the analyzer here; it now wraps a Result one layer up (flops_fit.report).
    if name in ("ScalingLawAnalyzer", "ScalingAnalysis"):
        return compat.moved_attribute(__name__, name, "flops_fit.report.analyzer")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APPROACHES",
    "AnnealingFit",
    "EnvelopeFit",
    "IsoFLOPFit",
    "LossCurve",
    "ParametricFit",
    "PowerLawFit",
    "bucket_budgets",
    "chinchilla_table",
    "detect_outliers",
    "fit_annealing",
    "fit_envelope",
    "fit_from_dict",
    "fit_isoflop",
    "fit_parametric",
    "fit_power_law",
    "resolve_approaches",
    "run_approach",
    "to_latex",
    "to_markdown",
]
