"""The training loop: learning, determinism, token accounting, data contract, divergence and failures."""

from __future__ import annotations

import io
import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flops_fit.core.ledger import encode_record
from flops_fit.plan.flops import count_params
from flops_fit.training import (
    Callback,
    ProgressCallback,
    TrainConfig,
    TrainOutcome,
    default_param_groups,
    lr_multiplier,
    resolve_device,
    resolve_precision,
    train,
)

VOCAB, SEQ = 11, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


class CountingLM(Dataset):
    """Windows of a counting sequence modulo VOCAB: the next token is the current one plus one."""

    def __init__(self, n: int = 2048, seq: int = SEQ, seed: int = 0):
        start = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))
        windows = (start[:, None] + torch.arange(seq + 1)) % VOCAB
        self.x, self.y = windows[:, :-1], windows[:, 1:]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class StreamLM(IterableDataset):
    """The same task as an iterable dataset of known length."""

    def __init__(self, n: int = 512):
        self.inner = CountingLM(n)

    def __iter__(self):
        return (self.inner[i] for i in range(len(self.inner)))

    def __len__(self) -> int:
        return len(self.inner)


class TinyLM(nn.Module):
    def __init__(self, d: int = 16, dropout: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.body = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, VOCAB))

    def forward(self, x):
        return self.body(self.emb(x))


