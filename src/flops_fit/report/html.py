"""One self-contained HTML report of a :class:`~flops_fit.report.result.Result`.

The file carries everything inline: the figures as base64 PNG, the CSS in a ``<style>`` element, no
scripts and no external URL, so it opens offline, attaches to an e-mail and survives being moved. Sections:
warnings and flags, the fitted laws with 95% intervals, the approaches side by side, the Chinchilla table,
the rolling back-test and why the primary answer is primary, the figures, the IsoFLOP minima, the excluded runs and the run list.

From the command line: ``flops-fit report DIR`` (``DIR`` written by ``Result.save``) writes
``DIR/report.html``.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import math
import os
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from flops_fit.analysis.approaches import label
from flops_fit.analysis.isoflop import IsoFLOPFit
from flops_fit.analysis.table import human, sci
from flops_fit.core import sweepdir
from flops_fit.core.io import atomic_write_text
from flops_fit.core.sweepdir import SweepDir
from flops_fit.core.validate import Instance, check
from flops_fit.core.version import __version__
from flops_fit.report.backtest import RULE_WORDS, band_summary
from flops_fit.report.html_parts import (
    _e,
    _num,
    _table,
    _with_ci,
    chinchilla_table_html,
    provenance_lines,
)
from flops_fit.report.result import Result

logger = logging.getLogger(__name__)

REPORT_FILE = sweepdir.REPORT_FILE
#: Resolution of the embedded figures (dots per inch; figures are 3.5 or 7 inches wide).
FIGURE_DPI = 150

FIGURE_CAPTIONS: dict[str, str] = {
    "isoflop": "IsoFLOP profiles: final loss against model size per compute budget, the fitted parabolas "
    "and their minima (hollow: flagged and left out of the laws; crosses: excluded outliers).",
    "optimal": "Compute-optimal N, D and loss against compute, per approach, with 95% bands; the shaded "
    "region lies beyond the largest observed budget (extrapolation).",
    "parametric": "Approach 3: contours of the fitted loss L(N, D), the runs, and the efficient frontier.",
    "residuals": "Residuals of each approach; a trend in them means the functional form misfits the data.",
    "envelope": "Approach 1: every run's loss curve against FLOPs and the lowest-loss envelope.",
    "backtest": "Rolling back-test: each candidate's error (predicted / measured - 1 at measured optima; "
    "hollow: the budget's lowest-loss run, not a bracketed minimum) against the extrapolation distance "
    "C_target / C_k. The primary answer is judged right of the dotted line.",
}

_CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg2: #f6f8fa; --warn: #9a6700;
        --warnbg: #fff8c5; --bad: #cf222e; --good: #1a7f37; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 10px;
     border-bottom: 1px solid var(--line); padding-bottom: 4px; } h3 { font-size: 16px; margin: 18px 0 6px; }
.meta, .note, figcaption { color: var(--muted); font-size: 13px; }
.mock { background: var(--warnbg); color: var(--warn); border: 1px solid var(--warn); padding: 6px 10px;
        font-weight: 600; }
nav { margin: 12px 0 0; font-size: 14px; } nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: var(--bg2); } td.l, th.l { text-align: left; } td.wrap { white-space: normal; text-align: left; }
tr.excluded td { color: var(--muted); text-decoration: line-through; }
tr.notdone td { color: var(--bad); }
.scroll { overflow-x: auto; max-height: 560px; overflow-y: auto; }
ul.warnings { background: var(--warnbg); border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 10px 10px 30px; }
ul.warnings li { margin: 3px 0; }
.ok { color: var(--good); } .bad { color: var(--bad); }
.laws { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: var(--bg2); }
.card code { font-size: 12.5px; white-space: pre-wrap; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
"""


# ----------------------------------------------------------------------------------------------------
# Sections


def _warnings_html(result: Result) -> str:
    notes = result.warnings
    if not notes:
        return '<p class="ok">No warnings: nothing skipped, flagged or excluded, and no disagreement between approaches.</p>'
    return '<ul class="warnings">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _laws_html(result: Result) -> str:
    cards = []
    for name in result.candidates:
        lines = "\n".join(result.law_lines(name))
        star = " (primary)" if name == result.primary else ""
        cards.append(f'<div class="card"><h3>{_e(label(name) + star)}</h3><code>{_e(lines)}</code></div>')
    return '<div class="laws">' + "".join(cards) + "</div>"


