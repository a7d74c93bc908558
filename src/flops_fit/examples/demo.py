"""``flops-fit demo``: the main job, registered as a ``flops-fit`` subcommand through the
``flops_fit.commands`` entry point (the command line does not import the examples)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from flops_fit.app.cli import add_design_options, add_workers_option, design_option
from flops_fit.app.console import PROGRESS_LOGGING, UsageError, floats


def register(sub_parser: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand (``sub_parser(name, help, examples)`` makes its parser)."""
    demo = sub_parser(
        "demo",
        "run the main job: a real GPT sweep on the bundled text, fitted and reported",
        "  flops-fit demo\n  flops-fit demo --out runs/demo --budgets 1e11,2e11,4e11\n  flops-fit demo --mock\n"
        "  flops-fit demo --design wsd   # cooldown branches of shared trunks\n"
        "  flops-fit demo --workers 2    # two experiments at once, one per CPU core\n"
        "  flops-fit demo --api-url http://127.0.0.1:8765   # through `flops-fit serve --port 8765 --demo`",
    )
    demo.add_argument("--out", default="flops_fit_demo", help="output directory (re-running resumes)")
    demo.add_argument("--budgets", help="FLOP budgets, comma separated (default: sized for a 2-core CPU)")
    demo.add_argument("--executor", default="local", help="local or ray (each experiment a Ray task)")
    demo.add_argument(
        "--ray-address", dest="ray_address", help="--executor ray: the cluster (default: RAY_ADDRESS)"
    )
    add_workers_option(demo)
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    demo.add_argument("--mock", action="store_true", help="synthetic losses instead of training (seconds)")
    add_design_options(demo)
    demo.add_argument(
        "--api-url", dest="api_url", help="train through a service (flops-fit serve --demo) at this URL"
    )
    demo.add_argument(
        "--token-env", dest="token_env", help="--api-url: variable holding its token (FLOPS_FIT_API_TOKEN)"
    )
    demo.set_defaults(func=cmd_demo, **PROGRESS_LOGGING)  # its progress, also when piped to a file


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: a real sweep of the GPT example on the bundled text corpus."""
    from flops_fit.examples.gpt_text import run_demo  # torch and the corpus only when the demo runs

    budgets = floats(args.budgets, "--budgets") if args.budgets else None
    if args.executor == "local" and args.ray_address:
        raise UsageError("--ray-address needs --executor ray")
    if args.api_url and (args.mock or args.executor != "local"):
        raise UsageError("--api-url trains on the service: drop --mock and --executor")
    if args.token_env and not args.api_url:
        raise UsageError("--token-env needs --api-url")
    design = design_option(args)
    if args.design == "wsd" and args.api_url:
        raise UsageError("--design wsd trains its branches from shared trunks here; drop --api-url")
    run_demo(
        out=args.out,
        budgets=budgets,
        mock=args.mock,
        device=args.device,
        executor=args.executor,
        ray_address=args.ray_address,
        workers=args.workers,
        api_url=args.api_url,
        token_env=args.token_env,
        design=design,
    )
    return 0
