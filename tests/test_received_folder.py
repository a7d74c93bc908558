"""A sweep folder from someone else: its files cannot make flops-fit write, delete or read elsewhere, stop a
reader with a traceback, or drive the terminal (issue 21, part A).

Each test builds a real folder with a quick mock sweep (``flops-fit plan`` + ``flops-fit train --mode
mock``), then plants what a hostile sender could: links out of the folder, devices and FIFOs, crafted JSON,
escape sequences, leftover temporaries.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from flops_fit.app.cli import main
from flops_fit.app.console import PROGRESS_LOGGING, configure_logging, escape_controls, guarded
from flops_fit.core.io import (
    MAX_INT_DIGITS,
    UnsafeFileError,
    atomic_write_text,
    parse_json,
    read_json,
    remove_temporaries,
)
from flops_fit.core.ledger import append_record, exclusive_folder, load_results, read_records
from flops_fit.plan.sweep import SweepPlan
from flops_fit.report.laws import read_laws
from flops_fit.report.result import Result
from flops_fit.training.checkpoint import load_checkpoint

OSC52 = "\x1b]52;c;aGVsbG8=\x07"  # sets the clipboard of many terminals, and prints nothing
PRECIOUS = "the user's own file\n"
DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
HUGE_INT = "1" * 5000  # ValueError in int(): "Exceeds the limit (4300 digits)"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished mock sweep with its laws and notes (plan, ledger, scaling_laws.json, result.json)."""
    out = tmp_path_factory.mktemp("received") / "sweep"
    plan = ["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e20", "--sizes", "5"]
    assert main(plan) == 0
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    assert main(["analyze", str(out), "--approach", "isoflop"]) == 0
    Result.load(out).save(out, plots=False)
    return out


@pytest.fixture
def folder(swept, tmp_path) -> Path:
    """A fresh copy of the finished sweep, as received."""
    return Path(shutil.copytree(swept, tmp_path / "received"))


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's, outside the folder."""
    path = tmp_path / "home" / "notes.txt"
    path.parent.mkdir()
    path.write_text(PRECIOUS)
    return path


def train(folder: Path, *extra: str) -> int:
    return main(["train", str(folder), "--mode", "mock", "--no-progress", *extra])


# ------------------------------------------------------------------------------------------ links out


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_lock_file_linked_elsewhere_is_refused_and_its_target_untouched(folder, victim, capsys, link):
    lock = folder / ".flops_fit.lock"
    lock.unlink(missing_ok=True)
    (os.symlink if link == "symlink" else os.link)(victim, lock)
    assert train(folder) == 2
    err = capsys.readouterr().err
    assert ".flops_fit.lock" in err and "not a regular file of its own" in err and "delete that entry" in err
    assert victim.read_text() == PRECIOUS  # neither truncated nor overwritten with a process id


def test_a_ledger_linked_elsewhere_is_refused_before_anything_runs(folder, victim, capsys):
    ledger = folder / "results.jsonl"
    ledger.unlink()
    ledger.symlink_to(victim)
    assert train(folder) == 2
    err = capsys.readouterr().err
    assert "results.jsonl" in err and "symbolic link" in err
    with pytest.raises(UnsafeFileError, match=r"results.jsonl.*symbolic link"):
        append_record(ledger, {"experiment_id": "x", "status": "completed"})
    assert victim.read_text() == PRECIOUS  # no ledger line appended to it
    assert not list((folder / "checkpoints").iterdir())  # refused before any experiment ran


def test_a_ledger_that_is_a_device_or_a_fifo_is_refused_without_reading_it(folder, capsys):
    ledger = folder / "results.jsonl"
    ledger.unlink()
    ledger.symlink_to("/dev/zero")  # an endless read before
    with pytest.raises(UnsafeFileError, match=r"results.jsonl.*device"):
        load_results(folder)
    assert main(["analyze", str(folder)]) == 2
    assert "results.jsonl" in capsys.readouterr().err
    ledger.unlink()
    os.mkfifo(ledger)  # a read that blocks forever before
    with pytest.raises(UnsafeFileError, match="FIFO"):
        read_records(ledger)
    with pytest.raises(UnsafeFileError, match="FIFO"), exclusive_folder(folder):
        pass


