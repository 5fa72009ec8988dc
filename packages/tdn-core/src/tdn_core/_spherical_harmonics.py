"""Real spherical harmonics of edge directions, in e3nn's basis, without e3nn.

Degree l is built from degree l-1 by the CG coupling ``(l-1) x 1 -> l``:
``Y_l = a_l * C^{l-1,1,l}(Y_{l-1}, Y_1)``. The coupled product of two equivariant
polynomials is again an equivariant homogeneous polynomial of degree l, and the
degree-l harmonic polynomial is unique up to a factor, so the recursion reproduces
e3nn's ``spherical_harmonics(..., normalize=True, normalization="component")`` once
``a_l`` fixes the norm (component normalization: ``|Y_l|^2 = 2l + 1``). The sign
agrees with e3nn for every l that is tested (tests compare with e3nn directly).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._cg import cg_block, check_lmax

_PROBE = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


def _degree_np(l: int) -> np.ndarray:
    """Y_l of the probe direction from the normalized couplings (l >= 1), float64."""
    y1 = np.sqrt(3.0) * _PROBE
    y = y1
    for k in range(2, l + 1):
        y = np.einsum("ijk,i,j->k", _coupling(k), y, y1)
    return y


@functools.cache
def _coupling(l: int) -> np.ndarray:
    """a_l * C^{l-1,1,l} [2l-1, 3, 2l+1] (l >= 2), float64, read-only."""
    C = cg_block(l - 1, 1, l)
    raw = np.einsum("ijk,i,j->k", C, _degree_np(l - 1), np.sqrt(3.0) * _PROBE)
    # |Y_l| is the same for every direction (equivariance), so one probe fixes a_l.
    C = C * (np.sqrt(2 * l + 1) / np.linalg.norm(raw))
    C.setflags(write=False)
    return C


@functools.cache
def _coupling_matrix(l: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`_coupling` as a [(2l-1) * 3, 2l+1] matrix at the given placement."""
    return torch.tensor(_coupling(l).reshape(-1, 2 * l + 1), dtype=dtype, device=device)


def spherical_harmonics(lmax: int, vec: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Component-normalized real spherical harmonics of the directions of ``vec``.

    Args:
        lmax: largest degree L (>= 0).
        vec: ``[..., 3]`` vectors (Å; only the direction is used). Zero vectors have
            no direction: they give NaN unless ``eps`` > 0 is added to the norm.
        eps: added to ``|vec|`` before dividing.

    Returns:
        ``[..., (L+1)^2]`` in vec's dtype and device, ordered l = 0..L, m = -l..l:
        equal to ``e3nn.o3.spherical_harmonics(range(L+1), vec, True, "component")``.
        Differentiable to any order. Inside ``torch.compile`` use
        :class:`SphericalHarmonics`, which holds its constants as buffers.
    """
    check_lmax(lmax=lmax)
    couplings = [_coupling_matrix(l, vec.dtype, vec.device) for l in range(2, lmax + 1)]
    return _harmonics(lmax, vec, couplings, eps)


class SphericalHarmonics(torch.nn.Module):
    """:func:`spherical_harmonics` as a module: ``forward(vec [..., 3]) -> [..., (L+1)^2]``.

    The coupling matrices are (non-persistent) buffers, so they follow ``.to()`` and
    ``torch.compile`` sees tensors instead of tracing the numpy code that builds them
    (which would break its graph). The state dict holds nothing.
    """

    def __init__(self, lmax: int, eps: float = 0.0) -> None:
        super().__init__()
        check_lmax(lmax=lmax)
        self.lmax, self.eps = lmax, float(eps)
        for l in range(2, lmax + 1):
            matrix = _coupling_matrix(l, torch.float64, torch.device("cpu"))
            self.register_buffer(f"coupling_{l}", matrix, persistent=False)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        couplings = [getattr(self, f"coupling_{l}").to(vec.dtype) for l in range(2, self.lmax + 1)]
        return _harmonics(self.lmax, vec, couplings, self.eps)


def _harmonics(
    lmax: int, vec: torch.Tensor, couplings: list[torch.Tensor], eps: float
) -> torch.Tensor:
    """The recursion, with ``couplings[l - 2]`` the [(2l-1) * 3, 2l+1] coupling matrix."""
    if vec.shape[-1:] != (3,):
        raise ValueError(f"vec: expected shape [..., 3], got {list(vec.shape)}")
    unit = vec / (vec.norm(dim=-1, keepdim=True) + eps)
    y1 = unit * np.sqrt(3.0)
    out = [torch.ones_like(vec[..., :1])]
    if lmax >= 1:
        out.append(y1)
    y = y1
    for coupling in couplings:
        # [..., 2l-1] x [..., 3] -> [..., 2l+1]: one small matmul on the outer product
        outer = (y.unsqueeze(-1) * y1.unsqueeze(-2)).flatten(-2)
        y = outer @ coupling
        out.append(y)
    return torch.cat(out, dim=-1)
