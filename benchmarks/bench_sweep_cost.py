"""What does the WSD design save, and does it give the same answer? IsoFLOP vs WSD sweeps of the demo.

Issue 19's yardsticks, measured side by side in one run on the demo's task (:mod:`flops_fit.examples.gpt_text`:
its GPT, the bundled corpus, its sizes and training settings, one torch thread):

1. **Same budgets.** The demo's budgets (6e10 .. 4.8e11 FLOPs) planned and trained as today's IsoFLOP grid and
   as the WSD design (:class:`~flops_fit.plan.wsd.WSDDesign`: one constant-learning-rate trunk per size,
   a cooldown branch per point). Printed: each design's training FLOPs (planned) and wall time, their ratio,
   and Approach 2's fitted N_opt at every budget with its 95% interval for both designs (do the intervals
   contain the other design's estimate?). Loss at equal (N, D), branch against cosine, is reported, not
   targeted: a cooldown often ends lower than a cosine run to 10% of peak. The annealing law (Tissue et
   al. 2024) fitted on each trunk's longest branch (whose curve holds the trunk's) and its shortest predicts
   the other branches' final losses; its error is printed.
2. **Same FLOPs.** Over the budget range of ``bench_predict`` (3e10 .. 2e11), as many log-spaced budgets as
   the WSD design can train for the FLOPs of today's 5-budget IsoFLOP sweep. With ``--target DIR`` (the
   ``target`` folder of a ``bench_predict`` run: its trained runs at C* = 2e12) both designs' predictions
   at C* are compared with the optimum trained there, as ``bench_predict`` does.

Resumable: sweeps live in ``OUT/<name>``; re-running retrains nothing (wall times are printed only for sweeps
trained in this call, as nan otherwise: a branch's recorded ``wall_time_s`` includes its trunk's).
``--quick`` is a smoke run at tiny budgets (numbers mean nothing).

    python benchmarks/bench_sweep_cost.py --target /tmp/flops_fit_bench_predict/target
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import compare, machine_lines, predictions, short
from flops_fit.analysis.annealing import held_out_branches
from flops_fit.core.runs import load_runs
from flops_fit.examples.gpt_text import DEFAULT_BUDGETS, demo_sweep, text_datasets
from flops_fit.report.result import Result

PREDICT_BUDGETS = (3e10, 5e10, 8e10, 1.2e11, 2e11)
QUICK_BUDGETS = (1e10, 2e10, 4e10)


def sweep(
    budgets: Sequence[float], out: Path, datasets: Any, design: str, bootstrap: int
) -> tuple[Result, float]:
    """Train (or resume) the demo's sweep in ``design``; the result and the seconds its training took in this
    call (NaN when it had been trained before: a branch's recorded wall time includes its trunk's, so the
    ledger's times do not add up to the sweep's)."""
    fresh = not (out / "results.jsonl").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        first = demo_sweep(budgets, out, datasets=datasets, design=design, bootstrap=0)
        seconds = time.perf_counter() - t0
        ids = {e.experiment_id for e in first.plan}
        runs = first.runs[first.runs["experiment_id"].isin(ids)].reset_index(drop=True)
        result = Result.from_runs(runs, bootstrap=bootstrap, seed=0, plan=first.plan)
    return result, seconds if fresh else float("nan")


def planned(budgets: Sequence[float], datasets: Any, design: str) -> Any:
    """The plan alone (train=False)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return demo_sweep(budgets, tempfile.mkdtemp(), datasets=datasets, design=design, train=False)


def optimum_rows(iso: Result, wsd: Result, budgets: Sequence[float]) -> pd.DataFrame:
    """Approach 2's N_opt (95% interval) at each budget for both designs, and whether each lies in the other's."""
    rows = []
    for c in budgets:
        a, b = (r.predict(c, approach="isoflop") for r in (iso, wsd))
        (alo, ahi), (blo, bhi) = a["optimal_params_ci"], b["optimal_params_ci"]
        rows.append(
            {
                "budget": f"{c:.3g}",
                "IsoFLOP N_opt": f"{a['optimal_params']:,.0f} [{alo:,.0f}, {ahi:,.0f}]",
                "WSD N_opt": f"{b['optimal_params']:,.0f} [{blo:,.0f}, {bhi:,.0f}]",
                "ratio": f"{b['optimal_params'] / a['optimal_params']:.2f}",
                "agree": "yes"
                if (alo <= b["optimal_params"] <= ahi or blo <= a["optimal_params"] <= bhi)
                else "no",
            }
        )
    return pd.DataFrame(rows)


def equal_loss_rows(iso: Result, wsd: Result) -> pd.DataFrame:
    """Final loss of the same (budget, N) trained as a cosine run and as a WSD branch."""
    cols = ["compute_budget", "num_params", "final_loss"]
    a, b = (r.runs[r.runs["status"] == "completed"][cols] for r in (iso, wsd))
    both = a.merge(b, on=["compute_budget", "num_params"], suffixes=("_cosine", "_wsd"))
    both["wsd - cosine"] = both["final_loss_wsd"] - both["final_loss_cosine"]
    return both


def most_budgets(lo: float, hi: float, flops: float, datasets: Any) -> tuple[list[float], Any]:
    """The most log-spaced budgets over [lo, hi] whose WSD plan costs at most ``flops``."""
    best: tuple[list[float], Any] = ([], None)
    for k in range(2, 31):
        budgets = [float(f"{x:.4g}") for x in np.geomspace(lo, hi, k)]
        plan = planned(budgets, datasets, "wsd")
        if plan.total_flops > flops:
            break
        best = (budgets, plan)
    return best


