"""HTML building blocks shared by the report and a Result's notebook view: escaping, tables, the
Chinchilla table. Reads a Result only through its public attributes (no import of it at run time)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from flops_fit.analysis.approaches import label
from flops_fit.analysis.table import human, sci
from flops_fit.report.view import ResultView


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: Any, fmt: Any = lambda v: f"{v:.4g}") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return fmt(v) if math.isfinite(v) else "–"


def _with_ci(value: float, lo: float, hi: float, fmt: Any) -> str:
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)):
        return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"
    return _num(value, fmt)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Sequence[int] = (),
    cls: Sequence[str] = (),
) -> str:
    """An HTML table; cells are escaped here; ``left`` columns are left-aligned; ``cls`` gives row classes."""
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i in left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers)
    )
    body = []
    for k, row in enumerate(rows):
        cells = "".join(
            f'<td class="l">{_e(c)}</td>' if i in left else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        attr = f' class="{_e(cls[k])}"' if k < len(cls) and cls[k] else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def chinchilla_table_html(table: pd.DataFrame) -> str:
    """A Chinchilla table (:func:`flops_fit.analysis.chinchilla_table`) as HTML, 95% intervals in brackets."""
    rows = [
        [
            sci(r.compute_budget),
            _with_ci(r.optimal_params, r.optimal_params_lo, r.optimal_params_hi, human),
            _with_ci(r.optimal_tokens, r.optimal_tokens_lo, r.optimal_tokens_hi, human),
            _with_ci(r.tokens_per_param, r.tokens_per_param_lo, r.tokens_per_param_hi, lambda v: f"{v:.1f}"),
            _with_ci(r.optimal_loss, r.optimal_loss_lo, r.optimal_loss_hi, lambda v: f"{v:.4f}"),
        ]
        for r in table.itertuples(index=False)
    ]
    return _table(["FLOPs", "Parameters", "Tokens", "Tokens/param", "Loss"], rows)


def result_html_fragment(result: ResultView) -> str:
    """A compact HTML view of ``result`` for notebooks (``Result._repr_html_``): laws, table, warnings."""
    laws = "".join(
        f"<li><b>{_e(label(n))}</b>{' (primary)' if n == result.primary else ''}: "
        + "; ".join(_e(line) for line in result.law_lines(n))
        + "</li>"
        for n in result.candidates
    )
    notes = result.warnings
    warn = (
        "<p><b>Warnings</b></p><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
        if notes
        else "<p>No warnings.</p>"
    )
    b = result.budgets
    banner = result.synthetic_banner
    head = (
        (f"<p><b>{_e(banner)}</b></p>" if banner else "")
        + f"<p><b>flops-fit Result</b>: {len(result.runs)} runs at {len(b)} budgets ({_e(sci(b[0]))} to "
        f"{_e(sci(b[-1]))} FLOPs)</p>"
    )
    return f'<div class="flops-fit-result">{head}<ul>{laws}</ul>{chinchilla_table_html(result.chinchilla_table())}{warn}</div>'


#: The training settings the report names (the rest are in sweep.json).
_SETTINGS = ("lr", "batch_size", "schedule", "warmup_frac", "weight_decay", "precision", "max_epochs", "seed")


def provenance_lines(plan: Any) -> list[str]:
    """What a result came from, one line per item: the model and its size parameter, how N is counted,
    the data, the FLOP convention and the training settings, read from the sweep's plan (``None``: a
    results table without one)."""
    if plan is None:
        return ["Runs from a results table without a plan: model, data and training settings not recorded."]
    config = dict(plan.config)
    lines = []
    if plan.model is not None:
        kwargs = ", ".join(f"{k}={v}" for k, v in dict(plan.model.model_kwargs).items())
        lines.append(
            f"Model: {plan.model.model_path}({kwargs}), size parameter {plan.model.size_param} swept"
        )
    lines.append(
        f"N counts {plan.param_count.replace('_', '-')} parameters; FLOPs: the {plan.flops} convention"
    )
    if config.get("data_id"):
        lines.append(f"Data: {config['data_id']}")
    train = dict(config.get("train_config") or {})
    if train:
        lines.append(
            "Training: " + ", ".join(f"{k} {train[k]}" for k in _SETTINGS if train.get(k) is not None)
        )
    return lines
