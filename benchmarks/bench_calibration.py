"""Are the 95% intervals of N_opt and L_opt at 10x and 100x the largest budget right? Coverage on synthetic sweeps.

Sweeps are drawn from known laws L(N, D) = E + A/N^alpha + B/D^beta with C = 6ND:

- ``chinchilla``: E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28 (Hoffmann et al. 2022);
- ``asymmetric``: the same E, A, B with alpha = 0.45, beta = 0.25 (a profile far from a parabola).

Per budget, 7 sizes log-spaced over a 16x span, either centred on the true N_opt(C) (``centred``) or the
same span shifted 2x towards larger models (``offcentre``); 3, 5 or 8 budgets log-spaced over 1.5 decades
(1e18 to 3.16e19 FLOPs); multiplicative noise exp(N(0, s)) on each run's loss, s = 0.5%, 1%, 2%. Every
replicate is a fresh sweep (seeded by config and replicate), fitted as a user would, through the public
functions with ``bootstrap=B``:

- ``isoflop``: ``fit_isoflop(..., bootstrap=B)`` (parabolas, parametric intervals: the default);
- ``isoflop-resample``: ``interval="resample"`` (runs resampled within budgets, release 0.1.0's method);
- ``isoflop-regression``: ``bootstrap=0`` (regression intervals on the minima);
- ``isoflop-shared``: ``profile="shared"`` (shared-exponent profiles, parametric intervals);
- ``parametric``: ``fit_parametric(N, D, L, bootstrap=B)`` (Approach 3);
- ``envelope``: ``fit_envelope(runs, bootstrap=B)`` (Approach 1) on loss curves synthesised from the same
  law: each run's curve is L(N, D_t) at 25 token counts D_t log-spaced from 2% to 100% of its D, times
  that run's own noise factor (one per run, so its final loss equals the other approaches' data). This is
  the idealisation that every prefix of a run is as good as a run trained to that length.

For each approach, config and target C0 (10x and 100x the largest budget) it reports the empirical coverage
of the 95% intervals of N_opt and L_opt (truth: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta
B))^(1/(alpha+beta)), D_opt = C/(6 N_opt), L_opt = L(N_opt, D_opt)), the median interval width (ln N for
N_opt, loss for L_opt) against the real scatter of the point estimate over the replicates (its 2.5-97.5
percentile range), their ratio, the median bias, and how many replicates had no interval or failed.
``--jitter s`` adds lack of fit between budgets: each budget's profile is moved so that its optimum is
N_opt exp(N(0, s)) (the truth stays the law's N_opt).

Run (see docs/benchmarks.md for times)::

    python benchmarks/bench_calibration.py --quick                      # smoke run, about 15 s
    python benchmarks/bench_calibration.py --approaches isoflop,isoflop-resample,isoflop-regression
    python benchmarks/bench_calibration.py --replicates 200 --out /tmp/bench_calibration.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from flops_fit.analysis.envelope import fit_envelope
from flops_fit.analysis.isoflop import fit_isoflop
from flops_fit.analysis.parametric import fit_parametric

LAWS = {
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "asymmetric": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.45, "beta": 0.25},
}
GRIDS = {"centred": 1.0, "offcentre": 2.0}  # the sizes' geometric centre / true N_opt(C)
SIZES, SPAN = 7, 16.0
C_LOW, DECADES = 1e18, 1.5
FACTORS = (10, 100)
CURVE_FRACTIONS = np.geomspace(0.02, 1.0, 25)

FitFn = Callable[[dict[str, np.ndarray], int, int], Any]


def loss(p: dict[str, float], n: Any, d: Any) -> Any:
    return p["E"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


def true_optimum(p: dict[str, float], c: float) -> tuple[float, float]:
    """(N_opt in parameters, L_opt) of the law at budget c (FLOPs) under C = 6ND."""
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    n = g * (c / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))
    return n, float(loss(p, n, c / (6 * n)))


def sweep(
    p: dict[str, float],
    shift: float,
    budgets: int,
    noise: float,
    rng: np.random.Generator,
    jitter: float = 0.0,
) -> dict:
    """One synthetic IsoFLOP sweep: arrays n, d, l, c (and each run's noise factor, for its curve)."""
    cols: dict[str, list[np.ndarray]] = {"n": [], "d": [], "l": [], "c": [], "f": []}
    for c in np.geomspace(C_LOW, C_LOW * 10**DECADES, budgets):
        n = true_optimum(p, c)[0] * shift * np.geomspace(SPAN**-0.5, SPAN**0.5, SIZES)
        d = c / (6 * n)
        f = np.exp(rng.normal(0.0, noise, SIZES))
        j = math.exp(rng.normal(0.0, jitter)) if jitter else 1.0  # this budget's optimum moves to j N_opt
        l = loss(p, n / j, c / (6 * n / j)) * f
        for key, v in zip("ndlcf", (n, d, l, np.full(SIZES, c), f), strict=True):
            cols[key].append(v)
    return {k: np.concatenate(v) for k, v in cols.items()}


def runs_with_curves(s: dict, p: dict[str, float]) -> pd.DataFrame:
    rows = []
    for i, (n, d, l, c, f) in enumerate(zip(s["n"], s["d"], s["l"], s["c"], s["f"], strict=True)):
        tokens = d * CURVE_FRACTIONS
        curve = np.stack([tokens, loss(p, n, tokens) * f], axis=1)
        rows.append(
            {
                "experiment_id": f"run-{i}",
                "compute_budget": c,
                "num_params": n,
                "num_tokens": d,
                "final_loss": l,
                "status": "completed",
                "curve": curve.tolist(),
            }
        )
    return pd.DataFrame(rows)


def approaches(p: dict[str, float]) -> dict[str, FitFn]:
    """Each approach as ``fit(sweep, bootstrap, seed)`` returning a fit with ``optimal(C)``."""
    return {
        "isoflop": lambda s, b, seed: fit_isoflop(s["n"], s["d"], s["l"], s["c"], bootstrap=b, seed=seed),
        "isoflop-resample": lambda s, b, seed: fit_isoflop(
            s["n"], s["d"], s["l"], s["c"], bootstrap=b, seed=seed, interval="resample"
        ),
        "isoflop-regression": lambda s, b, seed: fit_isoflop(s["n"], s["d"], s["l"], s["c"]),
        "isoflop-shared": lambda s, b, seed: fit_isoflop(
            s["n"], s["d"], s["l"], s["c"], bootstrap=b, seed=seed, profile="shared"
        ),
        "parametric": lambda s, b, seed: fit_parametric(s["n"], s["d"], s["l"], bootstrap=b, seed=seed),
        "envelope": lambda s, b, seed: fit_envelope(runs_with_curves(s, p), bootstrap=b, seed=seed),
    }


def predictions(fit: Any, c0: np.ndarray) -> np.ndarray:
    """(targets, 6): ln N, ln N lo, ln N hi, L, L lo, L hi at each budget (NaN where there is no interval)."""
    o = fit.optimal(c0)
    n_ci, l_ci = o["optimal_params_ci"], o["optimal_loss_ci"]
    nan = np.full(c0.size, np.nan)
    n_lo, n_hi = (np.log(np.asarray(v, float)) for v in n_ci) if n_ci is not None else (nan, nan)
    l_lo, l_hi = (np.asarray(v, float) for v in l_ci) if l_ci is not None else (nan, nan)
    return np.stack([np.log(o["optimal_params"]), n_lo, n_hi, o["optimal_loss"], l_lo, l_hi], axis=1)


def summarise(rows: np.ndarray, truth_ln_n: float, truth_l: float) -> dict[str, float]:
    """Coverage, median width, scatter of the estimate, ratio and bias over replicates (rows: predictions)."""
    out: dict[str, float] = {}
    ok = np.isfinite(rows[:, 0])
    out["replicates"] = int(ok.sum())
    for name, col, truth in (("n", 0, truth_ln_n), ("l", 3, truth_l)):
        est, lo, hi = rows[ok, col], rows[ok, col + 1], rows[ok, col + 2]
        has = np.isfinite(lo) & np.isfinite(hi)
        scatter = float(np.diff(np.percentile(est, [2.5, 97.5]))[0]) if est.size > 1 else math.nan
        width = float(np.median(hi[has] - lo[has])) if has.any() else math.nan
        out[f"{name}_coverage"] = (
            float(np.mean((lo[has] <= truth) & (truth <= hi[has]))) if has.any() else math.nan
        )
        out[f"{name}_width"] = width
        out[f"{name}_scatter"] = scatter
        out[f"{name}_ratio"] = width / scatter if scatter > 0 else math.nan
        bias = np.median(est) - truth
        out[f"{name}_bias"] = float(bias if name == "n" else bias / truth)  # ln N, or relative loss
        out[f"{name}_no_interval"] = int((~has).sum())
    return out


def run_config(cfg: dict, names: list[str], replicates: int, bootstrap: int, seed: int) -> tuple[list, dict]:
    p = LAWS[cfg["law"]]
    cmax = C_LOW * 10**DECADES
    c0 = cmax * np.array(FACTORS, float)
    fits = approaches(p)
    preds = {a: np.full((replicates, len(FACTORS), 6), np.nan) for a in names}
    seconds = dict.fromkeys(names, 0.0)
    failures = dict.fromkeys(names, 0)
    for r in range(replicates):
        rng = np.random.default_rng([seed, cfg["index"], r])
        s = sweep(p, GRIDS[cfg["grid"]], cfg["budgets"], cfg["noise"], rng, cfg["jitter"])
        for a in names:
            t0 = time.perf_counter()
            try:
                preds[a][r] = predictions(fits[a](s, bootstrap, r), c0)
            except (ValueError, np.linalg.LinAlgError) as exc:
                failures[a] += 1
                logging.getLogger("bench").debug("%s %s replicate %d: %s", a, cfg, r, exc)
            seconds[a] += time.perf_counter() - t0
    out = []
    for a in names:
        for j, factor in enumerate(FACTORS):
            ln_n, l_opt = true_optimum(p, c0[j])
            row = {k: v for k, v in cfg.items() if k != "index"}
            row.update(approach=a, factor=factor, failed=failures[a], seconds=seconds[a])
            row.update(summarise(preds[a][:, j], math.log(ln_n), l_opt))
            out.append(row)
    return out, seconds


def configs(args: argparse.Namespace) -> list[dict]:
    grid = itertools.product(args.laws, args.grids, args.noise, args.budgets)
    return [
        {"index": i, "law": law, "grid": g, "noise": s, "budgets": k, "jitter": args.jitter}
        for i, (law, g, s, k) in enumerate(grid)
    ]


def fmt(v: float, spec: str) -> str:
    return "  -  " if not np.isfinite(v) else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = "law        grid      noise  K approach            "
    cols = "".join(f"| N@{f}x cov ratio  " for f in FACTORS) + "".join(
        f"| L@{f}x cov ratio  " for f in FACTORS
    )
    print(head + cols + "| noCI fail")
    df = pd.DataFrame(rows)
    for key, g in df.groupby(["law", "grid", "noise", "budgets", "approach"], sort=False):
        law, grid, noise, k, a = key
        line = f"{law:<10} {grid:<9} {noise:>5.3f} {k:>2} {a:<19} "
        for q in ("n", "l"):
            for f in FACTORS:
                r = g[g["factor"] == f].iloc[0]
                line += f"| {fmt(r[f'{q}_coverage'], '5.2f')} {fmt(r[f'{q}_ratio'], '5.2f')}      "
        r = g.iloc[0]
        line += f"| {r['n_no_interval']:>4} {r['failed']:>4}"
        print(line)


def print_overall(rows: list[dict]) -> None:
    """Per approach over all configs: mean coverage, share of configs in [0.90, 0.97], median ratio."""
    df = pd.DataFrame(rows)
    print(
        "\napproach            target   coverage mean [min, max]  in 90-97%  ratio median [max]   bias median"
    )
    for (a, f), g in df.groupby(["approach", "factor"], sort=False):
        for q, name in (("n", "N_opt"), ("l", "L_opt")):
            cov, ratio = g[f"{q}_coverage"], g[f"{q}_ratio"]
            inside = ((cov >= 0.90) & (cov <= 0.97)).mean()
            print(
                f"{a:<19} {name}@{f:<4} {cov.mean():.3f} [{cov.min():.2f}, {cov.max():.2f}]"
                f"        {inside:5.0%}     {ratio.median():.2f} [{ratio.max():.2f}]"
                f"          {g[f'{q}_bias'].median():+.4f}"
            )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--approaches", default="isoflop,isoflop-resample,isoflop-regression,isoflop-shared")
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=200, help="draws per fit (bootstrap=B)")
    ap.add_argument("--laws", default=",".join(LAWS))
    ap.add_argument("--grids", default=",".join(GRIDS))
    ap.add_argument("--noise", default="0.005,0.01,0.02")
    ap.add_argument("--budgets", default="3,5,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="lack of fit: each budget's profile is moved so its optimum is N_opt exp(N(0, jitter))",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 law, 1 noise, 3 and 5 budgets, 12 replicates"
    )
    ap.add_argument("--out", default="bench_calibration.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.laws, args.noise, args.budgets, args.replicates = "asymmetric", "0.01", "3,5", 12
        args.bootstrap = min(args.bootstrap, 100)
    args.approaches = args.approaches.split(",")
    args.laws, args.grids = args.laws.split(","), args.grids.split(",")
    args.noise = [float(v) for v in args.noise.split(",")]
    args.budgets = [int(v) for v in args.budgets.split(",")]
    unknown = set(args.approaches) - set(approaches(LAWS["chinchilla"]))
    if unknown:
        ap.error(
            f"unknown approaches {sorted(unknown)}; choose from {sorted(approaches(LAWS['chinchilla']))}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warnings.simplefilter("ignore")  # flagged budgets and excluded runs are part of the experiment
    logging.getLogger("flops_fit").setLevel(logging.ERROR)
    start = time.perf_counter()
    rows: list[dict] = []
    seconds = dict.fromkeys(args.approaches, 0.0)
    for cfg in configs(args):
        out, secs = run_config(cfg, args.approaches, args.replicates, args.bootstrap, args.seed)
        rows += out
        for a, v in secs.items():
            seconds[a] += v
        print(f"done {cfg} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows)
    print_overall(rows)
    total = time.perf_counter() - start
    fits = len(configs(args)) * args.replicates
    print("\nseconds per fit: " + ", ".join(f"{a} {v / fits:.3f}" for a, v in seconds.items()))
    print(f"total {total:.0f} s ({platform.processor() or platform.machine()}, {args.replicates} replicates)")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "replicates": args.replicates,
        "bootstrap": args.bootstrap,
        "laws": {k: LAWS[k] for k in args.laws},
        "sizes": SIZES,
        "span": SPAN,
        "grid_shift": {k: GRIDS[k] for k in args.grids},
        "budget_range_flops": [C_LOW, C_LOW * 10**DECADES],
        "seconds_total": total,
        "seconds_per_fit": {a: v / fits for a, v in seconds.items()},
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "results": rows}, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
