"""Hydra stage commands: ``ff-plan``, ``ff-train``, ``ff-analyze``, ``ff-visualize``.

Each reads its YAML from ``flops_fit/app/conf`` (overridable on the command line, ``key=value``). Every key of a
config is consumed: :class:`_Config` hands keys out one by one and refuses to finish while any is left
unread, so a key that nothing reads is an error rather than silently ignored. User objects (model, dataset,
loss, train_fn) are named by import path with Hydra's ``_target_``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from flops_fit.app.console import escape_controls

logger = logging.getLogger("flops_fit")

CONF_DIR = "conf"


class ConfigError(ValueError):
    """A config key that is missing, unknown or of the wrong kind."""


class _Config:
    """A mapping whose keys must all be taken exactly once (``take``); ``done()`` rejects leftovers."""

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self._data = dict(data)
        self._where = where

    def take(self, key: str) -> Any:
        if key not in self._data:
            raise ConfigError(f"config key {self._where}{key} is missing")
        return self._data.pop(key)

    def section(self, key: str) -> _Config:
        value = self.take(key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {self._where}{key} must be a mapping, got {value!r}")
        return _Config(value, f"{self._where}{key}.")

    def done(self) -> None:
        if self._data:
            raise ConfigError(f"unknown config key(s) {[self._where + k for k in self._data]}; remove them")


def _container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _instantiate(spec: Any, what: str) -> Any:
    """Build ``spec`` (a mapping with ``_target_``) with Hydra; None stays None."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigError(f"{what} must be null or a mapping with _target_ (an import path), got {spec!r}")
    try:
        return hydra.utils.instantiate(spec)
    except Exception as exc:  # Hydra wraps import and call failures in its own error types
        raise ConfigError(f"{what} {spec['_target_']!r} could not be built: {exc}") from None


def _import(path: Any, what: str) -> Any:
    if path is None:
        return None
    if not isinstance(path, str):
        raise ConfigError(f"{what} must be an import path string, got {path!r}")
    try:
        return hydra.utils.get_method(path)
    except Exception as exc:  # Hydra wraps import failures in its own error types
        raise ConfigError(f"{what} {path!r} cannot be imported: {exc}") from None


def _callable(spec: Any, what: str) -> Any:
    """An import path, or a mapping with ``_target_`` (``_partial_: true`` binds keyword arguments)."""
    if spec is None or isinstance(spec, str):
        return _import(spec, what)
    fn = _instantiate(spec, what)
    if not callable(fn):
        raise ConfigError(f"{what} must build a callable (add _partial_: true to bind arguments), got {fn!r}")
    return fn


def import_object(path: str, what: str) -> Any:
    """The object at import path ``path`` (``pkg.module.name``), or a ConfigError naming ``what``."""
    return _import(path, what)


def build_object(path: str, what: str) -> Any:
    """``path``'s callable called with no arguments (as ``_target_: path``), or a ConfigError naming ``what``."""
    return _instantiate({"_target_": path}, what)


def plan_from_config(data: Mapping[str, Any]) -> tuple[Any, Path]:
    """Build the plan that ``ff-plan`` writes (pure: no files written). Returns (plan, plan path)."""
    from flops_fit.plan.planner import SweepPlanner
    from flops_fit.plan.spec import ModelSpec

    cfg = _Config(data)
    compute, sweep, output = cfg.section("compute"), cfg.section("sweep"), cfg.section("output")
    model_cfg = cfg.take("model")
    cfg.done()
    spec = None
    if model_cfg is not None:
        m = _Config(model_cfg, "model.")
        target = m.take("_target_")
        spec = ModelSpec(
            _import(target, "model._target_"),
            m.take("size_param"),
            m.take("kwargs") or {},
            size_values=m.take("size_values") if "size_values" in model_cfg else None,
            size_multiple=m.take("size_multiple") if "size_multiple" in model_cfg else None,
            param_count=m.take("param_count") if "param_count" in model_cfg else "non_embedding",
            shape_fn=_import(m.take("shape_fn"), "model.shape_fn") if "shape_fn" in model_cfg else None,
            sample_fn=_callable(m.take("sample_fn"), "model.sample_fn") if "sample_fn" in model_cfg else None,
            loss_fn=_callable(m.take("loss_fn"), "model.loss_fn") if "loss_fn" in model_cfg else None,
        )
        m.done()
    kwargs = {
        "model": spec,
        "flops": sweep.take("flops"),
        "tokens_per_param": sweep.take("tokens_per_param"),
        "size_span": sweep.take("size_span"),
        "design": sweep.take("design"),
        "batch_size": sweep.take("batch_size"),
        "tokens_per_sample": sweep.take("tokens_per_sample"),
        "dataset_tokens": sweep.take("dataset_tokens"),
        "data_id": sweep.take("data_id"),
        "lr_rule": sweep.take("lr"),
        "seed": sweep.take("seed"),
    }
    num_sizes = sweep.take("num_model_sizes")
    budgets = compute.take("budgets")
    min_flops, max_flops, num = (
        compute.take("min_flops"),
        compute.take("max_flops"),
        compute.take("num_budgets"),
    )
    out_dir, plan_file = Path(output.take("dir")), output.take("plan_file")
    for section in (compute, sweep, output):
        section.done()
    if isinstance(kwargs["size_span"], list):
        kwargs["size_span"] = tuple(kwargs["size_span"])
    if budgets is not None:
        planner = SweepPlanner.from_budgets(budgets, num_sizes, **kwargs)
    else:
        planner = SweepPlanner(min_flops, max_flops, num, num_sizes, **kwargs)
    return planner.plan(), out_dir / plan_file


