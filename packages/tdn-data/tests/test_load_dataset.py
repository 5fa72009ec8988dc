"""load_dataset: one entry point that picks the reader from the path."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_pubchemqcr import fake_molecules

from conftest import SHARED_DATA, needs_shared_data
from tdn_data import ASEDataset, OC20LmdbDataset, PubChemQCRDataset, load_dataset, write_pubchemqcr


def test_lmdb_file_and_folder_go_to_the_pubchemqcr_reader(tmp_path):
    write_pubchemqcr(tmp_path / "shards" / "a.lmdb", fake_molecules(5))
    single = load_dataset(tmp_path / "shards" / "a.lmdb")
    folder = load_dataset(tmp_path / "shards", split="train", fractions=(0.6, 0.2, 0.2))
    assert isinstance(single, PubChemQCRDataset) and isinstance(folder, PubChemQCRDataset)
    assert len({folder[i].mol_id for i in range(len(folder))}) == 3  # 60% of 5 molecules


@needs_shared_data
def test_other_files_go_to_ase_with_units():
    ds = load_dataset(SHARED_DATA / "md17_aspirin_15.extxyz", energy_unit="kcal/mol")
    assert isinstance(ds, ASEDataset) and len(ds) == 15
    assert ds[0].energy.abs().item() > 1e4  # aspirin's total energy in eV, not kcal/mol


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source: .* does not exist"):
        load_dataset(tmp_path / "missing.lmdb")
    xyz = tmp_path / "one.xyz"
    xyz.write_text("1\nenergy=-1.0\nH 0 0 0\n")
    with pytest.raises(ValueError, match=r"split: .* has no splits"):
        load_dataset(xyz, split="train")


def test_fairchem_lmdbs_go_to_the_oc20_reader(tmp_path):
    from test_oc20 import _cells, _frame, write_graph_lmdb

    frames = [_frame(4, sid=7, fid=i, cell=c) for i, c in enumerate(_cells())]
    path = write_graph_lmdb(tmp_path / "s2ef.lmdb", frames)  # same suffix as PubChemQCR
    ds = load_dataset(path)
    assert isinstance(ds, OC20LmdbDataset) and len(ds) == len(frames)
    assert ds[0].cell.shape == (1, 3, 3)
    with pytest.raises(ValueError, match=r"split: .* has no splits"):
        load_dataset(path, split="train")


def test_embedded_tiny_loads_by_name_with_splits_and_no_files_written():
    from tdn_data._embedded import embedded_path

    before = sorted(p.name for p in embedded_path("embedded-tiny").parent.iterdir())
    ds = load_dataset("embedded-tiny")
    assert isinstance(ds, PubChemQCRDataset) and ds.num_molecules == 5
    s = ds[0]
    assert s.z.dtype.is_floating_point is False and s.pos.shape == (len(s.z), 3)
    parts = [load_dataset("embedded-tiny", split=k) for k in ("train", "val", "test")]
    assert sum(p.num_molecules for p in parts) == 5
    ids = [{p[i].mol_id for i in range(len(p))} for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # split by molecule
    assert sorted(p.name for p in embedded_path("embedded-tiny").parent.iterdir()) == before


def test_embedded_tiny_is_the_start_of_embedded():
    tiny, full = load_dataset("embedded-tiny"), load_dataset("embedded")
    assert full.num_molecules >= 1000 and len(full) >= 20_000
    for i in range(len(tiny)):
        a, b = tiny[i], full[i]
        assert a.mol_id == b.mol_id and a.step == b.step
        assert torch.equal(a.pos, b.pos) and torch.equal(a.forces, b.forces)
        assert torch.equal(a.energy, b.energy)


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="needs tdn-data[qm9]")
def test_qm9_by_name():
    from tdn_data import QM9Dataset

    ds = load_dataset("qm9", split="test", limit=100)
    assert isinstance(ds, QM9Dataset) and 0 < len(ds) < 100
    assert "forces" not in ds[0]
