"""One run of a sweep (:class:`Experiment`) and its stable id, torch-free.

An experiment id is a digest of the fields that define a run (model, data, settings, budget, size, tokens,
learning rate). It names the run's checkpoint and its ledger record, so a sweep resumes by id: the hashing
here must never change for the same fields (bump :data:`ID_VERSION` when their meaning changes).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from flops_fit.core.train_config import result_settings
from flops_fit.core.validate import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Constraint,
    Instance,
    Nullable,
    Real,
    check,
)

#: Bump when the fields entering :func:`experiment_id` change meaning (it changes every id).
#: 2: numbers hashed by value (``0`` and ``0.0`` alike); only result-changing train_config fields.
ID_VERSION = 2
#: Experiment ids name files (checkpoints): no path separators, no leading dot, at most 128 characters.
SAFE_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The rule of every Experiment field except the id, checked when a record is read from a file.
_EXPERIMENT_FIELD_RULES: dict[str, Constraint] = {
    "compute_budget": Real(0),
    "size_value": Nullable(Real(0)),
    "num_params": POSITIVE_INT,
    "num_tokens": POSITIVE_INT,
    "flops_per_token": Real(0),
    "epochs": Nullable(Real(0)),
    "learning_rate": Nullable(Real(0)),
    "batch_size": POSITIVE_INT,
    "tokens_per_sample": POSITIVE_INT,
    "num_steps": POSITIVE_INT,
    "flops": Instance(str),
    "seed": NON_NEGATIVE_INT,
}
#: Optional fields of a WSD sweep's runs (a branch's trunk and branch point, a validation run's branch); absent
#: from plan files where unset.
_BRANCH_FIELD_RULES: dict[str, Constraint] = {
    "trunk_id": Nullable(Instance(str)),
    "branch_step": Nullable(POSITIVE_INT),
    "validates": Nullable(Instance(str)),
}


# --------------------------------------------------------------------------------------------------
# canonical JSON and stable ids
# --------------------------------------------------------------------------------------------------


def result_config(train_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a recorded train_config that enter experiment ids: those changing a run's result."""
    if train_config is None:
        return None
    return result_settings(train_config)


def plain_json(value: Any, name: str) -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None), or an error naming ``name``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} holds a non-finite number {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{name} keys must be strings, got {k!r}")
            out[k] = plain_json(v, f"{name}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, bytes)):
        return [plain_json(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{name} must hold only JSON values (str, number, bool, None, list, dict), got "
        f"{type(value).__name__} {value!r}; pass it as a string or number so the plan can be saved and hashed"
    )


def canonical(value: Any) -> Any:
    """Integers exactly; floats rounded to 12 significant digits (so last-bit differences never change an
    id), and an integral result below 2**53 as the int it equals, so ``0`` and ``0.0``, ``64`` and ``64.0``
    give one id."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        text = format(value, ".12g")
        rounded = float(text)
        return int(rounded) if rounded.is_integer() and abs(rounded) < 2.0**53 else text
    if isinstance(value, Mapping):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot hash a {type(value).__name__}")


def experiment_id(fields: Mapping[str, Any]) -> str:
    """A 12-hex-digit sha256 digest of the canonical JSON of the fields that define a run."""
    payload = json.dumps(
        {"id_version": ID_VERSION, **canonical(dict(fields))}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One training run of the sweep.

    ``compute_budget`` is the nominal budget C (FLOPs) of its IsoFLOP group. The run trains a model of
    ``num_params`` parameters (counted per the plan's ``param_count``; ``size_value`` is the value of the
    model's size argument, None in parameter space) for ``num_tokens`` tokens = ``num_steps`` optimiser
    steps of ``batch_size`` samples x ``tokens_per_sample`` tokens, at ``learning_rate`` (None: the
    runner's default). ``epochs`` is num_tokens / dataset tokens (None when the dataset size is unknown).

    A cooldown branch of the WSD design (:class:`~flops_fit.core.trunk.Trunk`) also names its trunk
    (``trunk_id``) and the optimiser step it leaves the trunk at (``branch_step``, where its cooldown
    begins); a run trained from scratch has None for both. A WSD sweep's validation run names the branch it
    retrains from scratch at the same (N, D) (``validates``); it is compared with it, never fitted.
    """

    experiment_id: str
    compute_budget: float
    size_value: int | float | None
    num_params: int
    num_tokens: int
    flops_per_token: float
    epochs: float | None
    learning_rate: float | None
    batch_size: int
    tokens_per_sample: int
    num_steps: int
    flops: str
    seed: int
    trunk_id: str | None = None
    branch_step: int | None = None
    validates: str | None = None

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimiser step sees: batch_size x tokens_per_sample."""
        return self.batch_size * self.tokens_per_sample

    @property
    def planned_flops(self) -> float:
        """FLOPs the run will actually spend: flops_per_token x num_tokens (C up to step rounding)."""
        return self.flops_per_token * self.num_tokens

    @property
    def tokens_per_param(self) -> float:
        """Tokens per parameter, D / N."""
        return self.num_tokens / self.num_params

    @property
    def repeats_data(self) -> bool:
        """True when the run needs more than one pass over the dataset."""
        return self.epochs is not None and self.epochs > 1.0

    @property
    def is_branch(self) -> bool:
        """True for a cooldown branch of a trunk (WSD design)."""
        return self.trunk_id is not None

    def to_dict(self) -> dict[str, Any]:
        """Every field; the optional WSD fields only where set (so plan files of other designs keep their form)."""
        out = asdict(self)
        for name in _BRANCH_FIELD_RULES:
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Experiment:
        """Rebuild from :meth:`to_dict` (e.g. a plan file), checking every field's type and the id."""
        if not isinstance(d, Mapping):
            raise ValueError(f"an experiment record must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n not in _BRANCH_FIELD_RULES]
        if missing:
            raise ValueError(f"experiment record is missing field(s) {missing}")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"experiment record has unknown field(s) {unknown}")
        eid = d["experiment_id"]
        if not isinstance(eid, str) or not SAFE_EXPERIMENT_ID.fullmatch(eid):
            raise ValueError(
                f"experiment_id {eid!r} is not a safe file name (letters, digits, '.', '_', '-', at most 128, "
                "not starting with '.'); ids name checkpoint files, so a plan file must not carry path parts"
            )
        for name, rule in {**_EXPERIMENT_FIELD_RULES, **_BRANCH_FIELD_RULES}.items():
            try:
                check(f"experiment {eid}: field {name!r}", d.get(name), rule)
            except (TypeError, ValueError, OverflowError) as exc:  # a bad record in a file: a ValueError
                raise ValueError(str(exc)) from None
        for key in ("trunk_id", "validates"):
            ref = d.get(key)
            if ref is not None and not SAFE_EXPERIMENT_ID.fullmatch(ref):
                raise ValueError(
                    f"experiment {eid}: {key} {ref!r} is not a safe file name (ids name checkpoints)"
                )
        trunk = d.get("trunk_id")
        if (trunk is None) != (d.get("branch_step") is None):
            raise ValueError(f"experiment {eid}: a branch needs both trunk_id and branch_step, or neither")
        if d.get("branch_step") is not None and d["branch_step"] >= d["num_steps"]:
            raise ValueError(
                f"experiment {eid}: branch_step {d['branch_step']} must be below num_steps {d['num_steps']} "
                "(the cooldown needs at least one step)"
            )
        return cls(**{n: d[n] for n in names if n in d})