def lm_loss(logits, y):
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def make_lm(seed: int = 0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(**kw)


FAST = TrainConfig(batch_size=8, lr=1e-2, eval_batches=2, log_every=4, eval_every=0)


def run(
    num_tokens: int = 2048, config: TrainConfig = FAST, model: nn.Module | None = None, data=None, **kw
) -> TrainOutcome:
    return train(
        model if model is not None else make_lm(),
        data if data is not None else CountingLM(),
        lm_loss,
        num_tokens=num_tokens,
        config=config,
        device="cpu",
        progress=False,
        **kw,
    )


# -------------------------------------------------------------------------------------------------- learning


def test_loss_goes_down_on_a_learnable_task():
    cfg = TrainConfig(batch_size=16, lr=1e-2, eval_batches=2, log_every=5, eval_every=10)
    out = run(num_tokens=16 * SEQ * 60, config=cfg)
    assert out.status == "completed" and out.error is None
    first_val = out.curve[0][1]
    assert out.final_loss < 0.2 * first_val
    assert out.final_loss < 0.5 * math.log(VOCAB)
    assert out.curve[-1] == (out.tokens_seen, out.final_loss)
    tokens = [t for t, _ in out.curve]
    assert tokens == sorted(tokens) and len(tokens) == 6  # after steps 10, 20, ..., 50 and the final eval
    assert out.train_loss < 0.5 * math.log(VOCAB)


def test_same_seed_same_losses_and_different_seed_differs():
    cfg = TrainConfig(batch_size=8, lr=1e-2, eval_batches=2, log_every=4, eval_every=4, seed=3)
    a = run(config=cfg, model=make_lm(dropout=0.1))
    b = run(config=cfg, model=make_lm(dropout=0.1))
    assert a.status == b.status == "completed"
    assert [v for _, v in a.curve] == pytest.approx([v for _, v in b.curve], abs=1e-6)
    assert a.train_loss == pytest.approx(b.train_loss, abs=1e-6)
    c = run(config=TrainConfig(**{**cfg.to_dict(), "seed": 4}), model=make_lm(dropout=0.1))
    assert abs(c.final_loss - a.final_loss) > 1e-6


def test_micro_batches_accumulate_to_the_same_step():
    full = run(config=FAST)
    accum = run(config=TrainConfig(**{**FAST.to_dict(), "micro_batch_size": 2}))
    assert accum.final_loss == pytest.approx(full.final_loss, rel=1e-4, abs=1e-5)


def test_bf16_autocast_runs_on_cpu():
    out = run(config=TrainConfig(**{**FAST.to_dict(), "precision": "bf16"}))
    assert out.status == "completed" and math.isfinite(out.final_loss)


# -------------------------------------------------------------------------------------------------- accounting


def test_steps_tokens_and_flops_follow_the_documented_rule():
    out = run(num_tokens=1000)  # 8 samples x 16 tokens = 128 tokens/step -> ceil(1000/128) = 8 steps
    assert out.steps == 8
    assert out.tokens_seen == 8 * 128
    n = count_params(make_lm())
    assert out.num_params == n == 16 * 16 + 16 + 16 * VOCAB + VOCAB
    assert out.flops_per_token == 6 * n and out.flops == 6 * n * out.tokens_seen
    custom = run(num_tokens=1000, flops_per_token=123.0)
    assert custom.flops == 123.0 * custom.tokens_seen
    assert out.tokens_per_s == pytest.approx(out.tokens_seen / out.wall_time_s)


class BagLM(TinyLM):
    """TinyLM with an extra EmbeddingBag (a learned bias per position bag): an embedding, not counted in N."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, 16, mode="mean")

    def forward(self, x):
        return self.body(self.emb(x) + self.bag(x)[:, None, :])


def test_the_loop_counts_parameters_by_the_one_rule():
    """N and the 6N fallback follow flops.count_params, which leaves out nn.EmbeddingBag too."""
    torch.manual_seed(0)
    model = BagLM()
    out = run(num_tokens=256, model=model)
    assert out.num_params == count_params(model) == 16 * 16 + 16 + 16 * VOCAB + VOCAB
    assert out.flops_per_token == 6 * out.num_params


def test_tokens_per_sample_attribute_wins_over_targets():
    data = CountingLM()
    data.tokens_per_sample = 4
    out = run(num_tokens=320, data=data)  # 8 x 4 = 32 tokens per step -> 10 steps
    assert out.steps == 10 and out.tokens_seen == 320


def test_classification_counts_one_token_per_sample():
    x = torch.randn(1024, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    cfg = TrainConfig(batch_size=16, lr=0.05, eval_batches=2, weight_decay=0.0)
    out = train(model, data, F.cross_entropy, num_tokens=640, config=cfg, device="cpu", progress=False)
    assert out.steps == 40 and out.tokens_seen == 640
    assert out.final_loss < 0.5


def test_too_little_data_raises_before_training_and_repeat_is_explicit(caplog):
    with pytest.raises(ValueError, match=r"needs 4,096 training tokens.*max_epochs"):
        run(num_tokens=4096, data=CountingLM(n=64))
    cfg = TrainConfig(**{**FAST.to_dict(), "max_epochs": 6})
    with caplog.at_level(logging.WARNING, logger="flops_fit.training"):
        out = run(num_tokens=4096, data=CountingLM(n=64), config=cfg)
    assert out.status == "completed"
    assert any("repeating data" in r.getMessage() for r in caplog.records)


def test_held_out_slice_is_independent_of_the_run_seed():
    from flops_fit.training.data import batch_layout, prepare_data

    layout = batch_layout(FAST)
    evals = []
    for seed in (0, 1):
        cfg = TrainConfig(**{**FAST.to_dict(), "seed": seed})
        plan, train_data, eval_data = prepare_data(
            CountingLM(), None, num_tokens=512, config=cfg, layout=layout
        )
        evals.append(eval_data.indices.tolist())
        assert not set(eval_data.indices.tolist()) & set(train_data.train_indices.tolist())
        assert plan.eval_samples == 16 and plan.train_samples == 2048 - 16
    assert evals[0] == evals[1]


def test_outcome_is_a_valid_ledger_record():
    out = run()
    line = encode_record({"experiment_id": "x", **out.to_dict()})
    assert '"status": "completed"' in line and "NaN" not in line


# -------------------------------------------------------------------------------------------------- data kinds


def test_iterable_dataset_trains_and_holds_out_its_head():
    out = run(data=StreamLM())
    assert out.status == "completed" and out.steps == 16


def test_dataloader_needs_an_eval_set_and_a_matching_batch_size():
    loader = DataLoader(CountingLM(), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="eval_dataset"):
        run(data=loader)
    with pytest.raises(ValueError, match="batch_size"):
        run(data=DataLoader(CountingLM(), batch_size=4), eval_dataset=CountingLM(n=32, seed=1))
    a = run(data=loader, eval_dataset=CountingLM(n=32, seed=1))
    b = run(data=DataLoader(CountingLM(), batch_size=8, shuffle=True), eval_dataset=CountingLM(n=32, seed=1))
    assert a.status == "completed" and a.final_loss == pytest.approx(b.final_loss, abs=1e-6)


def test_a_short_last_loader_batch_is_skipped(caplog):
    """100 samples in batches of 8: the 4-sample tail of each epoch is not an optimiser step (20 steps
    cross an epoch boundary)."""
    import logging

    data = DataLoader(CountingLM(n=100), batch_size=8)  # drop_last=False
    cfg = TrainConfig(**{**FAST.to_dict(), "max_epochs": 2.0})
    with caplog.at_level(logging.WARNING, logger="flops_fit"):
        out = run(num_tokens=20 * 8 * SEQ, config=cfg, data=data, eval_dataset=CountingLM(n=32, seed=1))
    assert out.status == "completed" and out.steps == 20
    assert out.tokens_seen == 20 * 8 * SEQ  # every step a full batch
    assert "skipping 1 DataLoader batch(es) per epoch" in caplog.text


class ShardedStream(IterableDataset):
    """Items 0..n-1 (the index in base VOCAB in the first two tokens), split between DataLoader workers."""

    def __init__(self, n: int = 200, split: bool = True):
        self.n, self.split = n, split

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        lo, hi = 0, self.n
        if info is not None and self.split:
            per = math.ceil(self.n / info.num_workers)
            lo, hi = info.id * per, min((info.id + 1) * per, self.n)
        for i in range(lo, hi):
            x = torch.arange(SEQ) % VOCAB
            x[0], x[1] = i // VOCAB, i % VOCAB
            yield x, (x + 1) % VOCAB


class IndexSpy(TinyLM):
    def __init__(self):
        super().__init__()
        self.trained: list[torch.Tensor] = []
        self.evaluated: list[torch.Tensor] = []

    def forward(self, x):
        (self.trained if self.training else self.evaluated).append(x[:, 0] * VOCAB + x[:, 1])
        return super().forward(x)


def test_the_held_out_slice_of_a_stream_read_by_workers_is_never_trained_on():
    cfg = TrainConfig(batch_size=8, lr=1e-2, eval_batches=2, log_every=4, eval_every=0, num_workers=2)
    torch.manual_seed(0)
    model = IndexSpy()
    out = run(
        num_tokens=12 * 8 * SEQ, config=cfg, model=model, data=ShardedStream(n=VOCAB * VOCAB, split=True)
    )
    assert out.status == "completed"
    trained = set(torch.cat(model.trained).tolist())
    evaluated = set(torch.cat(model.evaluated).tolist())
    assert len(evaluated) > 0 and trained.isdisjoint(evaluated)
    with pytest.raises(ValueError, match="does not split its items between workers"):
        run(config=cfg, model=IndexSpy(), data=ShardedStream(split=False))


def test_one_shot_iterators_are_refused():
    items = ((x, y) for x, y in CountingLM())
    with pytest.raises(TypeError, match="re-iterable"):
        run(data=items)


def test_items_must_be_input_target_pairs():
    class Bad(Dataset):
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return torch.zeros(3)

    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair"):
        run(data=Bad())


# -------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("lr", -1.0),
        ("schedule", "linear"),
        ("precision", "fp8"),
        ("betas", (0.9,)),
        ("warmup_frac", 2.0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_bad_arguments_raise_before_training():
    with pytest.raises(ValueError, match="num_tokens"):
        run(num_tokens=0)
    with pytest.raises(TypeError, match="model"):
        train(lambda x: x, CountingLM(), lm_loss, num_tokens=100)
    with pytest.raises(TypeError, match="callbacks"):
        run(callbacks=Callback())
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        TrainConfig(batch_size=8, micro_batch_size=3)


def test_non_scalar_loss_is_a_type_error():
    with pytest.raises(TypeError, match="scalar"):
        train(
            make_lm(),
            CountingLM(),
            lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none"),
            num_tokens=512,
            config=FAST,
            device="cpu",
            progress=False,
        )


def test_device_and_precision_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("nonsense")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


# -------------------------------------------------------------------------------------------------- failures


class NaNAfter(TinyLM):
    def __init__(self, steps: int):
        super().__init__()
        self.calls, self.steps = 0, steps

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.steps:
                out = out * float("nan")
        return out


def test_non_finite_loss_is_diverged_with_the_step():
    torch.manual_seed(0)
    out = run(model=NaNAfter(steps=6))
    assert out.status == "diverged"
    assert "step 7 of 16" in out.error and math.isnan(out.final_loss)
    assert out.steps == 8  # detected at the end of the log window (log_every=4)


def test_exploding_loss_is_diverged():
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 1))
    cfg = TrainConfig(
        batch_size=16, lr=10.0, grad_clip=None, warmup_frac=0.0, eval_batches=2, weight_decay=0.0
    )
    out = train(model, data, F.mse_loss, num_tokens=3200, config=cfg, device="cpu", progress=False)
    assert out.status == "diverged"
    assert "step" in out.error


def test_exception_in_user_code_is_failed_with_the_message():
    class Boom(TinyLM):
        calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 5:
                raise RuntimeError("kaboom in forward")
            return super().forward(x)

    torch.manual_seed(0)
    out = run(model=Boom())
    assert out.status == "failed"
    assert "kaboom in forward" in out.error and "step 5" in out.error
    assert out.steps == 4 and math.isnan(out.final_loss)


def test_exception_in_a_callback_is_failed():
    class Raise(Callback):
        def on_log(self, step, tokens, train_loss, lr):
            raise ValueError("callback broke")

    out = run(callbacks=[Raise()])
    assert out.status == "failed" and "callback broke" in out.error


# -------------------------------------------------------------------------------------------------- optimiser


def test_model_supplied_parameter_groups_follow_the_schedule():
    class Grouped(TinyLM):
        def configure_optimizers(self, lr, weight_decay, betas):
            self.groups = [
                {"params": list(self.emb.parameters()), "lr": 2 * lr, "weight_decay": 0.0},
                {"params": list(self.body.parameters()), "lr": lr},
            ]
            return self.groups

    torch.manual_seed(0)
    model = Grouped()
    out = run(model=model)
    assert out.status == "completed"
    # The last step uses min_lr_ratio (0.1) of each group's own base rate.
    assert model.groups[0]["lr"] == pytest.approx(2 * FAST.lr * 0.1)
    assert model.groups[1]["lr"] == pytest.approx(FAST.lr * 0.1)


def test_default_groups_skip_decay_on_vectors():
    groups = default_param_groups(make_lm(), 0.1)
    decayed = {p.ndim for p in groups[0]["params"]}
    plain = {p.ndim for p in groups[1]["params"]}
    assert decayed == {2} and plain == {1}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


# -------------------------------------------------------------------------------------------------- schedule


def test_cosine_horizon_is_exactly_the_run():
    total = 100
    lrs = [
        lr_multiplier(s, total, schedule="cosine", warmup_frac=0.1, min_lr_ratio=0.1) for s in range(total)
    ]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    mid = 10 + (99 - 10) / 2
    assert lr_multiplier(int(mid), total, schedule="cosine", warmup_frac=0.1) == pytest.approx(0.55, abs=0.02)


def test_wsd_and_constant_schedules():
    total = 50
    wsd = [lr_multiplier(s, total, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0) for s in range(total)]
    assert wsd[:40] == [1.0] * 40 and wsd[-1] == 0.0 and wsd[40] == 1.0
    assert all(a > b for a, b in itertools.pairwise(wsd[40:]))
    assert {lr_multiplier(s, total, schedule="constant") for s in range(total)} == {1.0}
    with pytest.raises(ValueError, match="step"):
        lr_multiplier(total, total)


# -------------------------------------------------------------------------------------------------- callbacks


def test_callback_events_and_plain_progress_lines(caplog):
    events = []

    class Record(Callback):
        def on_train_start(self, info):
            events.append(("start", info.total_steps, info.start_step))

        def on_log(self, step, tokens, train_loss, lr):
            events.append(("log", step, tokens))

        def on_eval(self, step, tokens, val_loss):
            events.append(("eval", step))

        def on_train_end(self, outcome):
            events.append(("end", outcome.status))

    cfg = TrainConfig(**{**FAST.to_dict(), "eval_every": 8})
    with caplog.at_level(logging.INFO, logger="flops_fit.training"):
        train(
            make_lm(),
            CountingLM(),
            lm_loss,
            num_tokens=2048,
            config=cfg,
            device="cpu",
            callbacks=[Record(), ProgressCallback(description="exp-1", log_interval_s=0.0)],
        )
    assert events[0] == ("start", 16, 0) and events[-1] == ("end", "completed")
    assert [e[1] for e in events if e[0] == "log"] == [4, 8, 12, 16]
    assert next(e for e in events if e[0] == "log")[2] == 4 * 128
    assert [e[1] for e in events if e[0] == "eval"] == [8, 16]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("exp-1: step 16/16") and "tok/s" in m for m in messages)
    assert any("completed, validation loss" in m for m in messages)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    from torch._dynamo.exc import TorchDynamoException

    def broken_compile(model, **kw):
        def call(*args, **kwargs):
            raise TorchDynamoException("no C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="flops_fit.training"):
        out = run(config=TrainConfig(**{**FAST.to_dict(), "compile": True}))
    reference = run()
    assert out.status == "completed" and out.final_loss == pytest.approx(reference.final_loss, abs=1e-6)
    assert any("without compilation" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_torch_compile_on_cpu_matches_eager():
    eager = run()
    compiled = run(config=TrainConfig(**{**FAST.to_dict(), "compile": True}))
    assert compiled.status == "completed"
    assert compiled.final_loss == pytest.approx(eager.final_loss, rel=1e-3)


def test_progress_bar_joins_an_existing_rich_display():
    pytest.importorskip("rich")
    from rich.console import Console
    from rich.progress import Progress

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with Progress(console=console) as display:
        bar = ProgressCallback(display, description="exp-7")
        out = train(
            make_lm(),
            CountingLM(),
            lm_loss,
            num_tokens=2048,
            config=FAST,
            device="cpu",
            progress=False,
            callbacks=[bar],
        )
        assert out.status == "completed"
        assert display.tasks == []  # the run's bar is removed from the shared display when it ends
    assert "exp-7" in console.file.getvalue()


def test_data_loading_workers_do_not_change_the_result():
    reference = run()
    with_workers = run(config=TrainConfig(**{**FAST.to_dict(), "num_workers": 2}))
    assert with_workers.final_loss == pytest.approx(reference.final_loss, abs=1e-6)
