import numpy as np
import pandas as pd

from flops_fit.analysis.outliers import detect_outliers
from flops_fit.core.runs import runs_from_arrays
from synth import isoflop_sweep


def test_reasons():
    n, d, l, c = isoflop_sweep(noise=0.001, sizes=9)
    runs = runs_from_arrays(n, d, l, c)
    runs.loc[0, "status"] = "failed"
    runs.loc[1, "final_loss"] = np.inf
    runs = pd.concat([runs, runs.iloc[[2]]], ignore_index=True)  # exact duplicate
    runs.loc[13, "final_loss"] *= 1.25  # near the middle of the second profile
    flagged = detect_outliers(runs)
    reasons = dict(zip(flagged.index, flagged["outlier_reason"], strict=True))
    assert reasons[0] == "failed"
    assert reasons[1] == "non_finite"
    assert reasons[len(runs) - 1] == "duplicate"
    assert reasons[13] == "profile_residual"
    assert flagged["outlier"].sum() == 4


def test_clean_sweep_has_no_outliers():
    n, d, l, c = isoflop_sweep(noise=0.005, sizes=9, seed=3)
    assert not detect_outliers(runs_from_arrays(n, d, l, c))["outlier"].any()


def test_chinchilla_points_have_no_profile_outliers():
    from importlib.resources import files

    raw = pd.read_csv(files("flops_fit") / "data" / "chinchilla_epoch.csv")
    runs = runs_from_arrays(
        raw["Model Size"], raw["Training FLOP"] / (6 * raw["Model Size"]), raw["loss"], raw["Training FLOP"]
    )
    flagged = detect_outliers(runs)
    assert set(flagged["outlier_reason"]) <= {"", "duplicate"}


def test_no_profile_outliers_outside_designed_profiles():
    """A checkpoint grid (each model at several token counts) has budget buckets that hold several sizes by
    coincidence; they are not IsoFLOP profiles, so the profile rule never flags their runs."""
    rng = np.random.default_rng(0)
    n = np.repeat(np.geomspace(2e7, 2e9, 20), 10)
    d = np.tile(np.linspace(0.1, 1.0, 10), 20) * 40 * n
    l = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(rng.normal(0, 0.02, n.size))
    flagged = detect_outliers(runs_from_arrays(n, d, l))
    assert not flagged["outlier"].any()
