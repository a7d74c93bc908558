"""The design of a runs table (analysis/layout.py) and the rules that follow from it: profile outliers and
Approach 2 only on designed IsoFLOP profiles."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA
from flops_fit.analysis.approaches import run_approach
from flops_fit.analysis.layout import classify, classify_runs
from flops_fit.analysis.outliers import detect_outliers
from flops_fit.analysis.parametric import fit_parametric
from flops_fit.core.runs import runs_from_arrays
from flops_fit.report.result import Result
from synth import TRUE, isoflop_sweep

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="needs the shared real data (../shared/data)"
)


def law(n, d, p=TRUE):
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


def checkpoint_grid(models=20, tokens=10, noise=0.01, seed=0) -> pd.DataFrame:
    """``models`` sizes, each evaluated at ``tokens`` checkpoints (every 10% of its run): C = 6 N D then takes
    a new value for every run, and some budget buckets hold several sizes by coincidence."""
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(2e7, 2e9, models), tokens)
    d = np.tile(np.linspace(0.1, 1.0, tokens), models) * 40 * n
    l = law(n, d) * np.exp(rng.normal(0, noise, n.size))
    return runs_from_arrays(n, d, l, ids=[f"ckpt-{i}" for i in range(n.size)])


def sweep(budgets=(1e17, 1e18, 1e19, 1e20), sizes=7, seed=0, c_noise=0.0) -> pd.DataFrame:
    n, d, l, c = isoflop_sweep(budgets=budgets, sizes=sizes, seed=seed)
    c = c * np.exp(np.random.default_rng(seed + 1).normal(0, c_noise, c.size))
    return runs_from_arrays(n, d, l, c)


# ----------------------------------------------------------------------------------------------------
# Classification


def test_an_isoflop_sweep_is_all_designed_profiles():
    layout = classify_runs(sweep())
    assert layout.design == "isoflop" and layout.supports_profiles
    b = layout.buckets
    assert len(b) == 4 and b["designed"].all() and b["brackets"].all()
    assert (b["why"] == "planned budget (budgets agree to 0.1%)").all()
    assert layout.designed_runs.all() and not layout.coincidental_runs.any()
    assert (
        "an IsoFLOP sweep" in layout.describe() and "4 designed profile(s) (4 bracketing" in layout.describe()
    )


def test_budgets_measured_rather_than_planned_still_form_profiles():
    # actual FLOPs scatter by ~2% around each planned budget: the buckets are peaks of the budget histogram
    layout = classify_runs(sweep(c_noise=0.01))
    assert layout.design == "isoflop" and layout.n_designed == 4
    assert layout.buckets["why"].str.startswith("a peak").all()


def test_a_checkpoint_grid_has_no_designed_profile():
    grid = checkpoint_grid()
    layout = classify_runs(grid)
    assert layout.design == "grid" and not layout.supports_profiles
    assert layout.n_designed == 0 and layout.multi_token_share == 1.0
    several = layout.buckets[layout.buckets["n_sizes"] >= 3]
    assert len(several) >= 5  # buckets that look like profiles, by coincidence
    assert several["why"].str.startswith("coincidental").all()
    assert layout.coincidental_runs.sum() == several["n_runs"].sum()


def test_grids_of_many_shapes_are_never_read_as_isoflop_sweeps():
    for models in (8, 20, 40):
        for tokens in (5, 10, 20):
            for seed in range(2):
                layout = classify_runs(checkpoint_grid(models, tokens, seed=seed))
                assert layout.design == "grid" and layout.n_designed == 0, (models, tokens, seed)


def test_a_sweep_beside_a_grid_is_mixed_and_only_the_sweep_is_designed():
    both = pd.concat([sweep(), checkpoint_grid(models=8, tokens=4)], ignore_index=True)
    layout = classify_runs(both)
    assert layout.design == "mixed" and layout.n_designed == 4
    designed = both[layout.designed_runs]
    assert layout.designed_runs[:28].all()  # the sweep, and the odd checkpoint whose 6ND falls in its buckets
    assert np.allclose(
        np.log10(designed["compute_budget"]), np.round(np.log10(designed["compute_budget"])), atol=0.03
    )


def test_scattered_runs_and_replicates():
    rng = np.random.default_rng(3)
    n = 10 ** rng.uniform(7, 9, 40)
    d = 10 ** rng.uniform(9, 11, 40)
    assert classify(n, d, law(n, d), 6 * n * d).design == "scattered"
    # replicates (seeds, learning rates) of one configuration count once
    runs = sweep()
    tripled = pd.concat([runs] * 3, ignore_index=True)
    b = classify_runs(tripled).buckets
    assert (b["n_runs"] == 21).all() and (b["n_points"] == 7).all() and b["designed"].all()


def test_a_bucket_brackets_when_its_lowest_loss_is_inside_its_sizes():
    runs = sweep()
    top = runs.index[runs["compute_budget"] == 1e20]
    layout = classify_runs(runs.drop(index=top[4:]))  # the minimum at the largest remaining size
    assert layout.buckets["brackets"].tolist() == [True, True, True, False]
    assert layout.buckets["designed"].all()


def test_classify_checks_its_inputs():
    with pytest.raises(ValueError, match="one value per run"):
        classify(np.ones(3), np.ones(2), np.ones(3), np.ones(3))
    assert classify(*(np.zeros(0),) * 4).design == "scattered"


# ----------------------------------------------------------------------------------------------------
# The rules that follow


def test_a_default_fit_on_a_checkpoint_grid_drops_no_ordinary_point():
    grid = checkpoint_grid(noise=0.02)
    flagged = detect_outliers(grid)
    assert not flagged["outlier"].any()
    n, d, l, c = (
        grid[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss", "compute_budget")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_parametric(n, d, l, C=c)
    assert fit.excluded.empty and fit.n_points == len(grid)


def test_profile_outliers_are_still_found_in_designed_profiles():
    runs = sweep(sizes=9)
    runs.loc[12, "final_loss"] *= 1.25
    flagged = detect_outliers(runs)
    assert flagged.loc[12, "outlier_reason"] == "profile_residual" and flagged["outlier"].sum() == 1


def test_approach_2_on_a_grid_is_refused_naming_the_design_and_skipped_among_several():
    grid = checkpoint_grid()
    with pytest.raises(ValueError, match="checkpoint / over-training grid"):
        run_approach("isoflop", grid)
    res = Result.from_runs(grid, approach=["isoflop", "parametric"])
    assert "isoflop" not in res.fits and "Approach 2 needs IsoFLOP profiles" in res.skipped["isoflop"]
    assert res.primary != "isoflop" and res.layout.design == "grid"
    assert "Design: a checkpoint / over-training grid" in res.summary()
    assert any(w.startswith("Approach 2 (IsoFLOP) not fitted") for w in res.warnings)


def test_approach_2_on_mixed_runs_reads_only_the_designed_profiles():
    both = pd.concat([sweep(), checkpoint_grid(models=8, tokens=4)], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no flagged budget: the grid's lone runs are not read as profiles
        fit = run_approach("isoflop", both)
    assert len(fit.minima) == 4 and fit.minima["used"].all()
    assert np.allclose(fit.minima["compute_budget"], [1e17, 1e18, 1e19, 1e20], rtol=0.05)


def test_an_isoflop_fit_forced_on_a_grid_is_warned_about():
    grid = checkpoint_grid()
    n, d, l, c = (
        grid[k].to_numpy(float) for k in ("num_params", "num_tokens", "final_loss", "compute_budget")
    )
    from flops_fit.analysis.isoflop import fit_isoflop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forced = fit_isoflop(n, d, l, c)
    res = Result(grid, {"isoflop": forced})
    assert res.primary == "isoflop" and res.selection.rule == "only"
    assert any("Approach 2 was fitted to a checkpoint" in w for w in res.warnings)


# ----------------------------------------------------------------------------------------------------
# Published data (../shared/data, see its SOURCES.md)


def _read(name: str, **kw) -> pd.DataFrame:
    return pd.read_csv(SHARED_DATA / name, **kw)


@needs_shared
def test_published_checkpoint_grids_are_grids_and_lose_no_point_to_the_profile_rule():
    misfit = _read("misfitting_scaling_results.csv")  # Li et al. 2025: every checkpoint of every run
    runs = runs_from_arrays(misfit["N"], misfit["D"], misfit["loss"], misfit["C_6ND"].astype(float))
    assert classify_runs(runs).design == "grid"
    assert "profile_residual" not in set(detect_outliers(runs)["outlier_reason"])  # the old rule dropped 104
    olmo = _read("olmo_ladder_peteish_moreeval.csv")
    olmo = olmo[olmo["is_final_row"].astype(str) == "True"]
    olmo = olmo[olmo["run"].str.contains("xC") & ~olmo["run"].str.contains("rerun")]
    runs = runs_from_arrays(
        olmo["n_params"].astype(float),
        olmo["throughput/total_tokens"],
        olmo["eval/c4_en-validation/CrossEntropyLoss"],
        olmo["throughput/total_training_Gflops"] * 1e9,
    )
    assert len(runs) == 25 and classify_runs(runs).design == "grid"


@needs_shared
def test_published_isoflop_sweeps_are_isoflop_sweeps():
    for kind in ("comma", "dclm", "nemotron"):  # Marin: planned budgets, measured FLOPs
        m = _read(f"marin_202603_isoflop-{kind}.csv").dropna(subset=["eval/paloma/macro_loss"])
        runs = runs_from_arrays(
            m["parameter_count"].astype(float),
            m["throughput/total_tokens"].astype(float),
            m["eval/paloma/macro_loss"],
            m["throughput/total_gflops"] * 1e9,
        )
        layout = classify_runs(runs)
        assert layout.design == "isoflop" and layout.n_designed >= 7, kind
    oa = _read("openathena_isoflops_transform.csv")
    for experiment, g in oa.groupby("experiment"):
        layout = classify(g["params"], g["tokens"], g["loss"], g["budget"])
        assert layout.design == "isoflop" and layout.n_designed == g["budget"].nunique(), experiment
    porian = _read("porian2024_isoflop_points.csv")
    keys = ["source_file", "dataset", "hparams", "warmup", "decay", "param_count", "val"]
    for _, g in porian.groupby(keys):
        layout = classify(g["n"], g["t"], g["loss"], g["flops"])
        assert layout.design == "isoflop" and layout.designed_share == 1.0
    chin = _read("chinchilla_epoch_extracted.csv")  # digitised: IsoFLOP profiles beside other runs
    n, c = chin["Model Size"], chin["Training FLOP"]
    layout = classify(n, c / (6 * n), chin["loss"], c)
    assert layout.design == "mixed" and layout.n_designed >= 5
