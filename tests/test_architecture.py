"""The package's layering and size rules (docs/architecture.md), checked on every CI run.

The import contracts live in pyproject.toml ([tool.importlinter]): layers that import only downward, no
import circles, no torch or matplotlib in the shared contract and the fits. A change that breaks them fails
here with import-linter's own report of the offending import chain.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flops_fit"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
#: A function may be longer only when a comment in it starting with this says why it cannot be split.
LONG_FUNCTION_MARK = "# long:"


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter")
    # In a child process: import-linter reconfigures logging, which would silence flops_fit's loggers here.
    code = "import sys; from importlinter import cli; sys.exit(cli.lint_imports(config_filename=sys.argv[1], no_cache=True))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"an import contract of pyproject.toml is broken:\n{done.stdout}{done.stderr}"
    )


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_over_800_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}; split them by job"


def _long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - first + 1
            body = lines[first - 1 : node.end_lineno]
            if length > MAX_FUNCTION_LINES and not any(LONG_FUNCTION_MARK in line for line in body):
                out.append(f"{path.relative_to(PACKAGE)}:{node.name} ({length} lines)")
    return out


def test_no_function_is_over_80_lines_without_a_reason():
    long = [f for p in _modules() for f in _long_functions(p)]
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines: {long}; split them into short helpers, or say why one "
        f"cannot be split in a comment starting with {LONG_FUNCTION_MARK!r}"
    )


def test_the_layers_are_folders():
    """The layout shows the layers: one folder each, and no loose module beside them but the package's own."""
    layers = {"core", "plan", "training", "analysis", "report", "app", "examples"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert layers <= folders
    loose = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert not loose, f"modules outside the layer folders: {sorted(loose)}"
