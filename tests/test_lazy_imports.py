"""The command line starts fast: building its parser and printing help import none of the heavy modules, and
``import flops_fit`` loads them only when a name that needs them is used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "matplotlib", "pandas", "scipy", "ray", "httpx", "fastapi")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _help(argv: list[str]) -> str:
    return (
        "import contextlib, io\nimport flops_fit.app.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    cli.main({argv!r})"
    )


def test_building_the_parser_imports_no_heavy_module():
    assert _loaded_after("import flops_fit.app.cli as cli\ncli.build_parser()") == []


def test_help_imports_no_heavy_module():
    assert _loaded_after(_help(["--help"])) == []
    assert _loaded_after(_help(["plan", "--help"])) == []
    assert _loaded_after(_help(["train", "--help"])) == []


def test_report_help_still_shows_the_report_options():
    code = _help(["report", "--help"]).replace("io.StringIO()", "buf := io.StringIO()")
    proc = subprocess.run([sys.executable, "-c", code + "\nprint(buf.getvalue())"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert "--no-backtest" in proc.stdout and "usage: flops-fit report" in proc.stdout


def test_import_flops_fit_is_light_and_its_names_still_work():
    assert _loaded_after("import flops_fit") == []
    code = (
        "import flops_fit\nfrom flops_fit import find_optimal, Result, TrainConfig, SweepPlanner\n"
        "assert callable(find_optimal) and Result.__name__ == 'Result'\n"
        "assert set(flops_fit.__all__) <= set(dir(flops_fit))\n"
        "assert all(getattr(flops_fit, n) is not None for n in flops_fit.__all__)"
    )
    assert "torch" in _loaded_after(code)


def test_an_unknown_name_is_an_attribute_error():
    code = (
        "import flops_fit\ntry:\n    flops_fit.no_such_name\nexcept AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\nelse:\n    raise SystemExit(1)"
    )
    assert _loaded_after(code) == []
