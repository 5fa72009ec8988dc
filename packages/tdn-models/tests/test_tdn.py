"""TDN: symmetry, backend switching, the exact twin, gradients and bad input."""

import pytest
import torch
from torch_geometric.data import Batch

from tdn_core import available_backends
from tdn_core.testing import random_rotation
from tdn_data import load_dataset
from tdn_models import TDN, build_model, train_steps

USABLE = {name for name, reason in available_backends().items() if reason is None}


@pytest.fixture(scope="module")
def samples():
    ds = load_dataset("embedded-tiny")
    # one snapshot from several molecules: different sizes and elements
    picks = sorted({ds[i].mol_id: i for i in range(len(ds))}.values())
    return [ds[i] for i in picks]


def _fitted(samples, **kw) -> TDN:
    model = TDN(**{"lmax": 2, "channels": 16, "layers": 2, **kw}).double()
    model.normalization.fit(samples)
    return model


def _moved(data, R, shift):
    out = data.clone()
    out.pos = data.pos.double() @ R.T + shift
    return out


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("backend", ["path_shared", "cg"])
def test_exact_backends_are_equivariant(samples, backend):
    model = _fitted(samples, backend=backend)
    data = Batch.from_data_list(samples[:2])
    ref = model(data)
    for _ in range(3):
        R, t = random_rotation(), torch.randn(3, dtype=torch.float64)
        out = model(_moved(data, R, t))
        assert _rel(out["energy"], ref["energy"]) <= 1e-8
        assert _rel(out["forces"], ref["forces"] @ R.T) <= 1e-8


@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_cp_equivariance_error_is_below_the_factor_bound(samples, lmax):
    """The network-level error stays under the bound of one product, and is not zero."""
    model = _fitted(samples, lmax=lmax, backend="cp_eager")
    bound = model.tensor_products()[0].factors.bound
    data = samples[0]
    ref = model(data)
    errors = []
    for _ in range(5):
        R = random_rotation()
        out = model(_moved(data, R, torch.ones(3, dtype=torch.float64)))
        errors.append(_rel(out["forces"], ref["forces"] @ R.T))
        assert _rel(out["energy"], ref["energy"]) <= bound
    assert 1e-6 < max(errors) <= bound


