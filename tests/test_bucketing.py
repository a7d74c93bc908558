import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flops_fit.analysis.bucketing import bucket_budgets


def test_nearby_budgets_share_a_bucket():
    labels, centers = bucket_budgets([1e18, 1.02e18, 3e18, 2.99e18, 1e19])
    assert labels.tolist() == [0, 0, 1, 1, 2]
    assert centers[0] == pytest.approx(np.sqrt(1e18 * 1.02e18))


def test_no_chaining_of_slowly_growing_budgets():
    c = 1e18 * 1.03 ** np.arange(10)  # each 3% above the last: 34% spread overall
    labels, _ = bucket_budgets(c, rtol=0.05)
    assert labels.max() >= 4


def test_bad_budgets():
    with pytest.raises(ValueError, match="positive"):
        bucket_budgets([1e18, -1.0])
    assert bucket_budgets([])[0].size == 0


@settings(deadline=None, derandomize=True)  # no timing limit on a loaded CI box; the same examples each run
@given(st.lists(st.floats(min_value=1e10, max_value=1e25), min_size=1, max_size=40))
def test_buckets_are_ordered_and_tight(cs):
    c = np.asarray(cs)
    labels, centers = bucket_budgets(c)
    assert np.all(np.diff(centers) > 0)
    for k in range(len(centers)):
        members = c[labels == k]
        assert members.max() <= members.min() * 1.05 * (1 + 1e-9)
    # order invariance
    perm = np.random.default_rng(0).permutation(c.size)
    labels2, _centers2 = bucket_budgets(c[perm])
    np.testing.assert_array_equal(labels2, labels[perm])


def test_lowest_loss_per_budget_needs_a_profile():
    """Without an IsoFLOP fit, a budget's optimum is its lowest-loss run only where it holds a profile
    (3+ sizes): a single run at some budget is no optimum. Analyses, results and plots share this rule."""
    import pandas as pd

    from flops_fit.analysis.bucketing import lowest_loss_per_budget

    runs = pd.DataFrame(
        {
            "compute_budget": [1e18, 1.01e18, 1.02e18, 1e19, 1e20, 1e20],
            "num_params": [1e7, 2e7, 4e7, 5e7, 1e8, 2e8],
            "num_tokens": [1.6e10, 8.3e9, 4.2e9, 3.3e10, 1.7e11, 8.3e10],
            "final_loss": [3.0, 2.9, 3.1, 2.5, 2.2, 2.1],
        }
    )
    best = lowest_loss_per_budget(runs)
    assert list(best["optimal_params"]) == [2e7] and list(best["n_sizes"]) == [3]
    assert best["compute_budget"].iloc[0] == pytest.approx((1e18 * 1.01e18 * 1.02e18) ** (1 / 3))
    assert len(lowest_loss_per_budget(runs, min_sizes=1)) == 3
