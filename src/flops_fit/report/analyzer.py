"""``ScalingLawAnalyzer``: results file in, ``scaling_laws.json`` and predictions out.

The file-based front end of the analysis (the API of the original flops-fit seeds), a thin wrapper over
:class:`~flops_fit.report.result.Result`: it reads the results file, fits through :meth:`Result.from_runs`
and writes the laws with the writer :meth:`Result.save` uses (:func:`flops_fit.report.laws.write_laws`).
:class:`ScalingAnalysis` (the laws file's contents) lives in :mod:`flops_fit.report.laws`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flops_fit.analysis.approaches import PRIMARY_ORDER, base_approach, resolve_approaches
from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, bucket_budgets
from flops_fit.analysis.power_law import PowerLawFit
from flops_fit.analysis.power_law import fit_power_law as _fit_power_law
from flops_fit.core import sweepdir
from flops_fit.core.io import atomic_write_json
from flops_fit.core.runs import completed
from flops_fit.core.validate import check_bootstrap, check_budget_rtol, check_flag, check_seed
from flops_fit.plan.sweep import as_plan, load_plan_runs
from flops_fit.report.laws import SCALING_LAWS_VERSION, ScalingAnalysis, laws_of, read_laws, write_laws
from flops_fit.report.result import Result

__all__ = [
    "SCALING_LAWS_FILE",
    "SCALING_LAWS_VERSION",
    "ScalingAnalysis",
    "ScalingLawAnalyzer",
    "laws_of",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

SCALING_LAWS_FILE = sweepdir.SCALING_LAWS_FILE


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to ``path`` atomically (see :mod:`flops_fit.core.io`)."""
    atomic_write_json(path, data)


class ScalingLawAnalyzer:
    """Fit scaling laws to a results file and write ``output_dir/scaling_laws.json``.

    ``approach``: ``"isoflop"`` (Approach 2, the default), ``"parametric"`` (3), ``"envelope"`` (1) or
    ``"all"``. One approach is the primary one, whose laws the analysis reports (Approach 2 on runs without
    designed IsoFLOP profiles, a checkpoint grid say, is a ValueError naming the design); with several,
    :meth:`analyze` fits their variants too and lets the rolling back-test choose the primary answer
    (:meth:`Result.from_runs`), and ``approach`` then names it. Until then it is the first requested in
    ``PRIMARY_ORDER``. ``plan`` (a ``sweep.json`` path or a :class:`~flops_fit.plan.sweep.SweepPlan`) keeps
    only that plan's runs: a ledger can also hold runs of an earlier plan written to the same folder.
    After :meth:`analyze`, ``runs_`` is the runs table it read and ``result_`` the :class:`Result` it fitted.
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
        bases = {base_approach(n) for n in self.approaches}  # as a Result picks it until analyze() chose
        self.approach = next((n for n in self.approaches if n not in bases), None) or next(
            n for n in PRIMARY_ORDER if n in bases
        )
        self.columns = dict(columns) if columns else None
        self.bootstrap = check_bootstrap(bootstrap)
        self.seed = check_seed(seed)
        self.exclude_outliers = check_flag("exclude_outliers", exclude_outliers)
        self.budget_rtol = check_budget_rtol(budget_rtol)
        self.plan = as_plan(plan)
        self.runs_: pd.DataFrame | None = None
        self.result_: Result | None = None

    @property
    def scaling_laws_path(self) -> Path:
        return sweepdir.SweepDir(self.output_dir).scaling_laws

    def _runs(self) -> pd.DataFrame:
        """Every run of the results file, or only the plan's runs when a plan was given."""
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
        """Fit every requested approach (:meth:`Result.from_runs`), write ``scaling_laws.json`` atomically and
        return the primary approach's analysis (:meth:`Result.to_analysis`)."""
        runs = self.runs_ = self._runs()
        result = self.result_ = Result.from_runs(  # several asked for: every one the data supports
            runs,
            self.approaches,
            bootstrap=self.bootstrap,
            seed=self.seed,
            exclude_outliers=self.exclude_outliers,
            budget_rtol=self.budget_rtol,
            plan=self.plan,  # what the summary says of its design (e.g. a WSD sweep's trunks)
            trust_plan=False,  # a plan read from a file names code: never imported here
        )
        self.approach = result.primary  # chosen by back-test when several were fitted
        analysis = result.to_analysis()
        write_laws(self.scaling_laws_path, analysis)
        logger.info("wrote %s", self.scaling_laws_path)
        return analysis

    def load_analysis(self) -> ScalingAnalysis:
        """Read ``scaling_laws.json`` back (run :meth:`analyze` first)."""
        if not self.scaling_laws_path.is_file():
            raise FileNotFoundError(f"{self.scaling_laws_path} does not exist; run analyze() first")
        return read_laws(self.scaling_laws_path)

    def predict(self, target_compute: float) -> dict[str, Any]:
        """Prediction at ``target_compute`` FLOPs from the saved laws (rebuilt through ``from_dict``)."""
        return self.load_analysis().predict_optimal_size(target_compute)
