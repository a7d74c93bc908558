"""The kinds of job by ``mode`` name: ``TrainingRunner(mode=...)`` and ``find_optimal(mode=...)``.

The job classes live in :mod:`flops_fit.training.jobs` (local, mock, function) and
:mod:`flops_fit.training.api_job` (api); this module names them and builds one from the runner's keywords.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flops_fit.core.validate import check_seed
from flops_fit.training.api_job import ApiJob
from flops_fit.training.jobs import FunctionJob, Job, LocalJob, MockJob

logger = logging.getLogger(__name__)

__all__ = ["JOB_KINDS", "MODES", "check_mode", "job_for_mode", "job_kind"]

#: The job class of each ``mode`` name. ApiJob imports its HTTP libraries (the ``api`` extra) when made.
JOB_KINDS: dict[str, type[Job]] = {"local": LocalJob, "mock": MockJob, "function": FunctionJob, "api": ApiJob}
MODES: tuple[str, ...] = tuple(JOB_KINDS)


def check_mode(mode: Any) -> str:
    """``mode`` if it names a kind of job, else a ValueError listing them."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    return mode


def job_kind(job: Job | str) -> type[Job] | Job:
    """The job class of a mode name, or the job itself: what :class:`Job`'s class attributes are read from."""
    return JOB_KINDS[check_mode(job)] if isinstance(job, str) else job


def job_for_mode(mode: Any, *, seed: Any = 0, device: Any = "auto", **keywords: Any) -> Job:
    """The job of ``TrainingRunner(mode, ...)``'s keywords: the class of ``mode`` given the keywords it
    has. Keywords it has no field for are logged as unused (those left at None are not given); ``seed``
    and ``device`` go to the jobs that use them and are never reported."""
    kind = JOB_KINDS[check_mode(mode)]
    check_seed(seed)  # the runner's seed is checked whatever the mode, as it always was
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unused = [name for name, value in keywords.items() if value is not None and name not in names]
    if unused:
        logger.info("mode=%r does not use %s; ignoring them", mode, ", ".join(unused))
    given = {**keywords, "seed": seed, "device": device}
    return kind(**{k: v for k, v in given.items() if k in names and v is not None})