def _tables_html(result: Result) -> str:
    parts = [chinchilla_table_html(result.chinchilla_table())]
    for name in result.candidates:
        if name != result.primary:
            parts.append(
                f"<details><summary>{_e(label(name))}</summary>"
                f"{chinchilla_table_html(result.chinchilla_table(approach=name))}</details>"
            )
    return "".join(parts)


def _comparison_html(result: Result) -> str:
    cmp = result.compare_approaches()
    fmts = {
        "a": lambda v: f"{v:.4f}",
        "b": lambda v: f"{v:.4f}",
        "N_opt": human,
        "D_opt": human,
        "L_opt": lambda v: f"{v:.4f}",
    }
    names = list(result.fits)
    rows = []
    for q, quantity in (
        ("a", "a (N_opt ∝ C^a)"),
        ("b", "b (D_opt ∝ C^b)"),
        ("N_opt", "N_opt"),
        ("D_opt", "D_opt"),
        ("L_opt", "L_opt"),
    ):
        part = cmp[cmp["quantity"] == q].set_index("approach")
        rows.append(
            [
                quantity,
                *(
                    _with_ci(part.loc[n, "value"], part.loc[n, "lo"], part.loc[n, "hi"], fmts[q])
                    for n in names
                ),
            ]
        )
    note = (
        f'<p class="note">N_opt, D_opt and L_opt at the largest observed budget, C = {_e(sci(cmp.attrs["compute_budget"]))} '
        "FLOPs; 95% intervals in brackets. Approaches whose intervals do not overlap are listed under Warnings.</p>"
    )
    return _table(["", *(label(n) for n in names)], rows, left=(0,)) + note


def _backtest_table(result: Result, run: bool) -> tuple[pd.DataFrame | None, str]:
    """The back-test the report shows: the Result's own, else one run here when asked (the Result is left
    as it is); with a note when there is none."""
    table = result.last_backtest
    if table is None and run:
        try:
            table = result.backtest()
        except ValueError as exc:
            return None, f'<p class="note">Not run: {_e(exc)}</p>'
    if table is None:
        return (
            None,
            '<p class="note">Not run (call result.backtest() or write the report with backtest=True).</p>',
        )
    return table, ""


def _backtest_html(result: Result, table: pd.DataFrame | None, note: str) -> str:
    """The back-test section: how the primary answer was chosen, and each candidate's error by distance."""
    chosen = f"<p><b>Primary: {_e(label(result.primary))}</b>, chosen {_e(RULE_WORDS.get(result.selection.rule, ''))}: {_e(result.selection.reason)}.</p>"
    if table is None:
        return chosen + note
    if table.empty:
        return chosen + '<p class="note">No candidate to back-test.</p>'
    if "distance" not in table.columns:
        return chosen + _single_holdout_html(table)
    rows, classes = [], []
    for r in band_summary(table).itertuples(index=False):
        rows.append(
            [label(r.approach), r.band, r.n_optimum, r.n_bracketed, _pct(r.params_error, 1),
             _pct(r.loss_error, 2), _pct(r.runs_loss_error, 2), r.failed or ""]
        )  # fmt: skip
        classes.append("notdone" if r.failed and not r.n_optimum else "")
    head = (
        f'<p class="note">Rolling origin: each candidate refitted on the budgets up to each of '
        f"{table['origin_budget'].nunique()} origin(s) C_k (the third budget on) and asked for every later "
        "budget C_target; errors are mean |ln(predicted / measured)| by distance C_target / C_k. The measured "
        "optimum is the budget's IsoFLOP minimum where its profile brackets one (else its lowest-loss run); "
        "Approach 3 is also checked on the loss of every later run. This is the honest test of extrapolation: "
        "the intervals of the full fit are only as good as this check.</p>"
    )
    headers = [
        "",
        "Distance",
        "Optima",
        "at IsoFLOP minima",
        "N_opt error",
        "L_opt error",
        "Run-loss error",
        "Failed",
    ]
    return chosen + head + _table(headers, rows, left=(0, 1), cls=classes)


