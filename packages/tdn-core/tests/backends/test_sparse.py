"""sparse: the exact product over M's nonzeros equals cg, to every order of derivative."""

from __future__ import annotations

import pytest
import torch

import tdn_core
from tdn_core import TensorProduct
from tdn_core.backends._sparse_contraction import SparseBilinear
from tdn_core.testing import random_inputs

# every L = 1..6, mixed and truncated degrees; odd and kernel-sized channel counts
CASES = [(L, L, L, 3) for L in range(1, 7)] + [(3, 2, 1, 5), (1, 2, 3, 16), (2, 0, 2, 1)]
IDS = ["-".join(map(str, c)) for c in CASES]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def pair(case, mode, group, dtype=torch.float64):
    """(sparse, cg) products for one case."""
    kw = dict(mode=mode, group=group)
    return tuple(TensorProduct(*case, backend=n, **kw).to(dtype) for n in ("sparse", "cg"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["uvu", "uuu"])
@pytest.mark.parametrize("group", ["SO3", "O3"])
def test_equals_cg_with_gradients_float64(case, mode, group):
    sparse, cg = pair(case, mode, group)
    g = torch.Generator().manual_seed(sum(case))
    x, y, w = (t.requires_grad_() for t in random_inputs(sparse.descriptor, 4, generator=g))
    out, ref = sparse(x, y, w), cg(x, y, w)
    assert rel(out, ref) <= 1e-12
    grad_out = torch.randn(ref.shape, dtype=ref.dtype, generator=g)
    grads = torch.autograd.grad(out, (x, y, w), grad_out, create_graph=True)
    ref_grads = torch.autograd.grad(ref, (x, y, w), grad_out, create_graph=True)
    for a, b in zip(grads, ref_grads, strict=True):
        assert rel(a, b) <= 1e-12
    # second order: the force-training pattern (gradient of a function of the gradient)
    second = torch.autograd.grad(sum((t * t).sum() for t in grads), (x, y, w))
    ref_second = torch.autograd.grad(sum((t * t).sum() for t in ref_grads), (x, y, w))
    for a, b in zip(second, ref_second, strict=True):
        assert rel(a, b) <= 1e-12


@pytest.mark.parametrize("mode", ["uvu", "uuu"])
@pytest.mark.parametrize("group", ["SO3", "O3"])
@pytest.mark.parametrize("case", [(1, 1, 1, 2), (2, 1, 2, 3)], ids=["1-1-1-2", "2-1-2-3"])
def test_gradcheck_and_gradgradcheck(case, mode, group):
    sparse, _ = pair(case, mode, group)
    x, y, w = (t.requires_grad_() for t in random_inputs(sparse.descriptor, 3))
    assert torch.autograd.gradcheck(sparse, (x, y, w))
    assert torch.autograd.gradgradcheck(sparse, (x, y, w))


@pytest.mark.parametrize("mode", ["uvu", "uuu"])
def test_empty_batch_forward_and_backward(mode, dtype):
    sparse = TensorProduct(3, 3, 3, 16, backend="sparse", mode=mode).to(dtype)
    x, y, w = (t.requires_grad_() for t in random_inputs(sparse.descriptor, 0, dtype))
    out = sparse(x, y, w)
    assert out.shape == (0, 16, 16)
    grads = torch.autograd.grad(out.sum(), (x, y, w), allow_unused=True)
    assert [tuple(g.shape) for g in grads] == [tuple(t.shape) for t in (x, y, w)]


def test_nonzeros_are_those_of_the_cg_tensor():
    sparse = TensorProduct(4, 4, 4, 8, backend="sparse")
    T = sparse.executor.contraction
    M = tdn_core.cg_tensor(4, 4, 4)
    assert T.nnz == int((M != 0).sum()) == 2052
    assert torch.equal(T.dense(), M.permute(2, 0, 1).double())


def test_every_derivative_reuses_a_few_contractions():
    # (out, a, b) permuted: at most the 3! orders, with their channel patterns
    for mode, distinct in (("uvu", 4), ("uuu", 6)):
        T = TensorProduct(2, 2, 2, 4, backend="sparse", mode=mode).executor.contraction
        assert len(T._family) == distinct
        # swapping out and a twice gives the original back, not a new copy of it
        assert T.grad_a[0].grad_a[0] is T
        assert T.grad_b.grad_b is T


def test_a_contraction_needs_channels_somewhere():
    with pytest.raises(ValueError, match="b_channels, out_channels"):
        SparseBilinear([[0, 0, 0]], [1.0], (1, 1, 1), b_channels=False, out_channels=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["uvu", "uuu"])
def test_compiles_as_one_graph_forward_and_backward(mode):
    """torch.compile traces the product (the kernels are one opaque custom op) without a
    graph break, and gives eager mode's values and gradients."""
    sparse = TensorProduct(2, 2, 2, 16, backend="sparse", mode=mode)
    x, y, w = (t.float().requires_grad_() for t in random_inputs(sparse.descriptor, 8))
    torch._dynamo.reset()
    compiled = torch.compile(sparse, fullgraph=True)
    out, ref = compiled(x, y, w), sparse(x, y, w)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.pow(2).sum(), (x, y, w))
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (x, y, w))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)
