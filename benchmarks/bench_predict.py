"""Does the fitted law predict a 10x larger run? Predicted vs achieved compute-optimal size and loss.

The library's core promise, measured end to end on real training in one run:

1. **Fit.** A real IsoFLOP sweep of the demo's GPT (:mod:`flops_fit.examples.gpt_text`: u-μP, 2 layers,
   one attention head, swept over ``d_model`` in multiples of 4 (``DEMO_MODEL_KWARGS``, ``SIZE_MULTIPLE``),
   vocabulary 512, sequence 64, its ``TRAIN_CONFIG``) on the bundled State of the Union corpus at the lower
   budgets (default 3e10, 5e10, 8e10, 1.2e11, 2e11 FLOPs: five, so the rolling back-test has origins; 5
   sizes each over the example's span N*/4 .. 4 N*), through the demo's own call
   (:func:`flops_fit.examples.gpt_text.demo_sweep`). All three
   approaches are then refitted with ``--bootstrap`` resamples (default 200, seeded) so each has 95%
   intervals.
2. **Predict.** At C* = ``--factor`` (10) x the largest fitted budget, 2e12 FLOPs by default, every
   approach predicts N_opt and L_opt with intervals; :meth:`Result.closest_size` names the ``d_model``
   nearest each N_opt.
3. **Train at C*.** The size nearest each approach's N_opt, the size the plain 20-tokens-per-parameter
   rule picks (a reference that needs no fit), and a profile around the primary prediction (the
   candidate the rolling backtest chose, :attr:`Result.selection`) at
   N_opt x {1/4, 1/2, 1, 2, 4}, all at the same C* with D = C* / (6 N) tokens (the ``"6nd"`` convention
   of the fit), planned by :class:`~flops_fit.plan.planner.SweepPlanner` with the fit's model, data, batch,
   seed and training settings, trained by :class:`~flops_fit.training.runner.TrainingRunner`.
4. **Compare.** Achieved N_opt: the vertex of the parabola in ln N through the C* losses
   (:func:`flops_fit.analysis.isoflop.fit_profile`, as Approach 2 reads one budget). Achieved loss: the
   lowest loss reached at C* (a least-squares parabola can put its vertex above the best run). Per
   approach: predicted / achieved N_opt and whether the achieved value lies in the 95% interval;
   predicted L_opt / achieved loss - 1 and the interval check; the loss the predicted size actually
   reached and its excess over the achieved loss (what trusting the prediction costs). Approach 3's
   L(N, D) is also printed beside every C* run.

No silent repetition: a size whose D = C* / (6 N) needs more than ``--max-epochs`` passes (default 1) over
the corpus is not trained but listed with the epochs it would need, and the smallest size that fits is
trained instead, so the profile reaches as far left as the data allows. Raising ``--max-epochs`` trains
such sizes too (on repeated data, marked in the table and left out of the achieved N_opt); their ids stay
those of the default run, so only the new runs train (the runner then logs that ``max_epochs`` differs
from the plan's, which is intended).

Resumable and deterministic (seed 0 for data order, initialisation and bootstrap; losses do not depend on
the thread count): the fit sweep lives in ``OUT/fit``, the C* runs in ``OUT/target``; re-running retrains
nothing, and the printed times count only this call. The numbers also go to ``OUT/bench_predict.json``.
Torch runs one thread by default: on a shared 2-core machine two threads ran the small models up to 20x
slower (thread contention).

Run (about 35 minutes on a shared 2-core CPU; ``--quick``, about 3.5 minutes, is a smoke run at tiny
budgets with a 2x extrapolation whose numbers mean nothing)::

    python benchmarks/bench_predict.py
    python benchmarks/bench_predict.py --quick
    python benchmarks/bench_predict.py --budgets 3e10,8e10,2e11 --factor 10 --out /tmp/bench_predict
    python benchmarks/bench_predict.py --max-epochs 1.35   # also train sizes needing up to 1.35 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
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

import flops_fit
from flops_fit.analysis.isoflop import fit_profile
from flops_fit.examples.gpt import lm_loss
from flops_fit.examples.gpt_text import (
    NUM_MODEL_SIZES,
    SIZE_SPAN,
    TRAIN_CONFIG,
    demo_sweep,
    text_datasets,
)
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.result import Result
from flops_fit.training.runner import TrainingRunner

#: Profile around the primary prediction at C*: N_opt times these factors.
PROFILE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
FULL = {
    "budgets": (3e10, 5e10, 8e10, 1.2e11, 2e11),
    "factor": 10.0,
    "sizes": NUM_MODEL_SIZES,
    "span": SIZE_SPAN,
    "profile": PROFILE_FACTORS,
    "bootstrap": 200,
}
#: Tiny budgets, a narrower span (fewer steps for the smallest model) and a 2x extrapolation: exercises
#: every step of the script in a few minutes; the numbers mean nothing.
QUICK = {
    "budgets": (2e10, 4e10, 8e10),
    "factor": 2.0,
    "sizes": 3,
    "span": (0.5, 2.0),
    "profile": (0.5, 1.0, 2.0),
    "bootstrap": 20,
}
#: Reference with no fit: D/N = 20 (Hoffmann et al. 2022), i.e. N = sqrt(C / 120) under C = 6 N D.
RULE_TOKENS_PER_PARAM = 20.0
SHORT = {
    "envelope": "A1 envelope",
    "isoflop": "A2 IsoFLOP",
    "isoflop:shared": "A2 shared profiles",
    "parametric": "A3 parametric",
    "parametric:alpha=beta": "A3 alpha=beta",
    "rule": "20 tok/param",
}


def short(name: str) -> str:
    """The table label of an approach or variant (its name when it has no short label)."""
    return SHORT.get(name, name)


@dataclasses.dataclass(frozen=True)
class Pick:
    """One model size to train at C*: its ``d_model``, parameter count N (non-embedding) and why."""

    d_model: int
    num_params: int
    reasons: tuple[str, ...]


def machine_lines(device: str) -> list[str]:
    """Machine, software and load, for the header."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    return [
        f"bench_predict  {datetime.date.today()}  {cpu}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}",
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"flops-fit {flops_fit.__version__}, device {device}, load average {_load()}",
    ]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _ci(ci: Any) -> tuple[float, float]:
    if ci is None:
        return math.nan, math.nan
    return float(ci[0]), float(ci[1])