def annealing_line(wsd: Result) -> None:
    """How well the annealing law, fitted on two branches per trunk, predicts the others' final losses."""
    held = held_out_branches(wsd.runs.to_dict("records"))
    if held:
        err = np.abs([h["rel_error"] for h in held])
        print(
            f"  annealing law (Tissue et al. 2024) fitted on each trunk's longest and shortest branch: "
            f"{len(held)} held-out branch endpoints predicted within {err.mean():.2%} on average, "
            f"{np.mean(err <= 0.01):.0%} within 1%, largest {err.max():.2%} (the fits' own relative RMS: "
            f"{np.mean([h['fit_rms'] for h in held]):.2%}, the evaluation noise)"
        )


def part_one(budgets: Sequence[float], out: Path, datasets: Any, bootstrap: int) -> None:
    iso_plan, wsd_plan = planned(budgets, datasets, "isoflop"), planned(budgets, datasets, "wsd")
    iso, iso_s = sweep(budgets, out / "iso", datasets, "isoflop", bootstrap)
    wsd, wsd_s = sweep(budgets, out / "wsd", datasets, "wsd", bootstrap)
    print(f"\n--- 1. Same budgets ({', '.join(f'{b:.3g}' for b in budgets)}) ---\n")
    print(
        f"  IsoFLOP grid: {len(iso_plan)} runs, {iso_plan.total_flops:.3g} FLOPs, {iso_s:.0f} s to train (and fit once)"
    )
    print(
        f"  WSD design:   {len(wsd_plan)} branches of {len(wsd_plan.trunks)} trunks, {wsd_plan.total_flops:.3g} "
        f"FLOPs, {wsd_s:.0f} s to train (and fit once)"
    )
    print(
        f"  WSD / IsoFLOP: FLOPs {wsd_plan.total_flops / iso_plan.total_flops:.2f}x, wall time "
        f"{wsd_s / iso_s:.2f}x\n"
    )
    print(optimum_rows(iso, wsd, budgets).to_string(index=False))
    loss = equal_loss_rows(iso, wsd)
    if len(loss):
        d = loss["wsd - cosine"]
        print(
            f"\n  same (budget, N) in both ({len(loss)} runs): WSD branch minus cosine loss, median {d.median():+.4f}, "
            f"range {d.min():+.4f} .. {d.max():+.4f}"
        )
    annealing_line(wsd)
    for name, r in (("IsoFLOP", iso), ("WSD", wsd)):
        print(f"\n  {name}: primary {short(r.selection.primary)}; {r.selection.reason[:300]}")


def part_two(out: Path, datasets: Any, bootstrap: int, target_dir: Path | None) -> None:
    lo, hi = PREDICT_BUDGETS[0], PREDICT_BUDGETS[-1]
    iso_plan = planned(PREDICT_BUDGETS, datasets, "isoflop")
    budgets, wsd_plan = most_budgets(lo, hi, iso_plan.total_flops, datasets)
    print(f"\n--- 2. Same FLOPs over {lo:.3g} .. {hi:.3g} ---\n")
    print(f"  IsoFLOP grid: {len(PREDICT_BUDGETS)} budgets, {iso_plan.total_flops:.3g} FLOPs")
    print(
        f"  WSD design:   {len(budgets)} budgets, {wsd_plan.total_flops:.3g} FLOPs ({', '.join(f'{b:.3g}' for b in budgets)})"
    )
    if target_dir is None:
        print(
            "  (no --target: the 10x predictions are not compared; run bench_predict and pass its target folder)"
        )
        return
    iso, _ = sweep(PREDICT_BUDGETS, out / "iso_predict", datasets, "isoflop", bootstrap)
    wsd, _ = sweep(budgets, out / "wsd_predict", datasets, "wsd", bootstrap)
    annealing_line(wsd)
    runs = load_runs(target_dir / "results.jsonl")
    tokens = float(len(datasets[0]) * datasets[0].tokens_per_sample)
    c_star = float(runs["compute_budget"].max())
    for name, r in (("IsoFLOP", iso), ("WSD", wsd)):
        preds = predictions(r, c_star)
        achieved, rows = compare(preds, runs[runs["compute_budget"] == c_star], tokens)
        primary = next(x for x in rows if x["approach"] == r.selection.primary)
        print(
            f"  {name:8s} primary {short(r.selection.primary):14s}: N_opt {primary['params_ratio']:.2f}x the optimum "
            f"trained at {c_star:.3g} ({achieved['optimal_params']:,.0f}), L_opt {primary['loss_rel_error']:+.1%}"
        )
        for x in rows:
            if (
                x["approach"] in ("isoflop", "envelope", "parametric")
                and x["approach"] != r.selection.primary
            ):
                print(
                    f"  {'':8s} {short(x['approach']):22s}: N_opt {x['params_ratio']:.2f}x, L_opt {x['loss_rel_error']:+.1%}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run at tiny budgets (numbers mean nothing)"
    )
    parser.add_argument("--out", help="output folder (re-running resumes)")
    parser.add_argument("--target", help="bench_predict's target folder (its runs at C*)")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for the 95%% intervals")
    parser.add_argument("--skip-same-flops", action="store_true", help="only part 1")
    args = parser.parse_args(argv)
    out = Path(
        args.out
        or Path(tempfile.gettempdir()) / ("flops_fit_bench_sweep_cost" + ("_quick" if args.quick else ""))
    )
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print("\n".join(machine_lines("cpu")))
    started = time.perf_counter()
    datasets = text_datasets()
    budgets = QUICK_BUDGETS if args.quick else DEFAULT_BUDGETS
    bootstrap = 20 if args.quick else args.bootstrap
    part_one(budgets, out, datasets, bootstrap)
    if not (args.quick or args.skip_same_flops):
        part_two(out, datasets, bootstrap, Path(args.target) if args.target else None)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; output {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
