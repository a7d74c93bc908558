"""``ScalingAnalysis``: the fitted laws as ``scaling_laws.json`` holds them, and the one prediction dict.

The laws file is written by :meth:`Result.save <flops_fit.report.result.Result.save>` and by
``ScalingLawAnalyzer`` through the same :func:`write_laws`, and read back by :func:`read_laws`. A prediction
at a budget C (FLOPs) is built by :func:`prediction` alone, for a Result and for a ScalingAnalysis alike.
"""

from __future__ import annotations

import json
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
from flops_fit.analysis.bucketing import lowest_loss_per_budget
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.power_law import PowerLawFit
from flops_fit.core.io import atomic_write_json, read_json
from flops_fit.core.validate import Instance, check

logger = logging.getLogger(__name__)

SCALING_LAWS_VERSION = 1


def laws_of(fit: Fit) -> tuple[PowerLawFit, PowerLawFit, PowerLawFit]:
    """The N_opt(C), D_opt(C), L_opt(C) power laws of any approach's fit."""
    if hasattr(fit, "n_opt_fit"):
        return fit.n_opt_fit, fit.d_opt_fit, fit.l_opt_fit
    return fit.power_laws()


def prediction(opt: Mapping[str, Any], c: float, approach: str) -> dict[str, Any]:
    """The prediction dict at ``c`` FLOPs from a fit's ``optimal(c)`` answer ``opt``: N (parameters),
    D (tokens), expected loss, tokens per parameter, their 95% intervals (None when unknown), the approach."""
    return {
        "target_compute": float(c),
        "optimal_params": float(opt["optimal_params"]),
        "optimal_tokens": float(opt["optimal_tokens"]),
        "expected_loss": float(opt["optimal_loss"]),
        "tokens_per_param": float(opt["tokens_per_param"]),
        "optimal_params_ci": opt.get("optimal_params_ci"),
        "optimal_tokens_ci": opt.get("optimal_tokens_ci"),
        "expected_loss_ci": opt.get("optimal_loss_ci"),
        "tokens_per_param_ci": opt.get("tokens_per_param_ci"),
        "approach": approach,
    }


@dataclass(frozen=True, eq=False)
class ScalingAnalysis:
    """The fitted scaling laws of one analysis.

    ``n_opt_fit``, ``d_opt_fit``, ``l_opt_fit``: the primary approach's laws N_opt(C), D_opt(C), L_opt(C)
    (C in FLOPs, N in parameters, D in tokens). ``optimal_points``: the best run of each budget bucket (or the
    IsoFLOP minima), a list of records (dicts, one per budget, as the original flops-fit API had them and
    ``to_dict`` writes them); a DataFrame is accepted too, and :attr:`optimal_points_frame` gives the
    points as a DataFrame. ``optimal_ratio``: median D/N
    (tokens per parameter) at those points (NaN when unknown). ``fits``: every approach that was fitted, by
    name. ``approach``: the primary approach, or a variant (e.g. ``"parametric:alpha=beta"``) whose fit is
    then in ``fits`` under that name too.
    """

    n_opt_fit: PowerLawFit
    d_opt_fit: PowerLawFit
    l_opt_fit: PowerLawFit
    optimal_points: list[dict[str, Any]] = field(default_factory=list)
    optimal_ratio: float = math.nan
    approach: str = "isoflop"
    fits: dict[str, Fit] = field(default_factory=dict)
    #: The ``experiment_id`` of every run the analysis read (after any plan filter), and the budget
    #: grouping it used: plots and reports of the same folder then show exactly these runs.
    run_ids: tuple[str, ...] | None = None
    budget_rtol: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimal_points", _points_records(self.optimal_points))
        if self.optimal_ratio is None:  # the original API's "unknown"
            object.__setattr__(self, "optimal_ratio", math.nan)

    @classmethod
    def of(
        cls,
        fits: Mapping[str, Fit],
        primary: str,
        runs: pd.DataFrame,
        usable: pd.DataFrame,
        budget_rtol: float,
    ) -> ScalingAnalysis:
        """The analysis of ``fits`` with ``primary``'s laws; ``runs``: every run read (their ids are kept),
        ``usable``: those a fit can use (their lowest-loss run per budget, without an IsoFLOP fit)."""
        n_fit, d_fit, l_fit = laws_of(fits[primary])
        iso = fits.get("isoflop")
        if isinstance(iso, IsoFLOPFit):
            points = iso.minima[iso.minima["used"]].reset_index(drop=True)
        else:
            points = lowest_loss_per_budget(usable, budget_rtol)
        ratio = (
            float(np.median(points["optimal_tokens"] / points["optimal_params"])) if len(points) else math.nan
        )
        return cls(
            n_fit,
            d_fit,
            l_fit,
            points,
            ratio,
            primary,
            dict(fits),
            run_ids=tuple(runs["experiment_id"].astype(str)),
            budget_rtol=budget_rtol,
        )

    @property
    def optimal_points_frame(self) -> pd.DataFrame:
        """:attr:`optimal_points` as a DataFrame, one row per budget."""
        return pd.DataFrame.from_records(self.optimal_points)

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
            return prediction(fit.optimal(c), c, self.approach)
        n, d, l = self.n_opt_fit.predict(c), self.d_opt_fit.predict(c), self.l_opt_fit.predict(c)
        laws = {"optimal_params": n, "optimal_tokens": d, "optimal_loss": l, "tokens_per_param": d / n}
        return prediction(laws, c, self.approach)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCALING_LAWS_VERSION,
            "approach": self.approach,
            "n_opt_fit": self.n_opt_fit.to_dict(),
            "d_opt_fit": self.d_opt_fit.to_dict(),
            "l_opt_fit": self.l_opt_fit.to_dict(),
            "optimal_points": [dict(r) for r in self.optimal_points],
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
            optimal_points=list(d.get("optimal_points") or []),
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


