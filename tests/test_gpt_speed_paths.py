"""The example GPT's fast eager paths (fused SwiGLU gate/up, one rotary node for q and k, a cross-entropy
without an fp32 copy of the logits) compute what the plain formulas compute, and a seeded model starts
from the same values as before the gate and up weights were fused (reference numbers recorded with the
two separate layers, torch 2.13, seed 0)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import unit_scaling as uu
import unit_scaling.functional as U
from torch.utils._python_dispatch import TorchDispatchMode

from flops_fit.examples import gpt
from flops_fit.examples.gpt import GPT, apply_rope, estimate_params_from_config, lm_loss, random_batch

ODD = {"vocab_size": 50, "d_model": 24, "num_layers": 3, "num_heads": 3, "max_seq_len": 8, "d_ff": 37}

# Recorded before the fusion: torch.manual_seed(0); GPT.from_config(**ODD, parametrization=p). Per tensor:
# (sum in float64, first two values, last value), the fused weight read back as its gate and up halves;
# then the sum and the absolute sum of the whole state dict, and torch.rand(3) drawn right after building.
REFERENCE = {
    "sp": {
        "blocks.0.mlp.gate.weight": (0.06899025612074183, [-0.04372051730751991, -0.02837534435093403], 0.002238030079752207),
        "blocks.0.mlp.up.weight": (0.2341510692913289, [0.014463626779615879, -0.01898779533803463], 0.023091621696949005),
        "blocks.2.mlp.gate.weight": (0.6097872990524138, [-0.016497625038027763, 0.006439341697841883], 0.005614715162664652),
        "blocks.2.mlp.up.weight": (0.14707807544800744, [-0.030594361945986748, -0.018851658329367638], 0.005012304522097111),
        "blocks.2.mlp.down.weight": (-0.2620144519069072, [6.764940917491913e-05, -0.0006041342858225107], 0.009594314731657505),
        "all": (-0.18571175849729116, 217.2848237470871),
        "rng": [0.6024948954582214, 0.3949100971221924, 0.08093225955963135],
    },
    "u-mup": {
        "blocks.0.mlp.gate.weight": (37.97352433860942, [-0.6009332537651062, 0.7912851572036743], -1.7370070219039917),
        "blocks.0.mlp.up.weight": (-26.12263972731307, [-0.5588938593864441, 0.49184349179267883], -0.5718500018119812),
        "blocks.2.mlp.gate.weight": (4.404131333576515, [1.0822818279266357, 0.5574139356613159], -0.8002774715423584),
        "blocks.2.mlp.up.weight": (31.054824374296004, [-0.4632567763328552, -0.6261743903160095], 0.07955784350633621),
        "blocks.2.mlp.down.weight": (-23.952237668738235, [-1.0048309564590454, -0.3427641987800598], 0.25764986872673035),
        "all": (-85.19134555913479, 12956.223413535954),
        "rng": [0.34764623641967773, 0.6454148888587952, 0.9419130682945251],
    },
}  # fmt: skip


def split_state(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict with every fused ``gate_up`` weight split back into the old ``gate`` and ``up``."""
    out = {}
    for name, value in model.state_dict().items():
        if name.endswith("mlp.gate_up.weight"):
            half = value.shape[0] // 2
            out[name.replace("gate_up", "gate")] = value[:half]
            out[name.replace("gate_up", "up")] = value[half:]
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("parametrization", ["sp", "u-mup"])
def test_seeded_init_is_unchanged_by_the_fusion(parametrization):
    torch.manual_seed(0)
    model = GPT.from_config(parametrization=parametrization, **ODD)
    after = torch.rand(3)  # the constructor consumed the RNG exactly as the two separate layers did
    ref = REFERENCE[parametrization]
    torch.testing.assert_close(after, torch.tensor(ref["rng"]), rtol=0, atol=0)
    state = split_state(model)
    for name, record in ref.items():
        if name in ("all", "rng"):
            continue
        total, first, last = record
        values = state[name].double().flatten()
        assert values.sum().item() == pytest.approx(total, rel=1e-9, abs=1e-12), name
        assert values[:2].tolist() == first and values[-1].item() == last, name
    total, absolute = ref["all"]
    assert sum(t.double().sum().item() for t in state.values()) == pytest.approx(total, rel=1e-9)
    assert sum(t.double().abs().sum().item() for t in state.values()) == pytest.approx(absolute, rel=1e-12)


@pytest.mark.parametrize("parametrization", ["sp", "u-mup"])
def test_fused_weight_keeps_counts_keys_and_learning_rates(parametrization):
    model = GPT.from_config(parametrization=parametrization, **ODD)
    counts = estimate_params_from_config(24, 3, 50, d_ff=37)
    assert model.count_parameters(non_embedding=True) == counts["non_embedding"]
    assert model.count_parameters(non_embedding=False) == counts["total"]
    assert model.state_dict()["blocks.1.mlp.gate_up.weight"].shape == (74, 24)
    assert not any(k.endswith(("mlp.gate.weight", "mlp.up.weight")) for k in model.state_dict())
    lrs = {n: g["lr"] for g in model.configure_optimizers(lr=1.0) for n in g["param_names"]}
    expected = 1.0 if parametrization == "sp" else 24**-0.5 / math.sqrt(3)  # fan_in d_model, depth 3
    assert lrs["blocks.1.mlp.gate_up.weight"] == pytest.approx(expected)
    if parametrization == "u-mup":  # the package's own tags agree
        param = model.blocks[1].mlp.gate_up.weight
        assert uu.optim.lr_scale_func_adam(param) == pytest.approx(expected)


