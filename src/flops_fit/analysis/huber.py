"""Approach 3's objective: the summed, weighted Huber loss of log residuals and its gradient.

For L(N, D) = E + A / N**alpha + B / D**beta in log space ``(e, a, b, alpha, beta)`` (E = exp(e), A = exp(a),
B = exp(b); N in parameters, D in tokens, L the observed loss), the kernel evaluates
``sum_i w_i Huber_delta(log L(N_i, D_i) - log L_i)`` and its analytic gradient for many parameter vectors at
once: the evaluation kernel that :func:`flops_fit.analysis.lbfgs.lbfgs_batch` drives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Rows x points per vectorised block: keeps the temporaries in cache.
CHUNK_ELEMENTS = 65536


def objective_scale(w: np.ndarray, huber_delta: float) -> Any:
    """delta * sum(w): the optimiser minimises the summed Huber loss divided by this (the weighted mean
    |log residual| in the Huber loss's linear part). A float for weights (n,), a column for a table (m, n)."""
    if w.ndim == 1:
        return huber_delta * float(w.sum())
    return huber_delta * w.sum(axis=1, keepdims=True)


class HuberLogObjective:
    """Summed weighted Huber loss of log residuals, and its gradient, for many parameter vectors at once.

    Parameter vectors are the columns of a (5, k) array, in log space ``(e, a, b, alpha, beta)``; the
    batched optimiser keeps every per-start quantity in this column layout (one contiguous row per
    coordinate), which keeps its many small vector operations cheap. The three terms of the model are
    computed divided by the observed loss, ``t1 = exp(a - alpha log N - log L)`` and so on, so the residual
    is ``r = log(t1 + t2 + t3)`` with no explicit log-sum-exp shift; a vector whose terms overflow gets
    ``f = inf`` (the line search then backs off), which only happens absurdly far from any fit.

    Vectors are processed in blocks of about ``CHUNK_ELEMENTS`` values through preallocated work arrays
    (cache-sized, and no large allocation per call), so an instance is not safe to call from several
    threads at once.
    """

    def __init__(
        self, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float, weights: np.ndarray
    ) -> None:
        ones = np.ones_like(log_n)
        self.delta = float(delta)
        self.n_points = log_n.size
        self._m1 = np.stack([ones, -log_n, -log_l])  # [a, alpha, 1] @ m1 = a - alpha log N - log L
        self._m2 = np.stack([ones, -log_d, -log_l])
        self._inv_l = np.exp(-log_l)
        self._g1 = np.stack([ones, -log_n])  # d/d(a, alpha) of the first exponent
        self._g2 = np.stack([ones, -log_d])
        # Equal weights (the usual case) are applied to f and grad once instead of to every residual.
        self._common = float(weights[0]) if bool((weights == weights[0]).all()) else None
        self._weights = None if self._common is not None else np.asarray(weights, dtype=float)
        self._chunk = max(8, CHUNK_ELEMENTS // log_n.size)
        self._work = np.empty((6, self._chunk, log_n.size))
        self._p = np.ones((2, self._chunk, 3))  # per block: [a, alpha, 1] and [b, beta, 1] per column

    def __call__(
        self, theta: np.ndarray, table: np.ndarray | None = None, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(f, grad)``, shapes (k,) and (5, k), for the parameter columns of ``theta`` (5, k).

        Points carry the constructor's ``weights``, or with ``table`` (m, n) the weights in row ``rows[i]``
        for column ``i`` (bootstrap resamples).
        """
        k = theta.shape[1]
        f = np.empty(k)
        g = np.empty((5, k))
        common = None if table is not None else self._common
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for lo in range(0, k, self._chunk):
                hi = min(lo + self._chunk, k)
                if table is not None:
                    assert rows is not None
                    w = np.take(table, rows[lo:hi], axis=0, out=self._work[5, : hi - lo])
                else:
                    w = self._weights
                self._block(theta[:, lo:hi], w, f[lo:hi], g[:, lo:hi])
        if common is not None and common != 1.0:
            f *= common
            g *= common
        bad = ~np.isfinite(f)
        if bad.any():
            f[bad] = np.inf
            g[:, bad] = 0.0
        return f, g

    def _block(self, theta: np.ndarray, w: np.ndarray | None, f: np.ndarray, grad: np.ndarray) -> None:
        """f (k,) and grad (5, k) of the k columns of one block into ``f`` and ``grad``; ``w``: weights, (k, n)
        per column, (n,) for all, or None when they are applied afterwards."""
        k = theta.shape[1]
        t1, t2, s, r, q = (buf[:k] for buf in self._work[:5])
        p1, p2 = self._p[0, :k], self._p[1, :k]
        p1[:, 0], p1[:, 1] = theta[1], theta[3]
        p2[:, 0], p2[:, 1] = theta[2], theta[4]
        np.matmul(p1, self._m1, out=t1)  # a - alpha log N - log L
        np.exp(t1, out=t1)
        np.matmul(p2, self._m2, out=t2)
        np.exp(t2, out=t2)
        big_e = np.exp(theta[0])
        np.einsum("i,j->ij", big_e, self._inv_l, out=s)  # E / L_observed
        s += t1
        s += t2  # = L(N, D) / L_observed
        np.log(s, out=r)  # log residual
        np.clip(r, -self.delta, self.delta, out=q)  # Huber'(r)
        # Huber(r) = psi (2 r - psi) / 2 in both regimes (psi = Huber'(r)); r is not needed afterwards.
        r *= 2.0
        r -= q
        if w is not None:
            q *= w
        np.einsum("ij,ij->i", q, r, out=f)
        f *= 0.5
        # dr/d(log term_j) = term_j / L(N, D), so with q = w Huber'(r) / s: df/da = sum q t1,
        # df/dalpha = -sum q t1 log N (likewise b, beta with t2, log D) and df/de = E sum q / L_observed.
        q /= s
        np.matmul(q, self._inv_l, out=grad[0])
        grad[0] *= big_e
        t1 *= q
        t2 *= q
        grad[[1, 3]] = self._g1 @ t1.T
        grad[[2, 4]] = self._g2 @ t2.T
