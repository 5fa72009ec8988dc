"""Conversions between tdn's layout and e3nn's ``mul_ir`` layout, irreps and weights.

tdn stores a feature with degrees 0..L and C channels as ``[N, (L+1)^2, C]``
(component-major, channel-last). e3nn's ``mul_ir`` layout of the irreps
``Cx0 + Cx1 + ... + CxL`` stores, for each degree l in turn, a ``[C, 2l+1]`` block
flattened: ``[N, sum_l C (2l+1)]``. Both orderings hold the same numbers, so the
conversion is one fixed permutation of the last ``(L+1)^2 C`` entries; it is applied
as a single gather each way (forward and backward), which is the cheapest form on
CPU (a split/transpose/cat version measured ~20x slower for L=4, C=64).

The second input of a ``uvu`` product has one channel; with multiplicity 1 the two
layouts coincide, so ``y [E, (L+1)^2]`` needs no conversion.

Pure torch: nothing here imports e3nn.
"""

from __future__ import annotations

import functools

import torch

from ..conventions import GROUPS, dim, paths

__all__ = [
    "from_e3nn_layout",
    "irreps",
    "layout_permutation",
    "permute_last",
    "to_e3nn_layout",
    "uvu_instructions",
    "weights_from_e3nn",
    "weights_to_e3nn",
]


def _check_lmax(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def irreps(lmax: int, channels: int, group: str = "SO3") -> str:
    """e3nn irreps string of a tdn feature with degrees 0..lmax and ``channels`` channels.

    ``"O3"`` uses the natural parity (-1)^l of spherical harmonics:
    ``irreps(2, 64, "O3") == "64x0e+64x1o+64x2e"``. ``"SO3"`` labels every degree even
    (``"64x0e+64x1e+64x2e"``): e3nn checks parity when it builds a tensor product and
    would reject SO3 paths with odd l1 + l2 + l3, while parity labels leave the
    rotation matrices ``D_from_matrix`` of proper rotations unchanged.
    """
    _check_lmax("lmax", lmax)
    _check_positive("channels", channels)
    if group not in GROUPS:
        raise ValueError(f"group: expected one of {GROUPS}, got {group!r}")
    if group == "O3":
        return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    return "+".join(f"{channels}x{l}e" for l in range(lmax + 1))


def uvu_instructions(
    lmax_in: int, lmax_sh: int, lmax_out: int, group: str = "SO3"
) -> list[tuple[int, int, int, str, bool]]:
    """e3nn ``TensorProduct`` instructions for tdn's paths, in the canonical path order.

    With the irreps of :func:`irreps` (one entry per degree) the entry index of degree
    l is l itself, so path (l1, l2, l3) is ``(l1, l2, l3, "uvu", True)``. Keeping the
    canonical order makes e3nn's flat weight vector the reshape in :func:`weights_to_e3nn`.
    """
    return [(l1, l2, l3, "uvu", True) for l1, l2, l3 in paths(lmax_in, lmax_sh, lmax_out, group)]


@functools.cache
def _permutation_cpu(lmax: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    # perm[e3nn position] = tdn position, both counted in the flattened last dims.
    C = channels
    perm = torch.cat(
        [
            (
                (torch.arange(l * l, (l + 1) * (l + 1)) * C).unsqueeze(0)  # [1, 2l+1]: components
                + torch.arange(C).unsqueeze(1)  # [C, 1]: channels, so the block is [C, 2l+1]
            ).reshape(-1)
            for l in range(lmax + 1)
        ]
    )
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    return perm, inverse


def layout_permutation(
    lmax: int, channels: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse) int64 [(lmax+1)^2 C]: ``e3nn_flat = tdn_flat[..., perm]``.

    Executors keep these as buffers and call :func:`permute_last` directly, so a
    forward pass does no host-to-device copy.
    """
    _check_lmax("lmax", lmax)
    _check_positive("channels", channels)
    perm, inverse = _permutation_cpu(lmax, channels)
    return perm.to(device), inverse.to(device)


class _PermuteLast(torch.autograd.Function):
    """``x[..., perm]`` whose backward is the gather by the inverse permutation.

    Autograd's own backward of ``index_select`` is a scatter-add (``index_add``),
    several times slower on CPU than a gather; a permutation has no collisions, so
    the gradient is exactly the inverse gather. Backward calls this Function again,
    so double backward works.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(perm, inverse)
        return x.index_select(-1, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        perm, inverse = ctx.saved_tensors
        return _PermuteLast.apply(grad, inverse, perm), None, None


def permute_last(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x[..., perm]`` with a gather as backward; ``inverse`` must invert ``perm``."""
    return _PermuteLast.apply(x, perm, inverse)


def to_e3nn_layout(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """tdn layout ``x [..., (lmax+1)^2, C]`` -> e3nn mul_ir ``[..., sum_l C (2l+1)]``.

    Each degree-l block of the result is ``x[..., l*l:(l+1)^2, :]`` transposed to
    ``[C, 2l+1]`` and flattened. Leading dimensions are kept.
    """
    _check_lmax("lmax", lmax)
    d = dim(lmax)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-2] != d or x.shape[-1] < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape [..., {d}, C] for lmax={lmax}, got {got}")
    C = x.shape[-1]
    perm, inverse = layout_permutation(lmax, C, x.device)
    return permute_last(x.reshape(*x.shape[:-2], d * C), perm, inverse)


def from_e3nn_layout(x: torch.Tensor, lmax: int, channels: int) -> torch.Tensor:
    """e3nn mul_ir ``x [..., sum_l C (2l+1)]`` -> tdn layout ``[..., (lmax+1)^2, C]``.

    Exact inverse of :func:`to_e3nn_layout` (a permutation: no rounding).
    """
    _check_lmax("lmax", lmax)
    _check_positive("channels", channels)
    d = dim(lmax)
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != d * channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"x: expected shape [..., {d * channels}] (= {d} components x {channels} "
            f"channels for lmax={lmax}), got {got}"
        )
    perm, inverse = layout_permutation(lmax, channels, x.device)
    return permute_last(x, inverse, perm).unflatten(-1, (d, channels))


def weights_to_e3nn(weight: torch.Tensor) -> torch.Tensor:
    """Per-path weights ``[E, P, C]`` -> e3nn's flat ``[E, P*C]``.

    Valid for a ``TensorProduct`` built from :func:`uvu_instructions`: e3nn lays out
    the weights instruction by instruction, each ``uvu`` instruction with
    ``path_shape = (C, 1)``, so flat index ``p*C + c`` holds ``weight[:, p, c]``.
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim != 3:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected shape [E, P, C], got {got}")
    return weight.reshape(weight.shape[0], -1)


def weights_from_e3nn(weight: torch.Tensor, num_paths: int, channels: int) -> torch.Tensor:
    """e3nn's flat ``[E, P*C]`` -> per-path weights ``[E, P, C]`` (inverse of the above)."""
    _check_positive("num_paths", num_paths)
    _check_positive("channels", channels)
    if (
        not isinstance(weight, torch.Tensor)
        or weight.ndim != 2
        or weight.shape[1] != num_paths * channels
    ):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(
            f"weight: expected shape [E, {num_paths * channels}] "
            f"(= {num_paths} paths x {channels} channels), got {got}"
        )
    return weight.reshape(weight.shape[0], num_paths, channels)
