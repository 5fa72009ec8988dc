"""cp_eager's fused CPU forward: same product as its PyTorch ops, built and cached safely."""

from __future__ import annotations

import shutil

import pytest
import torch

from tdn_core import TPDescriptor, cp_factors
from tdn_core.backends import _cp_cpu_kernel
from tdn_core.backends.cp_eager import CPEagerProduct
from tdn_core.testing import random_inputs

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None, reason="no C++ compiler: cp_eager runs its PyTorch ops"
)


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """The kernel loader with an empty cache directory and no loaded library."""
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cp_cpu_kernel, "_state", {})
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
    kernel = _cp_cpu_kernel.forward
    monkeypatch.setattr(_cp_cpu_kernel, "forward", lambda *a: calls.append(1) or kernel(*a))
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
    assert _cp_cpu_kernel.supports(inputs[0])
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
    assert not _cp_cpu_kernel.supports(x16.double())  # float64
    assert not _cp_cpu_kernel.supports(torch.zeros(2, 4, 12))  # channels % 16 != 0


@needs_compiler
def test_build_goes_to_the_cache(fresh_kernel):
    assert _cp_cpu_kernel.load() is not None
    assert [p.name for p in fresh_kernel.iterdir()] == [
        _cp_cpu_kernel.library_path(_cp_cpu_kernel.compiler()).name
    ]  # and no temp file left behind


@needs_compiler
def test_a_damaged_cached_kernel_is_rebuilt(fresh_kernel):
    target = _cp_cpu_kernel.library_path(_cp_cpu_kernel.compiler())
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared library")
    assert _cp_cpu_kernel.load() is not None
    assert _cp_cpu_kernel.unavailable_reason() is None
    assert target.read_bytes()[:4] == b"\x7fELF"


def test_without_a_compiler_the_ops_run_and_say_why(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler-tdn")
    module = _module(2, 16)
    g = torch.Generator().manual_seed(4)
    inputs = [t.float() for t in random_inputs(module.desc, 6, generator=g)]
    out = module(*inputs)
    reason = _cp_cpu_kernel.unavailable_reason()
    assert reason is not None and "no-such-compiler-tdn" in reason
    assert "CPU kernel unavailable" in caplog.text
    module.cpu_kernel = False
    torch.testing.assert_close(out, module(*inputs), rtol=0, atol=0)


def test_it_can_be_switched_off(fresh_kernel, monkeypatch):
    monkeypatch.setenv("TDN_CPU_KERNEL", "0")
    assert _cp_cpu_kernel.load() is None
    assert _cp_cpu_kernel.unavailable_reason() == "TDN_CPU_KERNEL=0"
    assert not fresh_kernel.exists()