def _pct(x: float, digits: int) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}%}"


def _single_holdout_html(table: pd.DataFrame) -> str:
    """A back-test table saved before the rolling back-test: one held-out budget per approach."""
    first = table.iloc[0]
    rows, classes = [], []
    for r in table.itertuples(index=False):
        if isinstance(r.error, str) and r.error:
            rows.append([label(r.approach), "could not be refitted: " + r.error, "", "", "", "", ""])
            classes.append("notdone")
            continue

        def inside(flag: Any) -> str:
            return "–" if flag is None or pd.isna(flag) else ("yes" if flag else "no")

        rows.append(
            [
                label(r.approach),
                _with_ci(r.predicted_params, r.predicted_params_lo, r.predicted_params_hi, human),
                human(r.measured_params),
                f"{r.params_rel_error:+.1%} (in CI: {inside(r.params_within_ci)})",
                _with_ci(r.predicted_loss, r.predicted_loss_lo, r.predicted_loss_hi, lambda v: f"{v:.4f}"),
                f"{r.measured_loss:.4f}",
                f"{r.loss_rel_error:+.2%} (in CI: {inside(r.loss_within_ci)})",
            ]
        )
        classes.append("")
    head = (
        f'<p class="note">Each approach refitted on the {int(first.fit_budgets)} budgets below '
        f"C = {_e(sci(first.held_out_budget))} FLOPs (the largest budget with a bracketed IsoFLOP profile) and "
        f"asked for the optimum there. Measured: {_e(first.measured_from)}.</p>"
    )
    headers = [
        "",
        "N_opt predicted",
        "N_opt measured",
        "N error",
        "L_opt predicted",
        "L_opt measured",
        "L error",
    ]
    return head + _table(headers, rows, left=(0,), cls=classes)


