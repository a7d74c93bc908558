"""A plan read from a file is data: training imports and calls its model entry only when trusted.

``flops-fit train --trust-plan`` / ``ff-train trust_plan=true`` / ``TrainingRunner(trust_plan=True)`` let
it; naming the model yourself (``--model``, ``model=``) never imports the plan's entry; a plan made in this
process needs no flag; mock mode imports nothing. What a plan's ``train_config`` asks of the machine is
bounded.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from flops_fit.app.cli import main
from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.plan.spec import ModelSpec, UntrustedPlanError, check_model_target
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training import TrainConfig, TrainingRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, SEQ, BATCH, STEPS = 7, 8, 4, 2
QUICK = TrainConfig(lr=1e-2, eval_batches=1, log_every=1, checkpoint_every_s=None)

#: A module of "the user's own code": a tiny model, its data and loss.
USER_MODULE = f"""
import torch
import torch.nn.functional as F
from torch import nn

class Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.emb = nn.Embedding({VOCAB}, width)
        self.out = nn.Linear(width, {VOCAB})

    def forward(self, x):
        return self.out(self.emb(x))

def train_set():
    x = torch.arange(256 * {SEQ}).reshape(256, {SEQ}) % {VOCAB}
    return [(row, (row + 1) % {VOCAB}) for row in x]

def lm_loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``trustmod_user`` (the user's model, data, loss) and ``trustmod_evil`` (writes a marker when
    imported) importable from a temporary folder; the marker path."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "trustmod_user.py").write_text(USER_MODULE)
    marker = tmp_path / "imported.txt"
    evil = f"open({str(marker)!r}, 'w').write('ran')\nclass Model:\n    def __init__(self, width=1): pass\n"
    (code / "trustmod_evil.py").write_text(evil)
    monkeypatch.syspath_prepend(str(code))
    yield marker
    for name in ("trustmod_user", "trustmod_evil"):
        sys.modules.pop(name, None)


def plan_dict(model: dict) -> dict:
    """A one-experiment plan (width 4) with ``model`` as its model entry, as JSON."""
    n = 4 * VOCAB + VOCAB
    tokens = STEPS * BATCH * SEQ
    e = Experiment(
        experiment_id=experiment_id({"w": 4}),
        compute_budget=6.0 * n * tokens,
        size_value=4,
        num_params=n,
        num_tokens=tokens,
        flops_per_token=6.0 * n,
        epochs=None,
        learning_rate=None,
        batch_size=BATCH,
        tokens_per_sample=SEQ,
        num_steps=STEPS,
        flops="6nd",
        seed=0,
    )
    plan = SweepPlan(
        experiments=(e,), flops="6nd", param_count="non_embedding", model=ModelSpec("x:Y", "width")
    )
    d = json.loads(json.dumps(plan.to_dict()))
    d["model"] = {**d["model"], **model}
    return d


