"""The loss along a training run as a function of its learning-rate schedule (Tissue et al. 2024, "Scaling
Law with Learning Rate Annealing").

For one model trained with per-step learning rates eta_1, eta_2, ..., the loss after step s follows

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)

with S1(s) = eta_1 + ... + eta_s, the *forward area* (how far the optimiser has travelled), and S2(s) =
m_1 + ... + m_s, the *annealing area*, where m_i = lambda * m_(i-1) + (eta_(i-1) - eta_i) accumulates the
learning-rate drops with a momentum lambda (0.999 in the paper): a drop lowers the loss, with a delay. L0,
A, C >= 0 and alpha > 0 are fitted; lambda is fixed. Learning rates enter as multipliers of the peak (the
schedule's shape; the peak itself is absorbed in A and C), so a fit on one run transfers to any other
schedule *of the same model at the same peak learning rate*: a constant-LR trunk plus its cooldown
branches, or a cosine run of another length. Warm-up steps add to S1 but not to S2 (a rising learning
rate is not annealing).

Fitting is variable projection: for a given alpha the law is linear in (L0, A, C), solved with
non-negative bounds (:func:`scipy.optimize.lsq_linear`) on relative residuals (each point weighted by 1/L,
so a fit's error reads as a fraction of the loss); alpha is searched on a log grid, then refined by a
bounded scalar search around the best grid point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, signal

from flops_fit.core.schedule import lr_multiplier, warmup_steps

#: Momentum of the annealing area (Tissue et al. 2024 use 0.999 for runs of thousands of steps).
DEFAULT_DECAY = 0.999
#: Grid of alpha for the variable-projection search (then refined).
ALPHA_GRID = np.geomspace(0.02, 3.0, 40)


def annealing_areas(
    lr: ArrayLike, *, decay: float = DEFAULT_DECAY, warmup: int = 0
) -> tuple[np.ndarray, ...]:
    """(S1, S2) after each step of a run with per-step learning-rate multipliers ``lr`` (one per update, in
    order); ``warmup``: the first steps, whose rising rate counts in S1 but not in S2."""
    eta = _rates(lr, "lr")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    if not (isinstance(warmup, int) and 0 <= warmup <= eta.size):
        raise ValueError(f"warmup must be a step count in [0, {eta.size}], got {warmup!r}")
    drops = np.concatenate([[0.0], eta[:-1] - eta[1:]])
    drops[: warmup + 1] = 0.0  # the step after warm-up is the first that can anneal
    momentum = signal.lfilter([1.0], [1.0, -decay], drops)
    return np.cumsum(eta), np.cumsum(momentum)


@dataclass(frozen=True)
class LossCurve:
    """One recorded run: the learning-rate multiplier of every update (``lr``) and the loss measured after
    some of them (``steps``: 1-based counts of updates done; ``loss``: the loss there)."""

    lr: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    warmup: int = 0

    def __post_init__(self) -> None:
        lr, loss = _rates(self.lr, "lr"), np.asarray(self.loss, dtype=float).reshape(-1)
        steps = np.asarray(self.steps).reshape(-1)
        if steps.size != loss.size or steps.size == 0:
            raise ValueError(
                f"steps and loss must have one entry per measurement, got {steps.size} and {loss.size}"
            )
        if not np.all(np.isfinite(loss) & (loss > 0)):
            raise ValueError("loss must be positive and finite")
        if not (np.all(steps == np.round(steps)) and steps.min() >= 1 and steps.max() <= lr.size):
            raise ValueError(f"steps must be whole numbers of updates in [1, {lr.size}] (len(lr))")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "steps", steps.astype(int))
        object.__setattr__(self, "loss", loss)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LossCurve:
        """The curve of one finished run of a sweep's ledger: its learning-rate multipliers rebuilt from the
        recorded ``train_config`` (schedule, warm-up, decay) and ``steps``, its measurements from ``curve``
        (``[tokens, loss]`` pairs, tokens turned into steps by the run's tokens per step)."""
        try:
            steps, tokens, config = int(record["steps"]), float(record["num_tokens"]), record["train_config"]
            points = np.asarray(record["curve"], dtype=float).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"record {record.get('experiment_id', '?')!r} has no usable loss curve (needs steps, num_tokens, "
                f"train_config and curve: a run trained by flops-fit in local mode): {exc}"
            ) from None
        keys = ("schedule", "min_lr_ratio", "decay_frac", "warmup_steps", "decay_steps", "decay_shape")
        shape = {k: config[k] for k in keys if k in config}
        lr = [
            lr_multiplier(s, steps, warmup_frac=config.get("warmup_frac", 0.0), **shape) for s in range(steps)
        ]
        at = np.clip(np.round(points[:, 0] / (tokens / steps)), 1, steps)
        warm = warmup_steps(steps, config.get("warmup_frac", 0.0), fixed=config.get("warmup_steps"))
        return cls(np.array(lr), at, points[:, 1], warmup=warm)

    def areas(self, decay: float) -> tuple[np.ndarray, np.ndarray]:
        """(S1, S2) at the measured steps."""
        s1, s2 = annealing_areas(self.lr, decay=decay, warmup=self.warmup)
        return s1[self.steps - 1], s2[self.steps - 1]


