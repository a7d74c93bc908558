"""flops-fit: compute-optimal scaling laws for your own model and data.

Plan an IsoFLOP sweep, train every point, fit Chinchilla Approaches 1-3 with uncertainty, and report
N_opt (parameters), D_opt (tokens) and the expected loss for any compute budget C (FLOPs).
"""

from __future__ import annotations

import importlib
from typing import Any

from flops_fit.core import compat
from flops_fit.core.version import __version__

#: Each public name and the module it lives in, imported on first use (``import flops_fit`` and the
#: command line's ``--help`` load no torch, pandas, scipy or matplotlib).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "EnvelopeFit",
            "IsoFLOPFit",
            "ParametricFit",
            "PowerLawFit",
            "chinchilla_table",
            "detect_outliers",
            "fit_envelope",
            "fit_isoflop",
            "fit_parametric",
            "fit_power_law",
        ],
        "flops_fit.analysis",
    ),
    "find_optimal": "flops_fit.app.pipeline",
    "Experiment": "flops_fit.core.experiment",
    "load_runs": "flops_fit.core.runs",
    "CostEstimate": "flops_fit.plan.cost",
    "TransformerShape": "flops_fit.plan.flops",
    "chinchilla_flops_per_token": "flops_fit.plan.flops",
    "count_params": "flops_fit.plan.flops",
    "SweepPlanner": "flops_fit.plan.planner",
    "IsoFLOPDesign": "flops_fit.plan.design",
    "WSDDesign": "flops_fit.plan.wsd",
    "ModelSpec": "flops_fit.plan.spec",
    "PowerLawLR": "flops_fit.plan.spec",
    "SweepPlan": "flops_fit.plan.sweep",
    "ScalingAnalysis": "flops_fit.report.analyzer",
    "ScalingLawAnalyzer": "flops_fit.report.analyzer",
    "write_report": "flops_fit.report.html",
    "ScalingVisualizer": "flops_fit.report.plots",
    "Result": "flops_fit.report.result",
    **dict.fromkeys(["Callback", "TrainConfig", "TrainOutcome", "train"], "flops_fit.training"),
    "TrainingRunner": "flops_fit.training.runner",
}

compat.install()  # the module paths of release 0.1.0 keep working (with a DeprecationWarning)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in this module)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flops_fit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Callback",
    "CostEstimate",
    "EnvelopeFit",
    "Experiment",
    "IsoFLOPDesign",
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
    "WSDDesign",
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
