"""Training throughput of flops-fit's ``train()`` against a plain Hugging Face loop and the matmul peak.

Run: ``python benchmarks/bench_train.py`` (about 5 minutes on 2 CPU cores; ``--quick`` for a smoke run).

The contenders, measured in one process and interleaved step by step, so that load from other jobs
on a shared machine hits all of them alike:

- **flops-fit**: :func:`flops_fit.training.train` on the GPT of :mod:`flops_fit.examples.gpt` (LLaMA-style:
  RoPE, SwiGLU, RMSNorm, untied readout; standard parametrization, which trains fastest here) with
  d_model=256, 4 layers, 4 heads, sequence 256, batch 16, vocabulary 4096, random tokens. Its step time
  is the time between two ``on_log`` callbacks (``log_every=1``), so the data pipeline, schedule,
  gradient clipping, fused AdamW and loss read-out of the real loop are all inside.
- **HF loop**: a plain loop over ``transformers.GPT2LMHeadModel`` of the same shape (n_embd=256,
  n_layer=4, n_head=4, n_positions=256, dropout off as in ours), ``torch.optim.AdamW`` with its
  defaults: ``loss = model(input_ids=x, labels=x).loss; loss.backward(); opt.step(); opt.zero_grad()``.
- **matmul**: fp32 ``torch.mm`` of two 2048 x 2048 matrices (2 x 2048^3 FLOPs), torch's threads.
- for reference, the same HF loop under ``torch.autocast("cpu", dtype=torch.bfloat16)``, to show how
  much of a bf16 variant's gain comes from precision alone (``--no-hf-bf16`` skips it).

One step of each other contender runs inside the ``on_log`` callback after every timed step of ``train()``
(outside the measured interval). The ratios are medians over the timed steps of the step-by-step
ratios (each step of ``train()`` against the other contender's steps just before and after it), which
cancels slow drifts of the machine's load; absolute rates are medians and bests of the step times. The
"x HF bf16" column is the ratio against the HF loop under bf16 autocast (the issue's bar: >= 1.3x).

Threads: ``train()``'s default ``threads="auto"`` trains a step of this size (about 1.3e11 FLOPs, below
``SMALL_STEP_FLOPS``) on one intra-op CPU thread, and the other contenders, run inside its callback,
get the same one thread.

Model FLOP/s = 6 x N x tokens/s with N the parameters outside the input embedding tables: the readout
matrix is counted for both models (ours: ``lm_head``; GPT-2: the tied ``wte`` used as the readout), since
both spend 6 V d FLOPs per token on it. The ratio with GPT-2's strict count (without its tied readout)
is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from flops_fit.training import Callback, TrainConfig, train

VOCAB, D_MODEL, LAYERS, HEADS, SEQ, BATCH = 4096, 256, 4, 4, 256, 16
MATMUL = 2048


class RandomTokens(Dataset):
    """``(inputs, targets)`` windows of uniformly random token ids (seeded)."""

    def __init__(self, samples: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (samples, SEQ + 1), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i, :-1], self.tokens[i, 1:]


class Interleave(Callback):
    """Times ``train()``'s steps between ``on_log`` calls and runs one step of every other contender in
    between (outside the timed interval)."""

    def __init__(self, warmup: int, others: dict[str, Callable[[], None]]):
        self.warmup = warmup
        self.others = others
        self.times: dict[str, list[float]] = {"ours": [], **{k: [] for k in others}}
        self._resumed: float | None = None

    def on_log(self, step: int, tokens: int, train_loss: float, lr: float) -> None:
        now = time.perf_counter()
        if step > self.warmup and self._resumed is not None:
            self.times["ours"].append(now - self._resumed)
        if step >= self.warmup:
            for name, run in self.others.items():
                t0 = time.perf_counter()
                run()
                self.times[name].append(time.perf_counter() - t0)
        self._resumed = time.perf_counter()


def rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def matmul_step() -> Callable[[], None]:
    a = torch.randn(MATMUL, MATMUL)
    b = torch.randn(MATMUL, MATMUL)
    out = torch.empty(MATMUL, MATMUL)

    def step() -> None:
        torch.mm(a, b, out=out)

    return step


def hf_step(bf16: bool = False) -> tuple[Callable[[], None], int, int]:
    """One step of a plain AdamW loop over GPT2LMHeadModel (optionally under bf16 autocast); returns
    (step, N with readout, N strict)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=D_MODEL,
        n_layer=LAYERS,
        n_head=HEADS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    data = RandomTokens(BATCH * 64, seed=1)
    count = [0]

    def step() -> None:
        i = count[0] % 64
        count[0] += 1
        x = data.tokens[i * BATCH : (i + 1) * BATCH, :-1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    total = sum(p.numel() for p in model.parameters())
    wte = model.transformer.wte.weight.numel()
    wpe = model.transformer.wpe.weight.numel()
    return step, total - wpe, total - wpe - wte


VARIANTS: dict[str, dict[str, Any]] = {
    "sp-bf16": {"parametrization": "sp", "precision": "bf16", "compile": False, "lr": 3e-4},
    "sp-bf16-compiled": {"parametrization": "sp", "precision": "bf16", "compile": True, "lr": 3e-4},
    "sp-fp32": {"parametrization": "sp", "precision": "fp32", "compile": False, "lr": 3e-4},
    "sp-fp32-compiled": {"parametrization": "sp", "precision": "fp32", "compile": True, "lr": 3e-4},
    "umup-bf16": {"parametrization": "u-mup", "precision": "bf16", "compile": False, "lr": 2.0},
}


def run_ours(
    variant: dict[str, Any], steps: int, warmup: int, others: dict[str, Callable[[], None]]
) -> tuple[Interleave, int, float]:
    """``train()`` on the example GPT with the other contenders interleaved; returns (timer, N, set-up s)."""
    from flops_fit.examples.gpt import GPT, lm_loss

    torch.manual_seed(0)
    model = GPT.from_config(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        num_layers=LAYERS,
        num_heads=HEADS,
        max_seq_len=SEQ,
        parametrization=variant["parametrization"],
    )
    total = warmup + steps
    timer = Interleave(warmup, others)
    config = TrainConfig(
        batch_size=BATCH,
        lr=variant["lr"],
        precision=variant["precision"],
        compile=variant["compile"],
        eval_every=0,
        eval_batches=1,
        log_every=1,
        checkpoint_every_s=None,
        warmup_frac=0.0,
    )
    t0 = time.perf_counter()
    outcome = train(
        model,
        RandomTokens(BATCH * (total + 2)),
        lm_loss,
        num_tokens=total * BATCH * SEQ,
        config=config,
        device="cpu",
        callbacks=[timer],
        progress=False,
    )
    if outcome.status != "completed":
        raise RuntimeError(f"the benchmark run {outcome.status}: {outcome.error}")
    spent = time.perf_counter() - t0 - sum(sum(v) for k, v in timer.times.items() if k != "ours")
    setup = spent - sum(timer.times["ours"])
    return timer, model.num_params(), setup


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train() vs a plain HF GPT-2 loop vs the fp32 matmul rate")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation included)")
    parser.add_argument(
        "--variants",
        default="sp-bf16-compiled,sp-bf16,sp-fp32",
        help=f"flops-fit variants to time, from {list(VARIANTS)}; the first is the headline",
    )
    parser.add_argument(
        "--no-hf-bf16", action="store_true", help="skip the reference HF loop under bf16 autocast"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps of sp-bf16 only")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.variants = 2, 1, "sp-bf16"
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"load average at start: {_load()}")
    print(
        f"shape: d_model={D_MODEL}, layers={LAYERS}, heads={HEADS}, seq={SEQ}, batch={BATCH}, vocab={VOCAB}; "
        f"{args.steps} timed steps per variant after {args.warmup}\n"
    )

    hf, n_hf, n_hf_strict = hf_step()
    others = {"hf": hf, "matmul": matmul_step()}
    if not args.no_hf_bf16:
        others["hf-bf16"] = hf_step(bf16=True)[0]
    for _ in range(2):  # warm-up
        for run in others.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in others}
    windows: dict[str, dict[str, list[float]]] = {}
    n_ours: dict[str, int] = {}
    for name in names:
        timer, n_ours[name], setup = run_ours(VARIANTS[name], args.steps, args.warmup, others)
        windows[name] = timer.times
        times[name] = timer.times["ours"]
        for key in others:
            times[key] += timer.times[key]
        print(
            f"{name}: median step {statistics.median(times[name]):.3f} s (min {min(times[name]):.3f}); "
            f"set-up and warm-up {setup:.1f} s; load {_load()}"
        )

    tokens = BATCH * SEQ
    flops = {
        "matmul": 2.0 * MATMUL**3,
        "hf": 6.0 * n_hf * tokens,
        "hf-bf16": 6.0 * n_hf * tokens,
        **{n: 6.0 * n_ours[n] * tokens for n in names},
    }

    def paired(name: str, other: str) -> float:
        """Median over timed steps of rate(name) / rate(other), ``other`` timed right before and after."""
        if name in windows:
            own, ref = windows[name]["ours"], windows[name][other]
            ratios = [
                (flops[name] / t) / (flops[other] / ((ref[i] + ref[i + 1]) / 2)) for i, t in enumerate(own)
            ]
        else:  # two contenders run back to back in the same callback
            ratios = [
                (flops[name] / a) / (flops[other] / b) for a, b in zip(times[name], times[other], strict=True)
            ]
        return statistics.median(ratios)

    bf16_ref = "hf-bf16" in others
    print(
        f"\n{'contender':<36} {'median FLOP/s':>14} {'best FLOP/s':>12} {'tok/s (median)':>15} {'x HF':>6} "
        f"{'x HF bf16' if bf16_ref else '':>9} {'% matmul':>9}"
    )
    mm_med = flops["matmul"] / statistics.median(times["matmul"])
    mm_best = flops["matmul"] / min(times["matmul"])
    print(f"{'fp32 matmul 2048^3':<36} {mm_med / 1e9:>11.1f} G {mm_best / 1e9:>9.1f} G")
    rows = [("HF GPT2LMHeadModel loop", "hf")]
    if "hf-bf16" in others:
        rows.append(("  same, bf16 autocast (ref.)", "hf-bf16"))
    rows += [(f"flops-fit train() {n}", n) for n in names]
    for label, key in rows:
        med = flops[key] / statistics.median(times[key])
        best = flops[key] / min(times[key])
        tps = tokens / statistics.median(times[key])
        vs_hf = 1.0 if key == "hf" else paired(key, "hf")
        vs_bf16 = "" if not bf16_ref else "1.00" if key == "hf-bf16" else f"{paired(key, 'hf-bf16'):.2f}"
        print(
            f"{label:<36} {med / 1e9:>11.1f} G {best / 1e9:>9.1f} G {tps:>15.0f} {vs_hf:>6.2f} {vs_bf16:>9} "
            f"{100 * paired(key, 'matmul'):>8.1f}%"
        )
    head = names[0]
    vs_hf, vs_mm = paired(head, "hf"), paired(head, "matmul")
    print(
        f"\nheadline [{head}] (medians of step-by-step ratios): {vs_hf:.2f}x HF "
        f"(target >= 1.3x: {'met' if vs_hf >= 1.3 else 'NOT met'}), {100 * vs_mm:.1f}% of the fp32 matmul rate "
        f"(target >= 50%: {'met' if vs_mm >= 0.5 else 'NOT met'})"
    )
    if bf16_ref:
        for name in names:
            vs = paired(name, "hf-bf16")
            print(
                f"[{name}] vs the HF loop under bf16 autocast: {vs:.2f}x "
                f"(target >= 1.3x: {'met' if vs >= 1.3 else 'NOT met'})"
            )
    print(
        f"with GPT-2's strict N ({n_hf_strict:,} instead of {n_hf:,}): {vs_hf * n_hf / n_hf_strict:.2f}x HF; "
        f"N of the flops-fit GPT {n_ours[head]:,}"
    )
    print(f"peak RSS of the process {rss_mib():.0f} MiB; load average at end: {_load()}")


if __name__ == "__main__":
    main()
