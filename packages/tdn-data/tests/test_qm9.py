"""QM9Dataset: QM9 read from the CSV files that the optional ``qm9pack`` package ships.

Tests against the real table need qm9pack (``pip install 'tdn-data[qm9]'``) and are
skipped cleanly without it; we detect it with ``find_spec`` and never import it (its
modules need ``pkg_resources``). Format and error tests use small CSV tables written
here in qm9pack's layout, and the ``forces=None`` tests of ``make_sample`` need nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tdn_data import qm9 as qm9_module
from tdn_data._sample import make_sample
from tdn_data._units import HARTREE_EV
from tdn_data.qm9 import QM9_FILES, QM9_TARGETS, QM9Dataset, QM9Unavailable

HAVE_QM9PACK = importlib.util.find_spec("qm9pack") is not None
needs_qm9pack = pytest.mark.skipif(
    not HAVE_QM9PACK, reason="qm9pack not installed (pip install 'tdn-data[qm9]')"
)

# methane, QM9 index 1, as in qm9pack 1.0.3 (values in Hartree, Å)
METHANE_U0_HA = -40.47893
METHANE_GAP_HA = 0.5048


# ---------------------------------------------------------------- make_sample(forces=None)


def test_make_sample_without_forces_has_no_forces_attribute():
    d = make_sample([6, 1], [[0, 0, 0], [0, 0, 1.09]], -1.0, None, source="x")
    assert "forces" not in d.keys()
    assert d.energy.shape == (1,) and d.pos.dtype == torch.float64
    b = Batch.from_data_list([d, d])
    assert b.energy.shape == (2,) and "forces" not in b.keys()


def test_make_sample_with_forces_still_validated():
    d = make_sample([1], [[0, 0, 0]], 0.0, [[1, 2, 3]])
    assert d.forces.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="forces has shape"):
        make_sample([1], [[0, 0, 0]], 0.0, [[1, 2]])
    with pytest.raises(ValueError, match="forces contains NaN"):
        make_sample([1], [[0, 0, 0]], 0.0, [[float("nan"), 0, 0]])


# ---------------------------------------------------------------- the real table


@pytest.fixture(scope="module")
def qm9_all():
    return QM9Dataset()


@needs_qm9pack
def test_count_and_cache(qm9_all):
    assert len(qm9_all) == 130_831  # 133,885 minus the 3,054 unconverged molecules
    again = QM9Dataset(target="G")
    assert again._table is qm9_all._table  # read once per process
    ids = qm9_all._table.index
    assert ids[0] == 1 and ids[-1] == 133_885 and np.all(np.diff(ids) > 0)


@needs_qm9pack
def test_methane(qm9_all):
    d = qm9_all[0]
    assert d.z.tolist() == [6, 1, 1, 1, 1]
    assert d.mol_id == "1" and d.step == 0
    assert d.source == "qm9pack qm9_part1.csv Index 1"
    assert "forces" not in d.keys()
    assert d.energy.shape == (1,) and d.energy.dtype == torch.float64
    # units: Hartree in the package -> eV here
    assert d.energy.item() == pytest.approx(METHANE_U0_HA * HARTREE_EV, abs=1e-9)
    assert d.energy.item() == pytest.approx(-1101.49, abs=0.01)
    # positions in Å: four C-H bonds of about 1.09 Å
    ch = (d.pos[1:] - d.pos[0]).norm(dim=1)
    assert torch.allclose(ch, torch.full((4,), 1.0919, dtype=torch.float64), atol=2e-3)


@needs_qm9pack
def test_targets_in_ev():
    e = {t: QM9Dataset(target=t, limit=1)[0].energy.item() / HARTREE_EV for t in QM9_TARGETS}
    assert e["U0"] == pytest.approx(METHANE_U0_HA)
    assert e["gap"] == pytest.approx(METHANE_GAP_HA)
    assert e["gap"] == pytest.approx(e["LUMO"] - e["HOMO"], abs=1e-4)
    assert e["U0"] < e["U"] < e["H"] and e["G"] < e["H"]  # thermal corrections
    assert 0 < e["ZPVE"] < 0.1


@needs_qm9pack
def test_last_molecule_and_elements(qm9_all):
    d = qm9_all[-1]
    assert d.mol_id == "133885" and d.source.startswith("qm9pack qm9_part3.csv")
    assert set(np.unique(qm9_all._table.z).tolist()) == {1, 6, 7, 8, 9}
    assert int(qm9_all._table.offsets[-1]) == qm9_all._table.z.size
    assert np.diff(qm9_all._table.offsets).max() == 29  # QM9's largest molecules


@needs_qm9pack
def test_splits_disjoint_cover_and_seeded(qm9_all):
    parts = {s: QM9Dataset(split=s) for s in ("train", "val", "test")}
    ids = {s: set(p.mol_ids) for s, p in parts.items()}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [104_664, 13_083, 13_084]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(qm9_all.mol_ids)
    assert QM9Dataset(split="val").mol_ids == parts["val"].mol_ids
    assert QM9Dataset(split="val", seed=1).mol_ids != parts["val"].mol_ids
    small = QM9Dataset(split="test", fractions=(0.5, 0.25, 0.25), limit=100)
    assert len(small) == 25 and all(1 <= int(i) <= 100 for i in small.mol_ids)


@needs_qm9pack
def test_limit_and_dtype():
    ds = QM9Dataset(limit=10, dtype=torch.float32)
    assert len(ds) == 10 and ds.mol_ids[:3] == ["1", "2", "3"]
    assert ds[9].pos.dtype == torch.float32 and ds[9].energy.dtype == torch.float32
    with pytest.raises(IndexError, match="out of range"):
        ds[10]


# ---------------------------------------------------------------- errors


def test_qm9pack_missing(monkeypatch):
    monkeypatch.setattr(qm9_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(QM9Unavailable, match=r"pip install 'tdn-data\[qm9\]'"):
        QM9Dataset()
    with pytest.raises(ImportError, match="qm9pack"):
        QM9Dataset()


@needs_qm9pack
def test_bad_target_split_fractions_limit():
    with pytest.raises(ValueError, match=r"target='U1'.*'U0', 'U', 'H', 'G', 'ZPVE'"):
        QM9Dataset(target="U1")
    with pytest.raises(ValueError, match=r"split='training': use one of"):
        QM9Dataset(split="training")
    with pytest.raises(ValueError, match="fractions"):
        QM9Dataset(fractions=(0.9, 0.2, 0.1))
    with pytest.raises(ValueError, match="limit=0"):
        QM9Dataset(limit=0)
    with pytest.raises(ValueError, match="split 'val' is empty"):
        QM9Dataset(split="val", limit=3)


# ---------------------------------------------------------------- format checks on small tables

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,"
    "Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,"
    "HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,"
    "InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)


def _row(index: int, elements: str, xyz: str, n: int, u0: str = "-1.5") -> str:
    return (
        f'"dsgdb9nsd_{index:06d}.xyz",{index},"X","InChI=1S/X",{n},"[0,0,0,0,0]",'
        f'"{elements}","{xyz}","[0]","[1]",1.,1.,1.,0.,1.,-0.3,0.1,0.4,1.,0.01,{u0},-1.49,'
        "-1.48,-1.52,1."
    )


def _write_tables(tmp_path: Path, rows: list[str]) -> Path:
    for i, name in enumerate(QM9_FILES):
        body = rows if i == 0 else []
        (tmp_path / name).write_text("\n".join([HEADER, *body]) + "\n")
    return tmp_path


H2 = ("['H','H']", "[[0.0,0.0,0.0],[0.0,0.0,0.74]]")


def test_small_table_reads(tmp_path):
    d = _write_tables(tmp_path, [_row(7, *H2, 2), _row(9, "['O']", "[[1.0,2.0,3.0]]", 1)])
    ds = QM9Dataset(data_dir=d)
    assert len(ds) == 2 and ds.mol_ids == ["7", "9"]
    assert ds[0].z.tolist() == [1, 1] and ds[1].pos.tolist() == [[1.0, 2.0, 3.0]]
    assert ds[0].energy.item() == pytest.approx(-1.5 * HARTREE_EV)


@pytest.mark.parametrize(
    "row, match",
    [
        (_row(1, *H2, 3), r"qm9_part1.csv line 2: malformed QM9 row: N_atoms=3"),
        (_row(1, "['H','Xx']", H2[1], 2), "element 'Xx' outside QM9"),
        (_row(1, H2[0], "[[0,0,0],[0,0,abc]]", 2), "malformed XYZ_Ang"),
        (_row(1, *H2, 2, u0="nan"), r"non-finite energies for QM9 indices \[1\]"),
    ],
)
def test_malformed_rows(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        QM9Dataset(data_dir=_write_tables(tmp_path, [row]))


def test_missing_columns_and_duplicates(tmp_path):
    (tmp_path / QM9_FILES[0]).write_text("Index,N_atoms\n1,1\n")
    with pytest.raises(ValueError, match=r"not a qm9pack QM9 table, missing columns"):
        QM9Dataset(data_dir=tmp_path)
    d = _write_tables(tmp_path, [_row(1, *H2, 2), _row(1, *H2, 2)])
    with pytest.raises(ValueError, match="indices are not unique"):
        QM9Dataset(data_dir=d)
