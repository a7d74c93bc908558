"""What design a runs table comes from, so that only the rules that fit it are applied.

An IsoFLOP sweep plans a few compute budgets C (FLOPs) and trains several model sizes N (parameters) at each:
its budget buckets are *designed profiles*. A checkpoint or over-training grid trains models for several
token counts D each: C = 6 N D then takes a different value for every run, and a budget bucket that holds
several sizes does so by coincidence. Approach 2 and the profile-outlier rule read a bucket as a profile, so
they are applied only where the buckets are designed (Hoffmann et al. 2022 fitted Approach 2 to planned
IsoFLOP budgets only).

The rule, in one place (documented in ``docs/analysis.md``, "Which design the runs come from"): budgets are
grouped by :func:`~flops_fit.analysis.bucketing.bucket_budgets`, replicate runs (same N and D) count once as
a *point*, and a bucket with at least :data:`MIN_PROFILE_SIZES` distinct sizes is a designed profile when

- its budgets agree to :data:`PLANNED_SPREAD` (a planned budget, as a planner writes it), or
- it is a peak of the budget histogram: it holds more points than the budgets around it (closer than a
  factor :data:`NEIGHBOURHOOD` either side, but more than :data:`GUARD` bucket widths away) make plausible
  by chance, i.e. P(Poisson(lambda) >= points) <= :data:`PEAK_P`, with lambda the neighbourhood's points
  (plus one, so an empty neighbourhood is no proof) per bucket width.

The design of the whole table: ``"isoflop"`` when designed profiles hold at least :data:`ISOFLOP_SHARE` of
the points, ``"mixed"`` when they hold at least :data:`MIXED_SHARE`, else ``"grid"`` when most points
belong to a model seen at :data:`GRID_TOKEN_COUNTS` or more token counts, else ``"scattered"``. In a grid or
a scattered table no bucket counts as designed. A bucket *brackets* its optimum when its lowest-loss run
has a smaller and a larger size beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from flops_fit.analysis.bucketing import DEFAULT_BUDGET_RTOL, MIN_PROFILE_SIZES, bucket_budgets
from flops_fit.core.runs import usable_mask

#: Budgets of one bucket that agree to this relative spread were planned as one budget.
PLANNED_SPREAD = 1e-3
#: The budgets around a bucket, closer than this factor either side, say how many points chance puts in it.
NEIGHBOURHOOD = 2.0
#: ... leaving out those within this many bucket widths of it (a planned budget's runs may spread over
#: neighbouring buckets when their budgets are approximate, e.g. read off a figure).
GUARD = 3.0
#: A bucket is a peak of the budget histogram when chance gives its number of points at most this often.
PEAK_P = 1e-3
#: Budgets this close in ln C are at the same distance (the edge of the neighbourhood is open).
_EPS = 1e-9
#: Designed profiles hold at least this share of the points of an IsoFLOP sweep ...
ISOFLOP_SHARE = 0.75
#: ... and at least this share of a mixed table (IsoFLOP profiles beside other runs).
MIXED_SHARE = 0.25
#: A grid: most points belong to a model (N) trained or evaluated at this many token counts or more.
GRID_TOKEN_COUNTS = 3

DESIGNS = ("isoflop", "mixed", "grid", "scattered")
#: How summaries and errors name each design.
DESIGN_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "isoflop": "an IsoFLOP sweep",
        "mixed": "IsoFLOP profiles beside other runs (mixed)",
        "grid": "a checkpoint / over-training grid (models at several token counts, budgets coincidental)",
        "scattered": "scattered runs (no designed budgets)",
    }
)
BUCKET_COLUMNS = (
    "compute_budget", "c_lo", "c_hi", "n_runs", "n_points", "n_sizes", "expected_points", "designed",
    "brackets", "why",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Layout:
    """The design of a runs table (see the module). ``design``: one of :data:`DESIGNS`; ``buckets``: one row
    per budget bucket (columns :data:`BUCKET_COLUMNS`; C in FLOPs); ``labels``: each classified run's bucket;
    ``designed_share``: the share of points in designed profiles; ``multi_token_share``: the share of points
    whose model is seen at :data:`GRID_TOKEN_COUNTS` or more token counts; ``budget_rtol``: the grouping."""

    design: str
    buckets: pd.DataFrame
    labels: np.ndarray
    designed_share: float
    multi_token_share: float
    budget_rtol: float

    @property
    def designed_runs(self) -> np.ndarray:
        """True for each classified run that lies in a designed profile."""
        return self.buckets["designed"].to_numpy(bool)[self.labels] if self.labels.size else self.labels > 0

    @property
    def coincidental_runs(self) -> np.ndarray:
        """True for each run in a bucket that holds several sizes without being a designed profile (Approach
        2 would read it as a profile; it is not one)."""
        b = self.buckets
        coincidental = (b["n_sizes"].to_numpy() >= MIN_PROFILE_SIZES) & ~b["designed"].to_numpy(bool)
        return coincidental[self.labels] if self.labels.size else self.labels > 0

    @property
    def n_designed(self) -> int:
        """How many budget buckets are designed profiles."""
        return int(self.buckets["designed"].sum())

    @property
    def supports_profiles(self) -> bool:
        """Whether the table has designed IsoFLOP profiles (design ``"isoflop"`` or ``"mixed"``)."""
        return self.design in ("isoflop", "mixed")

    def describe(self) -> str:
        """One line: the design and the numbers behind it."""
        b = self.buckets
        designed = b[b["designed"]]
        text = f"{DESIGN_LABELS[self.design]}: {len(b)} budget bucket(s), {len(designed)} designed profile(s)"
        if len(designed):
            text += f" ({int(designed['brackets'].sum())} bracketing their optimum)"
        text += f" holding {self.designed_share:.0%} of the distinct (N, D) points"
        if self.design == "grid":
            text += f"; {self.multi_token_share:.0%} of them belong to a model seen at >= {GRID_TOKEN_COUNTS} token counts"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The design and its shares (JSON-safe; the bucket table is recomputed from the runs)."""
        return {
            "design": self.design,
            "n_buckets": len(self.buckets),
            "n_designed": self.n_designed,
            "designed_share": self.designed_share,
            "multi_token_share": self.multi_token_share,
        }


