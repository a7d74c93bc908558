"""Synthetic sweeps drawn from a known Chinchilla-style law L(N, D) = E + A / N^alpha + B / D^beta."""

from __future__ import annotations

import numpy as np

# Hoffmann et al. (2022) Approach 3 estimates, used as a realistic ground truth.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def true_a(p: dict = TRUE) -> float:
    return p["beta"] / (p["alpha"] + p["beta"])


def true_n_opt(C, p: dict = TRUE):
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    return g * (np.asarray(C) / 6.0) ** true_a(p)


def isoflop_sweep(
    budgets=(1e17, 3e17, 1e18, 3e18, 1e19, 3e19), sizes=9, span=8.0, noise=0.003, seed=0, p=TRUE
):
    """N, D, L, C arrays: per budget, ``sizes`` models log-spaced over [N*/span, N* span]; multiplicative noise."""
    rng = np.random.default_rng(seed)
    n_all, d_all, l_all, c_all = [], [], [], []
    for c in budgets:
        n_star = float(true_n_opt(c, p))
        n = np.geomspace(n_star / span, n_star * span, sizes)
        d = c / (6 * n)
        l = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
        l = l * np.exp(rng.normal(0, noise, n.size))
        n_all.append(n), d_all.append(d), l_all.append(l), c_all.append(np.full(n.size, c))
    return tuple(np.concatenate(v) for v in (n_all, d_all, l_all, c_all))
