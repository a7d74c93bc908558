"""The ``flops-fit`` command line.

Every subcommand validates its arguments before doing any work; bad input exits with status 2 and a message
that names the argument and the fix.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from flops_fit.app.console import (
    PROGRESS_LOGGING,
    UsageError,
    configure_logging,
    escape_controls,
    floats,
    guarded,
)
from flops_fit.app.console import working as _working
from flops_fit.app.fit_command import add_fit_parser, check_bootstrap_arg
from flops_fit.core.sweepdir import SweepDir

logger = logging.getLogger("flops_fit")

#: Entry-point group of extra subcommands: each entry is ``register(sub_parser)`` (the demo lives with the
#: examples, so this module imports none of them).
COMMANDS_GROUP = "flops_fit.commands"


def _threads(value: str) -> int | str:
    """``--threads``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, got {value!r}")
    return count


def _dir_arg(value: str, what: str, must_exist: bool = True) -> Path:
    path = Path(value).expanduser()
    if (must_exist or path.exists()) and not path.is_dir():
        raise UsageError(f"{what} {value!r} is not a directory; give the sweep's output directory")
    return path


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    """The JSON object given to ``option`` ({} when absent), or a UsageError naming the option."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option} must be a JSON object, e.g. '{{\"num_layers\": 4}}': {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option} must be a JSON object, e.g. '{{\"num_layers\": 4}}'")
    return value


def design_option(args: argparse.Namespace) -> Any:
    """The design of ``--design``, ``--cooldown`` and ``--validate`` (a name, or a WSD mapping)."""
    given = {k: v for k, v in (("cooldown", args.cooldown), ("validate", args.validate)) if v is not None}
    if not given:
        return args.design
    if args.design != "wsd":
        raise UsageError(f"--{' and --'.join(given)}: only with --design wsd (options of the WSD design)")
    return {"kind": "wsd", **given}


def cmd_plan(args: argparse.Namespace) -> int:
    """Plan an IsoFLOP sweep and write DIR/sweep.json."""
    from flops_fit.app.stages import default_config, run_plan

    overrides: dict[str, Any] = {"output.dir": str(_dir_arg(args.out, "--out", must_exist=False))}
    if args.budgets:
        from flops_fit.plan.planner import MAX_COMPUTE_BUDGETS

        overrides["compute.budgets"] = floats(args.budgets, "--budgets")
        if len(overrides["compute.budgets"]) > MAX_COMPUTE_BUDGETS:
            raise UsageError(
                f"--budgets has {len(overrides['compute.budgets'])} values, more than the limit of "
                f"{MAX_COMPUTE_BUDGETS} budgets per sweep"
            )
    else:
        overrides.update(
            {
                "compute.min_flops": args.min_flops,
                "compute.max_flops": args.max_flops,
                "compute.num_budgets": args.num_budgets,
            }
        )
    overrides.update(
        {
            "sweep.num_model_sizes": args.sizes,
            "sweep.design": design_option(args),
            "sweep.batch_size": args.batch_size,
            "sweep.tokens_per_sample": args.tokens_per_sample,
            "sweep.flops": args.flops,
        }
    )
    if args.shape_fn and args.flops != "chinchilla":
        raise UsageError(f"--shape-fn is read only by --flops chinchilla (got --flops {args.flops})")
    if args.sample_kwargs and not args.sample_fn:
        raise UsageError("--sample-kwargs needs --sample-fn (the function they are passed to)")
    model_options = (
        ("--size-param", args.size_param),
        ("--model-kwargs", args.model_kwargs),
        ("--size-multiple", args.size_multiple),
        ("--shape-fn", args.shape_fn),
        ("--sample-fn", args.sample_fn),
        ("--loss-fn", args.loss_fn),
    )
    if not args.model and any(v for _, v in model_options):
        given = " and ".join(o for o, v in model_options if v)
        raise UsageError(
            f"{given} need(s) --model (the import path of the model class); without a model the "
            "sweep is planned in parameter space"
        )
    if args.model:
        from flops_fit.app.stages import ConfigError, _import

        try:
            _import(args.model, "--model")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if not args.size_param:
            raise UsageError("--model needs --size-param (the keyword of the model that sets its size)")
        kwargs = _json_object(args.model_kwargs, "--model-kwargs")
        model: dict[str, Any] = {"_target_": args.model, "size_param": args.size_param, "kwargs": kwargs}
        if args.size_multiple is not None:
            model["size_multiple"] = args.size_multiple
        if args.shape_fn:
            model["shape_fn"] = args.shape_fn
        if args.loss_fn:
            model["loss_fn"] = args.loss_fn
        if args.sample_fn:
            model["sample_fn"] = {
                "_target_": args.sample_fn,
                "_partial_": True,
                **_json_object(args.sample_kwargs, "--sample-kwargs"),
            }
        overrides["model"] = model
    try:
        run_plan(default_config("planner", overrides))
    except (ValueError, TypeError) as exc:  # the planner names its keywords: say which flag they are
        raise UsageError(_flag_names(str(exc))) from None
    return 0


#: The planner's keyword names, as ``flops-fit plan`` spells them.
_PLAN_FLAGS = {
    "num_compute_budgets": "--num-budgets",
    "budgets:": "--budgets:",
    "budgets[": "--budgets[",
    "num_model_sizes": "--sizes",
    "min_flops": "--min-flops",
    "max_flops": "--max-flops",
    "tokens_per_sample": "--tokens-per-sample",
    "batch_size": "--batch-size",
    "size_multiple": "--size-multiple",
    "size_param": "--size-param",
    "model_kwargs": "--model-kwargs",
    "size_span / size_values": "the model sizes (--size-multiple)",
}


def _flag_names(message: str) -> str:
    """``message`` with the planner's keyword names replaced by the flags that set them."""
    for name, flag in _PLAN_FLAGS.items():
        end = r"(?![\w])" if name[-1].isalnum() or name[-1] == "_" else ""
        message = re.sub(rf"(?<![\w-]){re.escape(name)}{end}", flag, message)
    return message