def _figure_pngs(result: Result) -> dict[str, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figures = result.plot()
    out = {}
    for name, fig in figures.items():
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layout notes about crowded legends; the figure is still drawn
            fig.savefig(buf, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
        out[name] = buf.getvalue()
    return out


def _figures_html(result: Result, pngs: Mapping[str, bytes] | None) -> str:
    if pngs is None:
        try:
            pngs = _figure_pngs(result)
        except (ImportError, ValueError) as exc:
            return f'<p class="note">No figures: {_e(exc)}</p>'
    parts = []
    for name, png in pngs.items():
        if not (isinstance(png, bytes) and png.startswith(b"\x89PNG")):
            raise ValueError(f"figures[{name!r}] must be the bytes of a PNG image")
        data = base64.b64encode(png).decode("ascii")
        caption = FIGURE_CAPTIONS.get(name, name)
        parts.append(
            f'<figure id="fig-{_e(name)}"><img alt="{_e(name)} figure" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def _minima_html(result: Result) -> str:
    iso = result.fits.get("isoflop")
    if not isinstance(iso, IsoFLOPFit):
        return ""
    rows, classes = [], []
    for r in iso.minima.itertuples(index=False):
        rows.append(
            [sci(r.compute_budget), int(r.n_points), human(r.optimal_params), human(r.optimal_tokens),
             _num(r.optimal_loss), "yes" if r.used else "no", r.flags or ""]
        )  # fmt: skip
        classes.append("" if r.used else "notdone")
    return '<h2 id="minima">IsoFLOP minima (Approach 2)</h2>' + _table(
        ["Budget (FLOPs)", "Runs", "N*", "D*", "L*", "Used", "Flags"], rows, left=(6,), cls=classes
    )


def _excluded_html(result: Result) -> str:
    ex = result.excluded_runs()
    if ex.empty:
        return '<p class="note">No completed run was excluded as an outlier.</p>'
    rows = [
        [r.experiment_id, sci(r.compute_budget), human(r.num_params), human(r.num_tokens), _num(r.final_loss),
         r.reason, r.approaches]
        for r in ex.itertuples(index=False)
    ]  # fmt: skip
    return _table(
        ["Experiment", "C (FLOPs)", "N", "D", "Loss", "Reason", "Excluded by"], rows, left=(0, 5, 6)
    )


def _runs_html(result: Result) -> str:
    runs = result.runs.sort_values(["compute_budget", "num_params"], kind="stable")
    excluded = set(result.excluded_runs()["experiment_id"])
    has_size = "size_value" in runs and runs["size_value"].notna().any()
    has_error = "error" in runs and runs["error"].notna().any()
    headers = ["Experiment", "Status", "C (FLOPs)", *(["Size"] if has_size else []), "N", "D", "D/N", "Loss"]
    headers += ["Error"] if has_error else []
    rows, classes = [], []
    for r in runs.to_dict(orient="records"):
        row = [r["experiment_id"], r["status"], sci(r["compute_budget"])]
        if has_size:
            row.append(_num(r.get("size_value"), lambda v: f"{v:g}"))
        ratio = r["num_tokens"] / r["num_params"] if r["num_params"] else math.nan
        row += [
            human(r["num_params"]),
            human(r["num_tokens"]),
            _num(ratio, lambda v: f"{v:.1f}"),
            _num(r["final_loss"]),
        ]
        if has_error:
            err = r.get("error")
            row.append("" if err is None or (isinstance(err, float) and math.isnan(err)) else str(err)[:200])
        rows.append(row)
        classes.append(
            "notdone" if r["status"] != "completed" else "excluded" if r["experiment_id"] in excluded else ""
        )
    left = (0, 1, len(headers) - 1) if has_error else (0, 1)
    note = '<p class="note">Struck through: excluded as outliers. Red: failed or diverged.</p>'
    return note + '<div class="scroll">' + _table(headers, rows, left=left, cls=classes) + "</div>"


def _version() -> str:
    return str(__version__)


def render_report(
    result: Result,
    *,
    backtest: bool = True,
    title: str | None = None,
    figures: Mapping[str, bytes] | None = None,
) -> str:
    """The report of ``result`` as one HTML document (a string); :func:`write_report` saves it.

    ``backtest=True`` runs :meth:`Result.backtest` when the Result carries no back-test (a refit of every
    candidate at every origin; skipped with a note below 4 budgets); the Result is not changed.
    ``figures`` maps figure names to PNG bytes already drawn (e.g. the files of :meth:`Result.save`);
    default: drawn here.
    """
    check("result", result, Instance(Result), "a flops_fit Result")
    b = result.budgets
    title = title or "Compute-optimal scaling laws"
    status = result.runs["status"].value_counts()
    done = ", ".join(f"{int(status[s])} {s}" for s in ("completed", "failed", "diverged") if s in status)
    boot = int(result.fit_options.get("bootstrap", 0))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table, note = _backtest_table(result, backtest)  # run here when asked; the Result is left as it is
    shown = result.with_backtest(table) if table is not None and result.backtest_table is None else result
    figures_html = _figures_html(shown, figures)
    backtest_html = _backtest_html(result, table, note)
    sections = [
        ("warnings", "Warnings and flags", _warnings_html(result)),
        ("laws", "Fitted laws (95% intervals)", _laws_html(result)),
    ]
    if len(result.fits) > 1:
        sections.append(("comparison", "Approaches side by side", _comparison_html(result)))
    sections += [
        ("table", f"Chinchilla table ({label(result.primary)})", _tables_html(result)),
        ("backtest", "Back-test: predict later budgets from the smaller ones", backtest_html),
        ("figures", "Figures", figures_html),
    ]
    banner = result.synthetic_banner
    body = [
        f"<header><h1>{_e(title)}</h1>",
        *([f'<p class="mock">{_e(banner)}</p>'] if banner else []),
        f'<p class="meta">{_e(len(result.runs))} runs ({_e(done)}) at {_e(len(b))} compute budgets from '
        f"{_e(sci(b[0]))} to {_e(sci(b[-1]))} FLOPs · primary: {_e(label(result.primary))} · intervals: "
        + _e(f"{boot} bootstrap resamples" if boot else "regression-based (no bootstrap)")
        + f" · flops-fit {_e(_version())} · {_e(stamp)}</p>",
        f'<p class="meta">Design: {_e(result.layout.describe())}</p>',
        *(f'<p class="meta">{_e(line)}</p>' for line in provenance_lines(result.plan)),
        "<nav>"
        + "".join(f'<a href="#{k}">{_e(t.split(" (")[0])}</a>' for k, t, _ in sections)
        + '<a href="#excluded">Excluded runs</a><a href="#runs">Runs</a></nav></header>',
    ]
    for key, heading, content in sections:
        body.append(f'<section id="{key}"><h2>{_e(heading)}</h2>{content}</section>')
    body.append(_minima_html(result))
    body.append(f'<section id="excluded"><h2>Excluded runs</h2>{_excluded_html(result)}</section>')
    body.append(f'<section id="runs"><h2>Runs</h2>{_runs_html(result)}</section>')
    body.append(
        '<footer class="note"><p>Units: C in FLOPs, N in parameters, D in tokens, loss as the runs report it. '
        "Approaches after Hoffmann et al. (2022), Training Compute-Optimal Large Language Models: 1 the "
        "training-curve envelope, 2 IsoFLOP profiles, 3 the parametric loss L(N, D) = E + A/N^alpha + B/D^beta "
        "(Huber loss on log L, as re-examined by Besiroglu et al. 2024).</p></footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        + "\n".join(body)
        + "</main></body></html>\n"
    )


def write_report(
    result_or_dir: Result | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    backtest: bool = True,
    title: str | None = None,
    figures: Mapping[str, bytes] | None = None,
) -> Path:
    """Write one self-contained HTML report and return its path.

    ``result_or_dir`` is a :class:`Result` or a directory written by :meth:`Result.save`. ``path`` defaults
    to ``report.html`` in that directory (or in the Result's ``output_dir``). ``backtest``, ``title`` and
    ``figures``: see :func:`render_report`.
    """
    if isinstance(result_or_dir, Result):
        result = result_or_dir
        base = result.output_dir
    elif isinstance(result_or_dir, (str, os.PathLike)):
        base = Path(result_or_dir)
        if not base.is_dir():
            raise FileNotFoundError(
                f"{str(base)!r} is not a directory; pass a Result or a directory from Result.save"
            )
        result = Result.load(base)
    else:
        raise TypeError(
            f"result_or_dir must be a Result or a directory path, got {type(result_or_dir).__name__}"
        )
    if path is None:
        if base is None:
            raise ValueError("write_report needs path= for a Result without output_dir")
        path = SweepDir(base).report
    if Path(path).is_dir():
        raise ValueError(
            f"path {str(path)!r} is a folder; give the report's file name, e.g. {SweepDir(path).report}"
        )
    text = render_report(result, backtest=backtest, title=title, figures=figures)
    out = atomic_write_text(path, text)
    logger.info("wrote the report to %s", out)
    return out


# ----------------------------------------------------------------------------------------------------
# Command line


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on an ``argparse`` sub-parser set (``flops-fit report DIR``)."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a saved result",
        description="Write one self-contained HTML file (figures embedded, laws with 95% intervals, table, "
        "back-test, warnings, runs) for a directory written by Result.save / find_optimal.",
        epilog=(
            "examples:\n"
            "  flops-fit report flops_fit_demo\n"
            "  flops-fit report runs/gpt -o gpt_report.html --no-backtest"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dir",
        help=f"directory holding {sweepdir.SCALING_LAWS_FILE} (from Result.save, find_optimal, flops-fit analyze)",
    )
    parser.add_argument("-o", "--output", help=f"HTML file to write (default: DIR/{REPORT_FILE})")
    parser.add_argument("--no-backtest", action="store_true", help="do not run the rolling back-test")
    parser.add_argument("--title", help="title of the report")
    parser.set_defaults(func=cmd_report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    """``flops-fit report``: write the report and print where it went."""
    laws = SweepDir(args.dir).scaling_laws
    if Path(args.dir).is_dir() and not laws.is_file():
        raise ValueError(
            f"{laws} not found; run `flops-fit analyze {args.dir}` (or find_optimal, which saves a result "
            "there) first"
        )
    path = write_report(args.dir, args.output, backtest=not args.no_backtest, title=args.title)
    print(f"wrote {path}")
    return 0
