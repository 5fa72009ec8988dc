"""cp_triton: fused Triton kernels against cp_eager and plain torch references.

Without a GPU, the kernels run in Triton's CPU interpreter (slow): sizes stay small.
Random factors (not fitted ones) are used where only the kernels are under test: the
references see the same factors, and no CP fit is needed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # must precede the first import of triton (conftest.py does the same)
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

import tdn_core
from tdn_core.backends import _registry, cp_triton
from tdn_core.backends.cp_eager import _CPEdgeProduct

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def factors(L: int, rank: int | None = None, dtype=torch.float64):
    """Random A [d, R], B [d, R], C [d, R] for lmax L everywhere (R = 7 L^2 by default)."""
    d, R = (L + 1) ** 2, rank or 7 * L * L
    g = torch.Generator().manual_seed(L)
    return [torch.randn(d, R, generator=g, dtype=dtype).to(DEVICE) / d**0.5 for _ in range(3)]


def inputs(E: int, d: int, C: int, dtype=torch.float64, grad: bool = False):
    ts = (torch.randn(E, d, C), torch.randn(E, d), torch.randn(E, C))
    return [t.to(DEVICE, dtype).requires_grad_(grad) for t in ts]


def eager(x, y, w, A, B, C):
    """cp_eager's product (itself twice differentiable)."""
    return _CPEdgeProduct.apply(x, y, w, A, B, C, 64, False)


def conv_reference(h, src, dst, y, w, A, B, C, num_nodes):
    msg = eager(h[src], y, w, A, B, C)
    return msg.new_zeros(num_nodes, *msg.shape[1:]).index_add(0, dst, msg)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def grads(out, wrt, g, create_graph=False):
    return torch.autograd.grad(out, wrt, g, create_graph=create_graph, allow_unused=True)


# (L, E, C): every E in (0, 1, 7, 33), every C in (1, 3, 17), every L in (1, 2, 3)
CASES = [(1, 0, 3), (1, 1, 1), (2, 7, 3), (3, 33, 17), (2, 33, 1), (3, 7, 17), (1, 33, 3)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=["L{}-E{}-C{}".format(*c) for c in CASES])
def test_forward_and_backward_match_cp_eager(case, dtype):
    L, E, C = case
    A, B, Cf = factors(L)
    x, y, w = inputs(E, (L + 1) ** 2, C, torch.float64, grad=True)
    ref = eager(x, y, w, A, B, Cf)
    g = torch.randn_like(ref)
    ref_grads = grads(ref, (x, y, w), g)
    xl, yl, wl = (t.detach().to(dtype).requires_grad_() for t in (x, y, w))
    out = cp_triton.cp_edge_product(xl, yl, wl, *(f.to(dtype) for f in (A, B, Cf)))
    assert out.shape == (E, (L + 1) ** 2, C) and out.dtype == dtype
    got = grads(out, (xl, yl, wl), g.to(dtype))
    if E == 0:
        for t, r in zip(got, ref_grads, strict=True):
            assert t.shape == r.shape and not t.abs().sum()
        return
    assert rel(out, ref) <= RTOL[dtype]
    for a, b in zip(got, ref_grads, strict=True):
        assert a.dtype == dtype and rel(a, b) <= RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_double_backward_matches_cp_eager(dtype):
    A, B, C = (f.to(dtype) for f in factors(2))
    x, y, w = inputs(7, 9, 3, dtype, grad=True)
    g = torch.randn(7, 9, 3, dtype=dtype, device=DEVICE)
    results = []
    for fn in (eager, cp_triton.cp_edge_product):
        first = grads(fn(x, y, w, A, B, C), (x, y, w), g, create_graph=True)
        # a force-training-like scalar: every first-order gradient enters
        loss = sum((t * torch.cos(t.detach())).sum() for t in first)
        results.append(grads(loss, (x, y, w), None))
    for a, b in zip(*results, strict=True):
        assert rel(a, b) <= RTOL[dtype] * 10


def test_gradcheck_and_gradgradcheck_edge():
    A, B, C = factors(1, rank=5)
    x, y, w = inputs(3, 4, 2, grad=True)

    def fn(x, y, w):
        return cp_triton.cp_edge_product(x, y, w, A, B, C)

    assert torch.autograd.gradcheck(fn, (x, y, w))
    assert torch.autograd.gradgradcheck(fn, (x, y, w))


def test_forward_L6():
    A, B, C = factors(6, rank=252)
    x, y, w = inputs(5, 49, 3)
    out = cp_triton.cp_edge_product(x, y, w, A, B, C)
    assert rel(out, eager(x, y, w, A, B, C)) <= 1e-10