_POINTS = Instance(pd.DataFrame, list, tuple)
_RECORD = Instance(Mapping)


def _points_records(points: Any) -> list[dict[str, Any]]:
    """``optimal_points`` as a list of JSON-ready records: a DataFrame row by row, a list of dicts as it is."""
    check("optimal_points", points, _POINTS, "a list of dicts, one per budget, or a DataFrame")
    if not isinstance(points, pd.DataFrame):
        for i, record in enumerate(points):
            check(
                f"optimal_points[{i}]",
                record,
                _RECORD,
                "one dict per budget, e.g. {'compute_budget': 1e18, ...}",
            )
        points = pd.DataFrame.from_records([dict(r) for r in points])
    return _records(points)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, tuple)).any():
            out[col] = out[col].map(list)
    return json.loads(out.to_json(orient="records"))


def write_laws(path: str | os.PathLike[str], analysis: ScalingAnalysis) -> Path:
    """Write ``analysis`` to ``path`` (a ``scaling_laws.json``) atomically; the one writer of that file."""
    return atomic_write_json(path, analysis.to_dict())


#: What the conversion of a malformed laws or result file raises besides ValueError (a missing key, a list of
#: the wrong length, a string where a mapping belongs, a number too large for a float).
MALFORMED = (KeyError, IndexError, AttributeError, TypeError, OverflowError)


def read_laws(path: str | os.PathLike[str]) -> ScalingAnalysis:
    """Read a ``scaling_laws.json`` back.

    Raises:
        ValueError: naming ``path``, for anything that is not such a file: not a regular file, not JSON,
            nested too deep, or JSON of another shape (:func:`check_laws`, then the conversion).
    """
    data = read_json(path)
    check_laws(data, path)
    try:
        return ScalingAnalysis.from_dict(data)
    except (ValueError, *MALFORMED) as exc:
        raise malformed(path, exc) from None


def malformed(path: str | os.PathLike[str], exc: BaseException) -> ValueError:
    """The ValueError for a file whose content could not be converted (``exc`` says where)."""
    return ValueError(
        f"{os.fspath(path)} is not a file flops-fit wrote, or was changed since ({type(exc).__name__}: "
        f"{exc}); write it again (flops-fit analyze, or Result.save)"
    )


_NUMBER = (int, float)


