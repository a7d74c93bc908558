"""What a study hands back: :class:`~flops_fit.report.result.Result` (fits, predictions, tables,
back-tests, save/load), its figures and the HTML report; ``ScalingLawAnalyzer`` is a thin wrapper over it."""
