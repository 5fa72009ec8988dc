"""Radial features of edge lengths: Gaussian and Bessel bases, and a smooth cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianBasis(nn.Module):
    r"""``exp(-((r - mu_k) / sigma)^2 / 2)`` for K centres evenly spaced on [0, cutoff].

    Shapes: r [E] (Å) -> [E, K].
    """

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis: expected a positive int, got {num_basis!r}")
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_basis))
        self.width = cutoff / max(num_basis - 1, 1)

    def forward(self, r: Tensor) -> Tensor:
        d = (r.unsqueeze(-1) - self.centers.to(r.dtype)) / self.width
        exponent = -0.5 * d * d
        # Far from a centre exp() and the gradients through it reach subnormal numbers,
        # which make every GEMM that reads them several times slower on Intel CPUs
        # (microcode assists; 6-8% of a TDN training step). Values below sqrt(tiny) (1e-19
        # in fp32) are set to 0: products of two such values stay normal, and a step of
        # 1e-19 in a basis function is far below the precision of any energy.
        floor = 0.5 * math.log(torch.finfo(r.dtype).tiny)
        return torch.where(exponent > floor, exponent, -math.inf).exp()


class BesselBasis(nn.Module):
    r"""``sqrt(2 / c) sin(k pi r / c) / r`` for k = 1..K, with c the cutoff (DimeNet's basis,
    which NequIP and MACE use).

    Each function spans the whole of [0, c] smoothly, so the rare short distances share
    their features with the common ones; a narrow Gaussian centred at 0.8 Å is a feature
    that only the few samples with atoms 0.8 Å apart ever train.

    Shapes: r [E] (Å, > 0) -> [E, K].
    """

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis: expected a positive int, got {num_basis!r}")
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / cutoff)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies.to(r.dtype) * r) / r


def polynomial_envelope(x: Tensor, p: int = 6) -> Tensor:
    r"""``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for x < 1,
    else 0: 1 at x = 0, and u and its first p-1 derivatives vanish at x = 1."""
    xp = x.pow(p)
    u = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return torch.where(x < 1, u, torch.zeros_like(u))


class PolynomialEnvelope(nn.Module):
    r"""Smooth cutoff :func:`polynomial_envelope` of ``x = r / cutoff``: 0 for r >= cutoff.

    u and its first p-1 derivatives vanish at the cutoff, so an atom crossing it changes
    the energy and forces continuously (needed for energy conservation in MD).

    Shapes: r [E] (Å) -> [E].
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = p

    def forward(self, r: Tensor) -> Tensor:
        return polynomial_envelope(r / self.cutoff, self.p)


#: name -> radial basis class (the ``radial_basis`` of a model's config)
RADIAL_BASES = {"gaussian": GaussianBasis, "bessel": BesselBasis}


def build_radial_basis(name: str, num_basis: int, cutoff: float) -> nn.Module:
    """The basis ``name`` of :data:`RADIAL_BASES`; ValueError listing them otherwise."""
    if name not in RADIAL_BASES:
        raise ValueError(f"radial_basis: expected one of {sorted(RADIAL_BASES)}, got {name!r}")
    return RADIAL_BASES[name](num_basis, cutoff)