def _resources(text: str | None) -> dict[str, float] | None:
    """``--resources GPU=1,CPU=8`` as a mapping of Ray resource names to amounts."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        name, sep, amount = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(amount)
        except ValueError:
            raise UsageError(
                f"--resources must be NAME=AMOUNT pairs separated by commas, e.g. GPU=1,CPU=8; got {text!r}"
            ) from None
    if not out:
        raise UsageError(f"--resources is empty; give e.g. GPU=1,CPU=8, got {text!r}")
    return out


def _executor_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The executor flags of ``flops-fit train`` as trainer config overrides."""
    if args.executor == "ray":
        from flops_fit.training.ray_executor import require_ray

        try:
            require_ray()
        except ImportError as exc:
            raise UsageError(f"--executor ray: {exc}") from None
    return {
        "executor": args.executor,
        "ray_address": args.ray_address,
        "resources": _resources(args.resources),
        "max_retries": args.max_retries,
        "workers": args.workers,
        "checkpoint_dir": args.checkpoint_dir,
    }


def cmd_train(args: argparse.Namespace) -> int:
    """Run or resume the sweep planned in DIR/sweep.json."""
    from flops_fit.app.stages import default_config, run_train
    from flops_fit.core.sweepdir import PLAN_FILE
    from flops_fit.training.ray_executor import WorkersLostError

    out = _dir_arg(args.dir, "DIR")
    if not (out / PLAN_FILE).is_file():
        raise UsageError(f"{out / PLAN_FILE} not found; run `flops-fit plan --out {out}` first")
    overrides: dict[str, Any] = {
        "output.dir": str(out),
        "mode": args.mode,
        "device": args.device,
        "progress": not args.no_progress,
        **_executor_overrides(args),
    }
    for key in ("dataset", "eval_dataset", "loss_fn"):
        target = getattr(args, key)
        if target:
            overrides[key] = {"_target_": target, **({"_partial_": True} if key == "loss_fn" else {})}
    if args.train_fn:
        overrides["train_fn"] = args.train_fn
    if args.trust_plan:
        overrides["trust_plan"] = True
    if args.model:
        overrides["model"] = args.model
    if args.api_url:
        overrides["api_url"] = args.api_url
    if args.token_env:
        overrides["token_env"] = args.token_env
    if args.max_in_flight is not None:
        overrides["max_in_flight"] = args.max_in_flight
    if args.lr is not None:
        overrides["train.lr"] = args.lr
    if args.weight_decay is not None:
        overrides["train.weight_decay"] = args.weight_decay
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    try:
        run_train(default_config("trainer", overrides))
    except WorkersLostError as exc:
        print(f"flops-fit train: {escape_controls(str(exc))}", file=sys.stderr)
        return 1
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Fit the scaling laws of DIR/results.jsonl; write DIR/scaling_laws.json and the table."""
    from flops_fit.app.stages import default_config, run_analyze

    out = _dir_arg(args.dir, "DIR")
    check_bootstrap_arg(args.bootstrap)
    overrides: dict[str, Any] = {
        "output.dir": str(out),
        "approach": args.approach,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
    }
    if args.budgets:
        overrides["table_budgets"] = floats(args.budgets, "--budgets")
    with _working(f"fitting approaches ({args.approach}) to the runs of {out} ..."):
        run_analyze(default_config("analyzer", overrides))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the figures of DIR into DIR."""
    from flops_fit.app.stages import default_config, run_visualize

    out = _dir_arg(args.dir, "DIR")
    if not SweepDir(out).scaling_laws.is_file():
        raise UsageError(f"{SweepDir(out).scaling_laws} not found; run `flops-fit analyze {args.dir}` first")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    with _working(f"drawing figures ({', '.join(formats)}) into {out} ..."):
        run_visualize(
            default_config("visualizer", {"output.dir": str(out), "formats": formats, "dpi": args.dpi})
        )
    return 0


