"""flops-fit: compute-optimal scaling laws for your own model and data.

Plan an IsoFLOP sweep, train every point, fit Chinchilla Approaches 1-3 with uncertainty, and report
N_opt (parameters), D_opt (tokens) and the expected loss for any compute budget C (FLOPs).
"""

from flops_fit.analysis import (
    EnvelopeFit,
    IsoFLOPFit,
    ParametricFit,
    PowerLawFit,
    chinchilla_table,
    detect_outliers,
    fit_envelope,
    fit_isoflop,
    fit_parametric,
    fit_power_law,
)
from flops_fit.app.pipeline import find_optimal
from flops_fit.core import compat
from flops_fit.core.experiment import Experiment
from flops_fit.core.runs import load_runs
from flops_fit.core.version import __version__
from flops_fit.plan.cost import CostEstimate
from flops_fit.plan.flops import TransformerShape, chinchilla_flops_per_token, count_params
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec, PowerLawLR
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.analyzer import ScalingAnalysis, ScalingLawAnalyzer
from flops_fit.report.html import write_report
from flops_fit.report.plots import ScalingVisualizer
from flops_fit.report.result import Result
from flops_fit.training import Callback, TrainConfig, TrainOutcome, train
from flops_fit.training.runner import TrainingRunner

compat.install()  # the module paths of release 0.1.0 keep working (with a DeprecationWarning)

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
