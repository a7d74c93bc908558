"""Synthetic training results for demos and tests: :class:`MockLaw`.

A mock run trains nothing. Its final loss is the Chinchilla parametric law

    L(N, D) = E + A / N**alpha + B / D**beta

(N parameters, D training tokens) times lognormal noise, and its curve is the same law evaluated at
``curve_points`` evenly spaced token counts up to D, each point with its own noise; the last point is
the final loss. The defaults are the Approach 3 estimates of Hoffmann et al. (2022), "Training
Compute-Optimal Large Language Models", eq. (10): E = 1.69, A = 406.4, B = 410.7, alpha = 0.34,
beta = 0.28.

The noise of an experiment is drawn from a generator seeded by ``(seed, experiment_id)``, so the same
plan and seed give the same numbers, bit for bit, on every re-run and in any order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from flops_fit.core.validate import POSITIVE, POSITIVE_INT, Constraint, Real, check

__all__ = ["MockLaw", "mock_generator"]


def mock_generator(seed: int, experiment_id: str) -> np.random.Generator:
    """A NumPy generator seeded by the runner seed and the experiment id (any string)."""
    digest = hashlib.sha256(f"{int(seed)}:{experiment_id}".encode()).digest()
    words = np.frombuffer(digest[:16], dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence(words))


_NON_NEGATIVE = Real(0)
#: What each field of :class:`MockLaw` must be: the offset and the noise may be 0, the rest positive.
_FIELD_RULES: dict[str, Constraint] = {
    "E": _NON_NEGATIVE,
    "A": POSITIVE,
    "B": POSITIVE,
    "alpha": POSITIVE,
    "beta": POSITIVE,
    "noise": _NON_NEGATIVE,
    "curve_points": POSITIVE_INT,
}


@dataclass(frozen=True)
class MockLaw:
    """The law and noise of mock runs.

    Attributes:
        E, A, B, alpha, beta: ``L(N, D) = E + A / N**alpha + B / D**beta`` (loss in nats, N in parameters,
            D in tokens); defaults from Hoffmann et al. (2022), Approach 3.
        noise: standard deviation of the log of the multiplicative noise (0.005: about 0.5 % of the loss,
            the order of seed-to-seed variation of small language models); 0 gives the exact law.
        curve_points: points on each run's loss curve (evenly spaced in tokens, the last at D).
    """

    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28
    noise: float = 0.005
    curve_points: int = 16

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            object.__setattr__(self, name, check(f"MockLaw.{name}", value, _FIELD_RULES[name]))

    @classmethod
    def from_value(cls, value: MockLaw | Mapping[str, Any] | None) -> MockLaw:
        """``None`` -> the defaults; a mapping of field names -> a law; a law -> itself."""
        if value is None:
            return cls()
        if isinstance(value, MockLaw):
            return value
        if isinstance(value, Mapping):
            allowed = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise ValueError(f"mock_law has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
            return cls(**dict(value))
        raise TypeError(
            f"mock_law must be a MockLaw, a mapping of its fields or None, got {type(value).__name__}"
        )

    def loss(self, num_params: float, num_tokens: float) -> float:
        """The noiseless law L(N, D)."""
        return self.E + self.A / float(num_params) ** self.alpha + self.B / float(num_tokens) ** self.beta

    def simulate(self, num_params: int, num_tokens: int, generator: np.random.Generator) -> dict[str, Any]:
        """``final_loss`` and ``curve`` (``[tokens, loss]`` pairs) of one mock run of N params and D tokens."""
        k = self.curve_points
        tokens = [max(1, round(num_tokens * (i + 1) / k)) for i in range(k)]
        tokens[-1] = int(num_tokens)
        factors = np.exp(self.noise * generator.standard_normal(k))
        curve = [[int(t), float(self.loss(num_params, t) * f)] for t, f in zip(tokens, factors, strict=True)]
        return {"final_loss": curve[-1][1], "curve": curve}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
