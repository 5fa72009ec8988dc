"""M is checked against blocks rebuilt here from e3nn, not through tdn_core's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

import tdn_core
from tdn_core.testing import random_rotation, wigner_D


@pytest.mark.parametrize(
    "l1,l2,l3", [(0, 0, 0), (1, 1, 2), (2, 3, 1), (3, 3, 4), (4, 2, 6), (8, 8, 8)]
)
def test_blocks_equal_e3nn(l1, l2, l3):
    expected = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
    np.testing.assert_allclose(tdn_core.cg_block(l1, l2, l3), expected, atol=1e-14)


def test_block_above_table_comes_from_e3nn():
    expected = o3.wigner_3j(9, 1, 8, dtype=torch.float64).numpy()
    np.testing.assert_allclose(tdn_core.cg_block(9, 1, 8), expected, atol=1e-14)


@pytest.mark.parametrize("group", ["SO3", "O3"])
@pytest.mark.parametrize("lmaxes", [(1, 1, 1), (2, 2, 2), (3, 1, 2), (2, 3, 0)])
def test_path_summed_tensor_is_the_sum_of_e3nn_blocks(lmaxes, group):
    M = tdn_core.cg_tensor(*lmaxes, group=group)
    rebuilt = torch.zeros_like(M)
    start = [[l * l for l in range(lm + 2)] for lm in lmaxes]
    n_paths = 0
    for l1 in range(lmaxes[0] + 1):
        for l2 in range(lmaxes[1] + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmaxes[2]) + 1):
                if group == "O3" and (l1 + l2 + l3) % 2:
                    continue
                n_paths += 1
                rebuilt[
                    start[0][l1] : start[0][l1 + 1],
                    start[1][l2] : start[1][l2 + 1],
                    start[2][l3] : start[2][l3 + 1],
                ] = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    assert len(tdn_core.paths(*lmaxes, group=group)) == n_paths
    torch.testing.assert_close(M, rebuilt, atol=1e-14, rtol=0)


def test_sizes_match_design_table():
    nnz = [int((tdn_core.cg_tensor(L, L, L) != 0).sum()) for L in range(1, 9)]
    assert nnz == [16, 137, 611, 2052, 5265, 11896, 23902, 44171]
    assert [len(tdn_core.paths(L, L, L)) for L in range(1, 9)] == [
        5,
        15,
        34,
        65,
        111,
        175,
        260,
        369,
    ]


@pytest.mark.parametrize("L", [1, 2, 3])
def test_M_is_an_equivariant_bilinear_map(L):
    M = tdn_core.cg_tensor(L, L, L)
    R = random_rotation()
    D = wigner_D(L, R)
    lhs = torch.einsum("ijk,ia,jb,kc->abc", M, D, D, D)
    torch.testing.assert_close(lhs, M, atol=1e-12, rtol=0)


def test_l1_block_is_the_cartesian_vector_convention():
    # e3nn >= 0.5: D^1(R) = R, Y_1(v) = sqrt(3) v / |v|
    R = random_rotation()
    torch.testing.assert_close(wigner_D(1, R)[1:, 1:], R, atol=1e-12, rtol=0)
    v = torch.randn(3, dtype=torch.float64)
    Y = o3.spherical_harmonics(1, v, normalize=True, normalization="component")
    torch.testing.assert_close(Y, 3**0.5 * v / v.norm())


def test_cg_tensor_returns_a_fresh_copy():
    M = tdn_core.cg_tensor(1, 1, 1)
    M.zero_()
    assert tdn_core.cg_tensor(1, 1, 1).abs().sum() > 0


@pytest.mark.parametrize(
    "args,match",
    [((-1, 1, 1), "lmax_in"), ((1, 1.5, 1), "lmax_sh"), ((1, 1, "2"), "lmax_out")],
)
def test_bad_lmax(args, match):
    with pytest.raises(ValueError, match=match):
        tdn_core.cg_tensor(*args)


def test_bad_group():
    with pytest.raises(ValueError, match="group: expected one of"):
        tdn_core.cg_tensor(1, 1, 1, group="SU2")


def test_a_cg_tensor_beyond_memory_is_refused_before_it_is_allocated(monkeypatch):
    import time

    from tdn_core import AllocationTooLarge, _cg, _memory, cg_tensor

    t0 = time.perf_counter()
    with pytest.raises(AllocationTooLarge, match=r"\(99, 99, 99\) needs 7.28 TiB, more than"):
        cg_tensor(99, 99, 99)  # 10^12 float64: refused, not attempted
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setattr(_memory, "available_bytes", lambda: 10_000)
    _cg._cg_tensor_np.cache_clear()  # a tensor built earlier would come from the cache
    with pytest.raises(AllocationTooLarge, match=r"needs 18 KiB, more than the 9\.77 KiB"):
        cg_tensor(3, 2, 3, "O3")  # 16 x 9 x 16 float64
    assert cg_tensor(1, 1, 1).shape == (4, 4, 4)  # 512 B fit
