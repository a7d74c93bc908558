"""``flops-fit fit FILE``: fit scaling laws to results someone already has (a file, or a bundled set by name)
and print the summary every command prints."""

from __future__ import annotations

import argparse
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from flops_fit.app.console import UsageError, escape_controls, floats, working
from flops_fit.core.io import atomic_write_text

#: Bundled result sets usable by name in ``flops-fit fit NAME``: (file in flops_fit/data, column mapping,
#: number of highest-loss runs to leave out, and why).
BUNDLED_RESULTS = {
    "chinchilla": (
        "chinchilla_epoch.csv",
        {"num_params": "Model Size", "compute_budget": "Training FLOP", "final_loss": "loss"},
        5,
        "as Besiroglu et al. (2024) did, the 5 highest-loss runs are left out (far off every fitted surface)",
    ),
}


def _load_results(arg: str, columns: dict[str, str]) -> tuple[Path, Any]:
    """The runs table of a results file, or of a bundled result set by name."""
    from flops_fit.core.runs import load_runs

    path = Path(arg)
    if not path.exists() and arg in BUNDLED_RESULTS:
        name, mapping, drop_highest, why = BUNDLED_RESULTS[arg]
        path = Path(str(files("flops_fit") / "data" / name))
        runs = load_runs(path, columns={**mapping, **columns})
        if drop_highest:
            runs = runs.drop(index=runs["final_loss"].nlargest(drop_highest).index).reset_index(drop=True)
            print(f"{arg}: {why}")
        return path, runs
    if not path.is_file():
        raise UsageError(
            f"results file {arg!r} not found; give a .json/.jsonl/.csv/.parquet file or a bundled name "
            f"({', '.join(BUNDLED_RESULTS)})"
        )
    return path, load_runs(path, columns=columns or None)


def _column_args(args: argparse.Namespace) -> dict[str, str]:
    pairs = {
        "num_params": args.n_col,
        "num_tokens": args.d_col,
        "compute_budget": args.c_col,
        "final_loss": args.loss_col,
        "status": getattr(args, "status_col", None),
    }
    return {k: v for k, v in pairs.items() if v}


def check_bootstrap_arg(value: int) -> None:
    from flops_fit.core.validate import check_bootstrap

    try:
        check_bootstrap(value)
    except ValueError as exc:
        raise UsageError(f"--bootstrap: {exc}") from None


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit scaling laws to a results file and print the summary every command prints (Result.summary), the
    Chinchilla table at ``--budgets`` and, with ``--details``, each fit's own parameter block."""
    from flops_fit.analysis.approaches import label, resolve_approaches
    from flops_fit.report.result import Result

    approaches = resolve_approaches(args.approach)
    check_bootstrap_arg(args.bootstrap)
    budgets = floats(args.budgets, "--budgets") if args.budgets else None
    if args.json and not Path(args.json).expanduser().parent.is_dir():
        raise UsageError(f"--json {args.json!r}: its folder does not exist; create it or choose another path")
    if args.json and Path(args.json).expanduser().is_dir():
        raise UsageError(f"--json {args.json!r} is a folder; give a file name, e.g. {args.json}/fits.json")
    path, runs = _load_results(args.file, _column_args(args))
    completed = runs[runs["status"] == "completed"]
    print(f"{len(runs)} runs from {path.name} ({len(completed)} completed)\n")
    with working(f"fitting {', '.join(approaches)} to the runs of {path.name} ..."):
        result = Result.from_runs(
            runs,
            approaches,
            bootstrap=args.bootstrap,
            seed=args.seed,
            exclude_outliers=not args.keep_outliers,
        )
    print(escape_controls(result.summary()))
    if budgets is not None:
        print(f"\nChinchilla table at --budgets ({label(result.primary)}):")
        print(result.table_markdown(budgets))
    fits = {**result.fits, **result.variants}
    if args.details:
        for fit in fits.values():
            print()
            print(fit.summary())
    if args.json:
        out = {name: fit.to_dict() for name, fit in fits.items()}
        atomic_write_text(Path(args.json).expanduser(), json.dumps(out, indent=2))  # no half file if killed
        print(f"\nwrote {args.json}")
    return 0


def add_fit_parser(sub: Any) -> None:
    """``flops-fit fit``: fit results you already have."""
    fit = sub.add_parser(
        "fit",
        help="fit scaling laws to a results file",
        description="Fit scaling laws to a results file and print them with 95% intervals and a Chinchilla table.",
        epilog=(
            "examples:\n"
            "  flops-fit fit chinchilla --approach parametric --bootstrap 200\n"
            "  flops-fit fit results.jsonl --approach all --budgets 1e21,1e22\n"
            "  flops-fit fit theirs.csv --n-col 'Model Size' --c-col 'Training FLOP' --loss-col loss --approach parametric"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument(
        "file", help="results file (.json, .jsonl, .csv, .parquet) or a bundled name: chinchilla"
    )
    fit.add_argument("--n-col", help="column holding the parameter count N")
    fit.add_argument("--d-col", help="column holding the token count D (default: D = C / 6N)")
    fit.add_argument("--c-col", help="column holding the compute budget C in FLOPs (default: C = 6ND)")
    fit.add_argument("--loss-col", help="column holding the final loss")
    fit.add_argument("--status-col", help="column holding the run status (completed/failed/diverged)")
    fit.add_argument(
        "--approach",
        default="all",
        help="isoflop, parametric, envelope, all (default), or a variant: isoflop:shared, parametric:alpha=beta",
    )
    fit.add_argument(
        "--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals (default 0)"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fit.add_argument(
        "--budgets",
        help="FLOP budgets of an extra Chinchilla table, comma separated (the summary has one already)",
    )
    fit.add_argument("--keep-outliers", action="store_true", help="do not exclude flagged runs from the fits")
    fit.add_argument("--json", help="also write the fits to this JSON file")
    fit.add_argument(
        "--details",
        action="store_true",
        help="also print each fit's own block (estimates, method, fragility)",
    )
    fit.set_defaults(func=cmd_fit)
