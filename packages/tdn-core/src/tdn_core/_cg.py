"""Clebsch-Gordan blocks and the path-summed tensor M."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ._memory import check_fits
from ._wigner3j_generator import LMAX_TABLE, TABLE_PATH, block_from_e3nn
from .conventions import GROUPS, degree_slice, dim, paths


@functools.cache
def _table() -> dict[str, np.ndarray]:
    with np.load(TABLE_PATH, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@functools.cache
def cg_block(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real CG block C^{l1 l2 l3} [2l1+1, 2l2+1, 2l3+1], float64, unit Frobenius norm.

    Identical to ``e3nn.o3.wigner_3j(l1, l2, l3)``; read from the shipped table for
    degrees <= 8 and computed through e3nn above that. Read-only.
    """
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        if not isinstance(l, int) or l < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {l!r}")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"(l1, l2, l3) = {(l1, l2, l3)} violates the triangle rule")
    if max(l1, l2, l3) <= LMAX_TABLE:
        block = _table()[f"{l1}_{l2}_{l3}"]
    else:
        block = block_from_e3nn(l1, l2, l3)
    block = np.array(block, dtype=np.float64)
    block.setflags(write=False)
    return block


def check_lmax(**lmaxes: int) -> None:
    """Raise ValueError naming the first argument that is not a non-negative int."""
    for name, l in lmaxes.items():
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {l!r}")


def check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"group: expected one of {GROUPS}, got {group!r}")


@functools.cache
def _cg_tensor_np(lmax_in: int, lmax_sh: int, lmax_out: int, group: str) -> np.ndarray:
    shape = (dim(lmax_in), dim(lmax_sh), dim(lmax_out))
    check_fits(
        8 * shape[0] * shape[1] * shape[2],
        f"the CG tensor at (lmax_in, lmax_sh, lmax_out) = {(lmax_in, lmax_sh, lmax_out)}",
    )
    M = np.zeros(shape)
    for l1, l2, l3 in paths(lmax_in, lmax_sh, lmax_out, group):
        M[degree_slice(l1), degree_slice(l2), degree_slice(l3)] += cg_block(l1, l2, l3)
    M.setflags(write=False)
    return M


def cg_tensor(lmax_in: int, lmax_sh: int, lmax_out: int, group: str = "SO3") -> torch.Tensor:
    """Path-summed CG tensor M [(lmax_in+1)^2, (lmax_sh+1)^2, (lmax_out+1)^2], float64.

    Every allowed block (see ``conventions.paths``) is added into place; degrees that
    no path reaches stay zero. Returns a fresh tensor (the cache is not exposed).
    """
    check_lmax(lmax_in=lmax_in, lmax_sh=lmax_sh, lmax_out=lmax_out)
    check_group(group)
    return torch.from_numpy(_cg_tensor_np(lmax_in, lmax_sh, lmax_out, group).copy())


def cg_tensor_np(lmax_in: int, lmax_sh: int, lmax_out: int, group: str = "SO3") -> np.ndarray:
    """Read-only numpy view of :func:`cg_tensor` (cached)."""
    check_lmax(lmax_in=lmax_in, lmax_sh=lmax_sh, lmax_out=lmax_out)
    check_group(group)
    return _cg_tensor_np(lmax_in, lmax_sh, lmax_out, group)
