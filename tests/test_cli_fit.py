import json
import subprocess
import sys

import pytest

from flops_fit.app.cli import main
from synth import isoflop_sweep


def test_fit_bundled_chinchilla(capsys):
    assert main(["fit", "chinchilla", "--approach", "parametric", "--budgets", "1e22,1e23"]) == 0
    out = capsys.readouterr().out
    assert "Approach 3" in out and "| FLOPs" in out and "1.00e22" in out


def test_fit_csv_with_column_mapping(tmp_path, capsys):
    import pandas as pd

    n, d, l, c = isoflop_sweep()
    path = tmp_path / "theirs.csv"
    pd.DataFrame({"Model Size": n, "Tokens": d, "Training FLOP": c, "loss": l}).to_csv(path, index=False)
    out_json = tmp_path / "fits.json"
    code = main(
        [
            "fit",
            str(path),
            "--n-col",
            "Model Size",
            "--d-col",
            "Tokens",
            "--c-col",
            "Training FLOP",
            "--loss-col",
            "loss",
            "--approach",
            "isoflop",
            "--bootstrap",
            "20",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    assert "Approach 2" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["isoflop"]["approach"] == "isoflop"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "missing.csv"], "not found"),
        (["fit", "chinchilla", "--approach", "nope"], "unknown approach"),
        (["fit", "chinchilla", "--budgets", "1e21,abc"], "--budgets"),
        (["fit", "chinchilla", "--budgets", "-5"], "--budgets"),
        (["fit", "chinchilla", "--bootstrap", "-1"], "--bootstrap"),
        (["fit", "chinchilla", "--n-col", "nope"], "does not have"),
    ],
)
def test_bad_input_exits_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_fit_prints_the_checks_a_result_makes(tmp_path, capsys):
    """Budgets in GFLOPs instead of FLOPs: Approach 3 reads C on the 6ND scale, and the command says so."""
    import pandas as pd

    n, d, l, c = isoflop_sweep()
    path = tmp_path / "gflops.csv"
    pd.DataFrame({"N": n, "D": d, "C": c / 1e9, "L": l}).to_csv(path, index=False)
    argv = ["fit", str(path), "--n-col", "N", "--d-col", "D", "--c-col", "C", "--loss-col", "L"]
    assert main([*argv, "--approach", "all"]) == 0
    out = capsys.readouterr().out
    assert "Warnings:" in out and "not 6ND FLOPs" in out


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "flops_fit.app.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "examples:" in out and "--approach" in out
