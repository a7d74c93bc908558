import numpy as np
import pandas as pd
import pytest

from flops_fit.analysis.envelope import EnvelopeFit, fit_envelope
from real_data import olmo_ladder_runs
from synth import TRUE, true_a


def _synthetic_runs(p=TRUE):
    """Runs of 8 sizes, each trained to 200 N tokens, with curves L(N, t) of the true law."""
    rows = []
    for i, n in enumerate(np.geomspace(2e7, 2e9, 8)):
        d_final = 200 * n
        t = np.geomspace(d_final / 200, d_final, 60)
        loss = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / t ** p["beta"]
        rows.append(
            {
                "experiment_id": f"r{i}",
                "compute_budget": 6 * n * d_final,
                "num_params": n,
                "num_tokens": d_final,
                "final_loss": loss[-1],
                "status": "completed",
                "curve": [list(v) for v in zip(t, loss, strict=True)],
            }
        )
    return pd.DataFrame(rows)


def test_envelope_recovers_exponent_on_exact_curves():
    fit = fit_envelope(_synthetic_runs())
    # the envelope of a discrete set of sizes is a staircase; the fitted exponent is close to the truth
    assert fit.a == pytest.approx(true_a(), abs=0.05)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-6)
    assert fit.envelope["optimal_params"].nunique() >= 4
    assert fit.n_opt_fit.a_ci is None  # no bootstrap -> no (dishonest) regression interval


def test_envelope_bootstrap_gives_intervals_and_round_trips():
    fit = fit_envelope(_synthetic_runs(), bootstrap=40, seed=1)
    assert fit.n_opt_fit.a_ci is not None
    opt = fit.optimal(1e21)
    assert opt["optimal_params_ci"][0] < opt["optimal_params"] < opt["optimal_params_ci"][1]
    again = EnvelopeFit.from_dict(fit.to_dict())
    assert again.a == fit.a
    assert "Approach 1" in fit.summary()


def test_no_curves_is_a_clear_error():
    runs = _synthetic_runs().drop(columns=["curve"])
    with pytest.raises(ValueError, match="needs loss curves"):
        fit_envelope(runs)


def test_single_size_is_a_clear_error():
    runs = _synthetic_runs()
    runs["num_params"] = 1e8
    with pytest.raises(ValueError, match="at least 2 model sizes"):
        fit_envelope(runs)


def test_olmo_ladder_envelope(data_dir):
    """Approach 1 on the real OLMo model ladder (C4 loss curves of 190M-3B models)."""
    fit = fit_envelope(olmo_ladder_runs(data_dir), exclude=False)
    # compute-optimal N grows with compute, roughly as the square root (published estimates: 0.46-0.55)
    assert 0.3 < fit.a < 0.75
    assert fit.l_opt_fit.a < 0
