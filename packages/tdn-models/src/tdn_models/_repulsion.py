"""Screened nuclear repulsion (ZBL): the physics of atoms pushed closer than a bond.

Close contacts are rare in any training set: in the embedded one, 3 heavy-atom pairs of
356k training atoms lie closer than 0.9 Å. A network has nothing to learn their
repulsion from, and predicts almost none of it. The Ziegler-Biersack-Littmark pair
potential supplies it as a prior, with no parameters: the Coulomb repulsion of the two
nuclei, screened by their electrons,

    E_ij = k Z_i Z_j / r * phi(r / a_ij),   a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x)
           + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x),

(k = e^2 / (4 pi eps_0) = 14.399645 eV Å), switched off smoothly by the polynomial
envelope at 0.75x the sum of the two covalent radii (ase.data.covalent_radii).

Why 0.75 and not MACE's 1.0: every equilibrium bond lies above 0.75x (triple bonds, the
shortest, at 0.79x: C≡N 1.16 Å against 1.47 Å), so the prior acts on contacts only.
Switched off at 1.0x it puts 0.8 eV and 13 eV/Å on each C=O bond at rest and 2.3 eV and
23 eV/Å on C≡N, which the network must learn to cancel: in the embedded dataset's
ablation (RESULTS section 5.3) that tripled the validation energy MAE after one epoch.
At 0.75x a C-N pair 0.79 Å apart still gets 145 eV/Å of repulsion.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import Tensor, nn

from tdn_data.graphs import radius_graph

from ._normalization import Z_MAX
from ._radial import polynomial_envelope

#: e^2 / (4 pi eps_0) in eV Å
COULOMB_EV_A = 14.399645
#: ZBL's universal screening length: 0.8854 Bohr radii, in Å
SCREENING_A = 0.46850
_PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))
#: the switch-off, as a fraction of the covalent radii sum: below every equilibrium bond
SWITCH_FRACTION = 0.75


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL energies (eV) of a radius graph: half of each pair's energy goes to
    each of its two atoms (the list is full: every pair appears in both directions).
    Zero for pairs farther apart than :data:`SWITCH_FRACTION` x their covalent radii sum.

    Shapes: z [N], edge_index [2, E] (src, dst), edge_len [E] (Å) -> [N] eV.
    """

    def __init__(self, p: int = 6):
        super().__init__()
        self.p = p
        radii = torch.as_tensor(covalent_radii[: Z_MAX + 1], dtype=torch.float64)
        # half of each pair's switch-off distance, per element
        self.register_buffer("reach", SWITCH_FRACTION * radii, persistent=False)

    def pair_energy(self, zi: Tensor, zj: Tensor, r: Tensor) -> Tensor:
        """E_ij (eV) of pairs of atomic numbers zi, zj [E] at distances r [E] (Å)."""
        dtype = r.dtype
        fi, fj = zi.to(dtype), zj.to(dtype)
        x = r * (fi.pow(0.23) + fj.pow(0.23)) / SCREENING_A
        phi = sum(c * torch.exp(-d * x) for c, d in _PHI)
        r_max = (self.reach[zi] + self.reach[zj]).to(dtype)
        return COULOMB_EV_A * fi * fj / r * phi * polynomial_envelope(r / r_max, self.p)

    def forward(self, z: Tensor, edge_index: Tensor, edge_len: Tensor) -> Tensor:
        src, dst = edge_index
        e = self.pair_energy(z.index_select(0, src), z.index_select(0, dst), edge_len)
        out = torch.zeros(z.shape[0], dtype=edge_len.dtype, device=edge_len.device)
        return out.index_add(0, dst, 0.5 * e)

    @torch.no_grad()
    def structure_energy(self, sample) -> float:
        """The ZBL energy (eV) of one structure with ``z [N]``, ``pos [N, 3]`` (Å) and,
        where periodic, ``cell`` and ``pbc`` (a torch_geometric ``Data``)."""
        z = sample.z.long()
        reach = float(2 * self.reach[z].max()) if len(z) else 1.0
        cell, pbc = getattr(sample, "cell", None), getattr(sample, "pbc", None)
        periodic = cell is not None and pbc is not None and bool(torch.as_tensor(pbc).any())
        graph = radius_graph(
            sample.pos.double(), reach,
            cell=cell.double().reshape(3, 3) if periodic else None,
            pbc=torch.as_tensor(pbc).reshape(3).tolist() if periodic else None,
        )  # fmt: skip
        return float(self(z, graph.edge_index, graph.edge_len).sum())
