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


def test_the_report_says_what_the_result_came_from(tmp_path):
    """Model and size parameter, how N is counted, the FLOP convention, data and training settings from
    the plan; a table without a plan says those are unknown (issue 20, item 1)."""
    import flops_fit
    from flops_fit.examples.gpt import GPT
    from flops_fit.report.html import render_report
    from flops_fit.report.result import Result

    result = flops_fit.find_optimal(
        GPT.from_config, "d_model", None, None, [1e17, 1e18, 1e19],
        mode="mock", model_kwargs={"vocab_size": 512, "num_heads": 1}, output_dir=tmp_path / "sweep",
        bootstrap=0, num_model_sizes=5, size_multiple=4,
    )  # fmt: skip
    html = render_report(result)
    assert (
        "Model: flops_fit.examples.gpt:GPT.from_config(vocab_size=512, num_heads=1), size parameter d_model swept"
        in html
    )
    assert "N counts non-embedding parameters; FLOPs: the 6nd convention" in html and "Training: lr " in html
    bare = Result.from_runs(result.runs, approach="isoflop")
    assert "without a plan: model, data and training settings not recorded" in render_report(bare)