def write_plan(folder, model: dict, train_config: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    d = plan_dict(model)
    if train_config is not None:
        d["config"] = {**(d.get("config") or {}), "train_config": train_config}
    (folder / "sweep.json").write_text(json.dumps(d))
    return folder


#: The filer's reproduction: the plan's "model class" is subprocess.run with shell=True.
SHELL = {"model_cls": "subprocess:run", "size_param": "bufsize", "model_kwargs": {"shell": True}}


def shell_plan(folder, marker):
    model = {**SHELL, "model_kwargs": {"shell": True, "args": f"touch {marker}"}}
    return write_plan(folder, model)


def cli_train(out, *flags):
    return main(
        ["train", str(out), "--mode", "local", "--device", "cpu", "--no-progress",
         "--dataset", "trustmod_user.train_set", "--loss-fn", "trustmod_user.lm_loss", *flags]
    )  # fmt: skip


# --------------------------------------------------------------------------------------- the command line


def test_cli_refuses_a_plans_model_without_trust_plan_before_importing_it(tmp_path, user_code, capsys):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_evil:Model"})
    assert cli_train(out) == 2
    err = capsys.readouterr().err
    assert "trustmod_evil:Model" in err and "--trust-plan" in err and "Traceback" not in err
    assert not user_code.exists() and "trustmod_evil" not in sys.modules
    assert not (out / "results.jsonl").exists()


def test_cli_shell_command_in_a_plan_never_runs(tmp_path, user_code, capsys):
    out = shell_plan(tmp_path / "sweep", user_code)
    assert cli_train(out) == 2
    assert "subprocess:run" in capsys.readouterr().err
    assert cli_train(out, "--trust-plan") == 2  # trusted or not: a stdlib function is no model
    err = capsys.readouterr().err
    assert "standard library" in err and "subprocess:run" in err
    assert not user_code.exists()


def test_cli_trains_a_trusted_plan_and_logs_the_import_first(tmp_path, user_code, caplog):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_user:Tiny"})
    with caplog.at_level(logging.INFO, logger="flops_fit"):
        assert cli_train(out, "--trust-plan", "--lr", "0.01") == 0
    assert "importing model class trustmod_user:Tiny named by the plan" in caplog.text
    [record] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "completed"


def test_cli_model_named_by_the_user_replaces_the_plans_entry_without_trust(tmp_path, user_code, caplog):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_evil:Model"})
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        assert cli_train(out, "--model", "trustmod_user.Tiny") == 0
    assert not user_code.exists() and "trustmod_evil" not in sys.modules
    assert "instead of the plan's trustmod_evil:Model" in caplog.text
    assert json.loads((out / "results.jsonl").read_text())["status"] == "completed"


def test_mock_mode_needs_no_trust(tmp_path, user_code):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_evil:Model"})
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    assert not user_code.exists() and "trustmod_evil" not in sys.modules


# --------------------------------------------------------------------------------------- ff-train


def test_ff_train_needs_trust_plan_true(tmp_path, user_code):
    from flops_fit.app.stages import default_config, run_train

    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_user:Tiny"})
    overrides = {
        "output.dir": str(out),
        "mode": "local",
        "device": "cpu",
        "progress": False,
        "dataset": {"_target_": "trustmod_user.train_set"},
        "loss_fn": {"_target_": "trustmod_user.lm_loss", "_partial_": True},
    }
    with pytest.raises(UntrustedPlanError, match="trust_plan=true"):
        run_train(default_config("trainer", overrides))
    runs = run_train(default_config("trainer", {**overrides, "trust_plan": True}))
    assert list(runs["status"]) == ["completed"]


def test_ff_train_bounds_the_plans_num_workers(tmp_path, user_code):
    from flops_fit.app.stages import default_config, run_train

    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_user:Tiny"}, {"num_workers": 10**6})
    with pytest.raises(ValueError, match=r"num_workers=1000000.*\+train\.num_workers"):
        run_train(default_config("trainer", {"output.dir": str(out), "mode": "mock", "progress": False}))


# --------------------------------------------------------------------------------------- the Python API


def local(out, **kw):
    sys.modules.pop("trustmod_user", None)
    import trustmod_user

    kw.setdefault("output_dir", out)
    kw.setdefault("train_config", QUICK)
    return TrainingRunner(
        "local", dataset=trustmod_user.train_set(), loss_fn=trustmod_user.lm_loss, device="cpu",
        progress=False, **kw,
    )  # fmt: skip


def test_runner_refuses_a_plan_file_or_a_loaded_plan_until_trusted(tmp_path, user_code):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_evil:Model"})
    with pytest.raises(UntrustedPlanError, match=r"'trustmod_evil:Model'.*trust_plan=True"):
        local(out)  # output_dir/sweep.json
    with pytest.raises(UntrustedPlanError):
        local(tmp_path / "o2", sweep_path=out / "sweep.json")
    with pytest.raises(UntrustedPlanError):
        local(tmp_path / "o3", plan=SweepPlan.load(out / "sweep.json"))
    assert not user_code.exists() and "trustmod_evil" not in sys.modules


def test_runner_trains_a_trusted_plan_file(tmp_path, user_code):
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_user:Tiny"})
    runs = local(out, trust_plan=True).run_sweep()
    assert list(runs["status"]) == ["completed"]


def test_runner_with_the_users_model_never_imports_the_plans(tmp_path, user_code):
    import trustmod_user

    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_evil:Model"})
    runs = local(out, model=ModelSpec(trustmod_user.Tiny, "width")).run_sweep()
    assert list(runs["status"]) == ["completed"] and not user_code.exists()


def test_a_plan_made_in_this_process_needs_no_trust(tmp_path, user_code):
    """A ModelSpec written in code, even by import path, is the user's own: no flag."""
    d = plan_dict({"model_cls": "trustmod_user:Tiny"})
    plan = SweepPlan.from_dict(d)
    own = SweepPlan(
        experiments=plan.experiments, flops=plan.flops, param_count=plan.param_count,
        model=ModelSpec("trustmod_user:Tiny", "width"),
    )  # fmt: skip
    assert list(local(tmp_path / "a", plan=own).run_sweep()["status"]) == ["completed"]


def test_runner_bounds_the_plans_num_workers(tmp_path, user_code):
    cpus = os.cpu_count() or 1
    out = write_plan(tmp_path / "sweep", {"model_cls": "trustmod_user:Tiny"}, {"num_workers": cpus + 1})
    with pytest.raises(ValueError, match=rf"num_workers={cpus + 1}, more than this machine's {cpus} CPUs"):
        local(out, trust_plan=True, train_config=None)


# --------------------------------------------------------------------------------------- what can be a model


@pytest.mark.parametrize(
    "path, obj",
    [
        ("subprocess:run", subprocess.run),
        ("subprocess:Popen", subprocess.Popen),
        ("os:system", os.system),
        ("builtins:eval", eval),
        ("functools:partial", __import__("functools").partial(print)),
    ],
)
def test_stdlib_callables_and_other_non_models_are_refused(path, obj):
    with pytest.raises(TypeError, match="not a model class or factory"):
        check_model_target(path, obj)


def test_classes_factories_and_classmethods_are_models():
    from flops_fit.examples.gpt import GPT

    for path, obj in [("torch.nn:Linear", nn.Linear), ("g:GPT", GPT), ("g:GPT.from_config", GPT.from_config)]:
        check_model_target(path, obj)
    with pytest.raises(TypeError, match="standard library"):
        ModelSpec("subprocess:run", "bufsize").resolve()
    assert isinstance(
        ModelSpec("torch.nn:Linear", "in_features", {"out_features": 2}).build(3), torch.nn.Linear
    )


def test_readme_and_docs_pass_trust_plan_where_a_plan_file_is_trained():
    """Every documented `flops-fit train ... --mode local` over a planned folder names its model's trust."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/training.md"):
        text = textwrap.dedent((root / doc).read_text())
        for line in text.splitlines():
            if "flops-fit train" in line and "--mode local" in line and "--model " not in line:
                assert "--trust-plan" in line, f"{doc}: {line}"
