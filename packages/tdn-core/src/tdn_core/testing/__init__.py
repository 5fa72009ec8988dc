"""Helpers for testing tensor-product backends (ours and third parties').

``tdn_core.testing`` ships with the package so a plugin backend can run the same checks
as the built-ins: rotations in our basis, random inputs for a descriptor, the
equivariance error of a product, and the tolerance table per dtype.
"""

from __future__ import annotations

import torch

from .._optional import require
from ..descriptors import TPDescriptor

#: relative tolerance of exact backends against the ``cg`` reference, per dtype
EXACT_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def wigner_D(lmax: int, R: torch.Tensor) -> torch.Tensor:
    """Block-diagonal real Wigner matrix of rotation R [3, 3] for degrees 0..lmax.

    Returns D [(lmax+1)^2, (lmax+1)^2] in R's dtype (e3nn's ``D_from_matrix``; parity
    labels are irrelevant for proper rotations, so SO3 and O3 share it).
    """
    o3 = require("e3nn.o3", "tdn_core.testing.wigner_D")
    irreps = o3.Irreps("+".join(f"1x{l}e" for l in range(lmax + 1)))
    # e3nn builds its generator constants in the default dtype: float32 would cap
    # the accuracy of D at ~1e-7, far above what exact float64 products must reach
    default = torch.get_default_dtype()
    torch.set_default_dtype(R.dtype)
    try:
        return irreps.D_from_matrix(R)
    finally:
        torch.set_default_dtype(default)


def random_rotation(dtype: torch.dtype = torch.float64, generator=None) -> torch.Tensor:
    """A uniformly random rotation matrix [3, 3] (QR of a Gaussian, det fixed to +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=dtype, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_inputs(
    desc: TPDescriptor,
    num_edges: int,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian (x [E, d1, C], y [E, d2(, C)], weight [E, C] or [E, P, C]) for ``desc``."""
    d1 = desc.dims[0]

    def gauss(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=dtype, generator=generator)

    return (
        gauss(num_edges, d1, desc.channels),
        gauss(*desc.y_shape(num_edges)),
        gauss(*desc.weight_shape(num_edges)),
    )


def equivariance_error(
    product,
    desc: TPDescriptor,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    R: torch.Tensor,
) -> float:
    """max over edges and channels of ``||D out(x, y) - out(D x, D y)|| / (|w| ||x|| ||y||)``.

    ``product(x, y, w)`` is any callable with the TensorProduct signature and a shared
    weight. Normalized this way the result is directly comparable to a CP factor set's
    certified ``bound`` (and ~1e-15 for exact products in float64).
    """
    D1, D2, D3 = (wigner_D(l, R).to(x.dtype) for l in (desc.lmax_in, desc.lmax_sh, desc.lmax_out))
    rot_y = y @ D2.T if desc.mode == "uvu" else D2 @ y
    out = product(x, y, w)
    diff = D3 @ out - product(D1 @ x, rot_y, w)  # [E, d3, C]
    y_norm = y.norm(dim=1) if desc.mode == "uuu" else y.norm(dim=1, keepdim=True)
    scale = w.abs() * x.norm(dim=1) * y_norm  # [E, C]
    return float((diff.norm(dim=1) / scale).max())
