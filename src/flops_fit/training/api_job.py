"""``mode="api"``: each experiment sent to an HTTP training service (protocol 1, see docs/api.md).

:class:`ApiJob` checks the service's health with the bearer token before anything is submitted, submits
each experiment (idempotent by its id: a resumed sweep re-attaches to runs the service already has), polls
it to a terminal state and returns the ledger record the service sends back. Timeouts, 5xx answers and
connection errors are retried with exponential backoff (tenacity), then raise a clear error. Ctrl-C asks the
service to cancel the run. The token is read from the environment variable named by ``token_env`` and is
never written into plans, ledgers, logs or error messages.

Needs the ``api`` extra (``pip install flops-fit[api]``: httpx, tenacity, pydantic).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.core.train_config import TrainConfig, config_from_mapping
from flops_fit.core.validate import POSITIVE, Instance, Integer, Nullable, check
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.api_protocol import DEFAULT_TOKEN_ENV, PROTOCOL, TERMINAL_STATES, models
from flops_fit.training.callbacks import Callback
from flops_fit.training.jobs import _base_config, _experiment_configs, _JobBase, _result_settings

if TYPE_CHECKING:
    import httpx
    import pydantic

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOL", "TERMINAL_STATES", "ApiJob"]


@functools.cache
def _protocol() -> types.SimpleNamespace:
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


def _raw_record(record: pydantic.BaseModel) -> dict[str, Any]:
    """A record as the service sent it (every field, numbers unconverted)."""
    return record.model_dump(include=set(record.model_fields_set)) | dict(record.model_extra or {})


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
    except _protocol().pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(the whole body)"
        raise ValueError(
            f"{what}: the service's response violates protocol {PROTOCOL} at field {field!r}: {err['msg']}"
        ) from None


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ApiJob(_JobBase):
    """Runs each experiment on a flops-fit training service (``flops-fit serve``, or your own that speaks
    the protocol of docs/api.md).

    Args:
        api_url: the service, e.g. ``"http://127.0.0.1:8765"``.
        token_env: the environment variable that holds the bearer token (default ``FLOPS_FIT_API_TOKEN``).
        train_config: a :class:`TrainConfig` (or mapping); default the plan's recorded one, else the default.
        poll_s: seconds between status polls.
        timeout_s: seconds one HTTP request may take before it is retried.
        retries: attempts per request (timeouts, 5xx, connection errors) before giving up.
        configs: the TrainConfig of each experiment id, filled in by :meth:`prepare`.
    """

    mode: ClassVar[str] = "api"

    api_url: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    train_config: TrainConfig | Mapping[str, Any] | None = None
    poll_s: float = 2.0
    timeout_s: float = 30.0
    retries: int = 5
    configs: Mapping[str, TrainConfig] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _protocol()  # the api extra is installed
        if self.api_url is None:
            raise ValueError("mode='api' needs api_url= (the training service, e.g. 'http://127.0.0.1:8765')")
        url = check("api_url", self.api_url, Instance(str), "e.g. 'http://127.0.0.1:8765'")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https://, got {url!r}")
        object.__setattr__(self, "api_url", url.rstrip("/"))
        check("token_env", self.token_env, Instance(str), "the name of an environment variable")
        if not self.token_env:
            raise ValueError("token_env must name an environment variable, got ''")
        config = self.train_config
        if isinstance(config, Mapping):
            config = config_from_mapping(config, "train_config")
        check("train_config", config, Nullable(Instance(TrainConfig)), "or a mapping of its fields")
        object.__setattr__(self, "train_config", config)
        object.__setattr__(self, "poll_s", float(check("poll_s", self.poll_s, POSITIVE, "seconds")))
        object.__setattr__(self, "timeout_s", float(check("timeout_s", self.timeout_s, POSITIVE, "seconds")))
        check("retries", self.retries, Integer(1), "attempts per request")

    # -- set-up ----------------------------------------------------------------------------------------

    def token(self) -> str:
        """The bearer token, or a ValueError naming the variable (never its value)."""
        value = os.environ.get(self.token_env)
        if not value:
            raise ValueError(
                f"mode='api' reads the service's bearer token from the environment variable "
                f"{self.token_env}, which is not set (export {self.token_env}=... or pass token_env=)"
            )
        return value

    def prepare(self, plan: SweepPlan, executor: str) -> ApiJob:
        """The TrainConfig of each experiment resolved; the token read and the service's health checked."""
        if executor != "local":
            raise ValueError(f"mode='api' runs with executor='local' (the service trains), got {executor!r}")
        base = _base_config(self.train_config, plan)  # type: ignore[arg-type]
        job = dataclasses.replace(self, train_config=base, configs=_experiment_configs(base, plan))
        health = job.health()
        if health.protocol != PROTOCOL:
            raise ValueError(
                f"{self.api_url} speaks protocol {health.protocol}; this client speaks {PROTOCOL}"
            )
        logger.info("training service %s: %s %s, %d busy, %d queued", self.api_url, health.service,
                    health.version, health.busy, health.queued)  # fmt: skip
        return job

    def produced(self, record: Mapping[str, Any]) -> bool:
        """Records of the service (mode api, or local ones it trained) with the same TrainConfig."""
        if record.get("mode", self.mode) not in (self.mode, "local"):
            return False
        config = self.configs.get(str(record.get("experiment_id")))
        if config is None or not isinstance(record.get("train_config"), Mapping):
            return True
        return experiment_id(dict(record["train_config"])) == experiment_id(_result_settings(config))

    # -- HTTP ------------------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        return _protocol().httpx.Client(
            base_url=str(self.api_url),
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=self.timeout_s,
        )

    def _request(self, client: httpx.Client, method: str, path: str, json: Any = None) -> httpx.Response:
        """One request, retried with exponential backoff on timeouts, 5xx and connection errors."""
        deps = _protocol()
        httpx, tenacity = deps.httpx, deps.tenacity

        def attempt() -> httpx.Response:
            response = client.request(method, path, json=json)
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code}")
            return response

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(deps.retried),
            stop=tenacity.stop_after_attempt(self.retries),
            wait=tenacity.wait_exponential(multiplier=0.2, max=10),
            before_sleep=lambda state: logger.warning(
                "%s %s%s failed (%s); retrying", method, self.api_url, path, state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except httpx.TimeoutException:
            raise ValueError(
                f"{method} {self.api_url}{path} timed out {self.retries} times (timeout_s={self.timeout_s})"
            ) from None
        except httpx.TransportError as exc:
            raise ValueError(
                f"cannot reach the training service at {self.api_url} ({type(exc).__name__}: {exc}); "
                "is `flops-fit serve` running there?"
            ) from None
        except _Transient as exc:
            raise ValueError(f"{method} {self.api_url}{path} failed {self.retries} times: {exc}") from None
        if response.status_code == 401:
            raise ValueError(
                f"the service at {self.api_url} rejected the token in {self.token_env} (HTTP 401); set "
                f"{self.token_env} to the token the service was started with"
            )
        if response.status_code >= 400:
            raise ValueError(
                f"{method} {self.api_url}{path}: HTTP {response.status_code} {response.text[:300]}"
            )
        return response

    def health(self) -> Any:
        """``GET /v1/health`` with the token (checks reachability and auth)."""
        with self._client() as client:
            return _parse(_protocol().Health, self._request(client, "GET", "/v1/health"), "GET /v1/health")  # type: ignore[no-any-return]

    # -- one experiment --------------------------------------------------------------------------------

    def run(
        self, e: Experiment, checkpoint_path: Path | None, callbacks: Sequence[Callback], procs: Any
    ) -> tuple[dict[str, Any], float]:
        assert self.configs, "call prepare(plan, executor) first"
        body = {"experiment": e.to_dict(), "train_config": self.configs[e.experiment_id].to_dict()}
        path = f"/v1/experiments/{e.experiment_id}"
        with self._client() as client:
            status = self._status(client, "POST", "/v1/experiments", body)
            try:
                while status.state not in TERMINAL_STATES:
                    time.sleep(self.poll_s)
                    status = self._status(client, "GET", path)
            except KeyboardInterrupt:
                logger.warning(
                    "interrupted: asking %s to cancel experiment %s", self.api_url, e.experiment_id
                )
                try:
                    self._request(client, "POST", f"{path}/cancel")
                except ValueError as exc:
                    logger.error("cancelling experiment %s failed: %s", e.experiment_id, exc)
                raise
        return self._record(e, status), 0.0

    def _status(self, client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
        status = _parse(_protocol().Status, self._request(client, method, path, body), f"{method} {path}")
        if status.record is not None and status.record.experiment_id != status.experiment_id:
            raise ValueError(f"{method} {path}: field 'record.experiment_id' does not match 'experiment_id'")
        return status

    def _record(self, e: Experiment, status: Any) -> dict[str, Any]:
        if status.experiment_id != e.experiment_id:
            raise ValueError(
                f"the service answered for experiment {status.experiment_id!r} (field 'experiment_id'), "
                f"not {e.experiment_id!r}"
            )
        if status.record is None:  # cancelled on the service, or a terminal state without its record
            record = {
                **self.base_record(e),
                "num_tokens": status.tokens,
                "final_loss": None,
                "status": "failed",
                "actual_flops": e.flops_per_token * status.tokens,
                "curve": None,
                "error": status.error or f"the service reports state {status.state!r} without a record",
            }
        else:
            record = _raw_record(status.record)
            for key, value in self.base_record(e).items():
                if key != "mode" and key in record and record[key] != value:
                    raise ValueError(
                        f"the service's record has field {key!r}={record[key]!r}; the plan says {value!r}"
                    )
        record["mode"] = self.mode
        return record
