"""Layout, basis and unit conventions, declared once.

Spherical tensors follow e3nn >= 0.5: real basis, components ordered l = 0..L and,
within each l, m = -l..l. A feature with maximum degree L and C channels is stored
component-major, channel-last: ``[N, (L+1)^2, C]``; the single-channel second input of
the edge product (spherical harmonics of the edge direction) is ``[E, (L+1)^2]``.

Clebsch-Gordan blocks are e3nn's ``wigner_3j(l1, l2, l3)``: each block has unit
Frobenius norm and no further path normalization is applied.

Groups: ``"SO3"`` (default, the paper's) admits every triangle-allowed path
(l1, l2, l3); ``"O3"`` gives degree l the parity (-1)^l, as spherical harmonics have,
and keeps only paths with l1 + l2 + l3 even.

Units inside the project: energy eV, length Å, force eV/Å, stress eV/Å^3 (Voigt order
xx, yy, zz, yz, xz, xy).
"""

from __future__ import annotations

GROUPS = ("SO3", "O3")
MODES = ("uvu", "uuu")
PATH_WEIGHTS = ("shared", "per_path")

ENERGY_UNIT = "eV"
LENGTH_UNIT = "Å"
FORCE_UNIT = "eV/Å"
STRESS_UNIT = "eV/Å^3"
VOIGT_ORDER = ("xx", "yy", "zz", "yz", "xz", "xy")


def dim(lmax: int) -> int:
    """Number of components of a spherical tensor with degrees 0..lmax: (lmax+1)^2."""
    return (lmax + 1) ** 2


def degree_slice(l: int) -> slice:
    """Components of degree l inside the stacked 0..L layout."""
    return slice(l * l, (l + 1) * (l + 1))


def path_allowed(l1: int, l2: int, l3: int, group: str) -> bool:
    """Triangle rule, plus the parity rule for O3."""
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        return False
    return group == "SO3" or (l1 + l2 + l3) % 2 == 0


def paths(lmax_in: int, lmax_sh: int, lmax_out: int, group: str = "SO3") -> tuple:
    """Allowed paths (l1, l2, l3), ordered by l1, then l2, then l3.

    This order is the canonical order of per-path weights everywhere in the project.
    """
    return tuple(
        (l1, l2, l3)
        for l1 in range(lmax_in + 1)
        for l2 in range(lmax_sh + 1)
        for l3 in range(lmax_out + 1)
        if path_allowed(l1, l2, l3, group)
    )