def _check_law(d: Any, where: str) -> None:
    """One power law's dict: numbers ``k`` and ``a``; each ``*_ci`` null or two numbers; ``cov`` null or a
    square table of numbers."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object with 'k' and 'a', got {type(d).__name__}")
    for key in ("k", "a"):
        if not isinstance(d.get(key), _NUMBER) or isinstance(d.get(key), bool):
            raise ValueError(f"{where}.{key} must be a number, got {d.get(key)!r:.40}")
    for key in ("r_squared", "offset", "n_points"):
        value = d.get(key)
        if value is not None and (not isinstance(value, _NUMBER) or isinstance(value, bool)):
            raise ValueError(f"{where}.{key} must be a number or null, got {value!r:.40}")
    for key in ("k_ci", "a_ci", "offset_ci"):
        _check_numbers(d.get(key), f"{where}.{key}", length=2)
    cov = d.get("cov")
    if cov is not None:
        if not isinstance(cov, list) or not cov:
            raise ValueError(f"{where}.cov must be null or a square table of numbers")
        for i, row in enumerate(cov):
            _check_numbers(row, f"{where}.cov[{i}]", length=len(cov))


def _check_numbers(value: Any, where: str, length: int) -> None:
    """``value`` is null or a list of ``length`` numbers (null allowed in place of a number: NaN)."""
    if value is None:
        return
    if (
        not isinstance(value, list)
        or len(value) != length
        or any(v is not None and (not isinstance(v, _NUMBER) or isinstance(v, bool)) for v in value)
    ):
        raise ValueError(f"{where} must be null or a list of {length} numbers, got {value!r:.60}")


def _kind(value: Any) -> Any:
    """What a list's elements must share: numbers, text, true/false, lists of one length, or objects with
    the same keys (null goes with any of them)."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, _NUMBER):
        return float
    if isinstance(value, list):
        return ("list", len(value))
    if isinstance(value, Mapping):
        return ("object", frozenset(value))
    return type(value)


def check_uniform(value: Any, where: str) -> None:
    """Every list inside ``value`` holds elements of one kind (:func:`_kind`), as every list flops-fit
    writes does (a column of numbers, a table of records); a ValueError naming the first that does not."""
    stack = [(value, where)]
    while stack:
        node, at = stack.pop()
        children = list(node.items()) if isinstance(node, Mapping) else list(enumerate(node))
        if isinstance(node, list):
            kinds = {_kind(v) for v in node if v is not None}
            if len(kinds) > 1:
                raise ValueError(f"{at} mixes {len(kinds)} kinds of values (numbers, text, lists, objects)")
        stack.extend((v, f"{at}/{k}") for k, v in children if isinstance(v, (list, Mapping)))


def check_laws(data: Any, path: str | os.PathLike[str], *, primary_laws: bool = True) -> None:
    """The shape of a ``scaling_laws.json``, before anything is converted; a ValueError naming ``path`` and
    the first entry that is wrong. ``primary_laws=False``: the top-level N_opt, D_opt, L_opt laws may be
    missing (a file of ``fits`` only, as the figures read)."""
    where = os.fspath(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must hold a JSON object (the fitted laws), got {type(data).__name__}")
    version = data.get("version", SCALING_LAWS_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where}: 'version' must be an integer, got {version!r:.40}")
    for key in ("n_opt_fit", "d_opt_fit", "l_opt_fit"):
        if primary_laws or data.get(key) is not None:
            _check_law(data.get(key), f"{where}: {key}")
    fits = data.get("fits")
    if fits is not None and (
        not isinstance(fits, Mapping) or not all(isinstance(f, Mapping) for f in fits.values())
    ):
        raise ValueError(f"{where}: 'fits' must map each approach's name to its fit (an object)")
    points = data.get("optimal_points")
    if points is not None and (
        not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points)
    ):
        raise ValueError(f"{where}: 'optimal_points' must be a list of objects, one per budget")
    run_ids = data.get("run_ids")
    if run_ids is not None and (
        not isinstance(run_ids, list) or not all(isinstance(i, (str, int)) for i in run_ids)
    ):
        raise ValueError(f"{where}: 'run_ids' must be null or a list of experiment ids (strings)")
    for key in ("optimal_ratio", "budget_rtol"):
        value = data.get(key)
        if value is not None and (not isinstance(value, _NUMBER) or isinstance(value, bool)):
            raise ValueError(f"{where}: {key!r} must be a number or null, got {value!r:.40}")
    if not isinstance(data.get("approach", ""), str):
        raise ValueError(f"{where}: 'approach' must be the primary approach's name (a string)")
    check_uniform(data, where)
