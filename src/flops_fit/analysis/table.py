"""The Chinchilla table: compute-optimal N, D and loss at chosen budgets (cf. Hoffmann et al. 2022, Table 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd


class OptimalFit(Protocol):
    """Anything with ``optimal(C) -> dict`` as returned by the fits of :mod:`flops_fit.analysis`."""

    def optimal(self, C: Any) -> dict[str, Any]: ...


TABLE_COLUMNS = (
    "compute_budget",
    "optimal_params",
    "optimal_tokens",
    "tokens_per_param",
    "optimal_loss",
    "optimal_params_lo",
    "optimal_params_hi",
    "optimal_tokens_lo",
    "optimal_tokens_hi",
    "optimal_loss_lo",
    "optimal_loss_hi",
    "tokens_per_param_lo",
    "tokens_per_param_hi",
)


def chinchilla_table(fit: OptimalFit, budgets: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """One row per budget C (FLOPs): N_opt (parameters), D_opt (tokens), D/N, L_opt, and 95% bounds (NaN if unknown).

    Render it with :func:`to_markdown` or :func:`to_latex`.
    """
    try:
        c = np.asarray(budgets, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        c = np.array([np.nan])
    if budgets is None or c.size == 0 or not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError(f"budgets must be a non-empty list of positive FLOP values, got {budgets!r}")
    if not callable(getattr(fit, "optimal", None)):
        raise TypeError(
            f"fit must have an optimal(C) method (a fit from flops_fit.analysis), got {type(fit).__name__}"
        )
    rows = []
    for budget in c:
        opt = fit.optimal(float(budget))
        row = {
            k: opt[k]
            for k in (
                "compute_budget",
                "optimal_params",
                "optimal_tokens",
                "tokens_per_param",
                "optimal_loss",
            )
        }
        for key in ("optimal_params", "optimal_tokens", "optimal_loss", "tokens_per_param"):
            ci = opt.get(f"{key}_ci")
            row[f"{key}_lo"], row[f"{key}_hi"] = (math.nan, math.nan) if ci is None else ci
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


_SUFFIXES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def human(x: float) -> str:
    """1.2345e9 -> '1.23B' (parameters, tokens)."""
    if not np.isfinite(x):
        return "–"
    for scale, suffix in _SUFFIXES:
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def sci(x: float) -> str:
    """1.2e21 style (FLOPs)."""
    return "–" if not np.isfinite(x) else f"{x:.2e}".replace("e+", "e")


def _ratio(v: float) -> str:
    return f"{v:.1f}"


def _with_ci(value: float, lo: float, hi: float, fmt: Any) -> str:
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"
    return fmt(value)


def _cells(table: pd.DataFrame) -> list[list[str]]:
    out = []
    for r in table.itertuples(index=False):
        out.append(
            [
                sci(r.compute_budget),
                _with_ci(r.optimal_params, r.optimal_params_lo, r.optimal_params_hi, human),
                _with_ci(r.optimal_tokens, r.optimal_tokens_lo, r.optimal_tokens_hi, human),
                _with_ci(r.tokens_per_param, r.tokens_per_param_lo, r.tokens_per_param_hi, _ratio),
                _with_ci(r.optimal_loss, r.optimal_loss_lo, r.optimal_loss_hi, lambda v: f"{v:.3f}"),
            ]
        )
    return out


_HEADERS = ["FLOPs", "Parameters", "Tokens", "Tokens/param", "Loss"]


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (95% intervals in brackets where known)."""
    rows = _cells(table)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADERS)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(_HEADERS), sep, *(line(r) for r in rows)])


def to_latex(table: pd.DataFrame, caption: str = "Compute-optimal model size and data.") -> str:
    """A booktabs LaTeX table."""
    esc = lambda s: s.replace("%", r"\%").replace("–", "--")  # noqa: E731
    body = "\n".join("    " + " & ".join(esc(c) for c in r) + r" \\" for r in _cells(table))
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"  \centering",
            r"  \begin{tabular}{lllrl}",
            r"    \toprule",
            "    " + " & ".join(_HEADERS) + r" \\",
            r"    \midrule",
            body,
            r"    \bottomrule",
            r"  \end{tabular}",
            f"  \\caption{{{esc(caption)}}}",
            r"\end{table}",
        ]
    )