def classify_runs(runs: pd.DataFrame, budget_rtol: float = DEFAULT_BUDGET_RTOL) -> Layout:
    """:func:`classify` on the usable runs of a runs table (completed, positive finite C, N, D, loss);
    ``labels`` then follow those runs in their order."""
    use = runs[usable_mask(runs)] if "status" in runs.columns else runs
    cols = ("num_params", "num_tokens", "final_loss", "compute_budget")
    return classify(*(use[k].to_numpy(float) for k in cols), budget_rtol=budget_rtol)


def classify(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, C: np.ndarray, budget_rtol: float = DEFAULT_BUDGET_RTOL
) -> Layout:
    """The :class:`Layout` of runs with parameters ``N``, tokens ``D``, loss ``L`` and budgets ``C`` (FLOPs),
    all positive and finite, budgets grouped within ``budget_rtol``."""
    n, d, l, c = (np.asarray(v, dtype=float).reshape(-1) for v in (N, D, L, C))
    if not (n.size == d.size == l.size == c.size):
        raise ValueError(
            f"N, D, L and C must have one value per run; got sizes {n.size}, {d.size}, {l.size}, {c.size}"
        )
    if n.size == 0:
        empty = pd.DataFrame(columns=list(BUCKET_COLUMNS))
        return Layout("scattered", empty, np.zeros(0, dtype=int), 0.0, 0.0, budget_rtol)
    labels, centers = bucket_budgets(c, rtol=budget_rtol)
    point = _point_ids(n, d)
    buckets = _bucket_table(labels, centers, n, l, c, point, budget_rtol)
    points_in = np.zeros(point.max() + 1, dtype=bool)
    points_in[point[buckets["designed"].to_numpy(bool)[labels]]] = True
    share = float(points_in.mean())
    multi = _multi_token_share(n, d, point)
    design = _design(int(buckets["designed"].sum()), share, multi)
    if design in ("grid", "scattered") and buckets["designed"].any():
        buckets.loc[buckets["designed"], "why"] = (
            buckets.loc[buckets["designed"], "why"] + f"; not a profile in {DESIGN_LABELS[design]}"
        )
        buckets["designed"] = False
    return Layout(design, buckets, labels, share, multi, budget_rtol)


