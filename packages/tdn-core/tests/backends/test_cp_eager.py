"""cp_eager: edge chunking and contraction order must not change the result."""

from __future__ import annotations

import pytest
import torch

from tdn_core import TPDescriptor, cp_factors
from tdn_core.backends.cp_eager import CHUNK_ELEMENTS, CPEagerProduct
from tdn_core.testing import random_inputs


def _module(L: int, channels: int) -> CPEagerProduct:
    desc = TPDescriptor(L, L, L, channels, rank=cp_factors(L, L, L).rank)
    return CPEagerProduct(desc, torch.float64, torch.device("cpu"))


def test_chunk_size_follows_rank_and_channels():
    for L, channels in [(1, 8), (3, 64), (6, 64)]:
        module = _module(L, channels)
        R = module.A.shape[1]
        # the [n, R, C] intermediate of one chunk fits the budget, and one more edge would not
        assert module.chunk * R * channels <= CHUNK_ELEMENTS or module.chunk == 1
        assert (module.chunk + 1) * R * channels > CHUNK_ELEMENTS


def test_chunked_forward_and_backward_match_one_chunk():
    module = _module(2, 3)
    desc = module.desc
    module.order = "factored"  # the order that chunks
    g = torch.Generator().manual_seed(0)
    inputs = [t.requires_grad_() for t in random_inputs(desc, 10, generator=g)]
    grad_out = torch.randn(10, desc.dims[2], 3, dtype=torch.float64, generator=g)

    results = []
    for chunk in (10, 3):  # one chunk; four chunks, the last one partial
        module.chunk = chunk
        out = module(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out)
        results.append((out, *grads))
    for whole, chunked in zip(*results, strict=True):
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_auto_order_takes_the_one_with_fewer_flops():
    for L, channels, expected in [(3, 64, "dense"), (1, 1, "dense"), (3, 1, "factored")]:
        module = _module(L, channels)
        assert module.resolved_order() == expected
        desc = module.desc
        cheaper = "dense" if desc.flops("path_shared") < desc.flops("cp") else "factored"
        assert cheaper == expected
    module.order = "dense"
    assert module.resolved_order() == "dense"


def test_orders_agree_with_first_and_second_derivatives():
    module = _module(2, 3)
    g = torch.Generator().manual_seed(1)
    inputs = [t.requires_grad_() for t in random_inputs(module.desc, 6, generator=g)]
    grad_out = torch.randn(6, module.desc.dims[2], 3, dtype=torch.float64, generator=g)
    results = []
    for order in ("factored", "dense"):
        module.order = order
        out = module(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out, create_graph=True)
        # second derivatives, as force training takes them
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)
        results.append((out, *grads, *second))
    for factored, dense in zip(*results, strict=True):
        torch.testing.assert_close(dense, factored, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["factored", "dense"])
def test_each_order_passes_gradcheck_and_gradgradcheck(order):
    module = _module(1, 2)
    module.order = order
    g = torch.Generator().manual_seed(2)
    inputs = tuple(t.requires_grad_() for t in random_inputs(module.desc, 3, generator=g))
    assert torch.autograd.gradcheck(module, inputs)
    assert torch.autograd.gradgradcheck(module, inputs)


def test_unknown_order_is_refused():
    module = _module(1, 2)
    with pytest.raises(ValueError, match="order: expected one of"):
        module.order = "fastest"
