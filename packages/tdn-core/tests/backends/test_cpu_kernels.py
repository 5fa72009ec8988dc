"""TDN's CPU kernels: the same products as the PyTorch ops, built and cached safely."""

from __future__ import annotations

import shutil

import pytest
import torch

from tdn_core import TensorProduct, TPDescriptor, cp_factors
from tdn_core.backends import _cpu_kernels
from tdn_core.backends.cp_eager import CPEagerProduct
from tdn_core.testing import random_inputs

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None, reason="no C++ compiler: cp_eager runs its PyTorch ops"
)


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """The kernel loader with an empty cache directory and no loaded library."""
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu_kernels, "_state", {})
    return tmp_path / "kernels"


def _module(L: int, channels: int, dtype=torch.float32) -> CPEagerProduct:
    desc = TPDescriptor(L, L, L, channels, rank=cp_factors(L, L, L).rank)
    module = CPEagerProduct(desc, dtype, torch.device("cpu"))
    module.order = "factored"  # the order the kernel runs
    return module


def _both(module, inputs, monkeypatch, grad_out=None):
    """(kernel, PyTorch ops) outputs, and with grad_out the input gradients too; asserts
    that the first ran the kernel and the second did not."""
    calls = []
    kernel = _cpu_kernels.cp_uvu_forward
    monkeypatch.setattr(_cpu_kernels, "cp_uvu_forward", lambda *a: calls.append(1) or kernel(*a))
    results = []
    for fused in (True, False):
        module.cpu_kernel = fused
        out = module(*inputs)
        grads = () if grad_out is None else torch.autograd.grad(out, inputs, grad_out)
        results.append((out, *grads))
        assert len(calls) == 1
    return results


def _assert_same(fused, ops):
    for a, b in zip(fused, ops, strict=True):
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-5


@needs_compiler
@pytest.mark.parametrize(
    ("L", "channels", "edges"),
    # channel blocks of 64, 48 and 16; one thread, and enough work for several
    [(1, 16, 5), (2, 48, 7), (3, 80, 3), (3, 64, 400), (4, 32, 150)],
)
def test_kernel_equals_the_pytorch_ops(L, channels, edges, monkeypatch):
    module = _module(L, channels)
    g = torch.Generator().manual_seed(L)
    inputs = [t.float() for t in random_inputs(module.desc, edges, generator=g)]
    assert _cpu_kernels.supports(inputs[0])
    _assert_same(*_both(module, inputs, monkeypatch))


@needs_compiler
def test_kernel_takes_strided_inputs_and_keeps_the_backward(monkeypatch):
    module = _module(2, 32)
    g = torch.Generator().manual_seed(3)
    x, y, w = (t.float() for t in random_inputs(module.desc, 20, generator=g))
    # x as a transposed view, w as every other element of a larger tensor
    x = x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    w = torch.stack([w, w], dim=2)[..., 0].requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    y.requires_grad_()
    grad_out = torch.randn(20, module.desc.dims[2], 32, generator=g)
    _assert_same(*_both(module, [x, y, w], monkeypatch, grad_out))


@needs_compiler
def test_kernel_handles_an_empty_batch():
    module = _module(2, 16)
    x, y, w = (t.float() for t in random_inputs(module.desc, 0))
    assert module(x, y, w).shape == (0, module.desc.dims[2], 16)


def test_other_inputs_stay_on_the_pytorch_ops():
    x16 = torch.zeros(2, 4, 16)
    assert not _cpu_kernels.supports(x16.double())  # float64
    assert not _cpu_kernels.supports(torch.zeros(2, 4, 12))  # channels % 16 != 0


@needs_compiler
def test_build_goes_to_the_cache(fresh_kernel):
    assert _cpu_kernels.load() is not None
    assert [p.name for p in fresh_kernel.iterdir()] == [
        _cpu_kernels.library_path(_cpu_kernels.compiler()).name
    ]  # and no temp file left behind


@needs_compiler
def test_a_damaged_cached_kernel_is_rebuilt(fresh_kernel):
    target = _cpu_kernels.library_path(_cpu_kernels.compiler())
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared library")
    assert _cpu_kernels.load() is not None
    assert _cpu_kernels.unavailable_reason() is None
    assert target.read_bytes()[:4] == b"\x7fELF"


