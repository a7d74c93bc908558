"""What a sweep spends outside training: planning, probing, set-up, checkpoints and ledger writes.

Run: ``python benchmarks/bench_overhead.py`` (about 2 minutes on 2 CPU cores; ``--quick``: seconds).

Plans a small real IsoFLOP sweep of the example GPT (:mod:`flops_fit.examples.gpt`, standard
parametrization, 2 layers, vocabulary 64, sequence 64, random tokens) with :class:`SweepPlanner`
(``flops="measured"``, so every candidate size is probed on the meta device with a FLOP counter), runs it
with :class:`TrainingRunner` in local mode on the CPU, and times, per experiment:

- **training**: ``TrainOutcome.wall_time_s`` minus the checkpoint time (steps and evaluations);
- **set-up**: the rest of the ``train()`` call (data checks, moving the model, optimiser);
- **checkpoints**: every ``save_checkpoint`` call (state dict, fsync, rename), at ``--checkpoint-every``
  seconds, a much shorter cadence than the 300 s default so that there are several per run;
- **ledger**: the ``append_record`` call (JSON line, fsync);
- **runner**: everything else in the runner (building the model, bookkeeping, logging).

Planning (with probing) is timed once for the sweep and shared out over its experiments. Timings wrap
the library functions from outside (the library itself is unchanged).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import flops_fit.training.jobs as jobs_mod
import flops_fit.training.loop as loop_mod
import flops_fit.training.runner as runner_mod
from flops_fit.examples.gpt import GPT, lm_loss
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.spec import ModelSpec
from flops_fit.training import TrainConfig, TrainingRunner

VOCAB, SEQ, LAYERS, BATCH = 64, 64, 2, 16


class RandomTokens(Dataset):
    def __init__(self, samples: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (samples, SEQ + 1), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i, :-1], self.tokens[i, 1:]


def sample_batch(batch: int):
    x = torch.randint(0, VOCAB, (batch, SEQ + 1))
    return x[:, :-1], x[:, 1:]


class Timed:
    """Replaces a module-level function by ``call`` (default: the function itself), timing each call under
    ``key(*args, **kwargs)``; the original is put back on exit."""

    def __init__(self, module: Any, name: str, key: Any, call: Any = None):
        self.module, self.name, self.key = module, name, key
        self.saved = getattr(module, name)
        self.call = call or self.saved
        self.calls: dict[Any, list[float]] = defaultdict(list)

    def __enter__(self) -> Timed:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.call(*args, **kwargs)
            finally:
                self.calls[self.key(*args, **kwargs)].append(time.perf_counter() - t0)

        setattr(self.module, self.name, wrapper)
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(self.module, self.name, self.saved)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="overhead of a small real sweep outside training")
    parser.add_argument("--min-flops", type=float, default=5e10)
    parser.add_argument("--max-flops", type=float, default=1.5e11)
    parser.add_argument("--checkpoint-every", type=float, default=2.0, help="seconds between checkpoints")
    parser.add_argument("--quick", action="store_true", help="a tiny sweep (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_flops, args.max_flops = 1e10, 2e10
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # tiny models: one thread is fastest and leaves the other core to others
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch threads 1")

    spec = ModelSpec(
        GPT.from_config,
        "d_model",
        {
            "vocab_size": VOCAB,
            "num_layers": LAYERS,
            "max_seq_len": SEQ,
            "head_dim": 8,
            "parametrization": "sp",
        },
        size_multiple=8,
        sample_fn=sample_batch,
        loss_fn=lm_loss,
    )
    t0 = time.perf_counter()
    planner = SweepPlanner(
        args.min_flops,
        args.max_flops,
        2,
        3,
        model=spec,
        flops="measured",
        batch_size=BATCH,
        size_span=3.0,
        seed=0,
    )
    plan = planner.plan()
    plan_s = time.perf_counter() - t0
    largest = max(e.num_tokens for e in plan)
    dataset = RandomTokens(largest // SEQ + 8 * BATCH + 1)
    config = TrainConfig(
        batch_size=BATCH, lr=3e-3, eval_batches=4, log_every=10, checkpoint_every_s=args.checkpoint_every
    )

    with tempfile.TemporaryDirectory() as out:
        runner = TrainingRunner(
            "local",
            plan=plan,
            output_dir=out,
            dataset=dataset,
            loss_fn=lm_loss,
            train_config=config,
            device="cpu",
            progress=False,
        )
        sizes: dict[str, int] = {}
        real_save = loop_mod.save_checkpoint

        def save_and_measure(path: Any, state: Any) -> None:
            real_save(path, state)
            sizes[Path(path).stem] = Path(path).stat().st_size

        saves = Timed(loop_mod, "save_checkpoint", lambda path, state: Path(path).stem, save_and_measure)
        appends = Timed(runner_mod, "append_record", lambda path, record: record["experiment_id"])
        trains = Timed(jobs_mod, "train", lambda *a, **k: Path(k["checkpoint_path"]).stem)
        with saves, appends, trains:
            t0 = time.perf_counter()
            runs = runner.run_sweep()
            sweep_s = time.perf_counter() - t0

    per_plan = plan_s / len(plan)
    print(
        f"plan: {len(plan)} experiments over {len(plan.compute_budgets)} budgets, planning with probing "
        f"{plan_s:.2f} s ({per_plan:.3f} s per experiment); sweep {sweep_s:.1f} s\n"
    )
    header = (
        f"{'experiment':<13} {'N':>8} {'steps':>6} {'train s':>8} {'set-up s':>8} {'ckpts':>5} {'MB':>6} "
        f"{'ms/ckpt':>8} {'ckpt %':>7} {'ledger ms':>9} {'overhead %':>10}"
    )
    print(header)
    totals: dict[str, float] = defaultdict(float)
    for _, row in runs.iterrows():
        eid = row["experiment_id"]
        ckpt = saves.calls.get(eid, [])
        ckpt_s = sum(ckpt)
        train_s = row["wall_time_s"] - ckpt_s
        call_s = trains.calls[eid][0]
        setup_s = call_s - row["wall_time_s"]
        ledger_s = sum(appends.calls[eid])
        totals["train"] += train_s
        totals["setup"] += setup_s
        totals["ckpt"] += ckpt_s
        totals["ledger"] += ledger_s
        totals["calls"] += call_s + ledger_s
        overhead = setup_s + ckpt_s + ledger_s + per_plan
        print(
            f"{eid:<13} {row['num_params']:>8.3g} {row['steps']:>6.0f} {train_s:>8.2f} {setup_s:>8.3f} "
            f"{len(ckpt):>5} {sizes.get(eid, 0) / 1e6:>6.2f} "
            f"{1000 * statistics.mean(ckpt) if ckpt else 0:>8.1f} {100 * ckpt_s / train_s:>6.2f}% "
            f"{1000 * ledger_s:>9.2f} {100 * overhead / train_s:>9.2f}%"
        )
    runner_s = sweep_s - totals["calls"]
    totals["runner"] = runner_s
    train_total = totals["train"]
    print(
        f"\ntotals over {len(runs)} experiments: training {train_total:.1f} s; planning+probing {plan_s:.2f} s "
        f"({100 * plan_s / train_total:.2f}%), set-up {totals['setup']:.2f} s ({100 * totals['setup'] / train_total:.2f}%), "
        f"checkpoints {totals['ckpt']:.2f} s ({100 * totals['ckpt'] / train_total:.2f}%, every {args.checkpoint_every:g} s), "
        f"ledger {1000 * totals['ledger']:.1f} ms ({100 * totals['ledger'] / train_total:.3f}%), "
        f"runner {runner_s:.2f} s ({100 * runner_s / train_total:.2f}%)"
    )
    all_saves = [t for v in saves.calls.values() for t in v]
    if all_saves:
        each = statistics.mean(all_saves)
        print(
            f"one checkpoint {1000 * each:.1f} ms on average: {100 * each / args.checkpoint_every:.2f}% of training "
            f"at one per {args.checkpoint_every:g} s, {100 * each / 300:.3f}% at the default one per 300 s"
        )
    overhead = plan_s + totals["setup"] + totals["ckpt"] + totals["ledger"] + runner_s
    print(f"all overhead: {overhead:.2f} s = {100 * overhead / train_total:.2f}% of training time")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
