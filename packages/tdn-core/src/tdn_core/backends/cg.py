"""``cg``: the exact reference. One CG block per path, written to be read, not to be fast."""

from __future__ import annotations

import torch
from torch import nn

from .._cg import cg_block
from ..conventions import degree_slice
from ..descriptors import TPDescriptor
from ._base import Backend


class CGProduct(nn.Module):
    """Sums the per-path products ``C^p(x, y)`` with a shared or per-path weight.

    x [E, d1, C], y [E, d2] (uvu) or [E, d2, C] (uuu), weight [E, C] or [E, P, C]
    -> out [E, d3, C].
    """

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.desc = desc
        for p, (l1, l2, l3) in enumerate(desc.paths):
            block = torch.tensor(cg_block(l1, l2, l3), dtype=dtype, device=device)
            self.register_buffer(f"block_{p}", block, persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        desc = self.desc
        E, C = x.shape[0], desc.channels
        out = x.new_zeros(E, desc.dims[2], C)
        y_eq = "ej" if desc.mode == "uvu" else "ejc"
        for p, (l1, l2, l3) in enumerate(desc.paths):
            block = getattr(self, f"block_{p}")
            xs, ys = x[:, degree_slice(l1)], y[:, degree_slice(l2)]
            z = torch.einsum(f"ijk,eic,{y_eq}->ekc", block, xs, ys)
            w = weight if desc.path_weights == "shared" else weight[:, p]
            out[:, degree_slice(l3)] += w.unsqueeze(1) * z
        return out


class CGBackend(Backend):
    name = "cg"
    exact = True
    modes = ("uvu", "uuu")
    path_weights = ("shared", "per_path")

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return CGProduct(desc, dtype, device)
