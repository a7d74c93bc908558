"""The example programs and the demo main job, in mock mode (no training: seconds)."""

import json

import pytest

from flops_fit.app.cli import main


def test_demo_mock_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--mock", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Prediction for C =" in text and "| FLOPs" in text
    for name in (
        "sweep.json",
        "results.jsonl",
        "scaling_laws.json",
        "chinchilla_table.md",
        "isoflop.png",
        "optimal.png",
        "report.html",
    ):
        assert (out / name).is_file(), name
    # mock losses are labelled wherever they are shown (summary, last lines, report, table, result.json)
    assert text.count("MOCK RESULTS: all runs have synthetic losses") == 1
    assert "MOCK (synthetic losses, nothing trained): Prediction for C =" in text
    assert 'class="mock">MOCK RESULTS' in (out / "report.html").read_text()
    assert "MOCK RESULTS" in (out / "chinchilla_table.md").read_text()
    assert "MOCK RESULTS" in json.loads((out / "result.json").read_text())["synthetic"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert main(["demo", "--mock", "--out", str(out)]) == 0  # resumes: nothing new trained
    assert (out / "results.jsonl").read_text().splitlines() == lines


def test_vit_images_mock(tmp_path, capsys):
    from flops_fit.examples.images import load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from flops_fit.examples.vit_images import main as vit_main

    assert vit_main(["--mock", "--out", str(tmp_path / "vit")]) == 0
    assert "images" in capsys.readouterr().out
    assert (tmp_path / "vit" / "report.html").is_file()


def test_cli_plan_train_analyze_plot_report(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e20", "--sizes", "5"]) == 0
    )
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    assert main(["analyze", str(out), "--approach", "isoflop,parametric".split(",")[0]]) == 0
    assert main(["plot", str(out), "--formats", "png"]) == 0
    assert main(["report", str(out)]) == 0
    for name in (
        "sweep.json",
        "results.jsonl",
        "scaling_laws.json",
        "chinchilla_table.md",
        "isoflop.png",
        "report.html",
    ):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("module", ["gpt_text", "vit_images"])
@pytest.mark.parametrize(
    "args, needle",
    [(["--budgets", "abc"], "--budgets must be numbers"), (["--budgets", "-5"], "positive finite")],
)
def test_example_programs_refuse_bad_input_without_a_traceback(module, args, needle, tmp_path, capsys):
    import importlib

    program = importlib.import_module(f"flops_fit.examples.{module}")
    assert program.main(["--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert f"python -m flops_fit.examples.{module}: error: " in err and needle in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_train_passes_learning_rate_and_weight_decay(tmp_path, monkeypatch, capsys):
    """--lr and --weight-decay reach the runner's TrainConfig (the u-muP GPT needs lr ~0.5, no decay)."""
    import flops_fit.app.stages as stages

    seen = {}
    monkeypatch.setattr(stages, "run_train", lambda data: seen.update(data["train"]))
    out = tmp_path / "sweep"
    assert main(["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e20"]) == 0
    assert main(["train", str(out), "--mode", "local", "--lr", "0.5", "--weight-decay", "0"]) == 0
    assert seen["lr"] == 0.5 and seen["weight_decay"] == 0.0 and seen["threads"] is None
    assert main(["train", str(out), "--mode", "local", "--threads", "3"]) == 0
    assert seen["threads"] == 3
    with pytest.raises(SystemExit):
        main(["train", str(out), "--threads", "none"])
    assert "--threads: must be auto or a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_vit_images_prints_warnings_as_clean_lines(tmp_path):
    """As ``flops-fit demo``: a warning is one log line, never the file, line number and source line that
    the ``warnings`` module prints by default."""
    import subprocess
    import sys

    from flops_fit.examples.images import load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    proc = subprocess.run(
        [sys.executable, "-m", "flops_fit.examples.vit_images", "--mock", "--out", str(tmp_path / "vit")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING " in proc.stderr  # its tiny mock budgets do warn ...
    assert "Warning:" not in proc.stderr and ".py:" not in proc.stderr  # ... but as clean lines
