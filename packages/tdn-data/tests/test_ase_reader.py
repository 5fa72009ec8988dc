"""ASEDataset on the shared MD17/ISO17 fixtures, checked against a direct ASE read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from ase.io import read, write
from torch_geometric.data import Batch

from conftest import SHARED_DATA, needs_shared_data
from tdn_data._units import HARTREE_EV, KCAL_MOL_EV, energy_factor, force_factor
from tdn_data.ase_reader import ASEDataset

DATA = SHARED_DATA
KCAL = 0.0433641  # the fixtures README's factor
needs_data = needs_shared_data


def test_units():
    assert KCAL_MOL_EV == pytest.approx(KCAL, rel=1e-6)
    assert energy_factor("Hartree") == HARTREE_EV == energy_factor("hartree")
    assert force_factor("kcal/mol") == KCAL_MOL_EV
    with pytest.raises(ValueError, match=r"energy_unit='kcal' is not a known energy unit"):
        energy_factor("kcal")


@needs_data
def test_md17_ethanol_db_kcal():
    ds = ASEDataset(DATA / "md17_ethanol_20.db", energy_unit="kcal/mol")
    rows = list(connect(DATA / "md17_ethanol_20.db").select())
    assert len(ds) == len(rows) == 20
    for i in (0, 19):
        item, row = ds[i], rows[i]
        assert item.energy.item() == pytest.approx(row.data["energy"][0] * KCAL, rel=1e-6)
        np.testing.assert_allclose(item.forces.numpy(), row.data["forces"] * KCAL, rtol=1e-6)
        np.testing.assert_allclose(item.pos.numpy(), row.positions)
        assert item.z.tolist() == row.numbers.tolist() and item.step == i
    assert "row id 1" in ds[0].source
    batch = Batch.from_data_list([ds[0], ds[1]])
    assert batch.energy.shape == (2,) and batch.forces.shape == (18, 3)


@needs_data
def test_iso17_db_named_keys():
    ds = ASEDataset(DATA / "iso17_40.db", energy_key="total_energy", forces_key="atomic_forces")
    rows = list(connect(DATA / "iso17_40.db").select())
    assert len(ds) == 40
    assert ds[3].energy.item() == pytest.approx(rows[3].total_energy)
    np.testing.assert_allclose(ds[3].forces.numpy(), rows[3].data["atomic_forces"])
    with pytest.raises(ValueError, match=r"iso17_40\.db: row id 1: no energy under key 'energy'"):
        ASEDataset(DATA / "iso17_40.db")
    with pytest.raises(ValueError, match=r"no forces under key 'forces'"):
        ASEDataset(DATA / "iso17_40.db", energy_key="total_energy")


@needs_data
def test_aspirin_extxyz_kcal():
    ds = ASEDataset(DATA / "md17_aspirin_15.extxyz", energy_unit="kcal/mol", dtype=torch.float32)
    frames = read(DATA / "md17_aspirin_15.extxyz", ":")
    assert len(ds) == 15
    item = ds[7]
    assert item.pos.dtype == torch.float32
    assert item.energy.item() == pytest.approx(frames[7].get_potential_energy() * KCAL, rel=1e-6)
    np.testing.assert_allclose(item.forces.numpy(), frames[7].get_forces() * KCAL, rtol=1e-5)
    assert len(ASEDataset(DATA / "md17_aspirin_15.extxyz", index="0:4")) == 4


def test_periodic_info_keys_and_bad_input(tmp_path):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=np.eye(3) * 5.4, pbc=True)
    atoms.info["dft_energy"] = -1.0
    atoms.arrays["dft_forces"] = np.ones((2, 3))
    path = tmp_path / "si.extxyz"
    write(path, atoms)
    ds = ASEDataset(path, energy_key="dft_energy", forces_key="dft_forces", energy_unit="Hartree")
    item = ds[0]
    assert item.energy.item() == pytest.approx(-HARTREE_EV)
    assert item.cell.shape == (1, 3, 3) and item.pbc.tolist() == [[True, True, True]]
    np.testing.assert_allclose(item.cell[0].numpy(), np.eye(3) * 5.4)
    assert Batch.from_data_list([item, item]).cell.shape == (2, 3, 3)

    with pytest.raises(FileNotFoundError, match=r"missing\.extxyz"):
        ASEDataset(tmp_path / "missing.extxyz")
    with pytest.raises(ValueError, match="energy_unit='kJ'"):
        ASEDataset(path, energy_unit="kJ")
    bad = atoms.copy()
    bad.calc = SinglePointCalculator(bad, energy=float("nan"), forces=np.zeros((2, 3)))
    write(tmp_path / "nan.extxyz", bad)
    with pytest.raises(ValueError, match=r"nan\.extxyz: frame 0.*energy is NaN"):
        ASEDataset(tmp_path / "nan.extxyz")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match=r"junk\.db"):
        ASEDataset(tmp_path / "junk.db")
