"""``e3nn``: the product computed by ``e3nn.o3.TensorProduct``, a peer for benchmarks.

One ``uvu`` instruction per path (l1, l2, l3) in the canonical path order, every
instruction weighted, weights given per edge (``shared_weights=False``,
``internal_weights=False``):

    out[e, k, c] = sum_p w[e, p, c] sum_ij C^p_ijk x[e, i, c] y[e, j]

Normalization: with ``irrep_normalization="none"`` and ``path_normalization="none"``
e3nn's per-instruction factor is ``sqrt(1 / 1 * out_var * path_weight) = 1`` (all
variances and path weights left at 1), so e3nn contracts the raw unit-Frobenius
``wigner_3j`` blocks that tdn uses; no compensation is needed. Its specialized code
for l1 = 0, l2 = 0 or l3 = 0 skips the block and divides by ``sqrt(2l+1)``, which is
the same thing because those blocks are ``I / sqrt(2l+1)``. ``tests/test_peers.py``
checks both facts against an einsum over ``e3nn.o3.wigner_3j``.

Layout: x goes through one gather into e3nn's ``mul_ir`` layout and the output
through the inverse gather (:mod:`tdn_core.adapters.e3nn`); y (one channel) and the
per-path weights need only a reshape. A shared weight [E, C] is expanded to every
path, so e3nn does the per-path work it always does.
"""

from __future__ import annotations

import torch
from torch import nn

from .._errors import UnsupportedDescriptor
from .._optional import require
from ..adapters.e3nn import irreps, layout_permutation, permute_last, uvu_instructions
from ..descriptors import TPDescriptor
from ._base import Backend


def _make_buffers_non_persistent(module: nn.Module) -> None:
    # e3nn registers its wigner_3j constants (and an empty `weight`, `output_mask`) as
    # persistent buffers; a layer's state_dict must not depend on the backend.
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, buf, persistent=False)


class E3nnProduct(nn.Module):
    """e3nn ``TensorProduct`` behind tdn's layout.

    x [E, d1, C], y [E, d2], weight [E, C] (shared) or [E, P, C] (per_path)
    -> out [E, d3, C]. No trainable parameters; all buffers are non-persistent.
    """

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        require("e3nn", "backend 'e3nn'")
        from e3nn import o3

        self.desc = desc
        C = desc.channels
        self.num_paths = len(desc.paths)
        # e3nn makes its wigner_3j constants in the default dtype; built under float32
        # they carry ~1e-7 errors into a float64 run, so build in float64 and cast.
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            self.tp = o3.TensorProduct(
                irreps(desc.lmax_in, C, desc.group),
                irreps(desc.lmax_sh, 1, desc.group),
                irreps(desc.lmax_out, C, desc.group),
                uvu_instructions(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.group),
                shared_weights=False,
                internal_weights=False,
                irrep_normalization="none",
                path_normalization="none",
            )
        finally:
            torch.set_default_dtype(default_dtype)
        self.tp.to(dtype=dtype, device=device)
        _make_buffers_non_persistent(self.tp)
        perm_in, inv_in = layout_permutation(desc.lmax_in, C, device)
        perm_out, inv_out = layout_permutation(desc.lmax_out, C, device)
        self.register_buffer("perm_in", perm_in, persistent=False)
        self.register_buffer("inv_in", inv_in, persistent=False)
        # out goes e3nn -> tdn: gather by the inverse, backward by the permutation
        self.register_buffer("perm_out", inv_out, persistent=False)
        self.register_buffer("inv_out", perm_out, persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        E, d1, C = x.shape
        x_e3nn = permute_last(x.reshape(E, d1 * C), self.perm_in, self.inv_in)
        if self.desc.path_weights == "shared":
            # one weight for every path: e3nn has no such option, so repeat it per path
            weight = weight.unsqueeze(1).expand(E, self.num_paths, C)
        out = self.tp(x_e3nn, y, weight.reshape(E, self.num_paths * C))
        d3 = self.desc.dims[2]
        return permute_last(out, self.perm_out, self.inv_out).view(E, d3, C)


class E3nnBackend(Backend):
    """Exact peer running ``e3nn.o3.TensorProduct`` (uvu, shared or per-path weights)."""

    name = "e3nn"
    exact = True
    modes = ("uvu",)
    path_weights = ("shared", "per_path")
    requires = ("e3nn",)

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        reason = cls.check(desc)
        if reason is not None:
            raise UnsupportedDescriptor(reason)
        return E3nnProduct(desc, dtype, torch.device(device))
