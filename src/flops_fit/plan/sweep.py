"""The planned sweep (:class:`SweepPlan`): its experiments, the FLOP convention, the model spec and the
planner settings that made it; saved as the sweep folder's plan file and read back by every later stage."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from flops_fit.core.experiment import Experiment
from flops_fit.core.io import atomic_write_json, read_json
from flops_fit.core.runs import load_runs
from flops_fit.core.sweepdir import PLAN_FILE
from flops_fit.core.trunk import Trunk, training_flops
from flops_fit.core.validate import Real
from flops_fit.plan.cost import CostEstimate, estimate_cost
from flops_fit.plan.spec import LossFn, ModelSpec, SampleFn

logger = logging.getLogger(__name__)

#: Version of the plan file format.
PLAN_VERSION = 1


#: A number of ``expected_optimum``: any real number, never a bool (only its kind is checked: a plan file
#: may hold NaN or infinity there).
_NUMBER = Real()
#: The plan file version this flops-fit reads (1 or 1.0, never True).
_VERSION = Real(PLAN_VERSION, PLAN_VERSION)


def _check_optimum(optimum: Any) -> None:
    """``expected_optimum`` read from a file: a list of [compute_budget, N] number pairs."""
    if not isinstance(optimum, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_NUMBER.is_kind(v) for v in p) for p in optimum
    ):
        raise ValueError("plan 'expected_optimum' must be a list of [compute_budget, N] number pairs")


def _check_plan_fields(d: Any) -> None:
    """The top-level fields of a plan read from a file: version, strings, and the kinds of the parts."""
    if not isinstance(d, Mapping) or "experiments" not in d:
        raise ValueError("a plan must be a JSON object with 'version' and 'experiments'")
    version = d.get("version")
    if not (_VERSION.is_kind(version) and _VERSION.accepts(version)):
        raise ValueError(
            f"plan file version {version!r} is not supported (this flops-fit reads version {PLAN_VERSION})"
        )
    missing = [k for k in ("flops", "param_count") if not isinstance(d.get(k), str)]
    if missing:
        raise ValueError(f"a plan needs string field(s) {missing}")
    experiments, model, config = d["experiments"], d.get("model"), d.get("config")
    if not isinstance(experiments, list):
        raise ValueError(f"plan 'experiments' must be a list, got {type(experiments).__name__}")
    if model is not None and not isinstance(model, Mapping):
        raise ValueError(f"plan 'model' must be null or an object, got {type(model).__name__}")
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"plan 'config' must be null or an object, got {type(config).__name__}")
    _check_optimum(d.get("expected_optimum") or [])


def _summary_row(e: Experiment, centres: Mapping[float, float]) -> dict[str, str]:
    """One experiment as the text columns of :meth:`SweepPlan.summary`."""
    return {
        "budget": f"{e.compute_budget:.3g}",
        "N*": f"{centres[e.compute_budget]:.3g}" if e.compute_budget in centres else "",
        "size": "" if e.size_value is None else f"{e.size_value:g}",
        "params": f"{e.num_params:.3g}",
        "tokens": f"{e.num_tokens:.3g}",
        "D/N": f"{e.tokens_per_param:.3g}",
        "steps": f"{e.num_steps:d}",
        "epochs": "" if e.epochs is None else f"{e.epochs:.2f}" + (" !" if e.repeats_data else ""),
        "lr": "" if e.learning_rate is None else f"{e.learning_rate:.3g}",
        "id": e.experiment_id,
    }


def _stored_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The planner settings as sweep.json stores them: ``design`` only when it is not the IsoFLOP grid of
    ``num_model_sizes`` (so a plan of the default design is written exactly as release 0.1.0 wrote it)."""
    return {k: v for k, v in config.items() if not (k == "design" and v is None)}


