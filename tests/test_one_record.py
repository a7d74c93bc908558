"""One record of how the laws were fitted: `flops-fit analyze` writes result.json beside scaling_laws.json,
so `flops-fit report` states the intervals it shows; every command prints the same summary (issue 20, items
2 and 3)."""

from __future__ import annotations

import json
import logging

from flops_fit.app.cli import main


def test_analyze_then_report_keeps_the_bootstrap_and_the_labels(tmp_path, capsys, caplog):
    out = tmp_path / "sweep"
    assert (
        main(["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e20", "--sizes", "7"]) == 0
    )
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    # the summary of a Result: mock banner, labelled table, warnings section, the approaches' report names
    assert text.startswith("MOCK RESULTS") and "Chinchilla table (Approach" in text and "Warnings" in text
    assert "training-curve envelope" not in text and "Approach 1 (envelope)" in text
    meta = json.loads((out / "result.json").read_text())
    assert meta["fit_options"]["bootstrap"] == 50
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(out)]) == 0
    assert "belongs to an earlier fit" not in caplog.text
    html = (out / "report.html").read_text()
    assert "intervals: 50 bootstrap resamples" in html and "no bootstrap" not in html
