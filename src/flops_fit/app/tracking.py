"""Experiment tracking: MLflow, TensorBoard and Weights & Biases as training callbacks.

Every tracker is a :class:`~flops_fit.training.Callback`, so it plugs into :func:`flops_fit.training.train`
(and the sweep runner) like any other. Each training run becomes one tracked run named after its
experiment, with its parameters (experiment id, compute budget C in FLOPs, size value, N parameters,
D tokens, learning rate, batch, steps, device, precision), its metrics against tokens seen
(``train/loss``, ``train/lr``, ``train/tokens_per_s``, ``val/loss``) and its outcome (``final/*`` and the
status). :meth:`TrackingCallback.log_result` logs a fitted :class:`~flops_fit.report.result.Result` as one more
run: the exponents and the predicted optimum as metrics, the figures, the table, the HTML report and the
saved result files as artifacts.

The backends are optional: ``pip install "flops-fit[tracking]"`` (or just the one you use). Each is
imported when its tracker is built, so a missing one fails before any training starts.

Which experiment a run belongs to: pass ``experiment=`` (a :class:`~flops_fit.core.experiment.Experiment` or a
mapping) when building the tracker for one run, or call :meth:`TrackingCallback.on_experiment_start`
before each run (the sweep runner does); without either, runs are named ``run-1``, ``run-2``, ...
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from flops_fit.core import sweepdir
from flops_fit.core.outcome import RunInfo, TrainOutcome
from flops_fit.core.sweepdir import SweepDir
from flops_fit.training.callbacks import Callback

logger = logging.getLogger(__name__)

TRACKING_EXTRA = 'pip install "flops-fit[tracking]"'
#: Name of the run that :meth:`TrackingCallback.log_result` creates.
RESULT_RUN_NAME = "scaling-laws"
#: MLflow metrics are buffered and sent in one batch at most this often (seconds), and at the end of a run:
#: one request per ``on_log`` would slow the training loop down (about 20 ms each on a SQLite store).
MLFLOW_FLUSH_S = 5.0
#: MLflow takes at most this many metrics per batch.
_MLFLOW_BATCH = 1000
_PARAM_MAX_CHARS = 500
#: Files of a saved result that :meth:`TrackingCallback.log_result` logs from a directory (with the figures).
_RESULT_FILES = frozenset(sweepdir.ARTIFACTS)

_EXPERIMENT_KEYS = (
    "experiment_id",
    "compute_budget",
    "size_value",
    "num_params",
    "num_tokens",
    "learning_rate",
    "batch_size",
    "tokens_per_sample",
    "num_steps",
    "flops_per_token",
    "flops",
    "epochs",
    "seed",
)


def _import_backend(module: str, package: str, tracker: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{tracker} needs the {package} package, which is not installed: {TRACKING_EXTRA} "
            f"(or pip install {package})"
        ) from exc


def experiment_params(experiment: Any) -> dict[str, Any]:
    """The tracked parameters of an experiment (an ``Experiment``, a dataclass or a mapping)."""
    if experiment is None:
        return {}
    if is_dataclass(experiment) and not isinstance(experiment, type):
        d = asdict(experiment)
    elif isinstance(experiment, Mapping):
        d = dict(experiment)
    else:
        raise TypeError(
            f"experiment must be a flops_fit Experiment or a mapping of its fields, got {type(experiment).__name__}"
        )
    return {k: d[k] for k in _EXPERIMENT_KEYS if k in d and d[k] is not None} | {
        k: v for k, v in d.items() if k not in _EXPERIMENT_KEYS and isinstance(v, (str, int, float, bool))
    }


def _scalar(value: Any) -> str | int | float | bool:
    """A parameter value every backend accepts (numbers and strings; anything else as short text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    text = str(value)
    return text if len(text) <= _PARAM_MAX_CHARS else text[: _PARAM_MAX_CHARS - 3] + "..."


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def _safe_name(name: str) -> str:
    """A file-system-safe run name (for TensorBoard log directories)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._") or "run"


def result_metrics(result: Any) -> dict[str, float]:
    """Scalar summary of a Result: per approach the exponents ``a``, ``b`` and, for the primary approach, the
    optimum at the largest observed budget (``{approach}/a``, ``optimum/params`` ...)."""
    out: dict[str, float] = {}
    for name, fit in result.fits.items():
        out[f"{name}/a"] = float(fit.a)
        out[f"{name}/b"] = float(fit.b)
    c = float(result.budgets[-1])
    pred = result.predict(c)
    out["optimum/compute_budget"] = c
    out["optimum/params"] = pred["optimal_params"]
    out["optimum/tokens"] = pred["optimal_tokens"]
    out["optimum/loss"] = pred["expected_loss"]
    return _finite(out)


class TrackingCallback(Callback, ABC):
    """Base of the trackers: turns training events into one tracked run per experiment.

    Subclasses implement ``_open(name, params)``, ``_log(metrics, step)``, ``_close(status, final)`` and
    ``_log_result_files(directory, result, metrics, name)``. ``params`` are added to every run's parameters.
    """

    def __init__(
        self, *, experiment: Any = None, run_name: str | None = None, params: Mapping[str, Any] | None = None
    ) -> None:
        if run_name is not None and not isinstance(run_name, str):
            raise TypeError(f"run_name must be a string or None, got {type(run_name).__name__}")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of name to value, got {type(params).__name__}")
        self.params = dict(params or {})
        self._experiment = experiment_params(experiment)
        self._run_name = run_name
        self._runs_started = 0
        self._active = False
        self._t_last = 0.0
        self._tokens_last = 0

    # -- which experiment ------------------------------------------------------------------------------

    def on_experiment_start(self, experiment: Any) -> None:
        """Name the next training run after ``experiment`` and log its fields as parameters."""
        self._experiment = experiment_params(experiment)
        self._run_name = None

    def _next_name(self) -> str:
        if self._run_name:
            return self._run_name
        eid = self._experiment.get("experiment_id")
        return str(eid) if eid else f"run-{self._runs_started}"

    # -- training events -------------------------------------------------------------------------------

    def on_train_start(self, info: RunInfo) -> None:
        if self._active:  # a previous run ended without on_train_end (should not happen): close it
            self._close("interrupted", {})
        self._runs_started += 1
        params: dict[str, Any] = dict(self._experiment)
        params.setdefault("num_params", info.num_params)
        params.setdefault("num_tokens", info.num_tokens)
        params.update(
            total_steps=info.total_steps,
            tokens_per_step=info.tokens_per_step,
            device=info.device,
            precision=info.precision,
            compiled=info.compiled,
            world_size=info.world_size,
            start_step=info.start_step,
        )
        params.update(self.params)
        self._tokens_last = info.start_step * info.tokens_per_step
        self._t_last = time.perf_counter()
        self._open(self._next_name(), {k: _scalar(v) for k, v in params.items()})
        self._active = True

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        if not self._active:
            return
        now = time.perf_counter()
        elapsed = now - self._t_last
        metrics = {"train/loss": float(train_loss), "train/lr": float(lr)}
        if elapsed > 0 and tokens > self._tokens_last:
            metrics["train/tokens_per_s"] = (tokens - self._tokens_last) / elapsed
        self._t_last, self._tokens_last = now, tokens
        self._log(metrics, int(tokens))

    def on_eval(self, step: int, tokens: int, val_loss: float) -> None:
        if self._active:
            self._log({"val/loss": float(val_loss)}, int(tokens))

    def on_train_end(self, outcome: TrainOutcome) -> None:
        if not self._active:
            return
        final = {
            "final/val_loss": outcome.final_loss,
            "final/train_loss": outcome.train_loss,
            "final/tokens_seen": outcome.tokens_seen,
            "final/steps": outcome.steps,
            "final/flops": outcome.flops,
            "final/wall_time_s": outcome.wall_time_s,
            "final/tokens_per_s": outcome.tokens_per_s,
        }
        self._log(_finite(final), int(outcome.tokens_seen))
        self._close(outcome.status, {"status": outcome.status, "error": outcome.error or ""})
        self._active = False
        self._experiment = {}

    def on_interrupt(self, step: int) -> None:
        if self._active:
            self._close("interrupted", {"status": "interrupted", "error": f"interrupted after step {step}"})
            self._active = False

    # -- the fitted laws ---------------------------------------------------------------------------------

    def log_result(self, result: Any, *, name: str = RESULT_RUN_NAME, report: bool = True) -> Any:
        """Log a fitted result as its own run and return the backend's handle (run id, directory, run).

        ``result`` is a :class:`~flops_fit.report.result.Result` or a directory written by :meth:`Result.save`
        (e.g. ``find_optimal``'s output directory; only the result files are logged, never checkpoints).
        Metrics: :func:`result_metrics`. Artifacts: the laws JSON, the table, the runs, the figures and,
        with ``report=True``, the self-contained HTML report.
        """
        from flops_fit.report.folder import write_exports
        from flops_fit.report.html import write_report
        from flops_fit.report.plots import FIGURES
        from flops_fit.report.result import Result

        source: Path | None = None
        if isinstance(result, (str, os.PathLike)):
            source = Path(result)
            result = Result.load(source)
        elif not isinstance(result, Result):
            raise TypeError(
                f"log_result needs a flops_fit Result or a directory from Result.save, got {type(result).__name__}"
            )
        with tempfile.TemporaryDirectory(prefix="flops-fit-result-") as tmp:
            directory = Path(tmp) / "result"
            if source is None:
                result.save(directory, plots=True)
            else:
                directory.mkdir()
                for path in sorted(source.iterdir()):
                    if path.is_file() and (path.name in _RESULT_FILES or path.suffix in (".png", ".svg")):
                        shutil.copy2(path, directory / path.name)
                write_exports(result, SweepDir(directory), None)  # the runs, as the ledger is not logged
            if report and not (directory / sweepdir.REPORT_FILE).is_file():
                figure = SweepDir(directory).figure
                drawn = {n: figure(n).read_bytes() for n in FIGURES if figure(n).is_file()}
                write_report(result, directory / sweepdir.REPORT_FILE, backtest=False, figures=drawn or None)
            return self._log_result_files(directory, result, result_metrics(result), name)

    # -- backend hooks -------------------------------------------------------------------------------

    @abstractmethod
    def _open(self, name: str, params: dict[str, Any]) -> None:
        """Start a backend run called ``name`` and record ``params``."""

    @abstractmethod
    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` (tokens seen) in the current run."""

    @abstractmethod
    def _close(self, status: str, final: dict[str, str]) -> None:
        """End the current run with ``status`` (completed, failed, diverged, interrupted)."""

    @abstractmethod
    def _log_result_files(self, directory: Path, result: Any, metrics: dict[str, float], name: str) -> Any:
        """Log a saved Result (``directory``) and its ``metrics`` as a run called ``name``; return a handle."""


# ----------------------------------------------------------------------------------------------------
# MLflow


class MLflowCallback(TrackingCallback):
    """Track runs with MLflow (through ``MlflowClient``: no global active run is touched).

    Args:
        tracking_uri: e.g. ``"sqlite:///mlflow.db"``, a tracking server URL, or a ``file:`` store (MLflow 3
            needs ``MLFLOW_ALLOW_FILE_STORE=1`` for those); None: MLflow's default (``MLFLOW_TRACKING_URI``).
        experiment_name: the MLflow experiment the runs go to (created if missing).
        artifact_location: where a newly created MLflow experiment stores artifacts (default: the store's).
        tags: tags added to every run.
        experiment, run_name, params: see :class:`TrackingCallback`.

    Run status: completed runs end ``FINISHED``, failed and diverged ones ``FAILED`` (tag
    ``flops_fit.status`` tells which, ``flops_fit.error`` why), interrupted ones ``KILLED``.
    """

    _STATUS: ClassVar[dict[str, str]] = {
        "completed": "FINISHED",
        "failed": "FAILED",
        "diverged": "FAILED",
        "interrupted": "KILLED",
    }

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "flops-fit",
        *,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
        experiment: Any = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(experiment=experiment, run_name=run_name, params=params)
        self._mlflow = _import_backend("mlflow", "mlflow", "MLflowCallback")
        if not isinstance(experiment_name, str) or not experiment_name:
            raise ValueError(f"experiment_name must be a non-empty string, got {experiment_name!r}")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        # Connect now, before any training: a bad URI fails here, and a new store is set up outside the
        # timed training loop.
        self._client = self._mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = self._client.get_experiment_by_name(experiment_name)
        if found is None:
            self._experiment_id = self._client.create_experiment(
                experiment_name, artifact_location=artifact_location
            )
        else:
            self._experiment_id = found.experiment_id
        self._pending: list[Any] = []
        self._last_flush = 0.0
        #: Id of the MLflow run of the current (or last) training run.
        self.run_id: str | None = None

    def _start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param

        client = self._client
        run = client.create_run(self._experiment_id, run_name=name, tags={**self.tags, **tags})
        run_id = run.info.run_id
        items = [Param(str(k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def _open(self, name: str, params: dict[str, Any]) -> None:
        self.run_id = self._start_run(name, params, {"flops_fit.kind": "experiment"})
        self._pending = []
        self._last_flush = time.perf_counter()

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if time.perf_counter() - self._last_flush >= MLFLOW_FLUSH_S or len(self._pending) >= _MLFLOW_BATCH:
            self._flush()

    def _flush(self) -> None:
        for i in range(0, len(self._pending), _MLFLOW_BATCH):
            self._client.log_batch(self.run_id, metrics=self._pending[i : i + _MLFLOW_BATCH])
        self._pending = []
        self._last_flush = time.perf_counter()

    def _close(self, status: str, final: dict[str, str]) -> None:
        self._flush()
        client = self._client
        client.set_tag(self.run_id, "flops_fit.status", final.get("status", status))
        if final.get("error"):
            client.set_tag(self.run_id, "flops_fit.error", final["error"][:5000])
        client.set_terminated(self.run_id, status=self._STATUS.get(status, "FAILED"))

    def _log_result_files(self, directory: Path, result: Any, metrics: dict[str, float], name: str) -> str:
        from mlflow.entities import Metric

        params = {"primary": result.primary, "approaches": ",".join(result.fits), **result.fit_options}
        run_id = self._start_run(name, params, {"flops_fit.kind": "scaling-laws"})
        client = self._client
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
        client.log_artifacts(run_id, str(directory))
        client.set_terminated(run_id, status="FINISHED")
        return run_id


# ----------------------------------------------------------------------------------------------------
# TensorBoard


class TensorBoardCallback(TrackingCallback):
    """Track runs as TensorBoard event files (``torch.utils.tensorboard``; needs the ``tensorboard`` package).

    Each training run writes to ``log_dir/<run name>``: scalars against tokens seen, the parameters as a
    text summary and, at the end, as hyper-parameters with the final metrics (TensorBoard's HParams tab).
    :meth:`log_result` writes ``log_dir/scaling-laws``: the figures as images, the summary and table as
    text, and a copy of the saved result files in its ``files/`` folder (TensorBoard has no artifact store).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs/flops-fit",
        *,
        experiment: Any = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(experiment=experiment, run_name=run_name, params=params)
        self._tb = _import_backend("torch.utils.tensorboard", "tensorboard", "TensorBoardCallback")
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        self._params: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        #: Directory of the current (or last) training run's event files.
        self.run_dir: Path | None = None

    def _open(self, name: str, params: dict[str, Any]) -> None:
        self.run_dir = self.log_dir / _safe_name(name)
        self._writer = self._tb.SummaryWriter(log_dir=str(self.run_dir))
        self._params = params
        table = "\n".join(
            ["| parameter | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in params.items()]
        )
        self._writer.add_text("params", table, 0)
        self._final = {}

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)
            if key.startswith("final/"):
                self._final[key] = value

    def _close(self, status: str, final: dict[str, str]) -> None:
        self._writer.add_text("status", f"{status}: {final.get('error', '')}".rstrip(": "), 0)
        hparams = {k: v for k, v in self._params.items() if isinstance(v, (bool, int, float, str))}
        hparams["status"] = status
        metrics = {f"hparam/{k.split('/', 1)[1]}": v for k, v in self._final.items()}
        if metrics:
            self._writer.add_hparams(hparams, metrics, run_name=".")
        self._writer.close()
        self._writer = None

    def _log_result_files(self, directory: Path, result: Any, metrics: dict[str, float], name: str) -> Path:
        import matplotlib.image as mpimg

        out = self.log_dir / _safe_name(name)
        writer = self._tb.SummaryWriter(log_dir=str(out))
        try:
            for key, value in metrics.items():
                writer.add_scalar(key, value, global_step=0)
            writer.add_text("summary", "```\n" + result.summary() + "\n```", 0)
            writer.add_text("chinchilla_table", result.table_markdown(), 0)
            for png in sorted(directory.glob("*.png")):  # the figures Result.save drew
                image = mpimg.imread(png, format="png")[..., :3]
                writer.add_image(f"figures/{png.stem}", image, global_step=0, dataformats="HWC")
        finally:
            writer.close()
        shutil.copytree(directory, out / "files", dirs_exist_ok=True)
        return out


# ----------------------------------------------------------------------------------------------------
# Weights & Biases


class WandbCallback(TrackingCallback):
    """Track runs with Weights & Biases, offline by default (nothing leaves the machine; ``wandb sync``
    uploads later).

    Args:
        project: the W&B project.
        mode: ``"offline"`` (default), ``"online"`` or ``"disabled"``.
        dir: where W&B writes its run folders (default: W&B's, ``./wandb``).
        entity, group, tags: passed to ``wandb.init`` (``group`` e.g. the sweep name).
        experiment, run_name, params: see :class:`TrackingCallback`.

    Metrics are logged against ``tokens`` (W&B's x-axis for every metric); the final metrics and the
    status go to the run summary; failed and diverged runs finish with exit code 1.
    """

    def __init__(
        self,
        project: str = "flops-fit",
        *,
        mode: str = "offline",
        dir: str | os.PathLike[str] | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        experiment: Any = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(experiment=experiment, run_name=run_name, params=params)
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"mode must be 'offline', 'online' or 'disabled', got {mode!r}")
        self._wandb = _import_backend("wandb", "wandb", "WandbCallback")
        self.project = project
        self.mode = mode
        self.dir = None if dir is None else Path(dir)
        self.entity = entity
        self.group = group
        self.tags = list(tags) if tags else None
        self._run: Any = None
        #: The W&B run of the current (or last) training run.
        self.run: Any = None

    def _init(self, name: str, config: dict[str, Any], job_type: str) -> Any:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        return self._wandb.init(
            project=self.project,
            entity=self.entity,
            name=name,
            group=self.group,
            tags=self.tags,
            job_type=job_type,
            config=config,
            mode=self.mode,
            dir=None if self.dir is None else str(self.dir),
            reinit="create_new",  # never reuse (or finish) a run the user has open
            settings=self._wandb.Settings(silent=True, console="off"),
        )

    def _open(self, name: str, params: dict[str, Any]) -> None:
        run = self._init(name, params, "train")
        run.define_metric("tokens")
        run.define_metric("*", step_metric="tokens")
        self._run = self.run = run
        logger.info("W&B run %s (%s) writes to %s", name, self.mode, run.dir)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        final = {k: v for k, v in metrics.items() if k.startswith("final/")}
        series = {k: v for k, v in metrics.items() if not k.startswith("final/")}
        if series:
            self._run.log({"tokens": step, **series})
        if final:
            self._run.summary.update(final)

    def _close(self, status: str, final: dict[str, str]) -> None:
        self._run.summary.update(
            {"status": status, **({"error": final["error"]} if final.get("error") else {})}
        )
        self._run.finish(exit_code=0 if status == "completed" else 1)
        self._run = None

    def _log_result_files(self, directory: Path, result: Any, metrics: dict[str, float], name: str) -> Any:
        wandb = self._wandb
        config = {"primary": result.primary, "approaches": ",".join(result.fits), **result.fit_options}
        run = self._init(name, config, "scaling-laws")
        try:
            images = {f"figures/{p.stem}": wandb.Image(str(p)) for p in sorted(directory.glob("*.png"))}
            table = result.chinchilla_table()
            run.log({**images, "chinchilla_table": wandb.Table(dataframe=table)})
            run.summary.update(metrics)
            artifact = wandb.Artifact(_safe_name(name), type="scaling-laws")
            artifact.add_dir(str(directory))
            run.log_artifact(artifact)
        finally:
            run.finish()
        return run
