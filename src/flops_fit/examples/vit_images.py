"""Example program: find the compute-optimal Vision Transformer for Fashion-MNIST.

    python -m flops_fit.examples.vit_images [--out DIR] [--budgets 1e10,3e10,9e10] [--mock] [--data-dir DIR]

A real IsoFLOP sweep of :class:`flops_fit.examples.vit.VisionTransformer` (swept over ``d_model``) on
Fashion-MNIST (Debian package ``dataset-fashion-mnist``, or any folder with the four IDX files). Here D is
counted in images, and FLOPs are measured per image with ``FlopCounterMode`` (``flops="measured"``): one
image costs about 6 N x patches FLOPs (no class token: the head pools the patches), so the language-model rule 6 N D would undercount it.
Fashion-MNIST has 60,000 training images, so the larger budgets see the data more than once; this is
allowed explicitly here (``max_epochs``) and every repeating run is flagged in the plan. The learning rate
(2e-2, batch 32) and the size grid (d_model in multiples of 4, one head) were chosen with a small
learning-rate check so that every IsoFLOP profile brackets its minimum; docs/examples.md has the numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flops_fit.core.sweepdir import SweepDir
from flops_fit.examples.images import load_image_datasets
from flops_fit.examples.vit import VisionTransformer, classification_loss
from flops_fit.training import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_BUDGETS = (1e10, 3e10, 9e10)
#: One head: at these widths (4 to 40) a head count that divides every swept d_model.
MODEL_KWARGS = {"patch_size": 7, "num_layers": 2, "num_heads": 1}
SIZE_MULTIPLE = 4
NUM_MODEL_SIZES = 5
SIZE_SPAN = 4.0
#: Small data: repetition is allowed up to this many epochs, explicitly (the planner flags each such run).
MAX_EPOCHS = 25.0
TRAIN_CONFIG = TrainConfig(
    batch_size=32, lr=2e-2, warmup_frac=0.05, weight_decay=0.05, eval_batches=8, seed=0, max_epochs=MAX_EPOCHS
)


def run(
    out: str | os.PathLike[str] = "flops_fit_vit",
    budgets: Sequence[float] | None = None,
    *,
    mock: bool = False,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Run (or resume) the sweep, fit and report into ``out``; return the :class:`flops_fit.Result`."""
    from flops_fit.app.pipeline import find_optimal
    from flops_fit.report.html import write_report

    budgets = list(budgets or DEFAULT_BUDGETS)
    out = Path(out)
    train, val = load_image_datasets("fashion-mnist", data_dir)
    result = find_optimal(
        VisionTransformer,
        "d_model",
        train,
        classification_loss,
        budgets,
        model_kwargs=MODEL_KWARGS,
        eval_dataset=val,
        num_model_sizes=NUM_MODEL_SIZES,
        flops="measured",
        mode="mock" if mock else "local",
        train_config=TRAIN_CONFIG,
        output_dir=out,
        size_multiple=SIZE_MULTIPLE,
        size_span=SIZE_SPAN,
        device=device,
    )
    report = write_report(result, SweepDir(out).report)
    print(result.summary())
    target = 10 * max(budgets)
    pred = result.predict(target)
    print(
        f"\n{'MOCK (synthetic losses, nothing trained): ' if result.synthetic_banner else ''}"
        f"Prediction for C = {target:.3g} FLOPs: N_opt = {pred['optimal_params']:.3g} parameters, "
        f"D_opt = {pred['optimal_tokens']:.3g} images, loss {pred['expected_loss']:.3f}"
    )
    print(f"Everything is in {out.resolve()} (report: {report.name}). Re-run the same command to resume.")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flops_fit.examples.vit_images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="flops_fit_vit", help="output directory (re-running resumes)")
    parser.add_argument("--budgets", help="FLOP budgets, comma separated")
    parser.add_argument("--mock", action="store_true", help="synthetic losses instead of training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files")
    args = parser.parse_args(argv)
    from flops_fit.app.console import PROGRESS_LOGGING, configure_logging, floats, guarded

    configure_logging(
        logging.WARNING, library_level=logging.INFO, quiet=PROGRESS_LOGGING["quiet_loggers"]
    )  # as flops-fit demo: progress lines, and warnings as clean log lines

    def call() -> int:
        budgets = floats(args.budgets, "--budgets") if args.budgets else None
        run(args.out, budgets, mock=args.mock, device=args.device, data_dir=args.data_dir)
        return 0

    return guarded("python -m flops_fit.examples.vit_images", call)


if __name__ == "__main__":
    raise SystemExit(main())
