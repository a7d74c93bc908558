"""The ``flops-fit`` command line.

Every subcommand validates its arguments before doing any work; bad input exits with status 2 and a message
that names the argument and the fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

logger = logging.getLogger("flops_fit")

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


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(
            f"{what} must be numbers separated by commas, e.g. 1e21,1e22; got {text!r}"
        ) from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise UsageError(f"{what} must be positive finite numbers, got {text!r}")
    return values


def _load_results(arg: str, columns: dict[str, str]) -> tuple[Path, Any]:
    """The runs table of a results file, or of a bundled result set by name."""
    from flops_fit.runs import load_runs

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


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit scaling laws to a results file and print them with a Chinchilla table."""
    from flops_fit.analysis.approaches import resolve_approaches, run_approach
    from flops_fit.analysis.table import chinchilla_table, to_markdown

    approaches = resolve_approaches(args.approach)
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    budgets = _floats(args.budgets, "--budgets") if args.budgets else None
    path, runs = _load_results(args.file, _column_args(args))
    completed = runs[runs["status"] == "completed"]
    print(f"{len(runs)} runs from {path.name} ({len(completed)} completed)")
    if budgets is None:
        top = float(completed["compute_budget"].max())
        budgets = [top * 10**k for k in range(0, 4)]
    fits: dict[str, Any] = {}
    for name in approaches:
        try:
            fits[name] = run_approach(
                name, runs, bootstrap=args.bootstrap, seed=args.seed, exclude=not args.keep_outliers
            )
        except ValueError as exc:
            if len(approaches) == 1:
                raise
            print(f"\n{name}: not fitted: {exc}")
    out: dict[str, Any] = {}
    for name, fit in fits.items():
        print()
        print(fit.summary())
        table = chinchilla_table(fit, budgets)
        print()
        print(to_markdown(table))
        out[name] = fit.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0 if fits else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flops-fit",
        description="Compute-optimal scaling laws for your own model and data (Chinchilla Approaches 1-3).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fit = sub.add_parser(
        "fit",
        help="fit scaling laws to a results file",
        description="Fit scaling laws to a results file and print them with 95%% intervals and a Chinchilla table.",
        epilog=(
            "examples:\n"
            "  flops-fit fit chinchilla --approach parametric --bootstrap 200\n"
            "  flops-fit fit results.jsonl --approach all --budgets 1e21,1e22\n"
            "  flops-fit fit theirs.csv --n-col 'Model Size' --c-col 'Training FLOP' --loss-col loss"
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
    fit.add_argument("--approach", default="all", help="isoflop, parametric, envelope or all (default: all)")
    fit.add_argument(
        "--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals (default 0)"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fit.add_argument(
        "--budgets", help="FLOP budgets for the table, comma separated (default: 1x-1000x the largest)"
    )
    fit.add_argument("--keep-outliers", action="store_true", help="do not exclude flagged runs from the fits")
    fit.add_argument("--json", help="also write the fits to this JSON file")
    fit.set_defaults(func=cmd_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    try:
        return int(args.func(args))
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"flops-fit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