def test_set_backend_keeps_the_state_dict(samples):
    model = _fitted(samples, backend="cp_eager")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_backend("path_shared")
    assert model.backend == "path_shared"
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    exact = model(samples[0])["energy"]
    model.set_backend("cg")
    torch.testing.assert_close(model(samples[0])["energy"], exact, rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def trained(samples):
    """A TDN trained briefly with cp_eager, and the batch it was trained on."""
    torch.manual_seed(0)
    model = _fitted(samples, lmax=2, backend="cp_eager")
    data = Batch.from_data_list(samples[:3])
    losses = [s["loss"] for s in train_steps(model, [data], steps=15, lr=3e-3)]
    assert losses[-1] < losses[0]
    return model, data


def test_exact_twin_agrees_within_the_cp_error(trained):
    """Weights trained with cp_eager load into the path_shared twin."""
    model, data = trained
    error = model.tensor_products()[0].factors.rel_error
    cp = model(data)
    twin = build_model("tdn", **{**model.config, "backend": "path_shared"}).double()
    twin.load_state_dict(model.state_dict())
    exact = twin(data)
    # one product's relative error is ~1.3e-2 at L=2; through 4 products and the
    # nonlinearities the outputs must still agree to a few times that
    assert _rel(cp["forces"], exact["forces"]) <= 5 * error
    assert _rel(cp["energy"], exact["energy"]) <= error


@pytest.mark.skipif("cp_triton" not in USABLE, reason="cp_triton needs triton")
def test_trained_model_runs_on_cp_triton(trained):
    """Same factors, fused kernels (Triton's interpreter on a CPU): same numbers."""
    model, data = trained
    cp = model(data)
    model.set_backend("cp_triton")
    try:
        triton = model(data)
    finally:
        model.set_backend("cp_eager")
    torch.testing.assert_close(triton["forces"], cp["forces"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(triton["energy"], cp["energy"], rtol=1e-12, atol=1e-9)


def test_batch_equals_single_graphs(samples):
    model = _fitted(samples)
    batched = model(Batch.from_data_list(samples[:3]))
    for i, s in enumerate(samples[:3]):
        single = model(s)
        torch.testing.assert_close(batched["energy"][i], single["energy"][0])
    forces = torch.cat([model(s)["forces"] for s in samples[:3]])
    torch.testing.assert_close(batched["forces"], forces)


def test_forces_are_minus_the_energy_gradient(samples):
    model = _fitted(samples, lmax=1, backend="path_shared")
    data = samples[0].clone()
    data.pos = data.pos.double()
    forces = model(data)["forces"]

    def central(atom, axis, h):
        plus, minus = data.clone(), data.clone()
        plus.pos[atom, axis] += h
        minus.pos[atom, axis] -= h
        return (model(plus)["energy"] - model(minus)["energy"])[0] / (2 * h)

    # Two errors bound the step: the narrow Gaussians (0.035 Å) give large third
    # derivatives (a central difference is off by ~1e-7 eV/Å at h = 1e-4), and rounding
    # in the total energy (thousands of eV of reference energies) is ~1e-12 eV, 1e-7
    # eV/Å at h = 1e-5. Richardson's extrapolation at h = 1e-3 cancels the h^2 term:
    # measured errors <= 2e-9 eV/Å.
    h = 1e-3
    for atom, axis in [(0, 0), (3, 1), (5, 2)]:
        fd = (4 * central(atom, axis, h / 2) - central(atom, axis, h)) / 3
        torch.testing.assert_close(forces[atom, axis], -fd, rtol=1e-6, atol=1e-8)


def test_stress_is_the_strain_derivative():
    from ase.build import bulk

    model = TDN(lmax=1, channels=8, layers=1, heads=2, cutoff=3.0, backend="path_shared")
    model = model.double()
    atoms = bulk("Si", "diamond", a=5.43) * (1, 1, 1)
    atoms.rattle(0.05, seed=1)

    frac = torch.tensor(atoms.get_scaled_positions(), dtype=torch.float64)

    def data_of(cell):
        return _periodic(atoms.numbers, frac @ cell, cell)

    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    stress = model(data_of(cell), stress=True)["stress"][0]
    h = 1e-5
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        eps = torch.zeros(3, 3, dtype=torch.float64)
        # symmetric strain: dE = V * sum_kl stress_kl eps_kl = V stress_ij h either way
        eps[i, j] = eps[j, i] = h / 2 if i != j else h
        e_plus = model(data_of(cell @ (torch.eye(3, dtype=torch.float64) + eps)))["energy"]
        e_minus = model(data_of(cell @ (torch.eye(3, dtype=torch.float64) - eps)))["energy"]
        fd = (e_plus - e_minus) / (2 * h) / torch.linalg.det(cell)
        torch.testing.assert_close(stress[i, j], fd[0], rtol=1e-5, atol=1e-8)


def _periodic(numbers, pos, cell):
    from torch_geometric.data import Data

    return Batch.from_data_list(
        [
            Data(
                z=torch.as_tensor(numbers),
                pos=pos,
                cell=cell.unsqueeze(0),
                pbc=torch.ones(1, 3, dtype=torch.bool),
            )
        ]
    )


def test_direct_force_head_is_equivariant(samples):
    model = _fitted(samples, lmax=1, backend="path_shared", direct_forces=True)
    data = samples[0]
    ref = model(data)
    R = random_rotation()
    out = model(_moved(data, R, torch.zeros(3, dtype=torch.float64)))
    assert _rel(out["forces"], ref["forces"] @ R.T) <= 1e-8


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads: 3 must divide channels"):
        TDN(channels=16, heads=3)
    with pytest.raises(ValueError, match="direct_forces: needs lmax >= 1"):
        TDN(lmax=0, direct_forces=True)
    with pytest.raises(ValueError, match="cutoff: expected a positive length"):
        TDN(cutoff=0)
    with pytest.raises(ValueError, match="registered backends"):
        TDN(channels=8, backend="no_such_backend")
    with pytest.raises(ValueError, match="stress: needs a periodic cell"):
        TDN(channels=8, layers=1)(load_dataset("embedded-tiny")[0], stress=True)
