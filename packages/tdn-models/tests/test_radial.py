import math

import pytest
import torch

from tdn_models._radial import GaussianBasis


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_basis_has_no_subnormal_values_or_gradients(dtype):
    basis = GaussianBasis(128, cutoff=4.5)
    r = torch.linspace(0.5, 4.5, 2001, dtype=dtype, requires_grad=True)
    out = basis(r)
    (grad,) = torch.autograd.grad(out, r, torch.rand_like(out), create_graph=True)
    (grad2,) = torch.autograd.grad(grad.sum(), r)
    tiny = torch.finfo(dtype).tiny
    for name, t in (("basis", out), ("d/dr", grad), ("d2/dr2", grad2)):
        subnormal = (t != 0) & (t.abs() < tiny)
        assert not subnormal.any(), f"{name}: {int(subnormal.sum())} subnormal values"
    # where it is not cut, it is the Gaussian; where it is, the Gaussian is < sqrt(tiny)
    d = (r.detach().unsqueeze(-1) - basis.centers.to(dtype)) / basis.width
    exact = torch.exp(-0.5 * d * d)
    kept = out.detach() != 0
    torch.testing.assert_close(out.detach()[kept], exact[kept], rtol=1e-6, atol=0)
    assert (exact[~kept] <= math.sqrt(tiny) * 1.01).all()


def test_bessel_basis_is_orthonormal_on_the_ball():
    """sqrt(2/c) sin(k pi r / c) / r, k = 1..K: orthonormal with the r^2 dr weight of a
    ball of radius c, and finite as r -> 0 (its limit is sqrt(2/c) k pi / c)."""
    from tdn_models import BesselBasis

    c, k = 4.5, 8
    basis = BesselBasis(k, c)
    r = torch.linspace(1e-6, c, 200_001, dtype=torch.float64)
    b = basis(r)
    gram = torch.trapezoid(b.T.unsqueeze(1) * b.T.unsqueeze(0) * r**2, r, dim=-1)
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-6, rtol=0)
    limit = math.sqrt(2 / c) * torch.arange(1, k + 1, dtype=torch.float64) * math.pi / c
    torch.testing.assert_close(b[0], limit, rtol=1e-6, atol=0)


def test_unknown_radial_basis_is_refused_by_name():
    from tdn_models._radial import build_radial_basis

    with pytest.raises(ValueError, match="radial_basis: expected one of"):
        build_radial_basis("chebyshev", 8, 4.5)
