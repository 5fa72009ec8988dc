"""Equivariant building blocks on the ``[N, (L+1)^2, C]`` layout of tdn-core.

Every layer here commutes with rotations exactly: it mixes channels within a degree,
multiplies by invariants, or normalizes by invariant norms.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from tdn_core.conventions import degree_slice


def _scalar_only(v: Tensor, num_components: int) -> Tensor:
    """[C] -> [(L+1)^2, C] with v in the l = 0 row and zeros elsewhere (a broadcastable
    bias for the scalars: one add over the tensor instead of slicing and concatenating)."""
    return nn.functional.pad(v.unsqueeze(0), (0, 0, 0, num_components - 1))


class EquivariantLinear(nn.Module):
    r"""Channel mixing within each component; bias on the scalars only.

    ``out[n, m, :] = x[n, m, :] @ W[l(m)] / sqrt(C_in)`` (+ b for l = 0), with one
    matrix shared by all degrees (``per_degree=False``, the paper's layer: a single
    GEMM over all components) or one matrix per degree (``per_degree=True``, e3nn's
    ``o3.Linear``). Both commute with rotations.

    Shapes: x [N, (L+1)^2, C_in] -> [N, (L+1)^2, C_out].
    """

    def __init__(
        self,
        lmax: int,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        per_degree: bool = False,
    ):
        super().__init__()
        self.lmax = lmax
        self.per_degree = per_degree
        shape = (lmax + 1 if per_degree else 1, in_channels, out_channels)
        self.weight = nn.Parameter(torch.randn(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._norm = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self._norm
        if self.per_degree:
            parts = [x[:, degree_slice(l), :] @ w[l] for l in range(self.lmax + 1)]
            out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        else:
            out = x @ w[0]
        if self.bias is not None:
            out = out + _scalar_only(self.bias, x.shape[1])
        return out

    def extra_repr(self) -> str:
        _, c_in, c_out = self.weight.shape
        return (
            f"lmax={self.lmax}, {c_in} -> {c_out}, bias={self.bias is not None}, "
            f"per_degree={self.per_degree}"
        )


class Gate(nn.Module):
    r"""Gated nonlinearity: SiLU on scalars, sigmoid(gate) times every l > 0 component.

    Shapes: x [N, (L+1)^2, C], gates [N, C] (invariant) -> [N, (L+1)^2, C].
    """

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        scalars = nn.functional.silu(x[:, :1, :])
        if x.shape[1] == 1:
            return scalars
        return torch.cat([scalars, x[:, 1:, :] * torch.sigmoid(gates).unsqueeze(1)], dim=1)


class EquivariantLayerNorm(nn.Module):
    r"""Layer norm per degree: scalars are centred over channels, then every degree is
    divided by its RMS over components and channels (an invariant) and scaled per
    channel; the scalars also get a bias.

    Shapes: x [N, (L+1)^2, C] -> same.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax = lmax
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degree = torch.cat([torch.full((2 * l + 1,), l) for l in range(lmax + 1)])
        self.register_buffer("degree", degree, persistent=False)
        # mean over the components of each degree, as one [d, L+1] matrix product:
        # vectorized over degrees, so the op count does not grow with L
        average = nn.functional.one_hot(degree, lmax + 1).float()
        self.register_buffer("average", average / average.sum(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        d = x.shape[1]
        # subtract the scalars' channel mean from the l = 0 row only: [N, d, 1] offset
        scalar_mean = x[:, :1, :].mean(dim=-1, keepdim=True)
        centred = x - nn.functional.pad(scalar_mean, (0, 0, 0, d - 1))
        ms = centred.pow(2).mean(dim=-1) @ self.average.to(x.dtype)  # [N, L+1]
        inv_rms = (ms + self.eps).rsqrt().index_select(1, self.degree)  # [N, d]
        scale = self.weight.index_select(0, self.degree)  # [d, C]
        return centred * (inv_rms.unsqueeze(-1) * scale) + _scalar_only(self.bias, d)


class ScalarMLP(nn.Sequential):
    """Linear -> LayerNorm -> SiLU, repeated, then a last Linear: invariant features only.

    Shapes: [..., sizes[0]] -> [..., sizes[-1]].
    """

    def __init__(self, sizes: list[int], layer_norm: bool = True):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if layer_norm:
                    layers.append(nn.LayerNorm(b))
                layers.append(nn.SiLU())
        super().__init__(*layers)
