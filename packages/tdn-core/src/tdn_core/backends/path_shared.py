"""``path_shared``: exact product with one weight shared by all paths, fast form.

uvu: precontract the path-summed M with the single-channel y once per edge,
``K[e] = sum_j M[:, j, :] y[e, j]`` (a d1 x d3 matrix), then one batched matmul for
all channels: ``out[e] = w[e] * K[e]^T x[e]``. Cost O(d1 d2 d3 + C d1 d3) per edge.

uuu: no precontraction is possible (y has channels); the outer product x (x) y per
channel is contracted with the mode-3 unfolding of M in one batched matmul.
"""

from __future__ import annotations

import torch
from torch import nn

from .._cg import cg_tensor
from ..descriptors import TPDescriptor
from ._base import Backend


class PathSharedProduct(nn.Module):
    """x [E, d1, C], y [E, d2] or [E, d2, C], weight [E, C] -> out [E, d3, C]."""

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.desc = desc
        d1, d2, d3 = desc.dims
        M = cg_tensor(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.group)
        if desc.mode == "uvu":
            # [d2, d1*d3]: one GEMM turns y [E, d2] into K [E, d1, d3]
            mat = M.permute(1, 0, 2).reshape(d2, d1 * d3)
        else:
            # [d3, d1*d2]: mode-3 unfolding
            mat = M.permute(2, 0, 1).reshape(d3, d1 * d2)
        self.register_buffer("mat", mat.to(dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        d1, d2, d3 = self.desc.dims
        E, C = x.shape[0], x.shape[2]
        if self.desc.mode == "uvu":
            K = (y @ self.mat).view(E, d1, d3)
            out = torch.bmm(K.transpose(1, 2), x)
        else:
            xy = (x.unsqueeze(2) * y.unsqueeze(1)).reshape(E, d1 * d2, C)
            out = torch.matmul(self.mat, xy)
        return out * weight.unsqueeze(1)


class PathSharedBackend(Backend):
    name = "path_shared"
    exact = True
    modes = ("uvu", "uuu")
    path_weights = ("shared",)

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return PathSharedProduct(desc, dtype, device)
