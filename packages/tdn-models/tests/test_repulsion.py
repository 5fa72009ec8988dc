"""ZBL repulsion: the screened Coulomb law, its switch-off, and TDN's energy with it
smooth and conservative from 0.3 Å to the cutoff on every backend."""

import math

import pytest
import torch
from ase.data import covalent_radii
from torch_geometric.data import Data

from tdn_core import available_backends
from tdn_models import TDN, ZBLRepulsion
from tdn_models._repulsion import COULOMB_EV_A, SWITCH_FRACTION

USABLE = {name for name, reason in available_backends().items() if reason is None}
PAIRS = [(1, 1), (6, 1), (6, 7), (8, 8), (16, 17)]


def _scan(zi: int, zj: int, r: torch.Tensor) -> torch.Tensor:
    n = len(r)
    z = torch.tensor([zi, zj])
    return ZBLRepulsion().pair_energy(z[0].expand(n), z[1].expand(n), r)


@pytest.mark.parametrize("zi, zj", PAIRS)
def test_zbl_is_screened_coulomb_switched_off_below_the_bond_lengths(zi, zj):
    r_max = SWITCH_FRACTION * (covalent_radii[zi] + covalent_radii[zj])
    r = torch.linspace(1e-4, 1.5 * r_max, 30_001, dtype=torch.float64, requires_grad=True)
    e = _scan(zi, zj, r)
    (de,) = torch.autograd.grad(e.sum(), r)
    e, r = e.detach(), r.detach()
    # the nuclei's bare Coulomb repulsion as r -> 0 (the screening function is 1 at 0)
    bare = COULOMB_EV_A * zi * zj / r[0]
    assert float(e[0] / bare) == pytest.approx(1.0, abs=2e-3)
    inside = r < r_max
    assert (e[inside] > 0).all() and (de[inside] < 0).all(), "repulsive all the way in"
    assert (e[~inside] == 0).all(), "no energy beyond the switch-off"
    # smooth switch-off: the envelope (p = 6) has a third-order zero at r_max, so the
    # energy there falls as delta^3 and the force as delta^2
    delta = torch.tensor([1e-3, 2e-3], dtype=torch.float64, requires_grad=True)
    e_near = _scan(zi, zj, r_max - delta)
    (de_near,) = torch.autograd.grad(e_near.sum(), delta)
    e_near = e_near.detach()
    assert float(e_near[0] / e_near[1]) == pytest.approx(1 / 8, rel=0.02)
    assert float(de_near[0] / de_near[1]) == pytest.approx(1 / 4, rel=0.02)


def test_zbl_gives_each_atom_half_of_its_pairs():
    z = torch.tensor([6, 7, 1])
    pos = torch.tensor([[0.0, 0, 0], [0.7, 0, 0], [0, 0.6, 0]], dtype=torch.float64)
    src = torch.tensor([1, 2, 0, 0, 1, 2])
    dst = torch.tensor([0, 0, 1, 2, 2, 1])
    length = (pos[dst] - pos[src]).norm(dim=1)
    per_atom = ZBLRepulsion()(z, torch.stack([src, dst]), length)
    zbl = ZBLRepulsion()
    e_cn, e_ch, e_nh = (
        zbl.pair_energy(torch.tensor([a]), torch.tensor([b]), torch.tensor([d], dtype=pos.dtype))
        for a, b, d in ((6, 7, 0.7), (6, 1, 0.6), (7, 1, math.hypot(0.7, 0.6)))
    )
    torch.testing.assert_close(per_atom.sum(), (e_cn + e_ch + e_nh).squeeze())
    torch.testing.assert_close(per_atom[0], (0.5 * (e_cn + e_ch)).squeeze())