def _separate_swiglu(mlp: gpt.SwiGLU, x: torch.Tensor) -> torch.Tensor:
    """The SwiGLU as it was: two separate layers (uu.Linear with constraint=None in u-μP)."""
    gate_w, up_w = (w.detach().clone().requires_grad_() for w in mlp.gate_up.halves())
    down_w = mlp.down.weight.detach().clone().requires_grad_()
    if mlp.unit_scaled:
        gate = U.linear(x, gate_w, None, constraint=None)
        up = U.linear(x, up_w, None, constraint=None)
        out = U.linear(U.silu_glu(up, gate), down_w, None, constraint=None)
    else:
        out = F.linear(F.silu(F.linear(x, gate_w)) * F.linear(x, up_w), down_w)
    return out, (gate_w, up_w, down_w)


@pytest.mark.parametrize("parametrization", ["sp", "u-mup"])
def test_fused_swiglu_matches_two_separate_layers_forward_and_backward(parametrization):
    torch.manual_seed(1)
    mlp = GPT.from_config(parametrization=parametrization, **ODD).blocks[0].mlp
    x = torch.randn(2, 8, 24, requires_grad=True)
    grad_out = torch.randn(2, 8, 24)
    out = mlp(x)
    (gx,) = torch.autograd.grad(out, x, grad_out)
    x_ref = x.detach().clone().requires_grad_()
    ref, weights = _separate_swiglu(mlp, x_ref)
    ref_grads = torch.autograd.grad(ref, (x_ref, *weights), grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, ref_grads[0], rtol=1e-5, atol=1e-6)  # u-μP: grad(input) 1/sqrt(d_ff)
    out = mlp(x)
    out.backward(grad_out)
    gate_grad, up_grad = mlp.gate_up.weight.grad.split(37)
    torch.testing.assert_close(gate_grad, ref_grads[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(up_grad, ref_grads[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mlp.down.weight.grad, ref_grads[3], rtol=1e-5, atol=1e-6)


def test_rotary_of_q_and_k_in_one_node_matches_apply_rope():
    torch.manual_seed(2)
    cos, sin = gpt.rope_cache(16, 8)
    q, k = (torch.randn(2, 3, 12, 8, requires_grad=True) for _ in range(2))
    gq, gk = torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    rq, rk = gpt._rope_qk(q, k, cos, sin)
    assert rq.grad_fn is rk.grad_fn and "RotaryQK" in type(rq.grad_fn).__name__
    grads = torch.autograd.grad((rq, rk), (q, k), (gq, gk))
    pq, pk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    ref = torch.autograd.grad((pq, pk), (q, k), (gq, gk))
    torch.testing.assert_close((rq, rk), (pq, pk), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads, ref, rtol=1e-6, atol=1e-7)


def _graph_nodes(root) -> list[str]:
    seen, stack, names = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_one_rotary_node_per_block_and_no_concatenation_in_the_graph():
    model = GPT.from_config(parametrization="sp", **ODD)
    x, y = random_batch(2, vocab_size=50, seq_len=8)
    names = _graph_nodes(lm_loss(model(x), y).grad_fn)
    assert sum("RotaryQK" in n for n in names) == ODD["num_layers"]
    assert not any(n.startswith(("CatBackward", "ToCopyBackward", "LogSoftmaxBackward")) for n in names)


@pytest.mark.parametrize("parametrization", ["sp", "u-mup"])
def test_compiled_formulas_match_the_eager_kernels(parametrization, monkeypatch):
    """Under torch.compile the model traces the plain formulas; they must agree with the eager kernels."""
    torch.manual_seed(3)
    model = GPT.from_config(parametrization=parametrization, **ODD)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    x, y = random_batch(2, vocab_size=50, seq_len=8, seed=4)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = lm_loss(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    plain = loss_and_grads()
    torch.testing.assert_close(eager[0], plain[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(eager[1], plain[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_bytes", [gpt._CE_CHUNK_BYTES, 4096])
def test_lm_loss_matches_fp32_cross_entropy_with_ignored_targets(chunk_bytes, monkeypatch):
    monkeypatch.setattr(gpt, "_CE_CHUNK_BYTES", chunk_bytes)  # 4096 bytes: 8-row chunks, 5 of them
    torch.manual_seed(5)
    logits = (3 * torch.randn(4, 9, 64)).requires_grad_()
    targets = torch.randint(0, 64, (4, 9))
    targets[1, 2:5] = -100
    loss = lm_loss(logits, targets)
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    ref = F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1))
    (ref_grad,) = torch.autograd.grad(2.5 * ref, logits)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-8)
    assert grad[1, 2:5].abs().max().item() == 0.0
    with torch.no_grad():
        assert lm_loss(logits, targets).item() == pytest.approx(ref.item(), rel=1e-6)


class _Float32Outputs(TorchDispatchMode):
    """Records the element counts of the float32 tensors that ops produce."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.numels.append(t.numel())
        return out


def test_lm_loss_of_bf16_logits_makes_no_fp32_copy_of_them_and_matches_fp32(monkeypatch):
    monkeypatch.setattr(gpt, "_CE_CHUNK_BYTES", 8192)  # 32-row chunks of 64 logits
    torch.manual_seed(6)
    logits = (3 * torch.randn(8, 16, 64)).bfloat16().requires_grad_()
    targets = torch.randint(0, 64, (8, 16))
    with _Float32Outputs() as seen:
        loss = lm_loss(logits, targets)
        loss.backward()
    assert max(seen.numels) < logits.numel()  # only chunks of it
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(ref_logits.reshape(-1, 64), targets.reshape(-1))
    ref.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, rtol=1e-2, atol=1e-5)
