"""The canonical runs table every stage shares.

One row per training run, as a :class:`pandas.DataFrame` with these columns:

============== ======== ==========================================================================
column         required meaning
============== ======== ==========================================================================
experiment_id  yes      stable identifier of the run (a string)
compute_budget yes      the run's nominal training compute C, in FLOPs
num_params     yes      model size N, in parameters (the FLOP convention says which ones count)
num_tokens     yes      training data D, in tokens (images for vision models)
final_loss     yes      validation loss at the end of training (NaN for failed runs)
status         yes      ``completed``, ``failed`` or ``diverged``
actual_flops   no       FLOPs actually spent (e.g. measured), when it differs from the budget
size_value     no       the value of the model's size parameter (e.g. ``d_model``) that gave N
curve          no       list of ``(tokens, loss)`` pairs along training, for Approach 1
error          no       the error message of a failed run
============== ======== ==========================================================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.core.ledger import latest_records, load_results
from flops_fit.core.sweepdir import RESULTS_FILE

logger = logging.getLogger(__name__)

#: FLOPs per parameter per training token in the rule C = 6 N D (2 forward + 4 backward, Kaplan et al. 2020):
#: the ``"6nd"`` convention of :mod:`flops_fit.plan.flops`, and what the analysis assumes where a run lacks its
#: tokens or its budget, and in Approach 3's closed-form allocation (Hoffmann et al. 2022, Eq. 4).
FLOPS_PER_PARAM_TOKEN = 6.0

REQUIRED_COLUMNS: tuple[str, ...] = (
    "experiment_id",
    "compute_budget",
    "num_params",
    "num_tokens",
    "final_loss",
    "status",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("actual_flops", "size_value", "curve", "error")
NUMERIC_COLUMNS: tuple[str, ...] = (
    "compute_budget",
    "num_params",
    "num_tokens",
    "final_loss",
    "actual_flops",
)
STATUSES: tuple[str, ...] = ("completed", "failed", "diverged")
SUPPORTED_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".csv", ".parquet")


def validate_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Check that ``df`` follows the runs schema and return it with canonical dtypes.

    Raises ValueError naming every missing column, a non-numeric numeric column, or an unknown status.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"runs must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"runs table is missing required column(s) {missing}; it has {list(df.columns)}. "
            "Rename your columns, e.g. load_runs(path, columns={'num_params': 'Model Size'})."
        )
    out = df.copy()
    for col in NUMERIC_COLUMNS:
        if col not in out.columns:
            continue
        converted = pd.to_numeric(out[col], errors="coerce")
        bad = converted.isna() & out[col].notna()
        if bad.any():
            example = out.loc[bad, col].iloc[0]
            raise ValueError(
                f"column {col!r} must be numeric; {int(bad.sum())} value(s) are not (e.g. {example!r})"
            )
        out[col] = converted.astype(float)
    missing_id = out["experiment_id"].isna().to_numpy()
    out["experiment_id"] = out["experiment_id"].astype(str)
    if missing_id.any():
        logger.info("%d run(s) without an experiment_id are numbered by row", int(missing_id.sum()))
        out.loc[missing_id, "experiment_id"] = [f"run-{i}" for i in np.flatnonzero(missing_id)]
    status = out["status"].astype(str).str.lower()
    unknown = sorted({str(v) for v in set(status) - set(STATUSES)})
    if unknown:
        raise ValueError(f"column 'status' has unknown value(s) {unknown}; allowed: {list(STATUSES)}")
    out["status"] = status
    if "curve" in out.columns:
        out["curve"] = [_as_curve(c, rid) for c, rid in zip(out["curve"], out["experiment_id"], strict=True)]
    return out.reset_index(drop=True)


def _as_curve(value: Any, run_id: str) -> list[list[float]] | None:
    """A curve as a plain list of ``[tokens, loss]`` pairs (Parquet and NumPy give arrays), or None if absent."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        arr = np.asarray([np.asarray(p, dtype=float) for p in value], dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"run {run_id}: 'curve' must be a list of (tokens, loss) pairs") from None
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"run {run_id}: 'curve' must be a list of (tokens, loss) pairs, got shape {arr.shape}"
        )
    return arr.tolist()


def list_ids(ids: pd.Series, limit: int = 8) -> str:
    """The first ``limit`` run ids, comma separated, and how many more there are (for log messages)."""
    shown = ", ".join(ids.astype(str).head(limit))
    return shown if len(ids) <= limit else f"{shown} and {len(ids) - limit} more"


