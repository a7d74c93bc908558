"""``mode="api"``: each experiment sent to an HTTP training service (protocol 1, see docs/api.md).

:class:`ApiJob` checks the service's health with the bearer token before anything is submitted, then keeps
up to ``max_in_flight`` experiments on the service at once: it submits them (idempotent by id: a resumed
sweep re-attaches to runs the service already has), polls them, feeds the tokens each has trained into the
sweep's progress display and hands each terminal one to the runner as the ledger record the service sent.
Ctrl-C asks the service to cancel what is in flight (the service keeps their checkpoints; the next run
resumes them). The HTTP side (retries, schema checks, the token) is :mod:`flops_fit.training.api_client`.

Needs the ``api`` extra (``pip install flops-fit[api]``: httpx, tenacity, pydantic).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from flops_fit.core.experiment import Experiment, experiment_id
from flops_fit.core.train_config import TrainConfig, config_from_mapping
from flops_fit.core.validate import POSITIVE, Instance, Integer, Nullable, check
from flops_fit.plan.sweep import SweepPlan
from flops_fit.training.api_client import ServiceClient, require_api_extra
from flops_fit.training.api_protocol import DEFAULT_TOKEN_ENV, PROTOCOL, TERMINAL_STATES
from flops_fit.training.callbacks import Callback
from flops_fit.training.jobs import _base_config, _experiment_configs, _JobBase, _result_settings
from flops_fit.training.progress import SweepProgress

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOL", "TERMINAL_STATES", "ApiJob"]

#: ``record(experiment, ledger record, FLOPs trained in this session)``: how finished runs reach the runner.
RecordFn = Callable[[Experiment, dict[str, Any], float], None]


def _raw_record(record: Any) -> dict[str, Any]:
    """A record as the service sent it (every field, numbers unconverted)."""
    return record.model_dump(include=set(record.model_fields_set)) | dict(record.model_extra or {})


@dataclasses.dataclass
class _InFlight:
    """An experiment on the service: the tokens it had when this session first saw it."""

    experiment: Experiment
    tokens0: int


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ApiJob(_JobBase):
    """Runs each experiment on a flops-fit training service (``flops-fit serve``, or your own that speaks
    the protocol of docs/api.md).

    Args:
        api_url: the service, e.g. ``"http://127.0.0.1:8765"``.
        token_env: the environment variable that holds the bearer token (default ``FLOPS_FIT_API_TOKEN``).
        train_config: a :class:`TrainConfig` (or mapping); default the plan's recorded one, else the default.
        max_in_flight: experiments kept on the service at once (submitted and not finished). Default: as
            many as the service trains at once (its ``workers``, from ``GET /v1/health``), else 1.
        poll_s: seconds between status polls.
        timeout_s: seconds one HTTP request may take before it is retried.
        retries: attempts per request (timeouts, 5xx, connection errors) before giving up.
        configs: the TrainConfig of each experiment id, filled in by :meth:`prepare`.
    """

    mode: ClassVar[str] = "api"

    api_url: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    train_config: TrainConfig | Mapping[str, Any] | None = None
    max_in_flight: int | None = None
    poll_s: float = 2.0
    timeout_s: float = 30.0
    retries: int = 5
    configs: Mapping[str, TrainConfig] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        require_api_extra()
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
        check("max_in_flight", self.max_in_flight, Nullable(Integer(1)), "experiments on the service at once")
        object.__setattr__(self, "poll_s", float(check("poll_s", self.poll_s, POSITIVE, "seconds")))
        object.__setattr__(self, "timeout_s", float(check("timeout_s", self.timeout_s, POSITIVE, "seconds")))
        check("retries", self.retries, Integer(1), "attempts per request")

    # -- set-up ----------------------------------------------------------------------------------------

    def service(self) -> ServiceClient:
        """A connection to the service (use it in a ``with`` block)."""
        return ServiceClient(str(self.api_url), self.token_env, self.timeout_s, self.retries)

    def prepare(self, plan: SweepPlan, executor: str) -> ApiJob:
        """The TrainConfig of each experiment resolved; the token read and the service's health checked;
        ``max_in_flight`` defaulted to the service's workers."""
        if executor != "local":
            raise ValueError(f"mode='api' runs with executor='local' (the service trains), got {executor!r}")
        base = _base_config(self.train_config, plan)  # type: ignore[arg-type]
        health = self.health()
        if health.protocol != PROTOCOL:
            raise ValueError(
                f"{self.api_url} speaks protocol {health.protocol}; this client speaks {PROTOCOL}"
            )
        in_flight = self.max_in_flight or health.workers or 1
        logger.info("training service %s: %s %s, %s worker(s), %d busy, %d queued; keeping %d experiment(s) "
                    "in flight", self.api_url, health.service, health.version, health.workers or "?",
                    health.busy, health.queued, in_flight)  # fmt: skip
        return dataclasses.replace(
            self, train_config=base, configs=_experiment_configs(base, plan), max_in_flight=in_flight
        )

    def produced(self, record: Mapping[str, Any]) -> bool:
        """Records of the service (mode api, or local ones it trained) with the same TrainConfig."""
        if record.get("mode", self.mode) not in (self.mode, "local"):
            return False
        config = self.configs.get(str(record.get("experiment_id")))
        if config is None or not isinstance(record.get("train_config"), Mapping):
            return True
        return experiment_id(dict(record["train_config"])) == experiment_id(_result_settings(config))

    def health(self) -> Any:
        """``GET /v1/health`` with the token (checks reachability and auth)."""
        with self.service() as service:
            return service.health()

    # -- running ---------------------------------------------------------------------------------------

    def run(
        self, e: Experiment, checkpoint_path: Path | None, callbacks: Sequence[Callback], procs: Any
    ) -> tuple[dict[str, Any], float]:
        """One experiment, submitted and polled to its end (:meth:`run_many` is what a sweep uses)."""
        out: list[tuple[dict[str, Any], float]] = []
        plan = SweepPlan(experiments=(e,), flops=e.flops, param_count="model")
        display = SweepProgress(plan, set(), bars=False, verbose=False)
        self.run_many([e], display, lambda _, record, flops: out.append((record, flops)), callbacks, ())
        return out[0]

    def run_many(
        self,
        todo: Sequence[Experiment],
        display: SweepProgress,
        record: RecordFn,
        callbacks: Sequence[Callback] = (),
        retry: Collection[str] = (),
    ) -> None:
        """Run ``todo`` on the service, up to ``max_in_flight`` at once, in order of submission; each
        terminal one goes to ``record``. ``retry``: ids the service should run again if it has them failed.

        Raises:
            KeyboardInterrupt: on Ctrl-C, after asking the service to cancel every experiment in flight.
        """
        assert self.configs, "call prepare(plan, executor) first"
        queue, flight = collections.deque(todo), dict[str, _InFlight]()
        where = urlsplit(str(self.api_url)).netloc
        with self.service() as service:
            try:
                while queue or flight:
                    while queue and len(flight) < (self.max_in_flight or 1):
                        e = queue.popleft()
                        for cb in callbacks:
                            cb.on_experiment_start(e)
                        config = self.configs[e.experiment_id].to_dict()
                        status = service.submit(e, config, retry=e.experiment_id in retry)
                        flight[e.experiment_id] = _InFlight(e, int(status.tokens))
                        display.started_remote(e, where, restarted=False)
                        self._observe(flight, e, status, display, record, where)
                    if flight:
                        time.sleep(self.poll_s)
                        for eid, run in list(flight.items()):
                            status = service.status(eid)
                            self._observe(flight, run.experiment, status, display, record, where)
                    display.heartbeat()
            except KeyboardInterrupt:
                self._cancel(service, flight, display)
                raise

    def _observe(
        self,
        flight: dict[str, _InFlight],
        e: Experiment,
        status: Any,
        display: SweepProgress,
        record: RecordFn,
        where: str,
    ) -> None:
        """Show ``e``'s progress, or hand it to ``record`` and free its slot when it has ended."""
        run = flight[e.experiment_id]
        if status.state not in TERMINAL_STATES:
            display.remote_progress(e, int(status.tokens), run.tokens0, where, status.train_loss)
            return
        rec = self._record(e, status)
        del flight[e.experiment_id]
        trained = max(float(rec.get("num_tokens") or 0) - run.tokens0, 0.0) * e.flops_per_token
        record(e, rec, trained)

    def _cancel(self, service: ServiceClient, flight: dict[str, _InFlight], display: SweepProgress) -> None:
        """Ctrl-C: ask the service to cancel what is in flight (it checkpoints them for the next run)."""
        logger.warning(
            "interrupted: asking %s to cancel %d experiment(s) in flight: %s",
            self.api_url, len(flight), ", ".join(flight),
        )  # fmt: skip
        for eid, run in flight.items():
            service.cancel(eid)
            display.forget(run.experiment)

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
