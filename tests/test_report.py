"""The self-contained HTML report: content, no external resources, the CLI, and rendering in Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from flops_fit.analysis.approaches import label
from flops_fit.app.cli import main
from flops_fit.report.html import add_report_parser, render_report, write_report
from flops_fit.report.result import Result
from test_result import make_runs

CHROMIUM = Path("/usr/bin/chromium")


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def result() -> Result:
    runs = make_runs()
    runs.loc[3, "experiment_id"] = "<script>alert(1)</script>"
    runs["size_value"] = [64 * (1 + i % 7) for i in range(len(runs))]
    extra = pd.DataFrame(
        [{"experiment_id": "oom", "compute_budget": 1e19, "num_params": 2e8, "num_tokens": 8e9,
          "final_loss": float("nan"), "status": "failed", "error": "CUDA out of memory"}]
    )  # fmt: skip
    return Result.from_runs(pd.concat([runs, extra], ignore_index=True), bootstrap=10, seed=0).with_backtest()


@pytest.fixture(scope="module")
def report(tmp_path_factory, result) -> Path:
    return write_report(result, tmp_path_factory.mktemp("report") / "report.html")


def test_report_is_one_self_contained_file(report):
    html = report.read_text(encoding="utf-8")
    doc = parse(html)
    tags = {t for t, _ in doc.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    for tag, attrs in doc.tags:  # every reference stays inside the file
        for key in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:image/png;base64,", "#")), (tag, key, value)
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"(https?:|ftp:)?//[a-z0-9]", without_images, re.I)
    assert "url(" not in html and "@import" not in html
    imgs = [a for t, a in doc.tags if t == "img"]
    assert len(imgs) == 6  # isoflop, optimal, parametric, residuals, envelope, backtest
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("data:image/png;base64,")
        image = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # a real picture
        assert attrs["alt"]


def test_report_holds_laws_table_backtest_warnings_and_runs(report, result):
    html = report.read_text(encoding="utf-8")
    text = " ".join(parse(html).text)
    for section in (
        "warnings",
        "laws",
        "comparison",
        "table",
        "backtest",
        "figures",
        "minima",
        "excluded",
        "runs",
    ):
        assert f'id="{section}"' in html, section
    for needle in (
        "Approach 1 (envelope)",
        f"{label(result.primary)} (primary)",
        f"Primary: {label(result.primary)}",
        "chosen by back-test",
        "Design: an IsoFLOP sweep",
        "Approach 3 (parametric)",
        "N_opt = ",
        "a = 0.45",
        "1.00e21",
        "Tokens/param",
        "Rolling origin",
        "1 run(s) did not complete (1 failed)",
        "CUDA out of memory",
        "10 bootstrap resamples",
    ):
        assert needle in text, needle  # fmt: skip
    # Laws with intervals, and the table rows of the primary approach.
    assert re.search(r"a = 0\.4\d+ \[0\.4\d+, 0\.4\d+\]", text)
    assert all(f"1.00e{k}" in text for k in range(17, 23))  # the table's budgets, 1e17 to 1e22
    # The run list names every run; user text is escaped, never markup.
    for eid in result.runs["experiment_id"]:
        assert eid in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "<th>Size</th>" in html and "<td>448</td>" in html  # the size parameter of each run
    assert result.last_backtest is not None


def test_write_report_from_a_saved_directory_and_the_cli(tmp_path, result, capsys):
    Result(result.runs, {"isoflop": result.fits["isoflop"]}).save(tmp_path, plots=False)
    path = write_report(tmp_path, backtest=False)
    assert path == tmp_path / "report.html"
    html = path.read_text(encoding="utf-8")
    assert "Not run (call result.backtest()" in html and 'id="fig-isoflop"' in html
    assert (
        main(
            ["report", str(tmp_path), "-o", str(tmp_path / "r.html"), "--no-backtest", "--title", "My sweep"]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert "<title>My sweep</title>" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_the_report_command_registers_on_a_cli(tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="flops-fit")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(tmp_path), "--no-backtest"])
    assert args.dir == str(tmp_path) and args.no_backtest and callable(args.func)


def test_backtest_section_explains_why_it_did_not_run():
    two = Result.from_runs(make_runs(budgets=(1e18, 1e19), curves=False), approach="isoflop")
    html = render_report(two)
    assert "Not run: backtest needs usable runs at 4 or more compute budgets" in html


def test_the_report_runs_a_backtest_without_changing_the_result():
    res = Result.from_runs(make_runs(curves=False), approach="isoflop")
    html = render_report(res, figures={})
    assert "Rolling origin" in html and res.last_backtest is None


def test_write_report_errors(result):
    with pytest.raises(ValueError, match="needs path="):
        write_report(Result(result.runs, result.fits))
    with pytest.raises(TypeError, match="Result or a directory"):
        write_report(42)
    with pytest.raises(TypeError, match="Result"):
        render_report("dir")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium) for a headless check"
)
def test_figures_render_in_headless_chromium(tmp_path, report):
    """Open the report in headless Chromium (network closed) and check that every figure decodes."""
    probe = (
        "<script>window.addEventListener('load', function () {"
        " var imgs = Array.prototype.slice.call(document.images);"
        " var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
        " document.body.setAttribute('data-images', imgs.length + ':' + ok); });</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(
        report.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8"
    )
    profile = tmp_path / "profile"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    # Its own session, so a hung browser is ended with all its helper processes.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("headless chromium did not finish within 120 s")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, err[-2000:]
    found = re.search(r'data-images="(\d+):(\d+)"', out)
    assert found, "the page did not finish loading"
    assert found.group(1) == found.group(2) == "6"
