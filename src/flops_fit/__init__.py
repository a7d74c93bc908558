"""flops-fit: compute-optimal scaling laws for your own model and data.

Plan an IsoFLOP sweep, train every point, fit Chinchilla Approaches 1-3 with uncertainty, and report
N_opt (parameters), D_opt (tokens) and the expected loss for any compute budget C (FLOPs).
"""

from flops_fit.analysis import (
    EnvelopeFit,
    IsoFLOPFit,
    ParametricFit,
    PowerLawFit,
    ScalingAnalysis,
    ScalingLawAnalyzer,
    chinchilla_table,
    detect_outliers,
    fit_envelope,
    fit_isoflop,
    fit_parametric,
    fit_power_law,
)
from flops_fit.api import find_optimal
from flops_fit.flops import TransformerShape, chinchilla_flops_per_token, count_params
from flops_fit.planning import CostEstimate, Experiment, ModelSpec, PowerLawLR, SweepPlan, SweepPlanner
from flops_fit.plotting import ScalingVisualizer
from flops_fit.report import write_report
from flops_fit.result import Result
from flops_fit.runs import load_runs
from flops_fit.training import Callback, TrainConfig, TrainOutcome, train
from flops_fit.training.runner import TrainingRunner

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CostEstimate",
    "EnvelopeFit",
    "Experiment",
    "IsoFLOPFit",
    "ModelSpec",
    "ParametricFit",
    "PowerLawFit",
    "PowerLawLR",
    "Result",
    "ScalingAnalysis",
    "ScalingLawAnalyzer",
    "ScalingVisualizer",
    "SweepPlan",
    "SweepPlanner",
    "TrainConfig",
    "TrainOutcome",
    "TrainingRunner",
    "TransformerShape",
    "__version__",
    "chinchilla_flops_per_token",
    "chinchilla_table",
    "count_params",
    "detect_outliers",
    "find_optimal",
    "fit_envelope",
    "fit_isoflop",
    "fit_parametric",
    "fit_power_law",
    "load_runs",
    "train",
    "write_report",
]
