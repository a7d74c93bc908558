"""Every example a newcomer copies works: the example lines of ``flops-fit --help`` and of each subcommand's
``--help``, the README's command table and its shell blocks are extracted from the texts themselves and run
in a temporary folder (mock training), and each sweep they plan is trained (mock) and fitted by every approach,
with no warning that its sizes miss the optimum or collapse."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flops_fit.app.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
#: What a good example never prints: a plan whose sizes miss the optimum or collapse, or an approach left out.
SWEEP_TROUBLE = re.compile(
    r"do not bracket|sizes are distinct|skipping (envelope|isoflop|parametric)|not fitted|left out of the power"
)
#: Examples not run here, and why (the first matching rule wins).
SKIPS: list[tuple[str, str]] = [
    (r"my_pkg|\.\.\.", "placeholder import paths for your own model and data"),
    (r"pip install", "installs the package / runs the whole test suite"),
    (r"^export ", "sets the token of `flops-fit serve`"),
    (r"^flops-fit serve", "serves until interrupted (tests/test_api_mode.py runs the service)"),
    (r"--api-url", "needs a running training service (tests/test_api_mode.py)"),
    (
        r"^flops-fit demo(?!.*--mock)",
        "real training on the CPU, about 12 minutes (tests/test_demo.py covers it)",
    ),
]
#: The order examples run in: planning first, then training, fitting, drawing, reporting.
PHASES = {"plan": 0, "demo": 0, "train": 1, "analyze": 2, "plot": 3, "visualize": 3, "report": 4, "fit": 5}


def _joined(lines: list[str]) -> list[str]:
    """Command lines with their ``\\`` continuations joined."""
    out: list[str] = []
    pending = ""
    for line in lines:
        line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        if pending or line:
            out.append((pending + line).strip())
        pending = ""
    return out


def help_examples() -> list[tuple[str, str]]:
    """(where, command line) of every example in ``flops-fit --help`` and each subcommand's ``--help``."""
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {"flops-fit --help": parser.format_help()}
    texts.update({f"flops-fit {name} --help": p.format_help() for name, p in subs.choices.items()})
    out = []
    for where, text in texts.items():
        _, found, examples = text.partition("\nexamples:\n")
        assert found, f"{where} shows no examples"
        out += [(where, cmd) for cmd in _joined(examples.splitlines())]
    return out


def _synopsis_to_command(span: str) -> str:
    """A README table synopsis as the command it shows at its simplest: optional ``[...]`` parts dropped, the
    first of ``a|b`` alternatives, DIR and FILE as the sweep folder and its results."""
    span = re.sub(r"\s*\[[^\]]*\]", "", span.replace("\\|", "|"))
    words = [w.split("|")[0] for w in span.split()]
    return " ".join({"DIR": "runs/a", "FILE": "results.jsonl"}.get(w, w) for w in words)


def readme_examples() -> list[tuple[str, str]]:
    """(where, command line) of the README's command table and its ``bash`` blocks."""
    text = README.read_text(encoding="utf-8")
    out = []
    table = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for row in table.splitlines():
        for span in re.findall(r"`([^`]+)`", row.replace("\\|", "\x00")):
            span = span.replace("\x00", "\\|")
            if span.startswith(("flops-fit ", "ff-")):
                out.append(("README command table", _synopsis_to_command(span)))
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, flags=re.S):
        out += [("README shell block", cmd) for cmd in _joined(block.splitlines())]
    return out


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPS if re.search(pattern, command)), None)


def _argv(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _phase(argv: list[str]) -> int:
    if "--help" in argv:
        return 0
    name = argv[0].removeprefix("ff-") if argv[0].startswith("ff-") else argv[1]
    return PHASES[name]


def _planned_folder(argv: list[str]) -> str | None:
    """The folder a plan command writes (``--out`` / ``output.dir=``, default ``outputs``)."""
    if argv[0] == "ff-plan":
        return next((a.split("=", 1)[1] for a in argv if a.startswith("output.dir=")), "outputs")
    if argv[:2] == ["flops-fit", "plan"] and "--help" not in argv:
        return argv[argv.index("--out") + 1] if "--out" in argv else "outputs"
    return None


def _run(argv: list[str], cwd: Path, where: str) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "200"}
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{where}: `{shlex.join(argv)}` exited {proc.returncode}:\n{output[-3000:]}"
    trouble = [line for line in output.splitlines() if SWEEP_TROUBLE.search(line)]
    assert not trouble, f"{where}: `{shlex.join(argv)}` warned:\n" + "\n".join(trouble)
    return output


