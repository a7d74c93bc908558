"""Which rule should make an answer primary? Held-out largest budgets of published IsoFLOP suites.

For every suite in ``../shared/data`` with an IsoFLOP design (Open-Athena's QC'd collection, its outliers
left out; Marin's three 2026 suites; Porian et al.'s 15 configurations) and at least 6 budgets, the largest
budget is held out and the fit uses the budgets at least ``--gap`` (4) times smaller, at least 4 of them (so
the rolling back-test has an origin). :meth:`Result.from_runs` fits every approach and variant and
back-tests them inside the fitted budgets. Each selection rule below then picks a primary answer from that
back-test, and its prediction at the held-out budget is compared with the budget's measured IsoFLOP
minimum (:func:`flops_fit.analysis.isoflop.fit_profile`; suites whose held-out budget is not bracketed are
skipped):

- ``sum``: the library's rule, mean |ln error| of N_opt plus that of L_opt (report/backtest.py);
- ``loss``: mean |ln error| of L_opt only (what a wrong N costs is second order on a flat profile);
- ``params``: mean |ln error| of N_opt only;
- ``order``: no back-test, the documented order (Approach 2 first on an IsoFLOP sweep);
- ``oracle``: the candidate that was best at the held-out budget (a bound, not a rule).

Printed per rule: mean |ln(predicted / measured)| of N_opt and of L_opt at the held-out budget, and how
often N_opt is within +-20% and L_opt within 1% (bench_predict's bar). Nothing here tunes the library:
the rules are fixed above, and the library's own rule is the one in report/backtest.py.

Run (about 4 minutes on a 2-core CPU)::

    python benchmarks/bench_selection.py [--data ../shared/data] [--gap 4]
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from flops_fit.analysis.approaches import base_approach, candidate_order
from flops_fit.analysis.isoflop import fit_profile
from flops_fit.core.runs import runs_from_arrays
from flops_fit.report.backtest import _evidence
from flops_fit.report.result import Result

RULES = ("sum", "loss", "params", "order", "oracle")


def suites(data: Path) -> dict[str, pd.DataFrame]:
    """Runs tables (num_params, num_tokens, final_loss, compute_budget) of every IsoFLOP suite."""
    out: dict[str, pd.DataFrame] = {}
    oa = pd.read_csv(data / "openathena_isoflops_transform.csv")
    oa = oa[~oa["outlier"].astype(bool)]
    for name, g in oa.groupby("experiment"):
        out[f"openathena:{name}"] = runs_from_arrays(g["params"], g["tokens"], g["loss"], g["budget"])
    for dataset in ("comma", "dclm", "nemotron"):
        m = pd.read_csv(data / f"marin_202603_isoflop-{dataset}.csv")
        budget = m["Name"].str.extract(r"isoflop-([0-9.e+]+)-")[0].astype(float)
        out[f"marin:{dataset}"] = runs_from_arrays(
            m["parameter_count"], m["throughput/total_tokens"], m["eval/paloma/macro_loss"], budget
        )
    p = pd.read_csv(data / "porian2024_isoflop_points.csv")
    for key, g in p.groupby(["dataset", "hparams", "warmup", "decay", "param_count", "val"]):
        out["porian:" + "/".join(map(str, key))] = runs_from_arrays(g["n"], g["t"], g["loss"], g["flops"])
    return out


def measured_optimum(runs: pd.DataFrame) -> tuple[float, float] | None:
    """(N_opt, L_opt) of one budget's profile, or None when it is not bracketed."""
    prof = fit_profile(runs["num_params"].to_numpy(float), runs["final_loss"].to_numpy(float))
    if prof.flags or not math.isfinite(prof.optimal_params):
        return None
    return float(prof.optimal_params), float(prof.optimal_loss)


def pick(result: Result, rule: str, truth: dict[str, tuple[float, float]]) -> str | None:
    """The primary answer under ``rule`` (``truth``: each candidate's held-out errors, for the oracle)."""
    names = candidate_order(list(result.candidates), result.layout.design)
    if rule == "order":
        return names[0]
    if rule == "oracle":
        return min(truth, key=lambda n: abs(truth[n][0]) + abs(truth[n][1])) if truth else None
    table = result.last_backtest
    ev = None if table is None or table.empty else _evidence(table, names)
    if ev is None:
        return names[0]
    score = {
        "sum": lambda n: ev.params[n] + ev.loss[n],
        "loss": lambda n: ev.loss[n],
        "params": lambda n: ev.params[n],
    }[rule]
    judged = [n for n in names if n in ev.loss]
    return min(judged, key=lambda n: (round(score(n), 6), names.index(n)))


def evaluate(name: str, runs: pd.DataFrame, gap: float) -> list[dict]:
    budgets = np.sort(runs["compute_budget"].unique())
    if budgets.size < 6:
        return []
    target = budgets[-1]
    fit_budgets = budgets[budgets <= target / gap]
    if fit_budgets.size < 4:
        return []
    measured = measured_optimum(runs[runs["compute_budget"] == target])
    if measured is None:
        return []
    fit_runs = runs[runs["compute_budget"].isin(fit_budgets)].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = Result.from_runs(fit_runs, ["isoflop", "parametric"])
        except ValueError as exc:
            logging.info("%s: not fitted (%s)", name, exc)
            return []
        truth = {}
        for cand in result.candidates:
            p = result.predict(float(target), approach=cand)
            truth[cand] = (
                math.log(p["optimal_params"] / measured[0]),
                math.log(p["expected_loss"] / measured[1]),
            )
    rows = []
    for rule in RULES:
        chosen = pick(result, rule, truth)
        if chosen is None or chosen not in truth:
            continue
        n_err, l_err = truth[chosen]
        rows.append(
            {"suite": name, "rule": rule, "chosen": chosen, "approach": base_approach(chosen),
             "distance": float(target / fit_budgets[-1]), "n_err": n_err, "l_err": l_err}
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument(
        "--gap", type=float, default=4.0, help="held-out budget / largest fitted budget, at least"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    rows = []
    for name, runs in suites(Path(args.data)).items():
        rows += evaluate(name, runs, args.gap)
    df = pd.DataFrame(rows)
    if df.empty:
        print("no suite qualified")
        return
    print(f"{df['suite'].nunique()} suites; held-out budget {df['distance'].min():.3g}x-{df['distance'].max():.3g}x "
          "beyond the largest fitted one\n")  # fmt: skip
    print("| rule | mean abs ln err N_opt | mean abs ln err L_opt | N within 20% | L within 1% | both |")
    print("|---|---:|---:|---:|---:|---:|")
    for rule in RULES:
        g = df[df["rule"] == rule]
        n_ok, l_ok = np.abs(np.expm1(g["n_err"])) <= 0.2, np.abs(np.expm1(g["l_err"])) <= 0.01
        print(
            f"| {rule} | {g['n_err'].abs().mean():.3f} | {g['l_err'].abs().mean():.4f} | "
            f"{n_ok.mean():.0%} | {l_ok.mean():.0%} | {(n_ok & l_ok).mean():.0%} |"
        )
    print("\nchosen approach per rule:")
    print(df.groupby(["rule", "chosen"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    main()
