"""The three approaches by name, with the one registry of fit types: run one on a runs table, rebuild one
from its dict. Also the registry of candidate *variants* (an approach with keyword options, e.g.
``"parametric:alpha=beta"``) that the back-test chooses the primary answer from, and the order used when
there is no back-test evidence."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL
from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from flops_fit.analysis.fit import Fit
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.layout import Layout, classify_runs
from flops_fit.analysis.parametric import ParametricFit, fit_parametric
from flops_fit.core.runs import list_ids, usable_mask, validate_runs, validation_mask

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
#: Without back-test evidence, the primary approach of an IsoFLOP sweep is the first of these that was fitted
#: (:func:`fallback_order` gives the order for every design).
PRIMARY_ORDER: tuple[str, ...] = ("isoflop", "parametric", "envelope")
#: ... and of every other design (Approach 2 last: it reads budget buckets as profiles).
OTHER_ORDER: tuple[str, ...] = ("parametric", "envelope", "isoflop")
#: The fitting function of each approach (its keyword options decide which variants are available).
FIT_FUNCTIONS: Mapping[str, Callable[..., Fit]] = MappingProxyType(
    {"envelope": fit_envelope, "isoflop": fit_isoflop, "parametric": fit_parametric}
)


@dataclass(frozen=True)
class Variant:
    """A candidate answer: ``approach`` fitted with keyword ``options``. ``spellings``: alternative option
    sets, the first whose keys the installed fit function accepts is used (options under review may still
    change name); ``label`` says it in reports."""

    name: str
    approach: str
    spellings: tuple[Mapping[str, Any], ...]
    label: str

    def options(self) -> dict[str, Any] | None:
        """The options the installed fit function accepts for this variant, or None when it has none of
        the spellings (this flops-fit cannot fit the variant)."""
        accepted = inspect.signature(FIT_FUNCTIONS[self.approach]).parameters
        for spelling in self.spellings:
            if set(spelling) <= set(accepted):
                return dict(spelling)
        return None


def _variant(name: str, approach: str, label: str, *spellings: Mapping[str, Any]) -> Variant:
    return Variant(name, approach, tuple(MappingProxyType(dict(s)) for s in spellings or ({},)), label)


#: Every candidate the back-test can choose from, by name: the approaches themselves and their variants.
VARIANTS: Mapping[str, Variant] = MappingProxyType(
    {
        v.name: v
        for v in (
            _variant("isoflop", "isoflop", APPROACH_LABELS["isoflop"]),
            _variant("isoflop:shared", "isoflop", "Approach 2, shared profile", {"profile": "shared"}),
            _variant("parametric", "parametric", APPROACH_LABELS["parametric"]),
            _variant(
                "parametric:alpha=beta",
                "parametric",
                "Approach 3, alpha = beta",
                {"equal_exponents": True},
                {"alpha_equals_beta": True},
            ),
            _variant("envelope", "envelope", APPROACH_LABELS["envelope"]),
        )
    }
)


def label(name: str) -> str:
    """How reports name an approach or variant (the name itself when unknown)."""
    return VARIANTS[name].label if name in VARIANTS else APPROACH_LABELS.get(name, name)


def base_approach(name: str) -> str:
    """The approach of a variant name (``"parametric:alpha=beta"`` -> ``"parametric"``)."""
    if name in VARIANTS:
        return VARIANTS[name].approach
    (base,) = resolve_approaches(name)
    return base


def available_variants(approaches: Iterable[str]) -> list[str]:
    """The variants (not the approaches themselves) of ``approaches`` that the installed fit functions can
    fit, in registry order."""
    wanted = set(approaches)
    return [
        v.name
        for v in VARIANTS.values()
        if v.approach in wanted and v.name != v.approach and v.options() is not None
    ]


def fallback_order(design: str) -> tuple[str, ...]:
    """Approaches in the order the primary one is taken from without back-test evidence: Approach 2 first on
    an IsoFLOP sweep (Hoffmann et al.'s main estimate), last elsewhere."""
    return PRIMARY_ORDER if design == "isoflop" else OTHER_ORDER


def candidate_order(names: Iterable[str], design: str) -> list[str]:
    """``names`` (approaches and variants) in the fallback order of ``design``; a variant follows its
    approach."""
    order = fallback_order(design)
    names = list(names)
    return sorted(names, key=lambda n: (order.index(base_approach(n)), n != base_approach(n), n))


def resolve_approaches(approach: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every approach; a name or list of names -> validated canonical names (an approach, an
    alias such as ``"2"``, or a variant of :data:`VARIANTS` such as ``"parametric:alpha=beta"``)."""
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
        if key not in APPROACHES and key not in VARIANTS:
            raise ValueError(f"unknown approach {name!r}; use one of {[*VARIANTS, 'all']}")
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
    options: Mapping[str, Any] | None = None,
) -> Fit:
    """Fit approach or variant ``name`` to the completed runs of ``runs`` (outliers handled by the fit).

    ``options``: further keyword options of the fit function (e.g. ``init_grid`` of Approach 3), on top of
    a variant's own. Approach 2 reads budget buckets as IsoFLOP profiles, so it is fitted only to designed
    profiles (:mod:`flops_fit.analysis.layout`; see :func:`profile_runs`), and runs of a grid or scattered
    runs are a ValueError naming the design (call :func:`fit_isoflop` directly to fit their buckets anyway).
    """
    base = base_approach(name)
    extra = dict(options or {})
    if name in VARIANTS:
        spelled = VARIANTS[name].options()
        if spelled is None:
            raise ValueError(f"{name}: this flops-fit's {FIT_FUNCTIONS[base].__name__} has no option for it")
        extra = {**spelled, **extra}
    runs = validate_runs(runs)
    runs = runs[usable_rows(runs, base)].reset_index(drop=True)
    if base == "envelope":
        return fit_envelope(
            runs, bootstrap=bootstrap, seed=seed, exclude=exclude, budget_rtol=budget_rtol, **extra
        )
    if base == "isoflop":
        runs = profile_runs(runs, classify_runs(runs, budget_rtol))
    n, d, l, c = (
        runs[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss", "compute_budget")
    )
    ids = runs["experiment_id"].astype(str).tolist()
    common = {
        "bootstrap": bootstrap,
        "seed": seed,
        "exclude": exclude,
        "budget_rtol": budget_rtol,
        "ids": ids,
    }
    if base == "isoflop":
        return fit_isoflop(n, d, l, c, **common, **extra)
    return fit_parametric(n, d, l, C=c, **common, **extra)


def profile_runs(runs: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """The runs Approach 2 may read as IsoFLOP profiles (``runs``: the usable runs ``layout`` classified):
    in an IsoFLOP sweep all but those of buckets that hold several sizes by coincidence (a planned budget
    that lost runs stays, to be flagged), beside other runs ("mixed") the designed profiles only; a
    ValueError naming the design when the runs have no designed profile at all."""
    if not layout.supports_profiles:
        raise ValueError(
            f"Approach 2 needs IsoFLOP profiles (several sizes trained at one planned budget), but these runs "
            f"are {layout.describe()}: their budget buckets hold several sizes only by coincidence. Use "
            "approach='parametric' (Approach 3 fits any (N, D) runs), or call fit_isoflop directly to fit "
            "the buckets anyway"
        )
    left_out = ~layout.designed_runs if layout.design == "mixed" else layout.coincidental_runs
    if left_out.any():
        logger.info(
            "Approach 2: left out %d run(s) in %d budget bucket(s) that are not designed IsoFLOP profiles "
            "(see flops_fit.analysis.layout)",
            int(left_out.sum()),
            np.unique(layout.labels[left_out]).size,
        )
    return runs[~left_out].reset_index(drop=True)


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
    invalid = (runs["status"] == "completed").to_numpy() & ~usable & ~validation_mask(runs)  # those: reported
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