def _fits_every_approach(folder: str, cwd: Path, where: str) -> None:
    """Train the sweep planned in ``folder`` (mock) and fit it: every approach fitted, nothing skipped."""
    _run(["flops-fit", "train", folder, "--mode", "mock", "--no-progress"], cwd, where)
    out = _run(["flops-fit", "analyze", folder], cwd, where)
    for heading in ("Approach 1 (envelope)", "Approach 2 (IsoFLOP)", "Approach 3 (parametric)"):
        assert heading in out, f"{where}: the sweep in {folder} was not fitted by {heading}:\n{out[-2000:]}"


ALL_EXAMPLES = help_examples() + readme_examples()


def test_examples_are_found_and_parse():
    """The extraction finds the examples of every help text and the README, and every flops-fit example
    names only flags that exist."""
    wheres = {where for where, _ in ALL_EXAMPLES}
    assert {
        "flops-fit --help",
        "flops-fit plan --help",
        "README command table",
        "README shell block",
    } <= wheres
    assert any("--model flops_fit.examples.gpt" in cmd for _, cmd in ALL_EXAMPLES)
    parser = build_parser()
    for _, cmd in ALL_EXAMPLES:
        argv = _argv(cmd)
        if argv[0] == "flops-fit" and "--help" not in argv and "serve" not in argv[:2]:
            parser.parse_args(argv[1:])  # exits (status 2) on an unknown flag


def test_skipped_examples_say_why():
    skipped = {cmd: skip_reason(cmd) for _, cmd in ALL_EXAMPLES if skip_reason(cmd)}
    assert any(c.startswith("flops-fit demo") for c in skipped)  # the real demo: minutes of training
    runnable = [cmd for _, cmd in ALL_EXAMPLES if not skip_reason(cmd)]
    assert len(runnable) >= 15


@pytest.mark.parametrize(
    "where,command", [(w, c) for w, c in ALL_EXAMPLES if _planned_folder(_argv(c)) and not skip_reason(c)]
)
def test_plan_examples_bracket_the_optimum(tmp_path, where, command):
    """Planning is cheap: every plan example, alone, plans sizes that are distinct and bracket the optimum."""
    _run(_argv(command), tmp_path, where)


@pytest.mark.slow  # about two minutes: ~30 commands, each its own process
def test_every_example_runs_and_its_sweeps_fit_every_approach(tmp_path):
    runnable = [(w, _argv(c)) for w, c in ALL_EXAMPLES if not skip_reason(c)]
    runnable.sort(key=lambda item: _phase(item[1]))  # stable: the texts' order within a phase
    shutil.copy(REPO / "src" / "flops_fit" / "data" / "chinchilla_epoch.csv", tmp_path / "theirs.csv")
    planned: list[str] = []
    for where, argv in runnable:
        if _phase(argv) == 5 and not (tmp_path / "results.jsonl").exists():
            shutil.copy(tmp_path / planned[0] / "results.jsonl", tmp_path / "results.jsonl")
        _run(argv, tmp_path, where)
        folder = _planned_folder(argv)
        if folder is not None:
            planned.append(folder)
            _fits_every_approach(folder, tmp_path, where)
    assert "runs/a" in planned and "runs/gpt" in planned


def test_typo_in_a_hydra_key_suggests_the_real_key(capsys):
    """``ff-plan compute.min_flop=1e18`` names compute.min_flops, not ``+compute.min_flop`` (which the stage
    then refuses as an unknown key)."""
    from flops_fit.app.stages import check_overrides

    with pytest.raises(SystemExit) as exit_:
        check_overrides("planner", ["compute.min_flop=1e18"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "unknown config key 'compute.min_flop'; did you mean compute.min_flops?" in err
    assert "+compute" not in err
    with pytest.raises(SystemExit):
        check_overrides("planner", ["sweepp.num_model_sizes=3"])
    assert "did you mean sweep.num_model_sizes?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_overrides("planner", ["compute.zzz=1"])
    err = capsys.readouterr().err
    assert "did you mean" not in err and "compute.min_flops" in err  # no close key: the keys there


@pytest.mark.parametrize(
    ("command", "stage", "said"),
    [
        ("analyze", "run_analyze", "fitting approaches (all) to the runs of"),
        ("plot", "run_visualize", "drawing figures"),
    ],
)
def test_analyze_and_plot_say_what_they_are_doing(tmp_path, monkeypatch, caplog, command, stage, said):
    """The seconds of fitting and drawing are announced: a spinner on a terminal, else a log line (``-v``)."""
    from flops_fit.app import cli, stages

    (tmp_path / "scaling_laws.json").write_text("{}")
    ran: list[str] = []
    monkeypatch.setattr(stages, stage, lambda cfg: ran.append(stage))
    caplog.set_level(logging.INFO, logger="flops_fit")
    assert cli.main(["-v", command, str(tmp_path)]) == 0
    assert ran == [stage]
    assert any(said in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
