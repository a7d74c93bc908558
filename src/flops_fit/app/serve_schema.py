"""The request and response bodies of the training service (protocol 1), for FastAPI's checks and schema."""

from __future__ import annotations

from typing import Any, Literal

import pydantic

__all__ = ["Health", "Status", "Submission"]


class Health(pydantic.BaseModel):
    protocol: int
    service: str
    version: str
    busy: int
    queued: int


class Submission(pydantic.BaseModel):
    experiment: dict[str, Any]
    train_config: dict[str, Any]


class Status(pydantic.BaseModel):
    experiment_id: str
    state: Literal["queued", "running", "completed", "failed", "diverged", "cancelled"]
    tokens: int = 0
    record: dict[str, Any] | None = None
    error: str | None = None