def test_without_a_compiler_the_ops_run_and_say_why(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler-tdn")
    module = _module(2, 16)
    g = torch.Generator().manual_seed(4)
    inputs = [t.float() for t in random_inputs(module.desc, 6, generator=g)]
    out = module(*inputs)
    reason = _cpu_kernels.unavailable_reason()
    assert reason is not None and "no-such-compiler-tdn" in reason
    assert "CPU kernels unavailable" in caplog.text
    module.cpu_kernel = False
    torch.testing.assert_close(out, module(*inputs), rtol=0, atol=0)


def test_it_can_be_switched_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("TDN_CPU_KERNEL", "0")
    assert _cpu_kernels.load() is None
    assert _cpu_kernels.unavailable_reason() == "TDN_CPU_KERNEL=0"
    assert not fresh_kernel.exists()


# ------------------------------------------------------------------ sparse contractions
def _sparse_results(L, mode, channels, edges, monkeypatch, use_kernel):
    """Output, first-order (fused) and second-order gradients of the sparse product, with
    the CPU kernels on or off; asserts which one ran."""
    monkeypatch.setattr(_cpu_kernels, "_state", {})
    monkeypatch.setenv("TDN_CPU_KERNEL", "1" if use_kernel else "0")
    calls = []
    kernel = _cpu_kernels.sparse_bilinear
    monkeypatch.setattr(
        _cpu_kernels, "sparse_bilinear", lambda *a, **k: calls.append(1) or kernel(*a, **k)
    )
    tp = TensorProduct(L, L, L, channels, backend="sparse", mode=mode)
    g = torch.Generator().manual_seed(L + channels)
    x, y, w = (t.float().requires_grad_() for t in random_inputs(tp.descriptor, edges, generator=g))
    out = tp(x, y, w)
    grad_out = torch.randn(out.shape, generator=g)
    first = torch.autograd.grad(out, (x, y, w), grad_out, retain_graph=True)
    grads = torch.autograd.grad(out, (x, y, w), grad_out, create_graph=True)
    second = torch.autograd.grad(sum((t * t).sum() for t in grads), (x, y, w))
    assert bool(calls) == use_kernel
    return [out, *first, *grads, *second]


@needs_compiler
@pytest.mark.parametrize("mode", ["uvu", "uuu"])
@pytest.mark.parametrize(
    ("L", "channels", "edges"),
    # channel blocks of 16, 48 and 80 lanes; edge counts off the 8/16-edge blocks; enough
    # work for several threads
    [(1, 16, 5), (2, 48, 7), (3, 80, 3), (4, 64, 301)],
)
def test_sparse_kernels_equal_the_pytorch_ops(L, mode, channels, edges, monkeypatch):
    # forward (S layouts), the fused first-order backward (with the dot of grad s) and
    # the composed second order (S and R layouts, channel weights)
    fused = _sparse_results(L, mode, channels, edges, monkeypatch, use_kernel=True)
    ops = _sparse_results(L, mode, channels, edges, monkeypatch, use_kernel=False)
    _assert_same(fused, ops)


def test_sparse_without_the_kernels_says_why_once(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(_cpu_kernels, "_cpu_flags", lambda: {"sse2", "avx"})  # no AVX2/FMA
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    tp = TensorProduct(2, 2, 2, 16, backend="sparse", mode="uuu")
    x, y, w = (t.float() for t in random_inputs(tp.descriptor, 6))
    out = tp(x, y, w)
    tp(x, y, w)
    assert _cpu_kernels.unavailable_reason() == "this CPU lacks AVX2, FMA"
    assert caplog.text.count("CPU kernels unavailable (this CPU lacks AVX2, FMA)") == 1
    assert not fresh_kernel.exists()  # nothing was built
    ref = TensorProduct(2, 2, 2, 16, backend="cg", mode="uuu").double()
    torch.testing.assert_close(
        out.double(), ref(x.double(), y.double(), w.double()), rtol=1e-5, atol=1e-5
    )


def test_kernels_need_avx2_and_fma_on_x86(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(_cpu_kernels, "_cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert _cpu_kernels.isa_problem() is None
    monkeypatch.setattr(_cpu_kernels, "_cpu_flags", lambda: {"avx2"})
    assert _cpu_kernels.isa_problem() == "this CPU lacks FMA"
    monkeypatch.setattr("platform.machine", lambda: "riscv64")
    assert "riscv64" in _cpu_kernels.isa_problem()
