"""``ScalingLawAnalyzer``: results file in, ``scaling_laws.json`` and predictions out.

The file-based front end of the analysis (the API of the original flops-fit seeds). The numerical work is
done by the pure fits in :mod:`flops_fit.analysis`; this class only reads, dispatches and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import (
    PRIMARY_ORDER,
    Fit,
    fit_from_dict,
    resolve_approaches,
    run_approaches,
)
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets, lowest_loss_per_budget
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.power_law import PowerLawFit
from flops_fit.analysis.power_law import fit_power_law as _fit_power_law
from flops_fit.core.io import atomic_write_json
from flops_fit.core.runs import completed, usable
from flops_fit.core.validate import check_bootstrap, check_budget_rtol, check_flag, check_seed

logger = logging.getLogger(__name__)

SCALING_LAWS_VERSION = 1
SCALING_LAWS_FILE = "scaling_laws.json"


def laws_of(fit: Fit) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
    """The N_opt(C), D_opt(C), L_opt(C) power laws of any approach's fit."""
    if hasattr(fit, "n_opt_fit"):
        return fit.n_opt_fit, fit.d_opt_fit, fit.l_opt_fit
    return fit.power_laws()


@dataclass(frozen=True, eq=False)
class ScalingAnalysis:
    """The fitted scaling laws of one analysis.

    ``n_opt_fit``, ``d_opt_fit``, ``l_opt_fit``: the primary approach's laws N_opt(C), D_opt(C), L_opt(C)
    (C in FLOPs, N in parameters, D in tokens). ``optimal_points``: the best run of each budget bucket (or the
    IsoFLOP minima). ``optimal_ratio``: median D/N (tokens per parameter) at those points. ``fits``: every
    approach that was fitted, by name.
    """

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    optimal_points: pd.DataFrame
    optimal_ratio: float
    approach: str = "isoflop"
    fits: dict[str, Fit] = field(default_factory=dict)
    #: The ``experiment_id`` of every run the analysis read (after any plan filter), and the budget
    #: grouping it used: plots and reports of the same folder then show exactly these runs.
    run_ids: tuple[str, ...] | None = None
    budget_rtol: float | None = None

    def predict_optimal_size(self, target_compute: float) -> dict[str, Any]:
        """N_opt, D_opt, expected loss and tokens per parameter at ``target_compute`` FLOPs (with 95% CIs)."""
        try:
            c = float(target_compute)
        except (TypeError, ValueError):
            c = math.nan
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"target_compute must be a positive number of FLOPs, got {target_compute!r}")
        fit = self.fits.get(self.approach)
        if fit is not None:
            opt = fit.optimal(c)
        else:
            n, d, l = self.n_opt_fit.predict(c), self.d_opt_fit.predict(c), self.l_opt_fit.predict(c)
            opt = {"optimal_params": n, "optimal_tokens": d, "optimal_loss": l, "tokens_per_param": d / n}
        return {
            "target_compute": c,
            "optimal_params": float(opt["optimal_params"]),
            "optimal_tokens": float(opt["optimal_tokens"]),
            "expected_loss": float(opt["optimal_loss"]),
            "tokens_per_param": float(opt["tokens_per_param"]),
            "optimal_params_ci": opt.get("optimal_params_ci"),
            "optimal_tokens_ci": opt.get("optimal_tokens_ci"),
            "expected_loss_ci": opt.get("optimal_loss_ci"),
            "approach": self.approach,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCALING_LAWS_VERSION,
            "approach": self.approach,
            "n_opt_fit": self.n_opt_fit.to_dict(),
            "d_opt_fit": self.d_opt_fit.to_dict(),
            "l_opt_fit": self.l_opt_fit.to_dict(),
            "optimal_points": _records(self.optimal_points),
            "optimal_ratio": self.optimal_ratio,
            "fits": {name: fit.to_dict() for name, fit in self.fits.items()},
            "run_ids": None if self.run_ids is None else list(self.run_ids),
            "budget_rtol": self.budget_rtol,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingAnalysis:
        version = d.get("version", SCALING_LAWS_VERSION)
        if version > SCALING_LAWS_VERSION:
            raise ValueError(f"scaling laws file version {version} is newer than this flops-fit understands")
        return cls(
            n_opt_fit=PowerLawFit.from_dict(d["n_opt_fit"]),
            d_opt_fit=PowerLawFit.from_dict(d["d_opt_fit"]),
            l_opt_fit=PowerLawFit.from_dict(d["l_opt_fit"]),
            optimal_points=pd.DataFrame.from_records(d.get("optimal_points", [])),
            optimal_ratio=float(d.get("optimal_ratio", math.nan)),
            approach=str(d.get("approach", "isoflop")),
            fits={name: fit_from_dict(fd) for name, fd in (d.get("fits") or {}).items()},
            run_ids=None if d.get("run_ids") is None else tuple(str(i) for i in d["run_ids"]),
            budget_rtol=None if d.get("budget_rtol") is None else float(d["budget_rtol"]),
        )

    def runs_of(self, runs: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``runs`` this analysis read (all of them when it did not record its run ids)."""
        if self.run_ids is None:
            return runs
        keep = runs["experiment_id"].astype(str).isin(set(self.run_ids))
        missing = len(set(self.run_ids) - set(runs["experiment_id"].astype(str)))
        if missing:
            logger.warning("%d run(s) the analysis read are not in this results table", missing)
        return runs[keep].reset_index(drop=True)

    def summary(self) -> str:
        parts = [f"Scaling laws (primary approach: {self.approach})"]
        parts += [fit.summary() for fit in self.fits.values()]
        parts.append(f"Median tokens per parameter at the per-budget optima: {self.optimal_ratio:.1f}")
        return "\n\n".join(parts)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, tuple)).any():
            out[col] = out[col].map(list)
    return json.loads(out.to_json(orient="records"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to ``path`` atomically (see :mod:`flops_fit.core.io`)."""
    atomic_write_json(path, data)


class ScalingLawAnalyzer:
    """Fit scaling laws to a results file and write ``output_dir/scaling_laws.json``.

    ``approach``: ``"isoflop"`` (Approach 2, the default), ``"parametric"`` (3), ``"envelope"`` (1) or
    ``"all"``; the primary approach, whose laws the analysis reports, is Approach 2, else 3, else 1
    (``PRIMARY_ORDER``). ``plan`` (a ``sweep.json`` path or a :class:`~flops_fit.plan.planning.SweepPlan`) keeps
    only that plan's runs: a ledger can also hold runs of an earlier plan written to the same folder.
    """

    def __init__(
        self,
        results_path: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        approach: str | Sequence[str] = "isoflop",
        *,
        columns: Mapping[str, str] | None = None,
        bootstrap: int = 0,
        seed: int = 0,
        exclude_outliers: bool = True,
        budget_rtol: float = DEFAULT_BUDGET_RTOL,
        plan: str | os.PathLike[str] | Any | None = None,
    ) -> None:
        self.approaches = resolve_approaches(approach)
        if columns is not None and not isinstance(columns, Mapping):
            raise TypeError(
                f"columns must map canonical names to your file's columns, e.g. {{'num_params': 'Model Size'}}, "
                f"got {columns!r}"
            )
        self.results_path = Path(results_path)
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {str(self.output_dir)!r} is a file; pass a directory")
        self.approach = next(n for n in PRIMARY_ORDER if n in self.approaches)  # as a Result picks it
        self.columns = dict(columns) if columns else None
        self.bootstrap = check_bootstrap(bootstrap)
        self.seed = check_seed(seed)
        self.exclude_outliers = check_flag("exclude_outliers", exclude_outliers)
        self.budget_rtol = check_budget_rtol(budget_rtol)
        from flops_fit.plan.planning import as_plan  # the plan's module needs torch; the fits do not

        self.plan = as_plan(plan)
        self.runs_: pd.DataFrame | None = None

    @property
    def scaling_laws_path(self) -> Path:
        return self.output_dir / SCALING_LAWS_FILE

    def _runs(self) -> pd.DataFrame:
        """Every run of the results file, or only the plan's runs when a plan was given."""
        from flops_fit.plan.planning import load_plan_runs

        return load_plan_runs(self.results_path, self.plan, self.columns)

    def load_results(self) -> pd.DataFrame:
        """The completed runs of the results file (.json, .jsonl, .csv or .parquet) as a runs table."""
        return completed(self._runs())

    def find_optimal_per_budget(self, df: pd.DataFrame) -> pd.DataFrame:
        """One row per budget bucket: the run with the lowest final loss (buckets as in the fits)."""
        if df.empty:
            raise ValueError("no completed runs to analyse")
        labels, centers = bucket_budgets(df["compute_budget"].to_numpy(float), rtol=self.budget_rtol)
        work = df.assign(_bucket=labels).dropna(subset=["final_loss"])
        best = work.loc[work.groupby("_bucket")["final_loss"].idxmin()].copy()
        best["budget_bucket"] = centers[best["_bucket"].to_numpy()]
        return best.drop(columns=["_bucket"]).sort_values("compute_budget").reset_index(drop=True)

    def fit_power_law(self, x: Any, y: Any) -> PowerLawFit:
        """y = k x^a by least squares in log space (see :func:`flops_fit.analysis.fit_power_law`)."""
        return _fit_power_law(x, y)

    def analyze(self) -> ScalingAnalysis:
        """Fit every requested approach, write ``scaling_laws.json`` atomically and return the analysis.

        The runs table it read (after the plan filter) is kept as ``runs_``.
        """
        runs = self.runs_ = self._runs()
        fits, _ = run_approaches(  # several asked for: every one the data supports
            self.approaches,
            runs,
            bootstrap=self.bootstrap,
            seed=self.seed,
            exclude=self.exclude_outliers,
            budget_rtol=self.budget_rtol,
        )
        primary = next(n for n in PRIMARY_ORDER if n in fits)
        n_fit, d_fit, l_fit = laws_of(fits[primary])
        iso = fits.get("isoflop")
        if isinstance(iso, IsoFLOPFit):
            points = iso.minima[iso.minima["used"]].reset_index(drop=True)
        else:
            points = lowest_loss_per_budget(usable(runs), self.budget_rtol)
        ratio = (
            float(np.median(points["optimal_tokens"] / points["optimal_params"])) if len(points) else math.nan
        )
        analysis = ScalingAnalysis(
            n_fit,
            d_fit,
            l_fit,
            points,
            ratio,
            primary,
            fits,
            run_ids=tuple(runs["experiment_id"].astype(str)),
            budget_rtol=self.budget_rtol,
        )
        write_json_atomic(self.scaling_laws_path, analysis.to_dict())
        logger.info("wrote %s", self.scaling_laws_path)
        return analysis

    def load_analysis(self) -> ScalingAnalysis:
        """Read ``scaling_laws.json`` back (run :meth:`analyze` first)."""
        if not self.scaling_laws_path.is_file():
            raise FileNotFoundError(f"{self.scaling_laws_path} does not exist; run analyze() first")
        with open(self.scaling_laws_path, encoding="utf-8") as fh:
            return ScalingAnalysis.from_dict(json.load(fh))

    def predict(self, target_compute: float) -> dict[str, Any]:
        """Prediction at ``target_compute`` FLOPs from the saved laws (rebuilt through ``from_dict``)."""
        return self.load_analysis().predict_optimal_size(target_compute)
