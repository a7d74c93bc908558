"""Scaling-law fits: Chinchilla Approaches 1 (envelope), 2 (IsoFLOP) and 3 (parametric), with uncertainty."""

from flops_fit.analysis.approaches import APPROACHES, fit_from_dict, resolve_approaches, run_approach
from flops_fit.analysis.bucketing import bucket_budgets
from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from flops_fit.analysis.power_law import PowerLawFit, fit_power_law
from flops_fit.analysis.table import chinchilla_table, to_latex, to_markdown

__all__ = [
    "APPROACHES",
    "EnvelopeFit",
    "IsoFLOPFit",
    "ParametricFit",
    "PowerLawFit",
    "bucket_budgets",
    "chinchilla_table",
    "detect_outliers",
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