def test_a_checkpoint_folder_linked_elsewhere_is_not_emptied(folder, tmp_path, capsys):
    """Every experiment of the folder is finished, so a runner deletes their "leftover checkpoints": through
    a link, those would be files of another folder that only share the names."""
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    finished = json.loads((folder / "results.jsonl").read_text().splitlines()[0])["experiment_id"]
    kept = elsewhere / f"{finished}.pt"
    kept.write_bytes(b"someone's model")
    shutil.rmtree(folder / "checkpoints")
    (folder / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    assert train(folder) == 2
    err = capsys.readouterr().err
    assert "checkpoints" in err and "--checkpoint-dir" in err
    assert kept.read_bytes() == b"someone's model"
    # A folder the user names is theirs: the leftover of a finished run is removed there, as ever.
    assert train(folder, "--checkpoint-dir", str(elsewhere)) == 0
    assert not kept.exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_checkpoint_that_is_no_regular_file_is_neither_read_nor_followed(tmp_path, victim, kind):
    """A FIFO blocked the checkpoint's read forever; a link was read (and found corrupt)."""
    path = tmp_path / "checkpoints" / "abc.pt"
    path.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(victim)
    assert load_checkpoint(path) is None
    assert not os.path.lexists(path) and victim.read_text() == PRECIOUS  # the entry went, not a target


# ------------------------------------------------------------------------------------------ crafted JSON


def test_crafted_ledger_lines_are_skipped_with_a_warning_naming_file_and_line(folder, caplog):
    ledger = folder / "results.jsonl"
    good = len(ledger.read_text().splitlines())
    with open(ledger, "a") as fh:
        fh.write(DEEP + "\n")
        fh.write('{"experiment_id": "big", "num_tokens": ' + HUGE_INT + "}\n")
        fh.write("[" * 70 + "]" * 70 + "\n")  # parses, but deeper than any record
    with caplog.at_level(logging.WARNING, logger="flops_fit.core.ledger"):
        records = read_records(ledger)
    assert len(records) == good
    messages = [r.getMessage() for r in caplog.records]
    for lineno in (good + 1, good + 2, good + 3):
        assert any(f"results.jsonl:{lineno}: skipping a line" in m for m in messages), messages
    assert any(f"integer of 5000 digits (at most {MAX_INT_DIGITS})" in m for m in messages)
    assert main(["analyze", str(folder), "--approach", "isoflop"]) == 0  # the analysis goes on


@pytest.mark.parametrize(
    "content", [DEEP, HUGE_INT, '{"a": ' + HUGE_INT + "}"], ids=["deep", "int", "nested-int"]
)
@pytest.mark.parametrize("name", ["scaling_laws.json", "result.json", "runs.json", "sweep.json"])
def test_json_files_too_deep_or_with_huge_integers_give_an_error_naming_the_file(
    folder, capsys, name, content
):
    (folder / name).write_text(content)
    with pytest.raises(ValueError, match=name):
        if name == "scaling_laws.json":
            read_laws(folder / name)
        elif name == "result.json":
            Result.load(folder)
        elif name == "sweep.json":
            SweepPlan.load(folder / name)
        else:
            load_results(folder / name)
    if name == "sweep.json":  # training reads the plan first: a clean error, no RecursionError traceback
        assert main(["train", str(folder), "--mode", "mock", "--no-progress"]) == 2
        assert name in capsys.readouterr().err
    elif name != "runs.json":  # the report reads the ledger, not the export
        assert main(["report", str(folder), "--no-backtest"]) == 2
        assert name in capsys.readouterr().err


def test_parse_json_limits():
    assert parse_json("[" * 64 + "]" * 64, "f") is not None  # as deep as allowed
    assert parse_json("1" * MAX_INT_DIGITS, "f") == int("1" * MAX_INT_DIGITS)
    with pytest.raises(ValueError, match=r"f nests lists or objects deeper than 64"):
        parse_json("[" * 65 + "]" * 65, "f")
    with pytest.raises(ValueError, match=r"f:3 is not valid JSON"):
        parse_json("{", "f:3")


def test_read_json_reads_regular_files_only(tmp_path):
    with pytest.raises(UnsafeFileError, match="device"):
        read_json("/dev/zero")
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 100 + "0]")
    with pytest.raises(ValueError, match="larger than 64 bytes"):
        read_json(big, limit=64)


# ------------------------------------------------------------------------------------------ terminal