def runs_from_arrays(
    N: Any, D: Any, L: Any, C: Any = None, *, ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Build a runs table from arrays of parameters, tokens, losses and (optionally) budgets.

    ``C`` defaults to 6 N D FLOPs. All rows are ``completed``.
    """
    n = np.asarray(N, dtype=float)
    d = np.asarray(D, dtype=float)
    loss = np.asarray(L, dtype=float)
    c = FLOPS_PER_PARAM_TOKEN * n * d if C is None else np.asarray(C, dtype=float)
    return pd.DataFrame(
        {
            "experiment_id": list(ids) if ids is not None else [f"run-{i}" for i in range(len(n))],
            "compute_budget": c,
            "num_params": n,
            "num_tokens": d,
            "final_loss": loss,
            "status": "completed",
        }
    )


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return pd.DataFrame.from_records(load_results(path))
    if suffix == ".csv":
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} could not be parsed as CSV: {exc}") from exc
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise ImportError("reading .parquet needs pyarrow: pip install pyarrow") from exc
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise ValueError(f"{path} could not be read as Parquet: {exc}") from exc
    raise ValueError(
        f"unsupported results file type {suffix!r} for {path}; use one of {list(SUPPORTED_SUFFIXES)}"
    )


def load_runs(path: str | os.PathLike[str], columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read a results file (.json list, .jsonl ledger, .csv, .parquet) into the canonical runs table.

    ``columns`` maps canonical names to the file's own, e.g.
    ``{"num_params": "Model Size", "compute_budget": "Training FLOP", "final_loss": "loss"}``.
    Missing ``num_tokens`` are derived as D = C / (6 N), missing ``compute_budget`` as C = 6 N D, a missing
    ``status`` means ``completed`` and missing ids are numbered; each such choice is logged.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a results file path (.json, .jsonl, .csv or .parquet), got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"results file {str(path)!r} is a directory; pass the file in it (e.g. {str(path / RESULTS_FILE)!r})"
        )
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    df = _read_table(path)
    if df.empty:
        raise ValueError(f"{path.name} holds no runs (no rows)")
    if columns:
        doubled = sorted({src for src in columns.values() if list(columns.values()).count(src) > 1})
        if doubled:
            raise ValueError(
                f"columns mapping reads column(s) {doubled} for more than one canonical name; map each of your "
                "file's columns once"
            )
        unknown_targets = sorted(set(columns) - set(REQUIRED_COLUMNS) - set(OPTIONAL_COLUMNS))
        if unknown_targets:
            raise ValueError(
                f"columns mapping has unknown canonical name(s) {unknown_targets}; "
                f"map from {list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)} to your file's column names"
            )
        absent = sorted(src for src in columns.values() if src not in df.columns)
        if absent:
            raise ValueError(
                f"columns mapping names column(s) {absent} that {path.name} does not have; it has {list(df.columns)}"
            )
        clashing = [c for c in columns if c in df.columns and columns[c] != c]
        df = df.drop(columns=clashing).rename(columns={src: dst for dst, src in columns.items()})
    return complete_runs(df, source=path.name)


def complete_runs(df: pd.DataFrame, *, source: str = "runs") -> pd.DataFrame:
    """Fill derivable columns (ids, status, D = C/6N or C = 6ND), then validate."""
    df = df.copy()
    if df.empty and not len(df.columns):
        raise ValueError(f"{source} holds no runs")
    have_c, have_n, have_d = ("compute_budget" in df), ("num_params" in df), ("num_tokens" in df)
    if have_n and have_c and not have_d:
        logger.info("%s: no num_tokens column; using D = C / (6 N)", source)
        df["num_tokens"] = pd.to_numeric(df["compute_budget"], errors="coerce") / (
            FLOPS_PER_PARAM_TOKEN * pd.to_numeric(df["num_params"], errors="coerce")
        )
    elif have_n and have_d and not have_c:
        logger.info("%s: no compute_budget column; using C = 6 N D", source)
        df["compute_budget"] = (
            FLOPS_PER_PARAM_TOKEN
            * pd.to_numeric(df["num_params"], errors="coerce")
            * pd.to_numeric(df["num_tokens"], errors="coerce")
        )
    if "status" not in df:
        logger.info("%s: no status column; treating every run as completed", source)
        df["status"] = "completed"
    elif df["status"].isna().any():  # e.g. an older results file joined with a ledger
        logger.info(
            "%s: %d run(s) without a status; treating them as completed",
            source,
            int(df["status"].isna().sum()),
        )
        df["status"] = df["status"].fillna("completed")
    if "experiment_id" not in df:
        df["experiment_id"] = [f"run-{i}" for i in range(len(df))]
    return validate_runs(df)


def runs_from_records(records: Iterable[Mapping[str, Any]], *, source: str = RESULTS_FILE) -> pd.DataFrame:
    """The runs table of ledger records: the last record of each experiment id, derived columns filled;
    an empty table (the required columns, no rows) when there is none."""
    rows = latest_records(records)
    if not rows:
        return validate_runs(pd.DataFrame({c: [] for c in REQUIRED_COLUMNS}))
    return complete_runs(pd.DataFrame.from_records(rows), source=source)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows with status ``completed``."""
    return df[df["status"] == "completed"].reset_index(drop=True)


def usable_mask(df: pd.DataFrame) -> np.ndarray:
    """Completed runs whose C, N, D and loss are positive and finite: what fits and log plots can use. A
    WSD sweep's validation runs (``validates``: the branch they retrain from scratch) repeat a point of
    the sweep and are compared with it, never fitted."""
    vals = df[["compute_budget", "num_params", "num_tokens", "final_loss"]].to_numpy(float)
    ok = (df["status"] == "completed").to_numpy() & np.all(np.isfinite(vals) & (vals > 0), axis=1)
    return ok & ~validation_mask(df)


def validation_mask(df: pd.DataFrame) -> np.ndarray:
    """The rows of a WSD sweep's validation runs (``validates`` names a branch)."""
    if "validates" not in df:
        return np.zeros(len(df), dtype=bool)
    return df["validates"].map(lambda v: isinstance(v, str)).to_numpy(bool)


def usable(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows of :func:`usable_mask`."""
    return df[usable_mask(df)].reset_index(drop=True)
