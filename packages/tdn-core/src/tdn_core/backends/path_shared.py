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
            mat = unfold_for_precontraction(M)
        else:
            # [d3, d1*d2]: mode-3 unfolding
            mat = M.permute(2, 0, 1).reshape(d3, d1 * d2)
        self.register_buffer("mat", mat.to(dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.desc.mode == "uvu":
            return precontracted_edge_product(x, y, weight, self.mat)
        (E, d1, C), d2 = x.shape, y.shape[1]
        xy = (x.unsqueeze(2) * y.unsqueeze(1)).reshape(E, d1 * d2, C)
        return torch.matmul(self.mat, xy) * weight.unsqueeze(1)


def unfold_for_precontraction(M: torch.Tensor) -> torch.Tensor:
    """M [d1, d2, d3] -> [d2, d1*d3]: one GEMM turns y [E, d2] into K [E, d1, d3]."""
    d1, d2, d3 = M.shape
    return M.permute(1, 0, 2).reshape(d2, d1 * d3)


def precontracted_edge_product(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, mat: torch.Tensor
) -> torch.Tensor:
    """uvu with M precontracted: ``out[e] = w[e] * K[e]^T x[e]``, ``K = y @ mat``.

    Shapes: x [E, d1, C], y [E, d2], weight [E, C], mat [d2, d1*d3] -> [E, d3, C].
    """
    E, d1, _ = x.shape
    K = (y @ mat).view(E, d1, mat.shape[1] // d1)
    return torch.bmm(K.transpose(1, 2), x) * weight.unsqueeze(1)


class PathSharedBackend(Backend):
    name = "path_shared"
    exact = True
    modes = ("uvu", "uuu")
    path_weights = ("shared",)

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return PathSharedProduct(desc, dtype, device)