def _fmt_ci(value: float, ci: tuple[float, float], fmt: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    out = format(value, fmt)
    if all(math.isfinite(v) for v in ci):
        out += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
    return out


def _inside(value: float, ci: tuple[float, float]) -> str:
    if not (math.isfinite(value) and all(math.isfinite(v) for v in ci)):
        return "n/a"
    return "yes" if ci[0] <= value <= ci[1] else "NO"


# ----------------------------------------------------------------------------------------------------------
# Stage 1: the fit
# ----------------------------------------------------------------------------------------------------------


def fit_stage(
    budgets: Sequence[float],
    sizes: int,
    span: float | tuple[float, float],
    bootstrap: int,
    out: Path,
    train: Any,
    val: Any,
    device: str,
) -> Result:
    """Run (or resume) the example's sweep at ``budgets`` and refit all approaches with ``bootstrap``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = demo_sweep(  # the demo's sweep at these budgets; bootstrapped once, below, on its own runs
            budgets,
            out,
            datasets=(train, val),
            num_model_sizes=sizes,
            size_span=span,
            device=device,
            bootstrap=0,
        )
    for w in caught:
        print(f"  warning (fit stage): {w.message}")
    plan = first.plan
    ids = {e.experiment_id for e in plan}
    runs = first.runs[first.runs["experiment_id"].isin(ids)].reset_index(drop=True)  # ignore other budgets
    return Result.from_runs(runs, bootstrap=bootstrap, seed=0, plan=plan, output_dir=out)


# ----------------------------------------------------------------------------------------------------------
# Stage 2: predictions and the sizes to train at C*
# ----------------------------------------------------------------------------------------------------------


def predictions(result: Result, target: float) -> dict[str, dict[str, Any]]:
    """Every fitted approach's and variant's prediction at ``target`` FLOPs, plus the 20-tokens-per-parameter
    rule."""
    out: dict[str, dict[str, Any]] = {}
    for name in [*result.fits, *result.variants]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = result.predict(target, approach=name)
        out[name] = {
            "optimal_params": p["optimal_params"],
            "optimal_params_ci": _ci(p["optimal_params_ci"]),
            "expected_loss": p["expected_loss"],
            "expected_loss_ci": _ci(p["expected_loss_ci"]),
            "optimal_tokens": p["optimal_tokens"],
        }
    n_rule = math.sqrt(target / (6.0 * RULE_TOKENS_PER_PARAM))
    out["rule"] = {
        "optimal_params": n_rule,
        "optimal_params_ci": (math.nan, math.nan),
        "expected_loss": math.nan,
        "expected_loss_ci": (math.nan, math.nan),
        "optimal_tokens": RULE_TOKENS_PER_PARAM * n_rule,
    }
    for p in out.values():
        p["d_model"], p["size_params"] = nearest_size(result, p["optimal_params"])
    return out


def nearest_size(result: Result, num_params: float) -> tuple[int, int]:
    """(d_model, N) of the example model nearest ``num_params`` in log space (the planner's size rule)."""
    closest = result.closest_size(num_params)
    if closest is None:
        raise RuntimeError("the fit's plan cannot name model sizes; it needs the example's ModelSpec")
    return int(closest[0]), int(closest[1])


def smallest_fitting(result: Result, min_params: float) -> tuple[int, int]:
    """(d_model, N) of the smallest example model with at least ``min_params`` parameters."""
    n = min_params
    for _ in range(1000):
        value, params = nearest_size(result, n)
        if params >= min_params:
            return value, params
        n *= 1.02
    raise RuntimeError(f"no model size reaches {min_params:.3g} parameters")


def choose_sizes(
    result: Result,
    preds: dict[str, dict[str, Any]],
    target: float,
    factors: Sequence[float],
    dataset_tokens: float,
    max_epochs: float,
) -> tuple[list[Pick], list[str]]:
    """The sizes to train at ``target``, and notes on the ones left out because the corpus is too small."""
    wanted: dict[int, list[str]] = {}
    params: dict[int, int] = {}
    for name, p in preds.items():
        wanted.setdefault(p["d_model"], []).append(f"nearest {short(name)}")
        params[p["d_model"]] = p["size_params"]
    centre = preds[result.primary]["optimal_params"]
    for f in factors:
        value, n = nearest_size(result, centre * f)
        wanted.setdefault(value, []).append(f"profile x{f:g}")
        params[value] = n
    min_params = target / (6.0 * dataset_tokens * max_epochs)  # fewer parameters would need more tokens
    notes: list[str] = []
    picks = []
    dropped = False
    for d in sorted(wanted):
        epochs = target / (6.0 * params[d]) / dataset_tokens
        if params[d] < min_params:
            dropped = True
            notes.append(
                f"d_model={d} (N={params[d]:,}; {', '.join(wanted[d])}) NOT trained: it needs "
                f"{target / (6.0 * params[d]):.3g} tokens = {epochs:.2f} epochs of the "
                f"{dataset_tokens:.3g}-token corpus (limit {max_epochs:g}; raise --max-epochs to train it "
                "on repeated data)"
            )
            continue
        picks.append(Pick(d, params[d], tuple(wanted[d])))
    if dropped:
        d, n = smallest_fitting(result, min_params)
        if all(p.d_model != d for p in picks):
            picks.append(Pick(d, n, ("smallest size that fits the corpus",)))
            notes.append(f"d_model={d} (N={n:,}) trained instead: the smallest size that fits the corpus")
    return sorted(picks, key=lambda p: p.num_params), notes


def target_plan(
    fit_plan: SweepPlan, picks: Sequence[Pick], target: float, dataset_tokens: float, max_epochs: float
) -> SweepPlan:
    """A one-budget plan at ``target`` holding exactly ``picks``, made by the planner with the fit's settings.

    The planner snaps log-spaced targets to the candidate sizes; with the candidates restricted to
    ``picks`` and targets denser than the closest two picks, every pick is chosen exactly once.
    """
    if len(picks) < 3:
        raise ValueError(f"only {len(picks)} size(s) can be trained at C={target:.3g}; a profile needs 3")
    spec = dataclasses.replace(fit_plan.model, size_values=tuple(p.d_model for p in picks))
    log_n = np.log([p.num_params for p in picks])
    gap = float(np.min(np.diff(log_n)))
    count = math.ceil((log_n[-1] - log_n[0]) / gap) + 2
    centre = float(math.exp(log_n.mean()))
    span = (math.exp(log_n[0]) / centre, math.exp(log_n[-1]) / centre)
    config = fit_plan.config
    # recorded as find_optimal records it (every field; only result-changing ones enter experiment ids, so
    # raising --max-epochs adds runs without renaming, and retraining, the ones already done)
    train_config = TRAIN_CONFIG.to_dict()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*sizes are distinct after snapping")
        plan = SweepPlanner.from_budgets(
            [target],
            count,
            model=spec,
            flops="6nd",
            size_span=span,
            prior=lambda c: centre,
            dataset_tokens=dataset_tokens,
            batch_size=TRAIN_CONFIG.batch_size,
            tokens_per_sample=config["tokens_per_sample"],
            data_id=config["data_id"],
            train_config=train_config,
            seed=TRAIN_CONFIG.seed,
        ).plan()
    got = sorted(e.size_value for e in plan)
    if got != sorted(p.d_model for p in picks):
        raise RuntimeError(f"the planner chose d_model {got}, not {[p.d_model for p in picks]}")
    over = [e for e in plan if e.epochs is not None and e.epochs > max_epochs]
    if over:  # rounding to whole steps can add up to half a step of tokens
        raise RuntimeError(
            f"planned runs exceed {max_epochs} epochs: {[(e.size_value, e.epochs) for e in over]}"
        )
    return plan


def train_target(
    plan: SweepPlan, out: Path, train: Any, val: Any, device: str, max_epochs: float
) -> pd.DataFrame:
    """Train (or resume) the C* runs; return their rows of the ledger."""
    runner = TrainingRunner(
        mode="local",
        plan=plan,
        output_dir=out,
        dataset=train,
        eval_dataset=val,
        loss_fn=lm_loss,
        train_config=dataclasses.replace(TRAIN_CONFIG, max_epochs=max_epochs),
        seed=0,
        device=device,
    )
    runs = runner.run_sweep()
    ids = {e.experiment_id for e in plan}
    return runs[runs["experiment_id"].isin(ids)].sort_values("num_params").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------------


def compare(
    preds: dict[str, dict[str, Any]], runs: pd.DataFrame, dataset_tokens: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The achieved optimum at C* and one comparison row per approach.

    Achieved N_opt: the vertex of the IsoFLOP parabola through the completed runs that saw each token at
    most once (runs on repeated data, if ``--max-epochs`` allowed any, are reported but not used).
    Achieved loss: the lowest loss reached at C* (a parabola fitted by least squares can put its vertex
    above the best run, so the vertex loss is reported but not compared against).
    """
    done = runs[runs["status"] == "completed"]
    fresh = done[done["num_tokens"] <= dataset_tokens]
    if len(fresh) < 3:
        raise RuntimeError(f"only {len(fresh)} C* run(s) completed on fresh data; a profile needs 3")
    prof = fit_profile(fresh["num_params"].to_numpy(float), fresh["final_loss"].to_numpy(float))
    best = fresh.loc[fresh["final_loss"].idxmin()]
    achieved = {
        "optimal_params": prof.optimal_params,
        "vertex_loss": prof.optimal_loss,
        "flags": list(prof.flags),
        "fresh_runs": len(fresh),
        "best_run_d_model": int(best["size_value"]),
        "best_run_params": int(best["num_params"]),
        "best_run_loss": float(best["final_loss"]),
    }
    l_best = achieved["best_run_loss"]
    loss_at = {
        int(r.size_value): (float(r.final_loss), r.num_tokens / dataset_tokens) for r in done.itertuples()
    }
    rows = []
    for name, p in preds.items():
        n_ci, l_ci = p["optimal_params_ci"], p["expected_loss_ci"]
        reached, epochs = loss_at.get(p["d_model"], (math.nan, math.nan))
        rows.append(
            {
                "approach": name,
                "predicted_params": p["optimal_params"],
                "predicted_params_ci": n_ci,
                "d_model": p["d_model"],
                "size_params": p["size_params"],
                "params_ratio": p["optimal_params"] / prof.optimal_params,
                "params_within_ci": _inside(prof.optimal_params, n_ci),
                "predicted_loss": p["expected_loss"],
                "predicted_loss_ci": l_ci,
                "loss_rel_error": p["expected_loss"] / l_best - 1.0,
                "loss_within_ci": _inside(l_best, l_ci),
                "loss_at_size": reached,
                "epochs_at_size": epochs,
                "excess_loss": reached - l_best,
            }
        )
    return achieved, rows


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def print_profile(
    runs: pd.DataFrame, picks: Sequence[Pick], result: Result, achieved: dict[str, Any], dataset_tokens: float
) -> None:
    """The C* runs, one row each, with Approach 3's L(N, D) beside the loss reached."""
    why = {p.d_model: "; ".join(p.reasons) for p in picks}
    par = result.fits.get("parametric")
    print(_row("d_model", "N", "D", "D/N", "epochs", "val loss", "A3 L(N, D)", "wall s", "why"))
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs.itertuples(index=False):
        pred = float(par.predict_loss(r.num_params, r.num_tokens)) if par is not None else math.nan
        ok = r.status == "completed"
        lowest = ok and r.num_params == achieved["best_run_params"]
        print(
            _row(
                int(r.size_value),
                f"{int(r.num_params):,}",
                f"{int(r.num_tokens):,}",
                f"{r.num_tokens / r.num_params:.1f}",
                f"{r.num_tokens / dataset_tokens:.2f}",
                (f"{r.final_loss:.4f}" if ok else r.status)
                + (" (lowest)" if lowest else "")
                + (" (repeated data: not in the profile)" if r.num_tokens > dataset_tokens else ""),
                f"{pred:.4f}",
                f"{r.wall_time_s:.0f}",
                why.get(int(r.size_value), ""),
            )
        )


def _pct(x: float) -> str:
    return f"{x:+.1%}" if math.isfinite(x) else "n/a"


def print_comparison(rows: Sequence[dict[str, Any]], achieved: dict[str, Any]) -> None:
    """Predicted vs achieved N_opt, then predicted vs reached loss, one row per approach."""
    n_star, l_best = achieved["optimal_params"], achieved["best_run_loss"]
    flags = ", ".join(achieved["flags"]) or "bracketed"
    print(
        f"\nAchieved at C*: N_opt = {n_star:,.0f} (parabola vertex over the {achieved['fresh_runs']} "
        f"fresh-data runs: {flags}; vertex loss {achieved['vertex_loss']:.4f}); lowest loss {l_best:.4f} at "
        f"d_model={achieved['best_run_d_model']} (N={achieved['best_run_params']:,})"
    )
    print("\nN_opt (parameters, 95% intervals):\n")
    print(_row("approach", "predicted N_opt", "trained size", "achieved N_opt", "pred / achieved", "in CI"))
    print("|---|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(
            _row(
                short(r["approach"]),
                _fmt_ci(r["predicted_params"], r["predicted_params_ci"], ",.0f"),
                f"d={r['d_model']}, {r['size_params']:,}",
                f"{n_star:,.0f}",
                f"{r['params_ratio']:.2f}",
                r["params_within_ci"],
            )
        )
    print("\nLoss (validation nats/token, 95% intervals; achieved = lowest loss reached at C*):\n")
    print(
        _row(
            "approach",
            "predicted L_opt",
            "achieved",
            "pred / achieved - 1",
            "in CI",
            "loss of its size",
            "excess over achieved",
        )
    )
    print("|---|---:|---:|---:|:---:|---:|---:|")
    for r in rows:
        reached, excess = r["loss_at_size"], r["excess_loss"]
        print(
            _row(
                short(r["approach"]),
                _fmt_ci(r["predicted_loss"], r["predicted_loss_ci"], ".3f"),
                f"{l_best:.4f}",
                _pct(r["loss_rel_error"]),
                r["loss_within_ci"],
                (f"{reached:.4f}" if math.isfinite(reached) else "not trained")
                + (f" ({r['epochs_at_size']:.2f} epochs)" if r["epochs_at_size"] > 1 else ""),
                f"{excess:+.4f}" if math.isfinite(excess) else "n/a",
            )
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run at tiny budgets (numbers mean nothing)"
    )
    parser.add_argument(
        "--budgets", help="fit budgets in FLOPs, comma separated (default 3e10,5e10,8e10,1.2e11,2e11)"
    )
    parser.add_argument("--factor", type=float, help="C* = factor x the largest fit budget (default 10)")
    parser.add_argument("--bootstrap", type=int, help="resamples for the 95%% intervals (default 200)")
    parser.add_argument(
        "--max-epochs", type=float, default=1.0, help="passes over the corpus a C* run may make (default 1)"
    )
    parser.add_argument("--out", help="output folder (re-running resumes; default under the temp folder)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy machine)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else list(preset["budgets"])
    factor = args.factor or preset["factor"]
    bootstrap = preset["bootstrap"] if args.bootstrap is None else args.bootstrap
    default_out = Path(tempfile.gettempdir()) / ("flops_fit_bench_predict" + ("_quick" if args.quick else ""))
    out = Path(args.out) if args.out else default_out
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    target = factor * max(budgets)
    header = machine_lines(args.device)
    print("\n".join(header))
    if args.quick:
        print(
            "QUICK RUN: tiny budgets and a 2x extrapolation to smoke-test the script; "
            "the numbers mean nothing"
        )
    print(
        f"fit budgets {', '.join(f'{b:.3g}' for b in budgets)} FLOPs, {preset['sizes']} sizes each; C* = "
        f"{factor:g} x {max(budgets):.3g} = {target:.3g} FLOPs; bootstrap {bootstrap}; output {out}\n",
        flush=True,
    )
    started = time.perf_counter()
    train, val = text_datasets()
    dataset_tokens = float(len(train) * train.tokens_per_sample)

    t0 = time.perf_counter()
    result = fit_stage(
        budgets, preset["sizes"], preset["span"], bootstrap, out / "fit", train, val, args.device
    )
    fit_s = time.perf_counter() - t0
    print(f"\n--- Stage 1: fit on {len(result.usable_runs)} runs ({fit_s:.0f} s) ---\n")
    print(result.summary())

    preds = predictions(result, target)
    picks, notes = choose_sizes(result, preds, target, preset["profile"], dataset_tokens, args.max_epochs)
    print(f"\n--- Stage 2: {len(picks)} runs at C* = {target:.3g} FLOPs ---\n")
    for name, p in preds.items():
        print(
            f"  {short(name):14s} N_opt {_fmt_ci(p['optimal_params'], p['optimal_params_ci'], ',.0f')}, "
            f"L_opt {_fmt_ci(p['expected_loss'], p['expected_loss_ci'], '.3f')} -> d_model {p['d_model']} "
            f"(N={p['size_params']:,})"
        )
    for note in notes:
        print(f"  WARNING: {note}")
    plan = target_plan(result.plan, picks, target, dataset_tokens, args.max_epochs)
    t0 = time.perf_counter()
    runs = train_target(plan, out / "target", train, val, args.device, args.max_epochs)
    target_s = time.perf_counter() - t0
    bad = runs[runs["status"] != "completed"]
    for r in bad.itertuples(index=False):
        print(f"  WARNING: d_model={int(r.size_value)} {r.status}: {getattr(r, 'error', '')}")

    achieved, rows = compare(preds, runs, dataset_tokens)
    total_s = time.perf_counter() - started
    print(f"\n--- Result (this call: C* runs {target_s:.0f} s, whole benchmark {total_s:.0f} s) ---\n")
    print("\n".join(header))
    print(f"load average at end: {_load()}\n")
    print(f"C* = {target:.3g} FLOPs; corpus {dataset_tokens:,.0f} training tokens; runs at C*:\n")
    print_profile(runs, picks, result, achieved, dataset_tokens)
    print_comparison(rows, achieved)
    reason = "" if result.selection is None else f": {result.selection.reason}"
    print(f"\nprimary answer: {short(str(result.primary))}{reason}")
    if args.quick:
        print("\nQUICK RUN: the numbers above mean nothing (tiny budgets, 2x extrapolation)")
    report = {
        "date": str(datetime.date.today()),
        "machine": header,
        "quick": args.quick,
        "fit_budgets": budgets,
        "target_compute": target,
        "bootstrap": bootstrap,
        "dataset_tokens": dataset_tokens,
        "predictions": preds,
        "primary": result.primary,
        "selection": None if result.selection is None else result.selection.to_dict(),
        "achieved": achieved,
        "comparison": rows,
        "notes": notes,
        "target_runs": runs.drop(columns=[c for c in ("curve",) if c in runs]).to_dict(orient="records"),
        "seconds": {"fit": fit_s, "target": target_s, "total": total_s},
    }
    path = out / "bench_predict.json"
    path.write_text(json.dumps(_jsonable(report), indent=2, default=str), encoding="utf-8")
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
