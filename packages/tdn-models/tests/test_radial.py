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
