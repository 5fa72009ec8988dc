"""cp_eager's edge chunking: the result must not depend on where the chunks fall."""

from __future__ import annotations

import torch

from tdn_core import TPDescriptor, cp_factors
from tdn_core.backends.cp_eager import CHUNK_ELEMENTS, CPEagerProduct
from tdn_core.testing import random_inputs


def test_chunk_size_follows_rank_and_channels():
    for L, channels in [(1, 8), (3, 64), (6, 64)]:
        desc = TPDescriptor(L, L, L, channels, rank=cp_factors(L, L, L).rank)
        module = CPEagerProduct(desc, torch.float64, torch.device("cpu"))
        R = module.A.shape[1]
        # the [n, R, C] intermediate of one chunk fits the budget, and one more edge would not
        assert module.chunk * R * channels <= CHUNK_ELEMENTS or module.chunk == 1
        assert (module.chunk + 1) * R * channels > CHUNK_ELEMENTS


def test_chunked_forward_and_backward_match_one_chunk():
    desc = TPDescriptor(2, 2, 2, 3, rank=cp_factors(2, 2, 2).rank)
    module = CPEagerProduct(desc, torch.float64, torch.device("cpu"))
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
