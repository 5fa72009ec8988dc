"""``cg``: the exact reference. One CG block per path, written to be read, not to be fast."""

from __future__ import annotations

import torch
from torch import nn

from .._cg import cg_block
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
        y_eq = "ej" if desc.mode == "uvu" else "ejc"
        # split/unbind/cat rather than slicing and in-place slice updates: under double
        # backward (force training) every slice's backward is a zero-padded full-size
        # tensor that the recorded graph keeps alive, one per path (tens of GB at L = 4)
        xs = x.split([2 * l + 1 for l in range(desc.lmax_in + 1)], dim=1)
        ys = y.split([2 * l + 1 for l in range(desc.lmax_sh + 1)], dim=1)
        ws = weight.unbind(1) if desc.path_weights == "per_path" else None
        terms: list[list[torch.Tensor]] = [[] for _ in range(desc.lmax_out + 1)]
        for p, (l1, l2, l3) in enumerate(desc.paths):
            block = getattr(self, f"block_{p}")
            z = torch.einsum(f"ijk,eic,{y_eq}->ekc", block, xs[l1], ys[l2])
            w = weight if ws is None else ws[p]
            terms[l3].append(w.unsqueeze(1) * z)
        return torch.cat(
            [sum(t) if t else x.new_zeros(E, 2 * l3 + 1, C) for l3, t in enumerate(terms)], dim=1
        )


class CGBackend(Backend):
    name = "cg"
    exact = True
    modes = ("uvu", "uuu")
    path_weights = ("shared", "per_path")

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return CGProduct(desc, dtype, device)
