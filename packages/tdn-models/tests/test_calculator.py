"""TDNCalculator: ASE contract, forces/stress against finite differences, NVE and BFGS.

The model is a small TDN trained briefly on embedded-tiny (float64), saved with
save_checkpoint and loaded through the calculator, so the checkpoint path is exercised too.
"""

import time

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from torch_geometric.data import Batch

from tdn_data import load_dataset
from tdn_models import TDN, TDNCalculator, save_checkpoint, train_steps

TRAIN_STEPS = 120


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These molecule-sized graphs gain nothing from more threads, and on a busy machine
    oversubscribed OpenMP threads made the same tests 5-30x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def samples():
    return [s for s in load_dataset("embedded-tiny")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, samples):
    """A TDN trained for TRAIN_STEPS Adam steps (~8 s on one idle core; measured)."""
    torch.manual_seed(0)
    model = TDN(
        lmax=1, channels=16, layers=2, num_basis=16, radial_hidden=16, backend="cp_eager"
    ).double()
    model.normalization.fit(samples)
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    batches = [
        Batch.from_data_list([samples[j] for j in perm[i : i + 4]])
        for i in range(0, len(samples), 4)
    ]
    start = time.perf_counter()
    log = list(train_steps(model, batches, TRAIN_STEPS, lr=1e-3))
    print(f"trained {TRAIN_STEPS} steps in {time.perf_counter() - start:.1f} s: {log[-1]}")
    path = tmp_path_factory.mktemp("calc") / "tdn.pt"
    return save_checkpoint(path, model, extra={"step": TRAIN_STEPS, **log[-1]})


@pytest.fixture(scope="module")
def calc(checkpoint):
    return TDNCalculator(checkpoint)


def _molecule(samples) -> Atoms:
    s = min(samples, key=lambda s: s.z.numel())
    return Atoms(numbers=s.z.numpy(), positions=s.pos.double().numpy())


def _periodic(samples) -> Atoms:
    """The smallest molecule in a small triclinic cell: images interact (cutoff 4.5 Å)."""
    atoms = _molecule(samples)
    atoms.positions -= atoms.positions.mean(0)
    cell = np.array([[7.0, 0.0, 0.0], [0.6, 7.5, 0.0], [0.4, -0.5, 8.0]])
    atoms.set_cell(cell)
    atoms.positions += cell.sum(0) / 2
    atoms.pbc = True
    return atoms


def test_results_follow_ase_conventions(calc, checkpoint, samples):
    assert calc.checkpoint_info["extra"]["step"] == TRAIN_STEPS
    assert calc.model.backend == "cp_eager" and calc.model.dtype == torch.float64
    atoms = _periodic(samples)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert isinstance(energy, float)
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_stress(voigt=False).shape == (3, 3)


def test_accepts_a_model_instance_and_backend(samples):
    model = TDN(lmax=1, channels=8, layers=1, num_basis=8, radial_hidden=8)
    model.normalization.fit(samples)  # every element (the calculator refuses unseen ones)
    e0 = model.normalization.element_energies.clone()
    calc = TDNCalculator(model, backend="path_shared")
    assert calc.model.backend == "path_shared" and calc.model.dtype == torch.float64
    assert torch.equal(calc.model.normalization.element_energies, e0)
    atoms = _molecule(samples)
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(TypeError, match="model: expected a checkpoint path or"):
        TDNCalculator(42)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # ase prefers FiniteDifferenceCalculator