@pytest.mark.parametrize("backend", sorted({"cp_eager", "path_shared", "sparse", "cg"} & USABLE))
def test_energy_is_smooth_and_conservative_from_short_range_to_the_cutoff(backend):
    """A C-N pair pulled from 0.3 Å to past the 4.5 Å cutoff beside two fixed H atoms:
    energy and forces change continuously (sampled every 0.02 Å), and the forces are
    -dE/dx by finite differences, with ZBL and the Bessel basis on."""
    torch.manual_seed(0)
    model = TDN(
        lmax=1, channels=8, layers=2, heads=2, num_basis=8, radial_basis="bessel", zbl=True,
        backend=backend,
    ).double()  # fmt: skip
    base = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [-0.8, 0.7, 0.1], [0.2, -0.9, 0.3]])
    z = torch.tensor([6, 7, 1, 1])

    def at(d: float) -> Data:
        pos = base.clone().double()
        pos[1, 0] = d
        return Data(z=z, pos=pos)

    h = 0.02
    distances = torch.arange(0.3, 4.7, h, dtype=torch.float64)
    energy, force = [], []
    for d in distances:
        out = model(at(float(d)))
        energy.append(float(out["energy"].detach()))
        force.append(float(out["forces"][1, 0].detach()))
    energy, force = torch.tensor(energy), torch.tensor(force)
    # continuous energy: no step larger than the force allows over h (a jump of the
    # energy, such as an edge entering at the cutoff with weight, would show here)
    step = (energy[1:] - energy[:-1]).abs()
    assert (step <= 1.5 * h * torch.maximum(force[1:].abs(), force[:-1].abs()) + 1e-6).all()
    # continuous forces: each change between neighbouring points is no more than 3x the
    # changes on either side of it (a jump stands alone; a smooth curve's changes vary
    # slowly)
    df = (force[1:] - force[:-1]).abs()
    around = torch.maximum(torch.cat([df[1:2], df[:-1]]), torch.cat([df[1:], df[-2:-1]]))
    assert (df <= 3 * around + 1e-6).all(), float((df / (around + 1e-6)).max())

    # forces are -dE/dx: central differences at a few distances (Richardson at 1e-3)
    def energy_at(d: float) -> float:
        return float(model(at(d))["energy"].detach())

    for d in (0.35, 0.79, 1.3, 2.6, 4.4):
        central = [(energy_at(d + k) - energy_at(d - k)) / (2 * k) for k in (5e-4, 1e-3)]
        fd = (4 * central[0] - central[1]) / 3
        f = float(model(at(d))["forces"][1, 0].detach())
        assert f == pytest.approx(-fd, rel=1e-6, abs=1e-7), (d, f, -fd)
    # past the cutoff of all its pairs, N adds only its own energy: no interaction left
    rest = float(model(Data(z=z[[0, 2, 3]], pos=base[[0, 2, 3]].double()))["energy"].detach())
    alone = float(model(Data(z=z[1:2], pos=torch.zeros(1, 3).double()))["energy"].detach())
    assert energy[-1] == pytest.approx(rest + alone, abs=1e-9)


def test_normalization_is_fitted_on_the_energy_the_network_learns():
    """With ZBL, E0 and the shift are fitted on the reference energies less the ZBL
    energies (the part the model adds by itself); structure_energy, which searches only
    as far as ZBL reaches, equals the ZBL term over the model's whole graph."""
    from tdn_data import load_dataset
    from tdn_data.graphs import radius_graph
    from tdn_models import Normalization

    samples = []
    for k, s in enumerate(load_dataset("embedded-tiny")):
        if k % 2:  # a close contact: atom 1 pushed to 0.6 Å of atom 0 (labels unchanged)
            s = s.clone()
            d = s.pos[1] - s.pos[0]
            s.pos[1] = s.pos[0] + 0.6 * d / d.norm()
        samples.append(s)
    zbl = ZBLRepulsion()
    for s in samples[1:10:2]:
        g = radius_graph(s.pos.double(), 4.5)
        whole = float(zbl(s.z, g.edge_index, g.edge_len).sum())
        assert zbl.structure_energy(s) == pytest.approx(whole, rel=1e-12)
        assert whole > 0
    fitted = TDN(channels=8, layers=1, zbl=True).fit_normalization(samples)
    residual = []
    for s in samples:
        r = s.clone()
        r.energy = s.energy - zbl.structure_energy(s)
        residual.append(r)
    expected = Normalization().fit(residual)
    assert fitted["element_energies"] == pytest.approx(expected["element_energies"])
    assert fitted["shift"] == pytest.approx(expected["shift"], abs=1e-9)
    plain = TDN(channels=8, layers=1, zbl=False).fit_normalization(samples)
    assert plain["element_energies"] != pytest.approx(expected["element_energies"])


@pytest.mark.parametrize(
    "zi, zj, bond",
    [(6, 7, 1.16), (6, 6, 1.20), (6, 8, 1.13), (7, 7, 1.10), (6, 1, 1.09), (8, 1, 0.96)],
    ids=["C≡N", "C≡C", "C≡O", "N≡N", "C-H", "O-H"],
)
def test_zbl_leaves_bonds_at_rest_alone(zi, zj, bond):
    # the shortest bonds there are (triple bonds, and bonds to H) get no ZBL energy
    assert float(_scan(zi, zj, torch.tensor([bond], dtype=torch.float64))) == 0.0