def default_config(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stage's YAML from ``flops_fit/app/conf`` with dotted-key ``overrides`` applied and interpolations resolved.

    This is how the ``flops-fit`` subcommands reuse the stage configs without Hydra's command line.
    """
    from importlib.resources import files

    cfg = OmegaConf.create((files("flops_fit.app") / CONF_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    cfg.pop("hydra", None)
    OmegaConf.set_struct(cfg, True)
    for key, value in (overrides or {}).items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except Exception as exc:  # omegaconf raises its own types for unknown keys
            raise ConfigError(f"cannot set {key}: {exc}") from None
    return _container(cfg)


def run_plan(data: Mapping[str, Any]) -> Any:
    """Plan and save (``ff-plan`` / ``flops-fit plan``); returns the plan."""
    plan, path = plan_from_config(data)
    plan.save(path)
    print(escape_controls(plan.summary()))
    print(f"\nwrote {path} ({len(plan.experiments)} experiments)")
    return plan


def _run(stage: Any, cfg: DictConfig) -> None:
    """Run a stage; configuration errors end the command with status 2 and a one-line message."""
    from flops_fit.app.console import configure_logging

    configure_logging(logging.INFO)  # Hydra's log handlers stay; warnings become one line each
    try:
        stage(_container(cfg))
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {escape_controls(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None


def run_train(data: Mapping[str, Any]) -> Any:
    from flops_fit.training.runner import TrainingRunner

    cfg = _Config(data)
    output = cfg.section("output")
    out_dir, plan_file = Path(output.take("dir")), output.take("plan_file")
    output.done()
    train_keys = {k: v for k, v in (cfg.take("train") or {}).items() if v is not None}
    from_plan = sorted(set(train_keys) & {"batch_size", "seed"})
    if from_plan:
        raise ConfigError(
            f"train.{from_plan[0]} is set per experiment by the plan; remove it here and set "
            f"sweep.{from_plan[0]} when planning (ff-plan)"
        )
    train = _train_config(out_dir / plan_file, train_keys)
    executor = cfg.take("executor")
    if executor == "ray":
        from flops_fit.training.ray_executor import require_ray

        try:
            require_ray()
        except ImportError as exc:
            raise ConfigError(f"executor=ray: {exc}") from None
    options = {
        key: cfg.take(key)
        for key in (
            "mode",
            "seed",
            "device",
            "retry_failed",
            "progress",
            "ray_address",
            "resources",
            "max_retries",
            "workers",
            "checkpoint_dir",
            "api_url",
            "token_env",
            "max_in_flight",
            "trust_plan",
        )
    }
    objects = {key: cfg.take(key) for key in ("dataset", "eval_dataset", "loss_fn", "train_fn", "model")}
    cfg.done()  # every key read before anything is built
    readers = {
        "dataset": "local",
        "eval_dataset": "local",
        "loss_fn": "local",
        "train_fn": "function",
        "model": "local",
    }
    for key, mode in readers.items():
        if objects[key] is not None and options["mode"] != mode:
            raise ConfigError(f"{key} is read only by mode={mode} (mode={options['mode']} here); remove it")
    runner = TrainingRunner(
        sweep_path=out_dir / plan_file,
        output_dir=out_dir,
        dataset=_instantiate(objects["dataset"], "dataset"),
        eval_dataset=_instantiate(objects["eval_dataset"], "eval_dataset"),
        loss_fn=_instantiate(objects["loss_fn"], "loss_fn"),
        train_fn=_import(objects["train_fn"], "train_fn"),
        model=_named_model(objects["model"], out_dir / plan_file),
        train_config=train,
        executor=executor,
        **options,
    )
    runs = runner.run_sweep()
    done = int((runs["status"] == "completed").sum()) if len(runs) else 0
    print(f"{done} of {len(runs)} finished experiments completed; results in {runner.results_path}")
    return runs


def _named_model(path: Any, plan_path: Path) -> Any:
    """The ``model`` key of ff-train (``flops-fit train --model``): the user's model class by import path,
    built with the plan's size parameter and keywords; the plan's own class path is then never imported.
    None when not given (the plan's model is trained, with ``trust_plan``)."""
    from dataclasses import replace

    from flops_fit.plan.sweep import SweepPlan

    if path is None:
        return None
    if not isinstance(path, str):
        raise ConfigError(f"model must be an import path such as my_pkg.models:GPT, got {path!r}")
    plan = SweepPlan.load(plan_path) if plan_path.is_file() else None
    if plan is None or plan.model is None:
        raise ConfigError(
            f"model={path} needs a plan planned with a model (its size parameter and keywords); "
            f"{plan_path} has none"
        )
    return replace(plan.model, model_cls=_import(path, "model"), trusted=True)


def _train_config(plan_path: Path, keys: Mapping[str, Any]) -> Any:
    """The TrainConfig ff-train runs: the plan's recorded ``train_config`` with the ``train.*`` keys set on
    the command line on top (None: nothing recorded or set, the runner's default)."""
    from flops_fit.core.train_config import FIELD_NAMES, config_from_mapping
    from flops_fit.plan.sweep import SweepPlan
    from flops_fit.training.jobs import check_recorded_train_config

    plan = SweepPlan.load(plan_path) if plan_path.is_file() else None  # missing: the runner says so
    recorded = (plan.config.get("train_config") if plan is not None else None) or {}
    from_plan = {k: v for k, v in recorded.items() if k in FIELD_NAMES and k not in keys}
    check_recorded_train_config(from_plan)  # a plan may come from someone else: bound what it asks for
    merged = {**from_plan, **keys}
    if not merged:
        return None
    if plan is not None and plan.experiments:  # the batch size every experiment gets (for micro-batching)
        merged["batch_size"] = plan.experiments[0].batch_size
    return config_from_mapping(merged, "train")


def _plan_path(plan: Any, out_dir: Path, results: Any) -> Path | None:
    """The ``plan`` key of ff-analyze / ff-visualize. ``auto``: the output folder's plan, when the results
    are that folder's own ledger and the folder has a plan; a results file from elsewhere is used whole."""
    from flops_fit.core.sweepdir import PLAN_FILE

    if plan == "auto":
        path = out_dir / PLAN_FILE
        own = isinstance(results, str) and Path(results).resolve().parent == out_dir.resolve()
        return path if own and path.is_file() else None
    if plan is not None and not isinstance(plan, str):
        raise ConfigError(f"plan must be auto, a sweep.json path or null, got {plan!r}")
    return None if plan is None else Path(plan)


def run_analyze(data: Mapping[str, Any]) -> Any:
    from flops_fit.analysis.approaches import label
    from flops_fit.core.io import atomic_write_text
    from flops_fit.core.sweepdir import RESULT_FILE, TABLE_FILE
    from flops_fit.report.analyzer import ScalingLawAnalyzer

    cfg = _Config(data)
    output = cfg.section("output")
    out_dir = Path(output.take("dir"))
    output.done()
    results = cfg.take("results")
    analyzer = ScalingLawAnalyzer(
        results,
        out_dir,
        plan=_plan_path(cfg.take("plan"), out_dir, results),
        approach=cfg.take("approach"),
        columns=cfg.take("columns"),
        bootstrap=cfg.take("bootstrap"),
        seed=cfg.take("seed"),
        exclude_outliers=cfg.take("exclude_outliers"),
        budget_rtol=cfg.take("budget_rtol"),
    )
    budgets = cfg.take("table_budgets")
    cfg.done()
    if budgets is not None:
        from flops_fit.core.validate import positive_budgets

        try:
            budgets = list(positive_budgets(budgets))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"table_budgets: {exc}") from None
    analysis = analyzer.analyze()
    result = analyzer.result_  # the Result the analysis was fitted as
    # one record of how the laws were fitted (result.json beside scaling_laws.json), read by report and plot
    result.save(out_dir, plots=False)
    if budgets is not None:
        atomic_write_text(out_dir / TABLE_FILE, result.tables_markdown(budgets))  # as Result.save writes it
    print(escape_controls(result.summary()))  # the summary every command prints; ids from files escaped
    if budgets is not None:
        print(f"\nChinchilla table at table_budgets ({label(result.primary)}):")
        print(result.table_markdown(budgets))
    print(f"\nwrote {analyzer.scaling_laws_path}, {out_dir / RESULT_FILE} and {out_dir / TABLE_FILE}")
    return analysis


def run_visualize(data: Mapping[str, Any]) -> Any:
    from flops_fit.report.plots import ScalingVisualizer

    cfg = _Config(data)
    output = cfg.section("output")
    out_dir = Path(output.take("dir"))
    output.done()
    results = cfg.take("results")
    viz = ScalingVisualizer.from_files(
        results,
        cfg.take("scaling_laws"),
        target_budgets=cfg.take("target_budgets"),
        plan=_plan_path(cfg.take("plan"), out_dir, results),
        columns=cfg.take("columns"),
    )
    formats, dpi = cfg.take("formats"), cfg.take("dpi")
    cfg.done()
    if isinstance(formats, str):  # formats=png on the command line
        formats = [f.strip() for f in formats.split(",")]
    if not isinstance(formats, (list, tuple)):
        raise ConfigError(f"formats must be a list of file types, e.g. formats=[png,pdf], got {formats!r}")
    paths = viz.save_all(out_dir, formats=tuple(formats), dpi=dpi)
    for p in paths:
        print(f"wrote {p}")
    return paths


def check_overrides(name: str, argv: list[str]) -> None:
    """Exit with status 2 naming a plain ``key=value`` override whose key the stage's YAML does not have
    (Hydra itself rejects it with status 1 and a traceback-like message). ``+key=``, ``~key``, config
    groups (``a/b=``) and ``hydra.*`` keys are left to Hydra."""
    from importlib.resources import files

    if any(
        a.split("=")[0] in ("--config-name", "--config-dir", "-cn", "-cd", "--config-path", "-cp")
        for a in argv
    ):
        return  # another config than the bundled one: Hydra checks against it
    cfg = OmegaConf.create((files("flops_fit.app") / CONF_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep or arg.startswith(("-", "+", "~")) or "/" in key or key.split(".")[0] == "hydra":
            continue
        node: Any = cfg
        for depth, part in enumerate(key.split(".")):
            if not isinstance(node, DictConfig):
                break  # below a leaf or a null section: Hydra and the stage's own checks decide
            if part not in node:
                print(f"error: {_unknown_key_hint(key, depth, node)}", file=sys.stderr)
                raise SystemExit(2)
            node = node[part]


def _unknown_key_hint(key: str, depth: int, node: DictConfig) -> str:
    """The message for an override ``key`` whose part at ``depth`` is not a key of ``node``: the closest real
    key(s) at that level (a typo is the usual cause), then every key there."""
    import difflib

    parts = key.split(".")
    where = ".".join(parts[:depth])
    names = [str(k) for k in node.keys() if k != "hydra"]
    full = [f"{where}.{k}" if where else k for k in sorted(names)]
    close = difflib.get_close_matches(parts[depth], names, n=3, cutoff=0.6)
    guess = ".".join([*parts[:depth], close[0], *parts[depth + 1 :]]) if close else None
    hint = f"; did you mean {guess}?" if guess else ""
    return f"unknown config key {key!r}{hint} (the keys here are {full})"


def _entry(name: str, main: Any) -> Any:
    def run() -> None:
        check_overrides(name, sys.argv[1:])
        main()

    run.__doc__ = main.__doc__
    return run


@hydra.main(config_path=CONF_DIR, config_name="planner", version_base=None)
def _plan_main(cfg: DictConfig) -> None:
    """ff-plan: plan an IsoFLOP sweep."""
    _run(run_plan, cfg)


@hydra.main(config_path=CONF_DIR, config_name="trainer", version_base=None)
def _train_main(cfg: DictConfig) -> None:
    """ff-train: run or resume the planned sweep."""
    _run(run_train, cfg)


@hydra.main(config_path=CONF_DIR, config_name="analyzer", version_base=None)
def _analyze_main(cfg: DictConfig) -> None:
    """ff-analyze: fit the scaling laws."""
    _run(run_analyze, cfg)


@hydra.main(config_path=CONF_DIR, config_name="visualizer", version_base=None)
def _visualize_main(cfg: DictConfig) -> None:
    """ff-visualize: draw the figures."""
    _run(run_visualize, cfg)


plan_main = _entry("planner", _plan_main)
train_main = _entry("trainer", _train_main)
analyze_main = _entry("analyzer", _analyze_main)
visualize_main = _entry("visualizer", _visualize_main)
