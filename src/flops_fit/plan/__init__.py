"""Planning a sweep: the model spec, FLOP and parameter conventions, the size search, sweep designs,
the planner and its cost estimate. Imports only :mod:`flops_fit.core`."""
