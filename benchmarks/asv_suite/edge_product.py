"""Speed and peak memory of the edge product x [E, d, C] (x) y [E, d] with w [E, C].

Forward (no grad), forward+backward (gradients for x, y, w) and double backward (the
force-training pattern: a gradient with create_graph, then a backward through it), for
every backend and L = 1..6, float32, E = 256 edges, C = 16 channels.
"""

from __future__ import annotations

import torch

from ._common import CHANNELS, EDGES, BackendByL, need


class _EdgeProduct(BackendByL):
    def setup(self, backend, L):
        torch.manual_seed(0)
        self.tp = self.tensor_product(backend, L, CHANNELS)
        random_inputs = need("tdn_core.testing", "random_inputs")
        gen = torch.Generator().manual_seed(L)
        x, y, w = random_inputs(self.tp.descriptor, EDGES, torch.float32, generator=gen)
        self.inputs = (x, y, w)
        self.leaves = tuple(t.clone().requires_grad_(True) for t in (x, y, w))
        self.grad_out = torch.randn_like(self.tp(x, y, w))

    def forward(self):
        with torch.no_grad():
            self.tp(*self.inputs)

    def forward_backward(self):
        torch.autograd.grad(self.tp(*self.leaves), self.leaves, self.grad_out)

    def double_backward(self):
        x, y, w = self.leaves
        out = self.tp(x, y, w)
        (gy,) = torch.autograd.grad(out, y, self.grad_out, create_graph=True)
        torch.autograd.grad(gy.pow(2).sum(), (x, w))


class EdgeProductTime(_EdgeProduct):
    repeat = (1, 5, 4.0)
    rounds = 1
    warmup_time = 0.1
    min_run_count = 1

    def time_forward(self, backend, L):
        self.forward()

    def time_forward_backward(self, backend, L):
        self.forward_backward()

    def time_double_backward(self, backend, L):
        self.double_backward()


class EdgeProductPeakMem(_EdgeProduct):
    """Peak resident memory of the process (asv's peakmem_): setup included, so the
    differences between backends, not the absolute values, are the signal."""

    def peakmem_forward(self, backend, L):
        self.forward()

    def peakmem_forward_backward(self, backend, L):
        self.forward_backward()

    def peakmem_double_backward(self, backend, L):
        self.double_backward()
