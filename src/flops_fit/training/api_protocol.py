"""Protocol 1 of the flops-fit training service (docs/api.md), in one place for the client
(:class:`~flops_fit.training.api_job.ApiJob`) and the reference server (:mod:`flops_fit.app.serve`).

The constants need nothing installed; the pydantic models of the bodies are built on first use by
:func:`models` (the ``api`` extra), so that ``import flops_fit`` needs no pydantic.
"""

from __future__ import annotations

import functools
import types

#: The protocol version both sides speak.
PROTOCOL = 1
#: The environment variable holding the bearer token, unless ``token_env`` / ``--token-env`` names another.
DEFAULT_TOKEN_ENV = "FLOPS_FIT_API_TOKEN"
#: Every state of a submitted experiment, and those after which it changes no more.
STATES = ("queued", "running", "completed", "failed", "diverged", "cancelled")
TERMINAL_STATES = ("completed", "failed", "diverged", "cancelled")


@functools.cache
def models() -> types.SimpleNamespace:
    """The bodies of the protocol as pydantic models: ``Health``, ``Submission``, ``Status`` (what the
    server answers, its record a plain mapping), ``Record`` and ``CheckedStatus`` (a Status whose record the
    client checks field by field)."""
    from typing import Any, Literal

    import pydantic

    State = Literal["queued", "running", "completed", "failed", "diverged", "cancelled"]
    assert State.__args__ == STATES  # type: ignore[attr-defined]

    # The server's models carry no docstrings: docs/openapi.json is generated from them, as committed.
    class Health(pydantic.BaseModel):
        protocol: int
        service: str
        version: str
        busy: int
        queued: int
        workers: int | None = None

    class Submission(pydantic.BaseModel):
        experiment: dict[str, Any]
        train_config: dict[str, Any]
        retry: bool = False

    class Status(pydantic.BaseModel):
        experiment_id: str
        state: State
        tokens: int = 0
        train_loss: float | None = None
        record: dict[str, Any] | None = None
        error: str | None = None

    class Record(pydantic.BaseModel):
        """The required fields of a ledger record the service returns (others are kept as they are)."""

        model_config = pydantic.ConfigDict(extra="allow")

        experiment_id: str
        final_loss: float | None
        status: Literal["completed", "failed", "diverged"]
        num_params: int
        num_tokens: int | float
        compute_budget: float
        error: str | None = None

    class CheckedStatus(Status):
        """A ``Status`` as the client reads it: its record checked as a :class:`Record`."""

        record: Record | None = None  # type: ignore[assignment]

    return types.SimpleNamespace(
        Health=Health, Submission=Submission, Status=Status, Record=Record, CheckedStatus=CheckedStatus
    )