@dataclass(frozen=True)
class AnnealingFit:
    """A fitted L(s) = L0 + A S1^(-alpha) - C S2 (see the module). ``rms``: root mean square of the relative
    residuals (L / fitted - 1) over the ``n_points`` measurements of ``n_curves`` runs."""

    L0: float
    A: float
    alpha: float
    C: float
    decay: float
    rms: float
    n_points: int
    n_curves: int

    def loss_along(self, lr: ArrayLike, *, warmup: int = 0) -> np.ndarray:
        """The predicted loss after every step of a run with learning-rate multipliers ``lr``."""
        s1, s2 = annealing_areas(lr, decay=self.decay, warmup=warmup)
        return self.L0 + self.A * s1 ** (-self.alpha) - self.C * s2

    def final_loss(self, lr: ArrayLike, *, warmup: int = 0) -> float:
        """The predicted loss at the end of a run with learning-rate multipliers ``lr`` (one per update)."""
        return float(self.loss_along(lr, warmup=warmup)[-1])

    def summary(self) -> str:
        return (
            f"L(s) = {self.L0:.4g} + {self.A:.4g} S1^-{self.alpha:.4g} - {self.C:.4g} S2 (lambda = {self.decay:g}); "
            f"{self.n_points} points of {self.n_curves} run(s), relative RMS {self.rms:.2%}"
        )


def fit_annealing(
    curves: Sequence[LossCurve], *, decay: float = DEFAULT_DECAY, min_step: int = 1
) -> AnnealingFit:
    """Fit the annealing law to the measured losses of ``curves`` (runs of one model at one peak learning
    rate), skipping measurements before update ``min_step`` and during warm-up (the law describes the loss
    once training is under way)."""
    if isinstance(curves, LossCurve) or not curves or not all(isinstance(c, LossCurve) for c in curves):
        raise TypeError("curves must be a non-empty list of LossCurve(lr, steps, loss)")
    s1, s2, loss = [], [], []
    for c in curves:
        keep = c.steps >= max(min_step, c.warmup + 1)
        a1, a2 = c.areas(decay)
        s1.append(a1[keep]), s2.append(a2[keep]), loss.append(c.loss[keep])
    x1, x2, y = (np.concatenate(v) for v in (s1, s2, loss))
    if y.size < 4:
        raise ValueError(
            f"the annealing law has 4 parameters; these curves give {y.size} usable measurements"
        )
    cost = lambda a: _project(x1, x2, y, a)[0]  # noqa: E731
    grid = [cost(a) for a in ALPHA_GRID]
    k = int(np.argmin(grid))
    lo, hi = ALPHA_GRID[max(k - 1, 0)], ALPHA_GRID[min(k + 1, ALPHA_GRID.size - 1)]
    best = optimize.minimize_scalar(cost, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    alpha = float(best.x) if best.fun <= grid[k] else float(ALPHA_GRID[k])
    sse, (l0, a, c) = _project(x1, x2, y, alpha)
    return AnnealingFit(
        L0=l0,
        A=a,
        alpha=alpha,
        C=c,
        decay=decay,
        rms=math.sqrt(sse / y.size),
        n_points=int(y.size),
        n_curves=len(curves),
    )


def _project(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, tuple[float, ...]]:
    """Sum of squared relative residuals and (L0, A, C) >= 0 at exponent ``alpha``."""
    design = np.column_stack([np.ones_like(x1), x1 ** (-alpha), -x2]) / y[:, None]
    sol = optimize.lsq_linear(design, np.ones_like(y), bounds=(0.0, np.inf), method="bvls")
    resid = design @ sol.x - 1.0
    return float(resid @ resid), tuple(float(v) for v in sol.x)


def _rates(lr: ArrayLike, what: str) -> np.ndarray:
    eta = np.asarray(lr, dtype=float).reshape(-1)
    if eta.size == 0 or not np.all(np.isfinite(eta) & (eta >= 0)):
        raise ValueError(
            f"{what} must be a non-empty sequence of non-negative finite learning-rate multipliers"
        )
    return eta


def held_out_branches(
    records: Sequence[Mapping[str, Any]], *, decay: float = DEFAULT_DECAY
) -> list[dict[str, Any]]:
    """How well the law predicts a WSD sweep's branch endpoints it was not fitted on.

    Per trunk with at least three completed branches (ledger records with ``trunk_id``), the law is fitted
    on two of them: the longest (its curve holds the trunk's evaluations up to its branch point, then its
    cooldown) and the shortest; each other branch's final loss is then predicted from its own schedule.
    One row per predicted branch: ``trunk_id``, ``experiment_id``, ``num_tokens``, ``measured``,
    ``predicted`` and ``rel_error`` (predicted / measured - 1), plus the fit's relative RMS ``fit_rms``.
    """
    by_trunk: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        done = r.get("status", "completed") == "completed" and isinstance(r.get("curve"), list)
        if isinstance(r.get("trunk_id"), str) and done:
            by_trunk.setdefault(str(r["trunk_id"]), []).append(r)
    rows = []
    for tid, branches in by_trunk.items():
        if len(branches) < 3:
            continue
        branches = sorted(branches, key=lambda r: int(r["steps"]))
        fit = fit_annealing(
            [LossCurve.from_record(branches[-1]), LossCurve.from_record(branches[0])], decay=decay
        )
        for r in branches[1:-1]:
            curve = LossCurve.from_record(r)
            predicted = fit.final_loss(curve.lr, warmup=curve.warmup)
            measured = float(r["final_loss"])
            rows.append(
                {
                    "trunk_id": tid,
                    "experiment_id": r["experiment_id"],
                    "num_tokens": int(r["num_tokens"]),
                    "measured": measured,
                    "predicted": predicted,
                    "rel_error": predicted / measured - 1.0,
                    "fit_rms": fit.rms,
                }
            )
    return rows