def test_half_precision_accumulates_in_float32():
    A, B, C = factors(2)
    x, y, w = inputs(7, 9, 17)
    ref = eager(x, y, w, A, B, C)
    for dtype in (torch.bfloat16, torch.float16):
        out = cp_triton.cp_edge_product(x.to(dtype), y.to(dtype), w.to(dtype), A, B, C)
        assert out.dtype == dtype
        # input rounding (2^-8 for bf16) dominates; fp16/bf16 sums would be far worse
        assert rel(out, ref) <= 2e-2


# ------------------------------------------------------------------- convolution
def graph(num_nodes: int, E: int):
    gen = torch.Generator().manual_seed(E)
    src = torch.randint(0, num_nodes, (E,), generator=gen)
    dst = torch.randint(0, num_nodes, (E,), generator=gen)
    return src.to(DEVICE), dst.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("E", [0, 1, 33])
def test_conv_matches_gather_product_scatter(E, dtype):
    N, C = 6, 3
    A, B, Cf = factors(2)
    h = torch.randn(N, 9, C, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _, y, w = inputs(E, 9, C, grad=True)
    src, dst = graph(N, E)
    ref = conv_reference(h, src, dst, y, w, A, B, Cf, N)
    g = torch.randn_like(ref)
    ref_grads = grads(ref, (h, y, w), g)
    hl, yl, wl = (t.detach().to(dtype).requires_grad_() for t in (h, y, w))
    out = cp_triton.cp_conv(hl, src, dst, yl, wl, *(f.to(dtype) for f in (A, B, Cf)), N)
    assert out.shape == (N, 9, C) and out.dtype == dtype
    got = grads(out, (hl, yl, wl), g.to(dtype))
    if E == 0:
        assert not out.abs().sum() and not got[0].abs().sum()
        return
    assert rel(out, ref) <= RTOL[dtype]
    for a, b in zip(got, ref_grads, strict=True):
        assert rel(a, b) <= RTOL[dtype]


def test_conv_double_backward_and_gradgradcheck():
    N, E, C = 4, 9, 2
    A, B, Cf = factors(1, rank=5)
    h = torch.randn(N, 4, C, dtype=torch.float64, device=DEVICE, requires_grad=True)
    _, y, w = inputs(E, 4, C, grad=True)
    src, dst = graph(N, E)
    results = []
    for fn in (conv_reference, cp_triton.cp_conv):
        out = fn(h, src, dst, y, w, A, B, Cf, N)
        first = grads(out, (h, y, w), torch.ones_like(out), create_graph=True)
        loss = sum((t**2).sum() for t in first)
        results.append(grads(loss, (h, y, w), None))
    for a, b in zip(*results, strict=True):
        assert rel(a, b) <= 1e-10

    h3, y3, w3 = h[:3].detach().requires_grad_(), y[:3], w[:3]
    src3, dst3 = src[:3] % 3, dst[:3] % 3

    def small(h, y, w):
        return cp_triton.cp_conv(h, src3, dst3, y, w, A, B, Cf, 3)

    assert torch.autograd.gradcheck(small, (h3, y3, w3))
    assert torch.autograd.gradgradcheck(small, (h3, y3, w3))


def test_conv_rejects_bad_indices():
    A, B, C = factors(1, rank=5)
    h = torch.randn(3, 4, 2, dtype=torch.float64)
    _, y, w = inputs(2, 4, 2)
    with pytest.raises(ValueError, match="y: expected shape"):
        cp_triton.cp_conv(h, torch.zeros(2).long(), torch.zeros(2).long(), y[:1], w, A, B, C, 3)
    with pytest.raises(ValueError, match=r"torch\.long"):
        cp_triton.cp_conv(h, torch.zeros(2, dtype=torch.int32), torch.zeros(2).long(),
                          y, w, A, B, C, 3)  # fmt: skip


# ----------------------------------------------------------------- custom-op checks
def test_opcheck_custom_ops():
    A, B, C = factors(1, rank=5)
    x, y, w = inputs(3, 4, 2)
    v = y @ B
    g = torch.randn(3, 4, 2, dtype=torch.float64, device=DEVICE)
    src, dst = graph(3, 3)
    ops = torch.ops.tdn
    cases = [
        (ops.cp_edge_product, (x, v, w, A, C)),
        (ops.cp_edge_product_backward, (g, x, v, w, A, C)),
        (ops.cp_conv, (x, src, dst, v, w, A, C, 3)),
        (ops.cp_conv_backward, (g, x, src, dst, v, w, A, C)),
    ]
    for op, args in cases:
        # grads on the data inputs only: the factors A, C are constants of the op
        args = tuple(
            t.clone().requires_grad_(t.is_floating_point() and t is not A and t is not C)
            if isinstance(t, torch.Tensor)
            else t
            for t in args
        )
        torch.library.opcheck(op, args)


def test_layer_matches_cp_eager():
    tp = tdn_core.TensorProduct(2, 2, 2, 3, backend="cp_triton").double().to(DEVICE)
    ref = tdn_core.TensorProduct(2, 2, 2, 3, backend="cp_eager").double().to(DEVICE)
    x, y, w = inputs(5, 9, 3)
    assert rel(tp(x, y, w), ref(x, y, w)) <= 1e-10
    assert {"A", "B", "C"} <= {n for n, _ in tp.executor.named_buffers()}
    assert tp.state_dict().keys() == ref.state_dict().keys()


# ----------------------------------------------------------------- unavailable path
def test_unavailable_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = "needs a CUDA device or TRITON_INTERPRET=1"
    assert cp_triton.CPTritonBackend.environment_problem() == msg
    assert _registry.unavailable_reason("cp_triton") == f"cp_triton: {msg}"
    with pytest.raises(tdn_core.BackendUnavailable, match=msg):
        tdn_core.get_backend("cp_triton")
    with pytest.raises(tdn_core.BackendUnavailable, match=msg):
        tdn_core.TensorProduct(1, 1, 1, 2, backend="cp_triton")
    reason = cp_triton.CPTritonBackend.check_placement(torch.float32, torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason and "interpreter" in reason
    assert cp_triton.CPTritonBackend.check_placement(torch.float32, torch.device("cuda")) is None


def test_capabilities():
    cls = cp_triton.CPTritonBackend
    assert (cls.name, cls.exact, cls.modes, cls.path_weights) == (
        "cp_triton", False, ("uvu",), ("shared",)
    )  # fmt: skip
    assert cls.requires == ("triton",) and set(cls.devices) == {"cuda", "cpu"}
    desc = tdn_core.TPDescriptor(1, 1, 1, 2, mode="uuu", rank=4)
    assert "mode" in cls.check(desc)


def test_torch_export_sees_one_custom_op():
    tp = tdn_core.TensorProduct(1, 1, 1, 2, backend="cp_triton").double().to(DEVICE)
    x, y, w = inputs(4, 4, 2)
    ep = torch.export.export(tp, (x, y, w))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.tdn.cp_edge_product.default in targets
    assert rel(ep.module()(x, y, w), tp(x, y, w)) <= 1e-12


def test_gpu_launch_path_in_the_interpreter(monkeypatch):
    """The autotuned launch (configs, pruning, reset_to_zero of atomic outputs, the
    partial-gv slab count), run through the interpreter with a fake benchmark."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU runs the autotuned path in the other tests")
    kernels = cp_triton._kernels()
    benched = []

    def bench(kernel_call, quantiles):
        benched.append(kernel_call)
        kernel_call()  # twice: accumulating outputs must be reset between runs
        kernel_call()
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(kernels, "_use_tuned", lambda t: True)
    for tuned in (kernels._fwd_tuned, kernels._bwd_tuned):
        monkeypatch.setattr(tuned, "_do_bench", bench)
        monkeypatch.setattr(tuned, "cache", {})
    A, B, C = factors(1, rank=5)
    h = torch.randn(4, 4, 3, dtype=torch.float64, requires_grad=True)
    _, y, w = inputs(6, 4, 3, grad=True)
    src, dst = graph(4, 6)
    ref = conv_reference(h, src, dst, y, w, A, B, C, 4)
    out = cp_triton.cp_conv(h, src, dst, y, w, A, B, C, 4)
    assert rel(out, ref) <= 1e-10
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, (h, y, w), g), grads(ref, (h, y, w), g), strict=True):
        assert rel(a, b) <= 1e-10
    x = h.detach()[src]
    assert rel(cp_triton.cp_edge_product(x, y, w, A, B, C), eager(x, y, w, A, B, C)) <= 1e-10
    # C = 3 keeps the 16 BC = 16 configs; keys: conv fwd, conv bwd, edge fwd
    assert len(benched) == 3 * 16


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tdn_core.backends import _cp_triton_kernels as K

for kern in (K._cp_fwd_kernel, K._cp_bwd_kernel):
    names = [p.name for p in kern.params if not p.is_constexpr]
    for acc in ("fp32", "fp64"):
        sig = {n: ("*i64" if n in ("src_ptr", "dst_ptr") else "*" + acc) if n.endswith("_ptr")
               else "i32" for n in names}
        const = dict(GATHER=True, IS_FP64=acc == "fp64", D1P=64, D3P=64, BE=2, BC=16, BR=32)
        sig.update(dict.fromkeys(const, "constexpr"))
        triton.compile(ASTSource(fn=kern, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Without a GPU, at least lower both kernels to a Hopper binary (fp32 and fp64 dots,
    atomics, reshapes): the interpreter alone would not catch a compile-only error."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
