"""The front doors: :func:`~flops_fit.app.pipeline.find_optimal`, the ``flops-fit`` command line, the
Hydra stage commands and the experiment-tracker callbacks. Everything below is composed here."""
