"""What a study hands back: :class:`~flops_fit.report.result.Result` (fits, predictions, tables,
back-tests, save/load), its figures and the HTML report; ``ScalingLawAnalyzer`` is a thin wrapper over it."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``from flops_fit.report import write_report`` (release 0.1.0's module) keeps working, lazily."""
    if name in ("write_report", "render_report", "REPORT_FILE"):
        from flops_fit.report import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
