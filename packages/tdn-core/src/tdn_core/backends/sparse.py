"""``sparse``: the exact product over the nonzeros of the path-summed CG tensor M.

M is sparse (nnz = 137, 2,052, 11,896 at L = 2, 4, 6 against d^3 = 729, 15,625,
117,649), so an exact product that walks its nonzeros does fewer multiply-adds than a
dense one, and for uuu fewer than CP at the paper's rank (3 d R = 756, 8,400, 37,044).
With triples (k, i, j, M_ijk) ordered by output component k:

    uuu:  out[e, k, c] = w[e, c] sum_(i,j) M_ijk x[e, i, c] y[e, j, c]      nnz C per edge
    uvu:  out[e, k, c] = w[e, c] sum_i K_e[k, i] x[e, i, c],
          K_e[k, i] = sum_j M_ijk y[e, j]                          nnz + d1 d3 C per edge

(uvu is path_shared's precontraction, built from the nonzeros in cache instead of a
d1 d2 d3 GEMM, fused with the product.) Gradients are the same contraction with the roles
of (x, y, out) permuted (``_sparse_contraction``), so backward and double backward run the
same kernels. On the CPU in float32 with channels a multiple of 16 they are the C++
kernels of ``_cpu_kernels.cpp``; on CUDA, Triton kernels; otherwise PyTorch ops.
"""

from __future__ import annotations

import torch
from torch import nn

from .._cg import cg_tensor
from ..descriptors import TPDescriptor
from ._base import Backend
from ._sparse_contraction import SparseBilinear


class SparseProduct(nn.Module):
    """x [E, d1, C], y [E, d2] or [E, d2, C], weight [E, C] -> out [E, d3, C]."""

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.desc = desc
        M = cg_tensor(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.group)
        # (i, j, k) -> (out = k, a = i, b = j)
        self.contraction = SparseBilinear.from_dense(
            M.permute(2, 0, 1).contiguous(), b_channels=desc.mode == "uuu"
        )
        self.contraction.prepare(dtype, device)  # built now, not on the first forward

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.contraction(x, y, weight)

    def extra_repr(self) -> str:
        return f"nnz={self.contraction.nnz}"


class SparseBackend(Backend):
    name = "sparse"
    exact = True
    modes = ("uvu", "uuu")
    path_weights = ("shared",)

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return SparseProduct(desc, dtype, device)