#: ``flops-fit serve --demo``: the demo's service job, by import path (this module imports no example).
DEMO_SERVICE_JOB = "flops_fit.examples.gpt_text.service_job"


def _service_job(args: argparse.Namespace) -> Any:
    """The LocalJob that ``flops-fit serve`` trains each submitted experiment with."""
    from flops_fit.app.stages import build_object, import_object
    from flops_fit.plan.spec import ModelSpec
    from flops_fit.training.jobs import LocalJob

    paths = {"--model": args.model, "--size-param": args.size_param, "--dataset": args.dataset,
             "--loss-fn": args.loss_fn}  # fmt: skip
    if args.demo:
        given = [flag for flag, value in {**paths, "--eval-dataset": args.eval_dataset}.items() if value]
        if given or args.model_kwargs:
            raise UsageError(
                f"--demo serves the demo's model and data; drop {', '.join(given) or '--model-kwargs'}"
            )
        return import_object(DEMO_SERVICE_JOB, "--demo")(device=args.device)
    missing = [flag for flag, value in paths.items() if not value]
    if missing:
        raise UsageError(
            f"flops-fit serve needs {', '.join(missing)} (import paths, as flops-fit train takes them), or --demo"
        )
    kwargs = _json_object(args.model_kwargs, "--model-kwargs")
    model = import_object(args.model, "--model")
    try:
        spec = ModelSpec(model, args.size_param, kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--model/--size-param/--model-kwargs: {exc}") from None
    return LocalJob(
        model=spec,
        dataset=build_object(args.dataset, "--dataset"),
        eval_dataset=build_object(args.eval_dataset, "--eval-dataset") if args.eval_dataset else None,
        loss_fn=import_object(args.loss_fn, "--loss-fn"),
        device=args.device,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the training service of ``--mode api`` until interrupted."""
    import os

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be a TCP port (1-65535), got {args.port}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not args.token_env or not os.environ.get(args.token_env):
        raise UsageError(
            f"--token-env: the environment variable {args.token_env or '(empty)'} holding the bearer token is "
            f"not set; export {args.token_env or 'FLOPS_FIT_API_TOKEN'}=<a long random string>"
        )
    state_dir = _dir_arg(args.state_dir, "--state-dir", must_exist=False)
    try:
        from flops_fit.app.serve import serve
    except ImportError as exc:
        raise UsageError(
            f"flops-fit serve needs the serve extra: pip install 'flops-fit[serve]' ({exc})"
        ) from None
    job = _service_job(args)
    serve(lambda: job, host=args.host, port=args.port, state_dir=state_dir, token_env=args.token_env,
          workers=args.workers)  # fmt: skip
    return 0


def _add_serve_parser(sub_parser: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """``flops-fit serve``."""
    serve = sub_parser(
        "serve",
        "serve the training service of --mode api (protocol 1, docs/api.md) until interrupted",
        "  export FLOPS_FIT_API_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')\n"
        "  flops-fit serve --port 8765 --demo\n"
        "  flops-fit serve --port 8765 --model my_pkg.GPT --size-param d_model --dataset my_pkg.data.train_set \\\n"
        "      --loss-fn my_pkg.losses.lm_loss --workers 2",
    )
    serve.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    serve.add_argument(
        "--token-env", dest="token_env", default="FLOPS_FIT_API_TOKEN",
        help="environment variable holding the bearer token clients must send (default FLOPS_FIT_API_TOKEN)",
    )  # fmt: skip
    serve.add_argument(
        "--state-dir", dest="state_dir", default="flops_fit_service",
        help="job table (jobs.sqlite) and checkpoints; a restart resumes from it (default flops_fit_service)",
    )  # fmt: skip
    serve.add_argument("--workers", type=int, default=1, help="experiments trained at a time (default 1)")
    serve.add_argument("--demo", action="store_true", help="serve the demo's GPT, corpus and loss")
    serve.add_argument("--model", help="import path of the model class or factory")
    serve.add_argument("--size-param", dest="size_param", help="the model keyword that sets its size")
    serve.add_argument("--model-kwargs", dest="model_kwargs", help="other model keywords as a JSON object")
    serve.add_argument("--dataset", help="import path of a function returning the training Dataset")
    serve.add_argument(
        "--eval-dataset", dest="eval_dataset", help="import path of a function returning the eval set"
    )
    serve.add_argument("--loss-fn", dest="loss_fn", help="import path of loss_fn(model(inputs), targets)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flops-fit",
        description="Compute-optimal scaling laws for your own model and data (Chinchilla Approaches 1-3).",
        epilog=(
            "examples:\n"
            "  flops-fit demo                                    # the main job: a real GPT sweep on the bundled text\n"
            "  flops-fit fit chinchilla --approach parametric    # fit the bundled Chinchilla points\n"
            "  flops-fit plan --help                             # each subcommand has its own examples"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)
    sub.required = True

    add_fit_parser(sub)
    sub_parser = _sub_parser_factory(sub)
    for command in entry_points(group=COMMANDS_GROUP):  # e.g. `demo`, from flops_fit.examples
        command.load()(sub_parser)

    _add_plan_parser(sub_parser)
    _add_train_parser(sub_parser)
    _add_serve_parser(sub_parser)
    _add_analyze_and_plot_parsers(sub_parser)
    sub.add_parser("report", help=REPORT_HELP, build=_report_parser)
    return parser


#: ``flops-fit report``'s line in ``flops-fit --help``; its parser lives with the report (pandas, matplotlib).
REPORT_HELP = "write a self-contained HTML report of a saved result"


def _report_parser(subparsers: Any) -> argparse.ArgumentParser:
    from flops_fit.report.html import add_report_parser

    return add_report_parser(subparsers)


class _SubParser(argparse.ArgumentParser):
    """A subcommand's parser; given ``build(subparsers) -> parser``, a stand-in that builds the real one on
    first use, so that ``flops-fit --help`` imports none of the heavy modules that parser's module needs."""

    def __init__(self, *args: Any, build: Callable[[Any], argparse.ArgumentParser] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self._build, self._built = build, None

    def _real(self) -> argparse.ArgumentParser:
        if self._build is None:
            return self
        if self._built is None:
            holder = argparse.ArgumentParser(prog=self.prog.rsplit(" ", 1)[0]).add_subparsers()
            self._built = self._build(holder)
        return self._built

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        real = self._real()
        if real is self:
            return super().parse_known_args(args, namespace)
        return real.parse_known_args(args, namespace)

    def format_help(self) -> str:
        real = self._real()
        return super().format_help() if real is self else real.format_help()


def _sub_parser_factory(sub: Any) -> Callable[[str, str, str], argparse.ArgumentParser]:
    """``sub_parser(name, help, examples)``: a subcommand parser with its help as description and examples."""

    def sub_parser(name: str, help_: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    return sub_parser


def add_design_options(parser: argparse.ArgumentParser) -> None:
    """``--design``, ``--cooldown`` and ``--validate`` (plan and demo)."""
    parser.add_argument(
        "--design",
        choices=("isoflop", "wsd"),
        default="isoflop",
        help="isoflop: every run from scratch; wsd: one constant-learning-rate trunk per size and a cooldown "
        "branch per run (a fraction of the FLOPs)",
    )
    parser.add_argument(
        "--cooldown",
        type=float,
        help="--design wsd: fraction of a branch's steps in its cooldown (default 0.2)",
    )
    parser.add_argument(
        "--validate",
        type=int,
        help="--design wsd: also train K runs from scratch at branches' (N, D) and report the difference",
    )


def _add_plan_parser(sub_parser: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """``flops-fit plan``."""
    plan = sub_parser(
        "plan",
        "plan an IsoFLOP sweep and write OUT/sweep.json",
        "  flops-fit plan --min-flops 1e17 --max-flops 1e19 --sizes 7 --out runs/a\n"
        "  flops-fit plan --budgets 1e15,3e15,1e16 --model flops_fit.examples.gpt.GPT.from_config \\\n"
        "      --size-param d_model --size-multiple 16 \\\n"
        '      --model-kwargs \'{"vocab_size": 4096, "num_layers": 2, "max_seq_len": 128}\' --tokens-per-sample 128 \\\n'
        "      --flops chinchilla --shape-fn flops_fit.examples.gpt.transformer_shape --out runs/gpt",
    )
    plan.add_argument("--out", default="outputs", help="output directory")
    plan.add_argument("--min-flops", type=float, default=1e17, help="smallest budget, FLOPs")
    plan.add_argument("--max-flops", type=float, default=1e19, help="largest budget, FLOPs")
    plan.add_argument("--num-budgets", type=int, default=3, help="budgets log-spaced from min to max")
    plan.add_argument("--budgets", help="explicit FLOP budgets, comma separated (overrides the range)")
    plan.add_argument("--sizes", type=int, default=7, help="model sizes per budget (>= 3)")
    add_design_options(plan)
    plan.add_argument("--flops", default="6nd", help="FLOP convention: 6nd, chinchilla or measured")
    plan.add_argument("--batch-size", type=int, default=32, help="samples per optimiser step")
    plan.add_argument(
        "--tokens-per-sample", type=int, default=None, help="tokens per sample (e.g. seq length)"
    )
    plan.add_argument("--model", help="import path of the model class or factory (default: parameter space)")
    plan.add_argument("--size-param", help="the model keyword that sets its size, e.g. d_model")
    plan.add_argument("--model-kwargs", help="other model keywords as a JSON object")
    plan.add_argument(
        "--size-multiple",
        type=int,
        help="candidate sizes are multiples of this, e.g. 64 for d_model (default: any integer)",
    )
    plan.add_argument(
        "--shape-fn",
        help="--flops chinchilla: import path of shape_fn(model) -> TransformerShape, "
        "e.g. flops_fit.examples.gpt.transformer_shape",
    )
    plan.add_argument(
        "--sample-fn",
        help="--flops measured: import path of sample_fn(batch_size, **SAMPLE_KWARGS) -> (inputs, targets), "
        "e.g. flops_fit.examples.gpt.random_batch",
    )
    plan.add_argument("--sample-kwargs", help="keywords bound to --sample-fn, as a JSON object")
    plan.add_argument(
        "--loss-fn",
        dest="loss_fn",
        help="--flops measured: import path of loss_fn(model(inputs), targets) when the model's output is "
        "not plain logits, e.g. flops_fit.examples.gpt.lm_loss",
    )
    plan.set_defaults(func=cmd_plan)


def _add_train_parser(sub_parser: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """``flops-fit train``."""
    train = sub_parser(
        "train",
        "run or resume the sweep planned in DIR",
        "  flops-fit train runs/a --mode mock\n"
        "  flops-fit train runs/a --mode local --trust-plan --dataset my_pkg.data.train_set \\\n"
        "      --loss-fn my_pkg.losses.lm_loss\n"
        "  flops-fit train runs/a --mode local --model my_pkg.models.GPT --dataset ... --loss-fn ... \\\n"
        "      --executor ray --ray-address auto \\\n"
        "      --checkpoint-dir /shared/ckpt/a --resources GPU=1,CPU=8",
    )
    train.add_argument("dir", help="the sweep's output directory (holds sweep.json)")
    train.add_argument("--mode", default="mock", help="local, mock, function or api")
    train.add_argument("--api-url", dest="api_url", help="--mode api: the training service (flops-fit serve)")
    train.add_argument(
        "--token-env", dest="token_env", help="--mode api: variable holding its token (FLOPS_FIT_API_TOKEN)"
    )
    train.add_argument(
        "--max-in-flight", dest="max_in_flight", type=int,
        help="--mode api: experiments on the service at once (default: the service's workers)",
    )  # fmt: skip
    train.add_argument("--dataset", help="import path of a function returning the training Dataset")
    train.add_argument(
        "--eval-dataset", dest="eval_dataset", help="import path of a function returning the eval set"
    )
    train.add_argument("--loss-fn", dest="loss_fn", help="import path of loss_fn(model(inputs), targets)")
    train.add_argument(
        "--train-fn", dest="train_fn", help="mode=function: import path of train_fn(experiment)"
    )
    train.add_argument(
        "--trust-plan", dest="trust_plan", action="store_true",
        help="--mode local: import and call the model class named in DIR/sweep.json (check its 'model' "
        "entry first: a plan from someone else can name any code)",
    )  # fmt: skip
    train.add_argument(
        "--model",
        help="--mode local: import path of your model class, used with the plan's size parameter and "
        "keywords instead of the plan's model entry (which is then not imported; no --trust-plan needed)",
    )
    _add_local_training_args(train)
    train.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    _add_ray_args(train)
    train.add_argument(
        "--checkpoint-dir",
        dest="checkpoint_dir",
        help="checkpoints of experiments in flight (default DIR/checkpoints; shared storage on a cluster)",
    )
    train.set_defaults(func=cmd_train, **PROGRESS_LOGGING)


def _add_local_training_args(train: argparse.ArgumentParser) -> None:
    """``flops-fit train``'s settings of local training: device, learning rate, weight decay, threads."""
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    train.add_argument(
        "--lr",
        type=float,
        help="--mode local: peak learning rate where the plan sets none (default 3e-4; the u-muP GPT example "
        "wants about 0.5)",
    )
    train.add_argument(
        "--weight-decay",
        dest="weight_decay",
        type=float,
        help="--mode local: AdamW weight decay (default 0.1)",
    )
    train.add_argument(
        "--threads",
        type=_threads,
        help="--mode local: torch CPU threads per run, an integer or auto (default: one thread for small "
        "training steps, torch's default otherwise)",
    )


def _add_ray_args(train: argparse.ArgumentParser) -> None:
    """``flops-fit train``'s executor options (local worker processes, Ray)."""
    train.add_argument(
        "--executor", default="local", help="local (one after another here) or ray (a cluster)"
    )
    add_workers_option(train)
    train.add_argument(
        "--ray-address",
        dest="ray_address",
        help="--executor ray: the cluster, e.g. auto or ray://head:10001 (default: RAY_ADDRESS, else local)",
    )
    train.add_argument(
        "--resources",
        help="--executor ray: each experiment's request, e.g. GPU=1,CPU=8 (default: 1 GPU or 1 CPU)",
    )
    train.add_argument(
        "--max-retries",
        dest="max_retries",
        type=int,
        default=3,
        help="--executor ray: re-runs of an experiment whose worker died (it resumes from its checkpoint)",
    )


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """``--workers K`` (train and demo)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="--executor local: experiments at once, each in a process of its own (small models on CPU "
        "cores; at most the number of cores; default 1)",
    )


def _add_analyze_and_plot_parsers(sub_parser: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """``flops-fit analyze`` and ``flops-fit plot``."""
    analyze = sub_parser(
        "analyze",
        "fit the scaling laws of DIR/results.jsonl",
        "  flops-fit analyze runs/a\n  flops-fit analyze runs/a --approach parametric --bootstrap 1000",
    )
    analyze.add_argument("dir", help="the sweep's output directory (holds results.jsonl)")
    analyze.add_argument(
        "--approach",
        default="all",
        help="isoflop, parametric, envelope, all, or a variant: isoflop:shared, parametric:alpha=beta",
    )
    analyze.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals")
    analyze.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    analyze.add_argument("--budgets", help="FLOP budgets for the table, comma separated")
    analyze.set_defaults(func=cmd_analyze)

    plot = sub_parser("plot", "draw the figures of DIR into DIR", "  flops-fit plot runs/a --formats png,pdf")
    plot.add_argument("dir", help="the sweep's output directory (holds results.jsonl and scaling_laws.json)")
    plot.add_argument("--formats", default="png,svg", help="comma separated: png, svg, pdf")
    plot.add_argument("--dpi", type=int, default=150, help="resolution of raster formats")
    plot.set_defaults(func=cmd_plot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        library_level=getattr(args, "log_level", None),  # a subcommand's own default (the demo: INFO)
        quiet=getattr(args, "quiet_loggers", ()),
    )
    return guarded(f"flops-fit {args.command}", lambda: int(args.func(args)))


if __name__ == "__main__":
    raise SystemExit(main())