@pytest.mark.parametrize("system", [_molecule, _periodic], ids=["molecule", "periodic"])
def test_forces_are_the_energy_gradient(calc, samples, system):
    atoms = system(samples)
    atoms.calc = calc
    forces = atoms.get_forces()
    numerical = calc.calculate_numerical_forces(atoms, d=1e-4)
    # central differences err by ~d^2/6 |d3E/dx3|: measured up to 1.7e-6 eV/Å on forces
    # of a few eV/Å; a wrong sign, factor or missing term would be O(0.1-1) eV/Å
    np.testing.assert_allclose(forces, numerical, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_stress_is_the_strain_derivative(calc, samples):
    atoms = _periodic(samples)
    atoms.calc = calc
    stress = atoms.get_stress()
    numerical = calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(stress).max() > 1e-5  # not trivially zero
    np.testing.assert_allclose(stress, numerical, atol=1e-8, rtol=0)


def test_stress_needs_a_periodic_cell(calc, samples):
    atoms = _molecule(samples)
    atoms.calc = calc
    with pytest.raises(PropertyNotImplementedError, match="stress: needs a cell periodic"):
        atoms.get_stress()
    slab = _periodic(samples)
    slab.pbc = [True, True, False]
    slab.calc = calc
    assert np.isfinite(slab.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError):
        slab.get_stress()


def test_recomputes_only_when_atoms_change(calc, samples):
    calls = []
    forward = calc.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return forward(*args, **kwargs)

    calc.model.forward = counting
    try:
        atoms = _periodic(samples)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_potential_energy()
        assert len(calls) == 1  # forces came with the energy
        atoms.get_stress()
        atoms.get_stress()
        assert len(calls) == 2  # stress was not asked at first: one more call
        atoms.positions[0, 0] += 0.01
        assert atoms.get_potential_energy() != e
        assert len(calls) == 3
        atoms.get_potential_energy()
        atoms.cell[0, 0] += 0.01
        atoms.get_potential_energy()
        assert len(calls) == 4
    finally:
        del calc.model.forward


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Use thermalize_momenta:DeprecationWarning")
def test_nve_conserves_energy(calc, samples):
    """1 ps of velocity Verlet (0.5 fs) at 300 K: the total energy stays put.

    Measured for this 12-atom molecule: max |E_tot(t) - E_tot(0)| = 12.3-13.7 meV at 0.5 fs
    (the second half of the run below the first: no secular drift) and 5.0 meV at
    0.25 fs (fluctuation std 2.0 -> 0.7 meV), i.e. Verlet's bounded O(dt^2) shadow-energy
    fluctuation from the fast X-H vibrations. The 30 meV bound leaves 2.4x margin, yet
    forces that are not -dE/dx or an energy that jumps when a neighbour crosses the
    cutoff accumulate far more over 2000 steps.
    """
    atoms = _molecule(samples)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    dyn.run(2000)
    energies = np.asarray(energies)
    drift = np.abs(energies - energies[0]).max()
    kinetic = atoms.get_kinetic_energy()
    print(f"NVE: max |dE_tot| = {drift * 1e3:.3f} meV over 1 ps, final Ekin {kinetic:.3f} eV")
    assert kinetic > 0.05  # the atoms really moved (300 K * 12 atoms * 3/2 k ~ 0.47 eV)
    assert drift < 0.030


def test_bfgs_relaxation_converges(calc, samples):
    atoms = _molecule(samples)
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = opt.run(fmax=0.05, steps=200)
    assert converged, f"BFGS did not reach fmax 0.05 eV/Å in 200 steps ({opt.nsteps})"
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05


def test_structures_the_model_cannot_answer_are_refused(calc, samples):
    from tdn_models import StructureError

    base = _molecule(samples)
    cases = {
        "closer than 0.1": lambda a: a.positions.__setitem__(1, a.positions[0] + 0.05),
        "no neighbour within the cutoff": lambda a: a.positions.__imul__(10.0),
        "not among those the model was trained on": lambda a: a.numbers.__setitem__(0, 92),
        "non-finite position": lambda a: a.positions.__setitem__((0, 0), np.nan),
        "empty periodic vector": lambda a: a.set_pbc(True),
        # billions of periodic images within the cutoff: refused before the search
        "radius graph of .* more than the .* available": lambda a: (
            a.set_cell(np.eye(3) * 1e-3, scale_atoms=False),
            a.set_pbc(True),
        ),
    }
    for message, change in cases.items():
        atoms = base.copy()
        change(atoms)
        atoms.calc = calc
        calc.reset()  # a new structure: a step (positions only) gets the finite check alone
        with pytest.raises(StructureError, match=message):
            atoms.get_potential_energy()
    single = base[:1]  # one atom alone is a valid question (its E0)
    single.calc = calc
    assert np.isfinite(single.get_potential_energy())
