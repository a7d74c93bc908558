"""Security: what a results file, a plan file or a checkpoint from someone else can and cannot make us do.

The threat model is in ``docs/security.md``. These tests pin its guarantees:

* experiment ids never produce a path outside the output directory (ids with ``../``, absolute paths or
  separators are refused by the plan reader and by the runner, and every id either is refused or stays
  inside ``checkpoints/``);
* checkpoints load with ``weights_only=True``: a pickle payload that would run code is refused, and no
  ``torch.load`` in the package omits it;
* plans and results are JSON (no pickle anywhere in what we write or read back);
* a model class named in a plan is imported only by :meth:`ModelSpec.resolve`, never by loading a plan
  or a saved result, nor by a mock sweep.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flops_fit
from flops_fit.core.experiment import SAFE_EXPERIMENT_ID, Experiment
from flops_fit.core.runs import runs_from_arrays
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.result import Result
from flops_fit.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from flops_fit.training.runner import TrainingRunner
from synth import isoflop_sweep

PACKAGE = Path(flops_fit.__file__).resolve().parent
#: Ids an attacker would try: parent directories, absolute paths, both separators, hidden files, a drive.
HOSTILE_IDS = [
    "../escape",
    "../../../../tmp/escape",
    "..",
    ".",
    "",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "..\\..\\escape",
    "C:escape",
    ".hidden",
    "run\x00.pt",
    "x" * 129,
    "café/../x",
]


def plan_with_ids(*ids: str, model: ModelSpec | None = None) -> SweepPlan:
    """A small parameter-space plan whose experiments carry ``ids`` (built in memory, not from a file)."""
    base = SweepPlanner(1e15, 1e16, 2, 3, batch_size=1).plan()
    experiments = tuple(
        Experiment(**{**e.to_dict(), "experiment_id": eid}) for e, eid in zip(base, ids, strict=False)
    )
    return SweepPlan(experiments=experiments, flops="6nd", param_count="non_embedding", model=model)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --------------------------------------------------------------------------------------------------
# experiment ids and output paths


@pytest.mark.parametrize("eid", HOSTILE_IDS)
def test_plan_files_with_hostile_ids_are_refused(tmp_path, eid):
    plan = SweepPlanner(1e15, 1e16, 2, 3, batch_size=1).plan().to_dict()
    plan["experiments"][0]["experiment_id"] = eid
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="experiment_id"):
        SweepPlan.load(path)


@pytest.mark.parametrize("eid", HOSTILE_IDS)
def test_the_runner_refuses_hostile_ids_and_writes_nothing_outside(tmp_path, eid):
    out = tmp_path / "sandbox" / "out"
    with pytest.raises(ValueError, match="experiment id"):
        TrainingRunner("mock", plan=plan_with_ids(eid), output_dir=out, progress=False)
    assert all(out in p.parents or p == out for p in files_under(tmp_path / "sandbox"))
    assert not (tmp_path / "escape").exists()


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(eid=st.text(min_size=0, max_size=40) | st.sampled_from(HOSTILE_IDS))
def test_every_id_is_refused_or_stays_inside_the_checkpoint_folder(tmp_path_factory, eid):
    """Property: the plan reader and the runner agree, and an id they accept names a file in checkpoints/."""
    out = tmp_path_factory.mktemp("ids") / "out"
    plan = plan_with_ids(eid)
    try:
        TrainingRunner("mock", plan=plan, output_dir=out, progress=False)
    except ValueError:
        runner_ok = False
    else:
        runner_ok = True
    try:
        SweepPlan.from_dict(plan.to_dict())
    except ValueError:
        reader_ok = False
    else:
        reader_ok = True
    assert runner_ok == reader_ok == bool(SAFE_EXPERIMENT_ID.fullmatch(eid))
    if runner_ok:  # the runner's checkpoint of this experiment is checkpoints/<id>.pt
        checkpoints = (out / "checkpoints").resolve()
        assert (checkpoints / f"{eid}.pt").resolve().parent == checkpoints


def test_planned_ids_are_12_hex_digits():
    plan = SweepPlanner(1e15, 1e17, 3, 5, batch_size=1, data_id="../../etc", seed=3).plan()
    assert all(len(e.experiment_id) == 12 and int(e.experiment_id, 16) >= 0 for e in plan)


def test_a_mock_sweep_writes_only_inside_its_output_dir(tmp_path):
    out = tmp_path / "sandbox" / "out"
    plan = SweepPlanner(1e15, 1e17, 3, 4, batch_size=1).plan()
    TrainingRunner("mock", plan=plan, output_dir=out, progress=False).run_sweep()
    written = files_under(tmp_path / "sandbox")
    assert (out / "results.jsonl") in written
    assert all(out in p.parents or p == out for p in written)


# --------------------------------------------------------------------------------------------------
# checkpoints: weights_only


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint with every expected key, one of which hides the payload."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": {},
            "step": 1,
            "model": {"w": torch.zeros(2)},
            "optimizer": {"hook": Payload(marker)},
            "rng": [],
            "loop": {},
        },
        path,
    )


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, caplog):
    path, marker = tmp_path / "exp.pt", tmp_path / "pwned"
    hostile_checkpoint(path, marker)
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path) is None
    assert not marker.exists(), "loading the checkpoint ran the payload"
    assert not path.exists(), "the refused checkpoint should be discarded"
    assert "discarding corrupt checkpoint" in caplog.text


def test_the_payload_is_live(tmp_path):
    """Control: without weights_only the same file does run code, so the test above proves something."""
    path, marker = tmp_path / "exp.pt", tmp_path / "pwned"
    hostile_checkpoint(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_an_honest_checkpoint_still_loads(tmp_path):
    path = tmp_path / "exp.pt"
    state = {"format": CHECKPOINT_FORMAT, "fingerprint": {"a": 1}, "step": 2, "model": {"w": torch.ones(2)}}
    save_checkpoint(path, {**state, "optimizer": {}, "rng": [], "loop": {"curve": [[1, 2.0]]}})
    loaded = load_checkpoint(path)
    assert loaded is not None and loaded["step"] == 2


def calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    """Calls of ``a.b(...)`` (by attribute name and receiver name) in ``tree``."""
    owner, name = dotted.rsplit(".", 1)
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == owner
    ]


def test_every_torch_load_in_the_package_is_weights_only():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in calls(tree, "torch.load"):
            kw = {k.arg: k.value for k in call.keywords}
            value = kw.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                offenders.append(f"{path.relative_to(PACKAGE)}:{call.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_pickle_is_only_used_by_the_restricted_cifar_reader():
    """Results, plans, fits and configs never go through pickle; the one reader of pickled files (the CIFAR-10
    batches of the image example) uses an unpickler that refuses everything but arrays and builtins, and the
    local worker pool pickles only between the runner and the processes it spawned (pipes, no files)."""
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = any(
            (isinstance(n, ast.Import) and any(a.name in ("pickle", "dill", "cloudpickle") for a in n.names))
            or (isinstance(n, ast.ImportFrom) and n.module in ("pickle", "dill", "cloudpickle"))
            for n in ast.walk(tree)
        )
        if imported:
            users.append(str(path.relative_to(PACKAGE)))
    assert set(users) <= {"examples/images.py", "training/worker_pool.py"}, users
    source = (PACKAGE / "examples/images.py").read_text(encoding="utf-8")
    assert "class _NumpyOnlyUnpickler(pickle.Unpickler)" in source and "def find_class" in source
    assert "pickle.load(" not in source and "pickle.loads(" not in source
    # workers=k: the job goes to the runner's own spawned children over anonymous pipes, never from a file
    source = (PACKAGE / "training/worker_pool.py").read_text(encoding="utf-8")
    assert "pickle.load(" not in source and "open(" not in source


# --------------------------------------------------------------------------------------------------
# plans and results are JSON


def strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_plans_are_strict_json(tmp_path):
    plan = SweepPlanner(1e15, 1e17, 3, 4, batch_size=2, lr_rule={"base_lr": 1e-3, "exponent": 0.2}).plan()
    data = strict_json(plan.save(tmp_path / "plan.json").read_text(encoding="utf-8"))
    assert data["version"] == plan.version and len(data["experiments"]) == len(plan)


def test_a_saved_result_is_json_csv_and_markdown_only(tmp_path):
    n, d, l, c = isoflop_sweep(budgets=(1e17, 1e18, 1e19), sizes=7)
    runs = runs_from_arrays(n, d, l, c)
    runs.loc[0, "final_loss"] = np.nan  # a non-finite value must not turn into a non-standard NaN token
    runs.loc[0, "status"] = "failed"
    plan = SweepPlanner(1e17, 1e19, 3, 7, batch_size=1).plan()
    out = Result.from_runs(runs, approach="isoflop", plan=plan).save(tmp_path / "result", plots=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files
    for path in files:
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path.name} looks like a pickle or a torch.save zip"
        assert path.suffix in {".json", ".csv", ".md", ".html", ".png", ".svg", ".pdf"}, path.name
        if path.suffix == ".json" and path.name != "scaling_laws.json":
            strict_json(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))  # fits may hold NaN intervals; still JSON, no code


# --------------------------------------------------------------------------------------------------
# model classes are imported only on request


@pytest.fixture
def booby_trapped_module(tmp_path, monkeypatch):
    """A module that writes a marker file when imported; yields (its import path for a class, the marker)."""
    name = f"flops_fit_trap_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    code = (
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, width=8):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(width, width)\n"
    )
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:Net", marker
    sys.modules.pop(name, None)


def test_loading_a_plan_never_imports_its_model_class(tmp_path, booby_trapped_module):
    path_of_class, marker = booby_trapped_module
    plan = plan_with_ids("a1", "a2", "a3", model=ModelSpec(path_of_class, "width"))
    saved = plan.save(tmp_path / "plan.json")
    loaded = SweepPlan.load(saved)
    loaded.summary()
    loaded.to_frame()
    loaded.estimate_cost()
    assert loaded.model is not None and loaded.model.model_cls == path_of_class
    assert not marker.exists(), "SweepPlan.load imported the model class"
    # a mock sweep never builds a model either
    TrainingRunner("mock", sweep_path=saved, output_dir=tmp_path / "out", progress=False).run_sweep()
    assert not marker.exists(), "a mock sweep imported the model class"
    # resolve() is the one door, and it is open: the marker shows the module really runs code on import
    assert loaded.model.resolve().__name__ == "Net"
    assert marker.exists()


def test_loading_a_saved_result_never_imports_the_model_class(tmp_path, booby_trapped_module):
    path_of_class, marker = booby_trapped_module
    n, d, l, c = isoflop_sweep(budgets=(1e17, 1e18, 1e19), sizes=7)
    plan = plan_with_ids("b1", "b2", "b3", model=ModelSpec(path_of_class, "width"))
    out = Result.from_runs(runs_from_arrays(n, d, l, c), approach="isoflop", plan=plan).save(
        tmp_path / "result", plots=False
    )
    assert not marker.exists()
    loaded = Result.load(out)
    loaded.summary()
    loaded.chinchilla_table()
    assert loaded.plan is not None and loaded.plan.model.model_cls == path_of_class
    assert not marker.exists(), "Result.load / summary / chinchilla_table imported the model class"