def _point_ids(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """An id per distinct (N, D) pair: replicates (seeds, learning rates) of one configuration share it."""
    return np.unique(np.stack([n, d], axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def _per_bucket_unique(labels: np.ndarray, values: np.ndarray, n_buckets: int) -> np.ndarray:
    """How many distinct ``values`` each bucket holds."""
    pairs = np.unique(np.stack([labels.astype(float), values]), axis=1)
    return np.bincount(pairs[0].astype(int), minlength=n_buckets)


def _bucket_table(
    labels: np.ndarray,
    centers: np.ndarray,
    n: np.ndarray,
    l: np.ndarray,
    c: np.ndarray,
    point: np.ndarray,
    rtol: float,
) -> pd.DataFrame:
    """The bucket table: counts, the chance expectation, designed or not and why, brackets (all buckets at
    once, in O(runs log runs))."""
    k = len(centers)
    order = np.lexsort((l, labels))  # by bucket, lowest loss first
    starts = np.searchsorted(labels[order], np.arange(k))
    c_lo, c_hi = np.minimum.reduceat(c[order], starts), np.maximum.reduceat(c[order], starts)
    n_lo, n_hi = np.minimum.reduceat(n[order], starts), np.maximum.reduceat(n[order], starts)
    best = n[order][starts]  # the size of each bucket's lowest-loss run
    sizes = _per_bucket_unique(labels, n, k)
    points = _per_bucket_unique(labels, point.astype(float), k)
    expected = _expected_points(centers, c_lo, c_hi, c, point, rtol)
    chance = stats.poisson.sf(points - 1, expected)
    planned = c_hi / c_lo - 1.0 <= PLANNED_SPREAD
    profile = sizes >= MIN_PROFILE_SIZES
    designed = profile & (planned | (chance <= PEAK_P))
    why = [
        f"{s} size(s): not a profile" if not p
        else "planned budget (budgets agree to 0.1%)" if pl
        else f"{'a peak' if dz else 'coincidental'}: {m} points where chance puts {e:.2g}"
        for s, p, pl, dz, m, e in zip(sizes, profile, planned, designed, points, expected, strict=True)
    ]  # fmt: skip
    return pd.DataFrame(
        {
            "compute_budget": centers, "c_lo": c_lo, "c_hi": c_hi, "n_runs": np.bincount(labels, minlength=k),
            "n_points": points, "n_sizes": sizes, "expected_points": expected, "designed": designed,
            "brackets": profile & (n_lo < best) & (best < n_hi), "why": why,
        },
        columns=list(BUCKET_COLUMNS),
    )  # fmt: skip


def _expected_points(
    centers: np.ndarray, c_lo: np.ndarray, c_hi: np.ndarray, c: np.ndarray, point: np.ndarray, rtol: float
) -> np.ndarray:
    """Points that chance puts in each bucket (width ln(1 + rtol)) at the density of the budgets around it:
    the distinct points closer than a factor NEIGHBOURHOOD either side but more than GUARD bucket widths
    from it, plus one, per unit of ln C the data cover there."""
    reach, w = math.log(NEIGHBOURHOOD), math.log1p(rtol)
    log_c = np.log(centers)
    guard_lo, guard_hi = np.log(c_lo) - GUARD * w, np.log(c_hi) + GUARD * w
    first = np.unique(point, return_index=True)[1]
    pc = np.sort(np.log(c[first]))  # one budget per distinct point
    lo = np.maximum(log_c - reach, pc[0])
    hi = np.minimum(log_c + reach, pc[-1])
    width = np.maximum(hi - lo - (np.minimum(guard_hi, hi) - np.maximum(guard_lo, lo)), w)

    near_lo, near_hi = log_c - reach + _EPS, log_c + reach - _EPS  # closer than a factor NEIGHBOURHOOD

    def within(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # distinct points with a <= ln C <= b
        return np.searchsorted(pc, b, side="right") - np.searchsorted(pc, a, side="left")

    guarded = within(np.maximum(guard_lo, near_lo), np.minimum(guard_hi, near_hi))
    count = within(near_lo, near_hi) - guarded
    return (count + 1) / width * w


def _multi_token_share(n: np.ndarray, d: np.ndarray, point: np.ndarray) -> float:
    """The share of distinct points whose model size is seen at GRID_TOKEN_COUNTS or more token counts."""
    first = np.unique(point, return_index=True)[1]
    size = np.unique(n[first], return_inverse=True)[1].reshape(-1)
    tokens = _per_bucket_unique(size, d[first], int(size.max()) + 1)
    return float((tokens[size] >= GRID_TOKEN_COUNTS).mean())


def _design(n_designed: int, share: float, multi: float) -> str:
    """The design of the table from its designed profiles, their share of the points, and the share of
    points whose model is seen at several token counts."""
    if n_designed and share >= ISOFLOP_SHARE:
        return "isoflop"
    if n_designed and share >= MIXED_SHARE:
        return "mixed"
    if multi >= 0.5:
        return "grid"
    return "scattered"