@pytest.fixture
def own_console_logging():
    """Call to give the command its own log handler on stderr, as outside pytest (a command keeps handlers
    the root logger has, and pytest adds its own as each test starts); the old ones are back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root.handlers.clear
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.handlers.extend(handlers)
    root.setLevel(level)
    for name in ("flops_fit", *PROGRESS_LOGGING["quiet_loggers"]):  # the levels a command sets
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_control_characters_from_a_training_error_never_reach_the_terminal(
    folder, tmp_path, monkeypatch, capsys, own_console_logging
):
    """A run's error text (here from a train function; in api mode a service sends it) is logged when the
    run ends: its escape sequences arrive as visible ``\\x1b`` text, not as bytes a terminal acts on."""
    module = tmp_path / "hostile_fn.py"
    module.write_text(f"def train(e):\n    raise RuntimeError({('lost ' + OSC52 + ' job').__repr__()})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (folder / "results.jsonl").unlink()
    own_console_logging()
    status = main(
        ["train", str(folder), "--mode", "function", "--train-fn", "hostile_fn.train", "--no-progress"]
    )
    assert status == 0
    err = capsys.readouterr().err
    assert "lost \\x1b]52;c;aGVsbG8=\\x07 job" in err
    assert "\x1b" not in err and "\x07" not in err
    assert OSC52 in read_records(folder / "results.jsonl")[0]["error"]  # the ledger keeps the text as it was


def test_error_lines_and_log_lines_escape_control_characters(capsys, own_console_logging):
    own_console_logging()
    configure_logging(logging.WARNING)
    logging.getLogger("flops_fit.test").warning("id %s\r\x9b2K done", OSC52)

    def fail() -> int:
        raise ValueError(f"bad id {OSC52}")

    assert guarded("flops-fit x", fail) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "\x9b" not in err and "\x07" not in err
    assert "id \\x1b]52;c;aGVsbG8=\\x07\\x0d\\x9b2K done" in err and "bad id \\x1b]52" in err
    assert escape_controls("tab\tand\nnewline stay") == "tab\tand\nnewline stay"


# ------------------------------------------------------------------------------------------ temporaries


def test_leftover_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    """A writer killed mid-write leaves ``.<name>.<pid>-<hex>.tmp``: the next write of that file removes it
    when its writer is gone (or it is a day old), and leaves alone what is not a leftover of its own."""
    target = tmp_path / "report.html"
    dead = _dead_pid()
    leftover = tmp_path / f".report.html.{dead}-0badcafe.tmp"
    live = tmp_path / f".report.html.{os.getppid()}-12345678.tmp"  # a writer still at work
    old_live = tmp_path / f".report.html.{os.getppid()}-87654321.tmp"
    users = [tmp_path / ".report.html.backup.tmp", tmp_path / f".report.html.{dead}-0badcafe.tmp.keep"]
    for path in (leftover, live, old_live, *users):
        path.write_text("x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_live, (day_ago, day_ago))
    linked = tmp_path / f".report.html.{dead}-deadbeef.tmp"
    linked.symlink_to(tmp_path / "elsewhere")
    atomic_write_text(target, "<html></html>")
    assert target.read_text() == "<html></html>"
    assert not leftover.exists() and not old_live.exists()
    assert live.exists() and all(p.exists() for p in users) and linked.is_symlink()
    remove_temporaries(target)  # a file with one writer, none at work: every leftover of its own goes
    assert not live.exists() and all(p.exists() for p in users) and linked.is_symlink()


def test_fit_json_output_is_written_atomically_and_cleans_up(tmp_path, capsys):
    out = tmp_path / "fits.json"
    leftover = tmp_path / f".fits.json.{_dead_pid()}-0badcafe.tmp"
    leftover.write_text('{"isoflop": ')
    assert main(["fit", "chinchilla", "--approach", "isoflop", "--json", str(out)]) == 0
    assert "isoflop" in json.loads(out.read_text())
    assert not leftover.exists()


def _dead_pid() -> int:
    """A process id no process has now."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_stage_commands_escape_control_characters_in_error_lines(capsys):
    """ff-* stages print a failing stage's error as one line: text from a file cannot carry an escape."""
    from omegaconf import OmegaConf

    from flops_fit.app.stages import _run

    def stage(_data):
        raise ValueError("bad id run\x1b]52;c;aGk=\x07")

    with pytest.raises(SystemExit):
        _run(stage, OmegaConf.create({}))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]52" in err
