import pytest
import torch

from tdn_core import SphericalHarmonics, spherical_harmonics
from tdn_core.testing import random_rotation, wigner_D


@pytest.mark.parametrize("lmax", [0, 1, 2, 5, 8])
def test_equals_e3nn(lmax):
    o3 = pytest.importorskip("e3nn.o3")
    vec = torch.randn(200, 3, dtype=torch.float64)
    ref = o3.spherical_harmonics(list(range(lmax + 1)), vec, True, "component")
    torch.testing.assert_close(spherical_harmonics(lmax, vec), ref, rtol=0, atol=1e-12)


def test_equivariant_and_normalized():
    vec = torch.randn(50, 3, dtype=torch.float64)
    R = random_rotation()
    Y = spherical_harmonics(6, vec)
    torch.testing.assert_close(spherical_harmonics(6, vec @ R.T), Y @ wigner_D(6, R).T)
    for l in range(7):
        norm2 = Y[:, l * l : (l + 1) ** 2].pow(2).sum(-1)
        torch.testing.assert_close(norm2, torch.full_like(norm2, 2 * l + 1))


def test_l1_is_the_cartesian_direction():
    vec = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        spherical_harmonics(1, vec)[0, 1:], torch.tensor([0, 0, 3**0.5], dtype=torch.float64)
    )


def test_double_backward():
    vec = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: spherical_harmonics(3, v), (vec,))


def test_bad_input():
    with pytest.raises(ValueError, match=r"vec: expected shape \[\.\.\., 3\]"):
        spherical_harmonics(2, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="lmax: expected a non-negative int"):
        spherical_harmonics(-1, torch.zeros(4, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_module_equals_the_function(dtype):
    """Same values in either dtype, constants that follow .to(), and no state to save."""
    vec = torch.randn(40, 3, dtype=dtype)
    module = SphericalHarmonics(4).to(dtype)
    assert module.coupling_4.dtype == dtype
    torch.testing.assert_close(module(vec), spherical_harmonics(4, vec), rtol=0, atol=0)
    assert module.state_dict() == {}
    with pytest.raises(ValueError, match="lmax: expected a non-negative int"):
        SphericalHarmonics(-1)
