"""The HTTP side of ``mode="api"``: :class:`ServiceClient` speaks protocol 1 (docs/api.md) to a training service.

Every request carries the bearer token read from the environment variable the user names; timeouts, 5xx
answers and connection errors are retried with exponential backoff (tenacity), then raise a ValueError
that names the URL; every answer is checked against the protocol's pydantic models, and one that violates
them is a ValueError naming the field. The token is never written into errors or logs.

Needs the ``api`` extra (``pip install flops-fit[api]``: httpx, tenacity, pydantic), imported on first use.
"""

from __future__ import annotations

import functools
import logging
import os
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flops_fit.core.experiment import Experiment
from flops_fit.training.api_protocol import PROTOCOL, models

if TYPE_CHECKING:
    import httpx
    import pydantic

logger = logging.getLogger(__name__)

__all__ = ["ServiceClient", "read_token", "require_api_extra"]


@functools.cache
def require_api_extra() -> types.SimpleNamespace:
    """httpx, tenacity, pydantic and the protocol's models, imported on first use (the ``api`` extra), so
    that ``import flops_fit`` needs none of them."""
    try:
        import httpx
        import pydantic
        import tenacity
    except ImportError as exc:
        raise ImportError(f"mode='api' needs the api extra: pip install 'flops-fit[api]' ({exc})") from exc
    bodies = models()
    return types.SimpleNamespace(
        httpx=httpx,
        pydantic=pydantic,
        tenacity=tenacity,
        Health=bodies.Health,
        Status=bodies.CheckedStatus,
        retried=(httpx.TimeoutException, httpx.TransportError, _Transient),
    )


def read_token(token_env: str) -> str:
    """The bearer token in the environment variable ``token_env``, or a ValueError naming the variable."""
    value = os.environ.get(token_env)
    if not value:
        raise ValueError(
            f"mode='api' reads the service's bearer token from the environment variable {token_env}, "
            f"which is not set (export {token_env}=... or pass token_env=)"
        )
    return value


class _Transient(Exception):
    """A 5xx answer: worth retrying."""


def _parse(model: type[pydantic.BaseModel], response: httpx.Response, what: str) -> Any:
    """``response``'s JSON as ``model``, or a ValueError naming the field that violates the protocol."""
    try:
        data = response.json()
    except ValueError:
        raise ValueError(f"{what}: the service answered with something that is not JSON") from None
    try:
        return model.model_validate(data)
    except require_api_extra().pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(the whole body)"
        raise ValueError(
            f"{what}: the service's response violates protocol {PROTOCOL} at field {field!r}: {err['msg']}"
        ) from None


def _detail(response: httpx.Response) -> str:
    """The service's explanation of an error answer (FastAPI's ``detail``), shortened."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return str(detail)[:500]


class ServiceClient:
    """One connection to a training service (use it in a ``with`` block).

    Args:
        url: the service, e.g. ``"http://127.0.0.1:8765"``.
        token_env: the environment variable holding the bearer token.
        timeout_s: seconds one request may take before it is retried.
        retries: attempts per request before giving up.
    """

    def __init__(self, url: str, token_env: str, timeout_s: float, retries: int) -> None:
        self.url, self.token_env, self.retries, self.timeout_s = url, token_env, retries, timeout_s
        self._http = require_api_extra().httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {read_token(token_env)}"}, timeout=timeout_s
        )

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.close()

    # -- the four requests of protocol 1 ---------------------------------------------------------------

    def health(self) -> Any:
        """``GET /v1/health`` (checks reachability and the token)."""
        return _parse(require_api_extra().Health, self._request("GET", "/v1/health"), "GET /v1/health")

    def submit(self, e: Experiment, train_config: Mapping[str, Any], retry: bool = False) -> Any:
        """``POST /v1/experiments``: queue ``e`` (or re-attach to it); ``retry`` re-queues a failed run."""
        body = {"experiment": e.to_dict(), "train_config": dict(train_config), "retry": retry}
        return self._status("POST", "/v1/experiments", body)

    def status(self, experiment_id: str) -> Any:
        """``GET /v1/experiments/{id}``."""
        return self._status("GET", f"/v1/experiments/{experiment_id}")

    def cancel(self, experiment_id: str) -> None:
        """``POST /v1/experiments/{id}/cancel``; a failure is logged, not raised (we are stopping anyway)."""
        try:
            self._request("POST", f"/v1/experiments/{experiment_id}/cancel")
        except ValueError as exc:
            logger.error("cancelling experiment %s failed: %s", experiment_id, exc)

    # -- plumbing --------------------------------------------------------------------------------------

    def _status(self, method: str, path: str, body: Any = None) -> Any:
        what = f"{method} {path}"
        status = _parse(require_api_extra().Status, self._request(method, path, body), what)
        if status.record is not None and status.record.experiment_id != status.experiment_id:
            raise ValueError(f"{what}: field 'record.experiment_id' does not match 'experiment_id'")
        return status

    def _request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """One request, retried with exponential backoff on timeouts, 5xx and connection errors."""
        deps = require_api_extra()
        httpx, tenacity = deps.httpx, deps.tenacity

        def attempt() -> httpx.Response:
            response = self._http.request(method, path, json=json)
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code}")
            return response

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(deps.retried),
            stop=tenacity.stop_after_attempt(self.retries),
            wait=tenacity.wait_exponential(multiplier=0.2, max=10),
            before_sleep=lambda state: logger.warning(
                "%s %s%s failed (%s); retrying", method, self.url, path, state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except httpx.TimeoutException:
            raise ValueError(
                f"{method} {self.url}{path} timed out {self.retries} times (timeout_s={self.timeout_s})"
            ) from None
        except httpx.TransportError as exc:
            raise ValueError(
                f"cannot reach the training service at {self.url} ({type(exc).__name__}: {exc}); "
                "is `flops-fit serve` running there?"
            ) from None
        except _Transient as exc:
            raise ValueError(f"{method} {self.url}{path} failed {self.retries} times: {exc}") from None
        self._check_answer(method, path, response)
        return response

    def _check_answer(self, method: str, path: str, response: httpx.Response) -> None:
        """A ValueError that says what to do for a 4xx answer."""
        code = response.status_code
        if code == 401:
            raise ValueError(
                f"the service at {self.url} rejected the token in {self.token_env} (HTTP 401); set "
                f"{self.token_env} to the token the service was started with"
            )
        if code == 409:
            raise ValueError(
                f"{method} {self.url}{path}: the service already holds this experiment id with other "
                f"settings (HTTP 409: {_detail(response)}); give this sweep its own service state "
                "(flops-fit serve --state-dir) or re-plan"
            )
        if code >= 400:
            raise ValueError(f"{method} {self.url}{path}: HTTP {code} {_detail(response)}")
