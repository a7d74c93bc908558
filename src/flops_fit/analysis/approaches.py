"""The three approaches by name, with the one registry of fit types: run one on a runs table, rebuild one
from its dict."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from flops_fit.analysis.fit import Fit
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from flops_fit.core.runs import list_ids, usable_mask, validate_runs

logger = logging.getLogger(__name__)

#: The fit type of each approach, by name, in Hoffmann et al.'s numbering (1, 2, 3): the one registry of fit
#: types (:func:`fit_from_dict` rebuilds a fit with it; every type follows :class:`~flops_fit.analysis.fit.Fit`).
FIT_TYPES: Mapping[str, type[Fit]] = MappingProxyType(
    {"envelope": EnvelopeFit, "isoflop": IsoFLOPFit, "parametric": ParametricFit}
)
#: Approach names, in Hoffmann et al.'s numbering (1, 2, 3).
APPROACHES: tuple[str, ...] = tuple(FIT_TYPES)
_ALIASES = {
    "1": "envelope",
    "2": "isoflop",
    "3": "parametric",
    "approach1": "envelope",
    "approach2": "isoflop",
    "approach3": "parametric",
}
#: How reports name each approach.
APPROACH_LABELS: dict[str, str] = {
    "envelope": "Approach 1 (envelope)",
    "isoflop": "Approach 2 (IsoFLOP)",
    "parametric": "Approach 3 (parametric)",
}
#: The primary approach (the one whose laws a result reports first) is the first of these that was fitted.
PRIMARY_ORDER: tuple[str, ...] = ("isoflop", "parametric", "envelope")


def resolve_approaches(approach: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every approach; a name or list of names -> validated canonical names."""
    if not isinstance(approach, Iterable):
        raise TypeError(
            f"approach must be a name such as 'isoflop' or 'all', or a list of names, got {approach!r}"
        )
    names = [approach] if isinstance(approach, str) else list(approach)
    out: list[str] = []
    for name in names:
        key = str(name).strip().lower()
        if key == "all":
            out.extend(APPROACHES)
            continue
        key = _ALIASES.get(key, key)
        if key not in APPROACHES:
            raise ValueError(f"unknown approach {name!r}; use one of {[*APPROACHES, 'all']}")
        out.append(key)
    if not out:
        raise ValueError(f"approach must name at least one of {[*APPROACHES, 'all']}")
    return list(dict.fromkeys(out))


def has_curves(runs: pd.DataFrame) -> bool:
    """True when some run carries a non-empty loss curve (Approach 1 needs them)."""
    return "curve" in runs.columns and bool(
        runs["curve"].map(lambda c: isinstance(c, (list, tuple)) and len(c) > 0).any()
    )


def run_approach(
    name: str,
    runs: pd.DataFrame,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    exclude: bool = True,
    budget_rtol: float = DEFAULT_BUDGET_RTOL,
) -> Fit:
    """Fit approach ``name`` to the completed runs of ``runs`` (outliers handled by the fit itself)."""
    (name,) = resolve_approaches(name)
    runs = validate_runs(runs)
    runs = runs[usable_rows(runs, name)].reset_index(drop=True)
    if name == "envelope":
        return fit_envelope(runs, bootstrap=bootstrap, seed=seed, exclude=exclude, budget_rtol=budget_rtol)
    n, d, l, c = (
        runs[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss", "compute_budget")
    )
    ids = runs["experiment_id"].astype(str).tolist()
    if name == "isoflop":
        return fit_isoflop(
            n, d, l, c, bootstrap=bootstrap, seed=seed, exclude=exclude, budget_rtol=budget_rtol, ids=ids
        )
    return fit_parametric(
        n, d, l, bootstrap=bootstrap, seed=seed, exclude=exclude, C=c, budget_rtol=budget_rtol, ids=ids
    )


def run_approaches(
    names: Sequence[str], runs: pd.DataFrame, **options: Any
) -> tuple[dict[str, Fit], dict[str, str]]:
    """Fit every approach of ``names`` (canonical) with :func:`run_approach` (``options`` passed on).

    Returns ``(fits, skipped)``. With several approaches, one the data cannot support is skipped and its
    reason kept in ``skipped`` (Approach 1 without loss curves; any ``ValueError`` of the fit), and only
    no fit at all is an error; a single approach's error is raised as it is.
    """
    fits: dict[str, Fit] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == "envelope" and len(names) > 1 and not has_curves(runs):
            skipped[name] = "the runs carry no loss curves (column 'curve'); train with evaluations on"
            logger.info("skipping %s: %s", name, skipped[name])
            continue
        try:
            fits[name] = run_approach(name, runs, **options)
        except ValueError as exc:
            if len(names) == 1:
                raise
            skipped[name] = str(exc)
            logger.warning("skipping %s: %s", name, exc)
    if not fits:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ValueError(f"no approach could be fitted to these runs ({why})")
    return fits, skipped


def usable_rows(runs: pd.DataFrame, what: str) -> np.ndarray:
    """Mask of the completed runs whose C, N, D and loss are all positive and finite.

    Completed runs with other values are left out with a warning naming them; a table with no usable run
    is a ValueError saying how many runs completed, failed or diverged.
    """
    usable = usable_mask(runs)
    invalid = (runs["status"] == "completed").to_numpy() & ~usable
    if invalid.any():
        logger.warning(
            "%s: left out %d completed run(s) whose compute_budget, num_params, num_tokens or final_loss is "
            "not positive and finite: %s",
            what,
            int(invalid.sum()),
            list_ids(runs.loc[invalid, "experiment_id"]),
        )
    if not usable.any():
        counts = runs["status"].value_counts().to_dict()
        raise ValueError(
            f"{what}: nothing to fit: none of the {len(runs)} run(s) is completed with positive finite values "
            f"(statuses: {counts}; completed with invalid values: {int(invalid.sum())}). Check the training "
            "logs of the failed runs, or the column mapping of the file."
        )
    return usable


def fit_from_dict(d: Mapping[str, Any]) -> Fit:
    """Rebuild a fit from its ``to_dict()`` (the ``approach`` key says which)."""
    name = d.get("approach")
    if name not in FIT_TYPES:
        raise ValueError(f"cannot rebuild a fit with approach {name!r}; expected one of {list(FIT_TYPES)}")
    return FIT_TYPES[name].from_dict(d)