@dataclass(frozen=True)
class SweepPlan:
    """The planned IsoFLOP sweep: experiments, the FLOP convention and the planner settings that made it.

    ``config`` holds the planner's inputs (accepted by :meth:`SweepPlanner.from_config`);
    ``expected_optimum`` the ``(compute_budget, N*)`` pairs the sizes were centred on; ``trunks`` the
    constant-learning-rate runs the branches of a WSD design start from (empty otherwise).
    """

    def __post_init__(self) -> None:
        by_id = {t.trunk_id: t for t in self.trunks}
        branches = {e.experiment_id for e in self.experiments if e.is_branch}
        for e in self.experiments:
            if e.validates is not None and e.validates not in branches:
                raise ValueError(
                    f"experiment {e.experiment_id} validates {e.validates}, which is not a branch of this plan"
                )
            if e.trunk_id is None:
                continue
            trunk = by_id.get(e.trunk_id)
            if trunk is None or e.branch_step not in trunk.branch_steps:
                raise ValueError(
                    f"experiment {e.experiment_id} branches off trunk {e.trunk_id} at step {e.branch_step}, "
                    "which the plan's trunks do not hold; re-plan the sweep"
                )

    experiments: tuple[Experiment, ...]
    flops: str
    param_count: str
    model: ModelSpec | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    expected_optimum: tuple[tuple[float, float], ...] = ()
    trunks: tuple[Trunk, ...] = ()
    version: int = PLAN_VERSION
    #: The cost :func:`flops_fit.find_optimal` estimated for ``train=False`` (not saved with the plan).
    cost: CostEstimate | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self.experiments)

    @property
    def compute_budgets(self) -> tuple[float, ...]:
        """The distinct budgets (FLOPs), ascending."""
        return tuple(sorted({e.compute_budget for e in self.experiments}))

    @property
    def total_flops(self) -> float:
        """FLOPs the whole sweep will spend (a WSD design: its trunks and cooldowns)."""
        return math.fsum(self.training_flops.values())

    @property
    def equivalent_flops(self) -> float:
        """FLOPs of training every run from scratch (the IsoFLOP grid of the same points)."""
        return math.fsum(e.planned_flops for e in self.experiments)

    @property
    def training_flops(self) -> dict[str, float]:
        """FLOPs each experiment costs to train, by id (a branch: its cooldown and its stretch of trunk)."""
        return training_flops(self.experiments, self.trunks)

    def trunk(self, trunk_id: str) -> Trunk:
        """The trunk with this id (KeyError if none)."""
        for t in self.trunks:
            if t.trunk_id == trunk_id:
                return t
        raise KeyError(f"no trunk {trunk_id!r} in this plan")

    def get(self, experiment_id: str) -> Experiment:
        """The experiment with this id (KeyError if none)."""
        for e in self.experiments:
            if e.experiment_id == experiment_id:
                return e
        raise KeyError(f"no experiment {experiment_id!r} in this plan")

    def select_runs(self, runs: pd.DataFrame, source: object = "the results") -> pd.DataFrame:
        """The rows of ``runs`` (a runs table) that belong to this plan, matched by experiment id.

        A ledger can also hold runs of an earlier plan in the same folder (other budgets, sizes, model, data
        or settings); those are left out with a warning naming ``source``, and stay in the file.
        """
        outside = ~runs["experiment_id"].isin({e.experiment_id for e in self.experiments})
        if len(runs) and outside.all():
            raise ValueError(
                f"none of the {len(runs)} run(s) in {source} belong to the given plan (no experiment_id matches); "
                "pass the plan these runs were trained from, or no plan (ff-analyze plan=null) to use every run"
            )
        if outside.any():
            logger.warning(
                "%d of %d run(s) in %s belong to an earlier plan (other budgets, sizes, model, data or "
                "settings) and are left out; they stay in the file (`flops-fit fit FILE` fits every run in it)",
                int(outside.sum()),
                len(runs),
                source,
            )
        return runs.loc[~outside].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "version": self.version,
            "flops": self.flops,
            "param_count": self.param_count,
            "model": None if self.model is None else self.model.to_dict(),
            "config": _stored_config(self.config),
            "expected_optimum": [list(p) for p in self.expected_optimum],
            "experiments": [e.to_dict() for e in self.experiments],
        }
        if self.trunks:  # only a WSD plan: other plans are written as release 0.1.0 wrote them
            out["trunks"] = [t.to_dict() for t in self.trunks]
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as versioned JSON (atomically: a crash never leaves half a file)."""
        path = Path(path)
        if self.model is not None and (
            "<locals>" in self.model.model_path or self.model.model_path.startswith("__main__:")
        ):
            logger.warning(
                "model class %s cannot be imported from another process; define it in an importable module "
                "so a runner can rebuild the models from this plan",
                self.model.model_path,
            )
        return atomic_write_json(path, self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepPlan:
        """Rebuild from :meth:`to_dict`; a malformed plan is a ValueError saying what is wrong.

        The model class stays an import path: nothing is imported until :meth:`ModelSpec.resolve`.
        """
        _check_plan_fields(d)
        model, trunks = d.get("model"), d.get("trunks", [])
        if not isinstance(trunks, list):
            raise ValueError(f"plan 'trunks' must be a list, got {type(trunks).__name__}")
        return cls(
            experiments=tuple(Experiment.from_dict(e) for e in d["experiments"]),
            flops=d["flops"],
            param_count=d["param_count"],
            model=None if model is None else ModelSpec.from_dict(model),
            config={"design": None, **(d.get("config") or {})},
            expected_optimum=tuple((float(c), float(n)) for c, n in d.get("expected_optimum") or []),
            trunks=tuple(Trunk.from_dict(t) for t in trunks),
            version=int(d["version"]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SweepPlan:
        """Read a plan written by :meth:`save`. The model class is not imported (see ModelSpec.resolve)."""
        try:  # a regular file of bounded size and depth (a received folder may hold anything)
            data = read_json(path)
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid plan file: {exc}") from exc
        return cls.from_dict(data)

    def to_frame(self) -> pd.DataFrame:
        """One row per experiment, with ``planned_flops`` and ``tokens_per_param`` added."""
        rows = [
            {**e.to_dict(), "planned_flops": e.planned_flops, "tokens_per_param": e.tokens_per_param}
            for e in self
        ]
        names = [f.name for f in fields(Experiment)]
        if not self.trunks:
            names = [n for n in names if n not in ("trunk_id", "branch_step", "validates")]
        cols = [*names, "planned_flops", "tokens_per_param"]
        return pd.DataFrame(rows, columns=cols)

    def summary(self) -> str:
        """A readable table of the sweep, grouped by budget."""
        n_b = len(self.compute_budgets)
        kind = (
            f"WSD sweep ({len(self.trunks)} trunks, a cooldown branch per point)"
            if self.trunks
            else "IsoFLOP sweep"
        )
        lines = [
            f"{kind}: {len(self)} experiments over {n_b} compute budget(s); FLOP convention {self.flops!r}, "
            f"N = {self.param_count.replace('_', '-')} parameters",
        ]
        if self.model is not None:
            lines.append(f"model: {self.model.model_path} varied by {self.model.size_param!r}")
        if self.experiments:
            e0 = self.experiments[0]
            lines.append(
                f"batch: {e0.batch_size} x {e0.tokens_per_sample} tokens per step; seed {e0.seed}; "
                f"total {self.total_flops:.3g} FLOPs"
            )
        if self.trunks and self.equivalent_flops > 0:
            lines.append(
                f"training every point from scratch (the IsoFLOP grid of the same runs) would cost "
                f"{self.equivalent_flops:.3g} FLOPs: this design needs {self.total_flops / self.equivalent_flops:.0%} of it"
            )
        centres = dict(self.expected_optimum)
        table = [_summary_row(e, centres) for e in self]
        if table:
            frame = pd.DataFrame(table)
            frame = frame.loc[:, [c for c in frame.columns if (frame[c] != "").any()]]
            lines.append(frame.to_string(index=False))
        repeated = sum(e.repeats_data for e in self)
        if repeated:
            lines.append(f"! {repeated} experiment(s) repeat data (more than one epoch)")
        return "\n".join(lines)

    def estimate_cost(
        self,
        device: torch.device | str | None = None,
        *,
        sample_fn: SampleFn | None = None,
        loss_fn: LossFn | None = None,
        flops_per_second: float | None = None,
        steps: int = 3,
        warmup: int = 1,
    ) -> CostEstimate:
        """Total and per-experiment FLOPs, and wall time when it can be known.

        With ``flops_per_second`` the time is FLOPs / that throughput. Otherwise, when the plan has a
        model and a sample batch (``sample_fn`` here or on the ModelSpec), the smallest and largest
        models each train ``warmup + steps`` real optimiser steps (AdamW) at the plan's batch size on
        ``device`` (default: CUDA if available, else CPU); the achieved FLOP/s is interpolated in log N
        between them. Without either, only FLOPs are reported. See :mod:`flops_fit.plan.cost`.
        """
        return estimate_cost(
            self.experiments,
            self.model,
            device,
            sample_fn=sample_fn,
            loss_fn=loss_fn,
            flops_per_second=flops_per_second,
            steps=steps,
            warmup=warmup,
            flops=self.training_flops,
        )


def as_plan(plan: SweepPlan | str | os.PathLike[str] | None) -> SweepPlan | None:
    """None, a :class:`SweepPlan`, or the plan read from a ``sweep.json`` path (which must exist)."""
    if plan is None or isinstance(plan, SweepPlan):
        return plan
    if not isinstance(plan, (str, os.PathLike)):
        raise TypeError(f"plan must be a {PLAN_FILE} path or a SweepPlan, got {plan!r}")
    if not Path(plan).is_file():
        raise FileNotFoundError(
            f"plan file {str(plan)!r} does not exist; pass the sweep's {PLAN_FILE}, or plan=None for every run"
        )
    return SweepPlan.load(plan)


def load_plan_runs(
    results: str | os.PathLike[str],
    plan: SweepPlan | str | os.PathLike[str] | None,
    columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The runs table of the file ``results`` (:func:`flops_fit.core.runs.load_runs`); with a ``plan`` (see
    :func:`as_plan`), only that plan's runs (:meth:`SweepPlan.select_runs`)."""
    runs = load_runs(results, columns=columns)
    sweep = as_plan(plan)
    return runs if sweep is None else sweep.select_runs(runs, results)
