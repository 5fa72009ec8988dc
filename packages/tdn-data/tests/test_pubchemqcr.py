"""PubChemQCRDataset on small LMDB files written in the exact PubChemQCR schema."""

from __future__ import annotations

import logging
import math
import os
import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tdn_data import _io as tdn_io
from tdn_data import pubchemqcr
from tdn_data._lmdb_io import UnsafePickleError, encode_value
from tdn_data._units import BOHR_ANGSTROM, HARTREE_EV
from tdn_data.pubchemqcr import PubChemQCRDataset, write_pubchemqcr

# reference energies in Hartree used to build fake energies, so a fit can recover them
REF_HA = {"H": -0.5, "C": -37.8, "N": -54.5, "O": -75.0}
Z = {"H": 1, "C": 6, "N": 7, "O": 8}
FORMULAS = [["C", "H", "H", "H", "H"], ["O", "H", "H"], ["N", "H", "H", "H"], ["C", "O"],
            ["C", "C", "H", "H", "H", "H", "O"], ["H", "H"]]  # fmt: skip


def fake_steps(symbols: list[str], n_steps: int, seed: int, charge: bool = True) -> list[dict]:
    """A relaxation trajectory in schema form: coordinates Å, energy Ha, gradient Ha/Bohr."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(scale=1.5, size=(len(symbols), 3))
    base = sum(REF_HA[s] for s in symbols)
    steps = []
    for s in range(n_steps):
        grad = rng.normal(scale=0.01, size=pos.shape)
        coords = [
            {"atom": a, "x": x, "y": y, "z": zz}
            for a, (x, y, zz) in zip(symbols, pos.tolist(), strict=True)
        ]
        if charge:  # some real entries lack 'charge'
            for c in coords:
                c["charge"] = 0
        gradient = [{"atom": a, "charge": 0, "dx": g[0], "dy": g[1], "dz": g[2]}
                    for a, g in zip(symbols, grad.tolist(), strict=True)]  # fmt: skip
        steps.append(
            {"coordinates": coords, "energy": float(base - 0.001 * s), "gradient": gradient}
        )
        pos = pos - 0.05 * grad
    return steps


def fake_molecules(n: int, n_steps: int = 3) -> list[tuple[str, dict]]:
    out = []
    for i in range(n):
        sym = FORMULAS[i % len(FORMULAS)]
        dft1 = fake_steps(sym, n_steps + i % 2, seed=i, charge=i % 3 != 0)
        dft2 = [dft1[-1], *fake_steps(sym, 2, seed=1000 + i)]
        out.append((f"{i + 1:09d}", {"pm3": None, "hf": None, "DFT_1st": dft1, "DFT_2nd": dft2}))
    return out


def write_raw(path, entries: list[tuple[bytes, bytes]]) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for k, v in entries:
            txn.put(k, v)
    env.close()


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "a.lmdb"
    write_pubchemqcr(path, fake_molecules(10))
    return path


def test_values_units_and_item_type(shard):
    ds = PubChemQCRDataset(shard)
    mols = dict(fake_molecules(10))
    assert ds.num_molecules == 10
    assert len(ds) == sum(len(m["DFT_1st"]) for m in mols.values())
    item = ds[0]
    steps = mols[item.mol_id]["DFT_1st"]
    assert item.mol_id == "000000001" and item.step == 0
    assert item.z.dtype == torch.long and item.pos.dtype == torch.float64
    assert item.energy.shape == (1,)
    st = steps[0]
    assert item.z.tolist() == [Z[c["atom"]] for c in st["coordinates"]]
    assert item.energy.item() == pytest.approx(st["energy"] * HARTREE_EV, rel=1e-12)
    grad = np.array([[g["dx"], g["dy"], g["dz"]] for g in st["gradient"]])
    np.testing.assert_allclose(item.forces.numpy(), -grad * HARTREE_EV / BOHR_ANGSTROM)
    pos = np.array([[c["x"], c["y"], c["z"]] for c in st["coordinates"]])
    np.testing.assert_allclose(item.pos.numpy(), pos)
    assert "cell" not in item
    # last step of molecule 1, then first of molecule 2; negative indices
    assert (ds[2].mol_id, ds[2].step, ds[3].mol_id, ds[3].step) == ("000000001", 2, "000000002", 0)
    assert ds[-1].mol_id == "000000010"
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = Batch.from_data_list([ds[i] for i in range(4)])
    assert batch.energy.shape == (4,) and batch.pos.shape[1] == 3
    assert PubChemQCRDataset(shard, dtype=torch.float32)[0].pos.dtype == torch.float32


def test_stage_choice_and_concatenation(shard):
    d2 = PubChemQCRDataset(shard, stage="DFT_2nd")
    assert len(d2) == 30
    both = PubChemQCRDataset(shard, stage=("DFT_1st", "DFT_2nd"), cache_index=False)
    # the repeated boundary step is stored once
    assert len(both) == len(PubChemQCRDataset(shard)) + 20
    with pytest.raises(ValueError, match="stage='DFT_3rd'"):
        PubChemQCRDataset(shard, stage="DFT_3rd")


def test_splits_by_molecule_seeded(tmp_path):
    path = tmp_path / "s.lmdb"
    write_pubchemqcr(path, fake_molecules(50, n_steps=2))
    parts = {s: PubChemQCRDataset(path, split=s, seed=3) for s in ("train", "val", "test")}
    ids = {s: set(d.mol_ids) for s, d in parts.items()}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert set(PubChemQCRDataset(path, split="train", seed=3).mol_ids) == ids["train"]
    assert set(PubChemQCRDataset(path, split="train", seed=4).mol_ids) != ids["train"]
    full = [PubChemQCRDataset(path, split=s, fractions=(0.8, 0.1, 0.1)).num_molecules
            for s in ("train", "val", "test")]  # fmt: skip
    assert full == [40, 5, 5]
    # every snapshot of a molecule lands in the molecule's split
    train = parts["train"]
    assert {train[i].mol_id for i in range(len(train))} == ids["train"]
    with pytest.raises(ValueError, match="fractions"):
        PubChemQCRDataset(path, fractions=(0.8, 0.3, 0.1))
    with pytest.raises(ValueError, match=r"s\.lmdb: split 'val' is empty"):
        PubChemQCRDataset(path, split="val", fractions=(1.0, 0.0, 0.0))


def test_reference_energies_fit_and_dict(tmp_path):
    path = tmp_path / "r.lmdb"
    write_pubchemqcr(path, fake_molecules(30, n_steps=2))
    ds = PubChemQCRDataset(path, split="val", reference_energies="fit")
    for sym, ha in REF_HA.items():  # energies are sums of REF_HA up to 1 mHa per step
        assert ds.reference_energies[Z[sym]] == pytest.approx(ha * HARTREE_EV, abs=0.05)
    assert abs(ds[0].energy.item()) < 0.2
    refs = {1: -10.0, 6: -1000.0, 7: -1500.0, 8: -2000.0}
    raw, refd = PubChemQCRDataset(path), PubChemQCRDataset(path, reference_energies=refs)
    z = raw[5].z.tolist()
    assert refd[5].energy.item() == pytest.approx(raw[5].energy.item() - sum(refs[v] for v in z))
    assert refd.reference_energies == refs
    with pytest.raises(ValueError, match=r"r\.lmdb: no reference energy for elements \[7\]"):
        PubChemQCRDataset(path, reference_energies={1: 0.0, 6: 0.0, 8: 0.0})


def test_folder_of_shards_and_index_cache(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    mols = fake_molecules(12)
    write_pubchemqcr(folder / "b.lmdb", mols[6:])
    write_pubchemqcr(folder / "a.lmdb", mols[:6])
    ds = PubChemQCRDataset(folder)
    assert ds.num_molecules == 12 and ds.mol_ids[0] == "000000001"
    index = tmp_path / "shards.tdn-index.npz"
    assert index.exists()
    assert sorted(os.listdir(tmp_path)) == ["shards", "shards.tdn-index.npz"]
    assert sorted(os.listdir(folder)) == ["a.lmdb", "b.lmdb"]  # no lock files either

    # a second open reads the index only: scanning would fail
    def no_scan(*a, **k):
        raise AssertionError("scanned again")

    monkeypatch.setattr(pubchemqcr, "_scan", no_scan)
    again = PubChemQCRDataset(folder)
    assert again[7].mol_id == ds[7].mol_id
    monkeypatch.undo()

    # a changed shard invalidates the cache
    write_pubchemqcr(folder / "b.lmdb", mols[6:9])
    assert PubChemQCRDataset(folder).num_molecules == 9


def test_read_only_directory_keeps_index_in_memory(shard, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(tdn_io.tempfile, "mkstemp", refuse)
    with pytest.warns(UserWarning, match="keeping it in memory"):
        ds = PubChemQCRDataset(shard)
    assert len(ds) > 0 and ds[0].mol_id == "000000001"
    assert not shard.with_name(shard.name + ".tdn-index.npz").exists()


def test_dataloader_workers_and_sharding(shard):
    ds = PubChemQCRDataset(shard)
    ds[0]  # open the environment in this process first: workers must reopen theirs
    loader = torch.utils.data.DataLoader(
        ds, batch_size=5, num_workers=2, collate_fn=Batch.from_data_list,
        multiprocessing_context="fork",
    )  # fmt: skip
    energies = torch.cat([b.energy for b in loader])
    assert torch.equal(energies, torch.cat([ds[i].energy for i in range(len(ds))]))
    parts = [ds.shard(r, 3) for r in range(3)]
    assert sum(len(p) for p in parts) == len(ds)
    assert parts[1][0].energy == ds[len(parts[0])].energy
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    assert len(list(sampler)) == math.ceil(len(ds) / 2)


# ------------------------------------------------------------------ bad input
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.lmdb"):
        PubChemQCRDataset(tmp_path / "nope.lmdb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no \*\.lmdb shards"):
        PubChemQCRDataset(tmp_path / "empty")


def test_corrupt_lmdb(tmp_path):
    path = tmp_path / "garbage.lmdb"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(ValueError, match=r"garbage\.lmdb"):
        PubChemQCRDataset(path)


def test_truncated_value(tmp_path):
    path = tmp_path / "t.lmdb"
    good = encode_value({"DFT_1st": fake_steps(["H", "H"], 2, 0)})
    write_raw(path, [(b"000000001", good), (b"000000002", good[: len(good) // 2])])
    with pytest.raises(ValueError, match=r"t\.lmdb: key '000000002': corrupt or truncated"):
        PubChemQCRDataset(path)
    ds = PubChemQCRDataset(path, on_error="skip", cache_index=False)
    assert ds.skipped == {"corrupt_value": 1} and ds.num_molecules == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"DFT_1st": _Evil(marker)}, protocol=4)
    import gzip

    path = tmp_path / "evil.lmdb"
    write_raw(path, [(b"000000666", gzip.compress(payload))])
    for on_error in ("raise", "skip"):
        with pytest.raises(UnsafePickleError, match=r"evil\.lmdb: key '000000666'"):
            PubChemQCRDataset(path, on_error=on_error, cache_index=False)
    assert not marker.exists()


def test_absent_stage_is_skipped_counted_and_logged(tmp_path, caplog):
    path = tmp_path / "n.lmdb"
    mols = fake_molecules(4)
    mols[1][1]["DFT_1st"] = None
    write_pubchemqcr(path, mols)
    with caplog.at_level(logging.WARNING, logger="tdn_data.pubchemqcr"):
        ds = PubChemQCRDataset(path)
    assert ds.skipped == {"stage_absent": 1} and ds.num_molecules == 3
    assert "000000002" not in ds.mol_ids
    assert "skipped 1" in caplog.text and "000000002" in caplog.text
    assert "stage_absent" in ds.summary()
    # the cached index reports it again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tdn_data.pubchemqcr"):
        assert PubChemQCRDataset(path).skipped == {"stage_absent": 1}
    assert "skipped 1" in caplog.text


def _write_one(tmp_path, name, steps):
    path = tmp_path / name
    write_pubchemqcr(path, [("000000001", {"DFT_1st": fake_steps(["C", "O"], 2, 0)}),
                            ("000000042", {"DFT_1st": steps})])  # fmt: skip
    return path


def test_mismatched_atom_counts(tmp_path):
    steps = fake_steps(["O", "H", "H"], 2, 1)
    steps[1]["gradient"] = steps[1]["gradient"][:2]
    path = _write_one(tmp_path, "m.lmdb", steps)
    with pytest.raises(ValueError, match=r"m\.lmdb: key '000000042' step 1: 3 coordinates but 2"):
        PubChemQCRDataset(path)
    ds = PubChemQCRDataset(path, on_error="skip", cache_index=False)
    assert ds.skipped == {"atom_count_mismatch": 1}


@pytest.mark.parametrize("field", ["energy", "x", "dz"])
def test_nan_inf(tmp_path, field):
    steps = fake_steps(["O", "H", "H"], 3, 1)
    if field == "energy":
        steps[2]["energy"] = float("nan")
    elif field == "x":
        steps[2]["coordinates"][1]["x"] = float("inf")
    else:
        steps[2]["gradient"][0]["dz"] = float("-inf")
    path = _write_one(tmp_path, "f.lmdb", steps)
    with pytest.raises(ValueError, match=r"f\.lmdb: key '000000042' step 2: .*NaN or inf"):
        PubChemQCRDataset(path)


def test_unknown_element(tmp_path):
    steps = fake_steps(["O", "H", "H"], 2, 1, charge=False)
    for st in steps:
        st["coordinates"][0]["atom"] = st["gradient"][0]["atom"] = "Xx"
    path = _write_one(tmp_path, "u.lmdb", steps)
    with pytest.raises(ValueError, match=r"u\.lmdb: key '000000042' step 0: unknown element 'Xx'"):
        PubChemQCRDataset(path)


def test_empty_after_filtering(tmp_path):
    path = tmp_path / "e.lmdb"
    write_pubchemqcr(path, [("000000001", {"DFT_1st": None}), ("000000002", {})])
    with pytest.raises(ValueError, match=r"e\.lmdb: no usable molecules"):
        PubChemQCRDataset(path)
    empty = tmp_path / "z.lmdb"
    write_pubchemqcr(empty, [])
    with pytest.raises(ValueError, match=r"z\.lmdb: no usable molecules"):
        PubChemQCRDataset(empty)


def test_default_fractions_subset_versus_full_release(tmp_path, monkeypatch):
    from tdn_data import pubchemqcr

    path = tmp_path / "s.lmdb"
    write_pubchemqcr(path, fake_molecules(10))
    assert PubChemQCRDataset(path).fractions == (0.6, 0.2, 0.2)
    monkeypatch.setattr(pubchemqcr, "FULL_RELEASE_MOLECULES", 10)  # pretend 10 is the full set
    full = PubChemQCRDataset(path, split="train")
    assert full.fractions == (0.8, 0.1, 0.1) and full.num_molecules == 8
    assert PubChemQCRDataset(path, fractions=(0.5, 0.5, 0)).fractions == (0.5, 0.5, 0.0)
