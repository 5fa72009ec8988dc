"""OC20LmdbDataset: both fairchem LMDB layouts, written here byte for byte as fairchem does.

Graph form: ``pickle.dumps(Data, protocol=-1)`` under ascii integer keys plus a pickled
``length`` (fairchem's S2EF preprocessing). ASE-LMDB form: ``zlib.compress(JSON row)``
under ascii ids from 1 with ``nextid``/``deleted_ids``/``metadata`` entries (fairchem's
LMDBDatabase), with arrays as nested lists (orjson writer) or ASE ``__ndarray__`` dicts.
"""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.db.row import AtomsRow
from ase.io.jsonio import encode as ase_json_encode
from torch_geometric.data import Batch, Data

from tdn_data._lmdb_io import UnsafePickleError
from tdn_data.oc20 import OC20LmdbDataset, decode_graph_value

RNG = np.random.default_rng(0)


def _put_all(path: Path, entries: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24, subdir=False)
    with env.begin(write=True) as txn:
        for k, v in entries.items():
            txn.put(k, v)
    env.sync()
    env.close()
    lock = Path(f"{path}-lock")
    if lock.exists():
        lock.unlink()
    return path


# ------------------------------------------------------------------ graph form
def _frame(n: int, sid, fid, cell: np.ndarray) -> dict:
    return {
        "z": RNG.integers(1, 80, n),
        "pos": RNG.normal(size=(n, 3)) * 3,
        "cell": cell,
        "y": float(RNG.normal()),
        "force": RNG.normal(size=(n, 3)),
        "sid": sid,
        "fid": fid,
    }


def _graph_data(fr: dict) -> Data:
    """A Data object shaped like fairchem's AtomsToGraphs output."""
    n = len(fr["z"])
    return Data(
        atomic_numbers=torch.Tensor(fr["z"]),  # OC20 stores atomic numbers as float
        pos=torch.Tensor(fr["pos"]),
        cell=torch.Tensor(fr["cell"]).view(1, 3, 3),
        natoms=n,
        y=fr["y"],
        force=torch.Tensor(fr["force"]),
        fixed=torch.zeros(n),
        tags=torch.ones(n, dtype=torch.long),
        sid=fr["sid"],
        fid=fr["fid"],
        extra=np.arange(3.0),  # numpy arrays pickle through numpy globals
    )


def write_graph_lmdb(path: Path, frames: list[dict], *, length: bool = True) -> Path:
    entries = {
        f"{i}".encode("ascii"): pickle.dumps(_graph_data(fr), protocol=-1)
        for i, fr in enumerate(frames)
    }
    if length:
        entries[b"length"] = pickle.dumps(len(frames), protocol=-1)
    return _put_all(path, entries)


def _check(item: Data, fr: dict, *, pbc=(True, True, True), atol=1e-6) -> None:
    assert item.z.tolist() == [int(v) for v in fr["z"]]
    np.testing.assert_allclose(item.pos.numpy(), fr["pos"], atol=atol)
    np.testing.assert_allclose(item.forces.numpy(), fr["force"], atol=atol)
    np.testing.assert_allclose(item.energy.numpy(), [fr["y"]], atol=atol)
    np.testing.assert_allclose(item.cell.numpy(), fr["cell"][None], atol=atol)
    assert item.pbc.tolist() == [list(pbc)]
    assert item.mol_id == str(fr["sid"])
    assert item.step == int(fr["fid"])


def _cells() -> list[np.ndarray]:
    return [np.diag([10.0, 11.0, 25.0]), np.array([[8.0, 0, 0], [4.0, 6.9, 0], [0.5, 0.3, 30.0]])]


def test_graph_form_roundtrip(tmp_path):
    frames = [_frame(5, 101, 0, _cells()[0]), _frame(7, 202, 3, _cells()[1])]
    frames[1]["sid"], frames[1]["fid"] = torch.tensor([202]), torch.tensor([3])  # tensor ids
    path = write_graph_lmdb(tmp_path / "s2ef.lmdb", frames)
    ds = OC20LmdbDataset(path)
    assert ds.raw(0)["natoms"] == 5 and ds.raw(0)["tags"].dtype == torch.long
    np.testing.assert_array_equal(ds.raw(0)["extra"], np.arange(3.0))
    assert ds.forms == ["graph"] and len(ds) == 2
    frames[1]["sid"], frames[1]["fid"] = 202, 3
    for i, fr in enumerate(frames):
        _check(ds[i], fr)
    assert ds[0].pos.dtype == torch.float64 and ds[0].z.dtype == torch.long
    _check(ds[-1], frames[1])
    batch = Batch.from_data_list([ds[0], ds[1]])
    assert batch.cell.shape == (2, 3, 3) and batch.energy.shape == (2,)
    # float32 items; datasets survive pickling (DataLoader workers with spawn)
    ds32 = pickle.loads(pickle.dumps(OC20LmdbDataset(path, dtype=torch.float32)))
    assert ds32[1].pos.dtype == torch.float32


def test_graph_length_key_and_entry_count(tmp_path):
    frames = [_frame(3, i, i, _cells()[0]) for i in range(4)]
    no_len = write_graph_lmdb(tmp_path / "a.lmdb", frames, length=False)
    assert len(OC20LmdbDataset(no_len)) == 4
    entries = {str(i).encode(): pickle.dumps(_graph_data(f), -1) for i, f in enumerate(frames)}
    entries[b"length"] = pickle.dumps(3, protocol=-1)  # fewer than stored: trust the key
    assert len(OC20LmdbDataset(_put_all(tmp_path / "b.lmdb", entries))) == 3
    entries[b"length"] = pickle.dumps(9, protocol=-1)
    with pytest.raises(ValueError, match=r"c\.lmdb: key 'length'"):
        OC20LmdbDataset(_put_all(tmp_path / "c.lmdb", entries))


@pytest.mark.parametrize("protocol", [2, 4])
def test_graph_energy_forces_keys_and_old_pyg_layout(tmp_path, protocol):
    fr = _frame(4, "random123", 2, _cells()[1])
    state = {
        "atomic_numbers": torch.Tensor(fr["z"]),
        "pos": torch.Tensor(fr["pos"]),
        "cell": torch.Tensor(fr["cell"]).view(1, 3, 3),
        "energy": np.float64(fr["y"]),  # numpy scalar
        "forces": torch.Tensor(fr["force"]).numpy(),  # numpy array
        "pbc": torch.tensor([True, True, False]),
        "sid": fr["sid"],
        "fid": np.int64(2),
        "y_relaxed": 99.0,
    }
    for proto in range(6):  # today's PyG Data at every pickle protocol
        pos = decode_graph_value(pickle.dumps(_graph_data(fr), protocol=proto))["pos"]
        np.testing.assert_allclose(pos, fr["pos"], atol=1e-5)
    # PyG 1.x pickled Data with its attributes straight in __dict__ (no _store):
    # GLOBAL Data, EMPTY_TUPLE, NEWOBJ, <state dict>, BUILD, STOP
    body = pickle.dumps(state, protocol=protocol)[2:-1]
    head = bytes([0x80, protocol]) + b"ctorch_geometric.data.data\nData\n)\x81"
    old = head + body + b"b."
    path = _put_all(tmp_path / "old.lmdb", {b"0": old})
    ds = OC20LmdbDataset(path)
    _check(ds[0], fr, pbc=(True, True, False))
    assert ds.raw(0)["y_relaxed"] == 99.0
    item = OC20LmdbDataset(path, energy_key="y_relaxed")[0]
    assert item.energy.item() == 99.0
    with pytest.raises(ValueError, match=r"old\.lmdb: key '0': no forces .*'nope'"):
        OC20LmdbDataset(path, forces_key="nope")[0]


# ------------------------------------------------------------------- ASE-LMDB form
def _ase_row(fr: dict, *, pbc=True) -> dict:
    """The row dict fairchem's LMDBDatabase._write stores (AtomsRow fields + extras)."""
    n = len(fr["z"])
    atoms = Atoms(numbers=fr["z"], positions=fr["pos"], cell=fr["cell"], pbc=pbc)
    atoms.set_tags(np.arange(n) % 3)
    atoms.set_constraint(FixAtoms(indices=[0]))
    atoms.calc = SinglePointCalculator(atoms, energy=fr["y"], forces=fr["force"])
    row = AtomsRow(atoms)
    dct = {k: row[k] for k in row.__dict__ if k[0] != "_" and k != "id"}
    dct.update(ctime=1.0, mtime=1.0, user="test", cell=np.asarray(dct["cell"]))
    dct["data"] = {"sid": fr["sid"], "fid": fr["fid"], "ref_energy": -3.0}
    dct["key_value_pairs"] = {"bulk": "Pt"}
    dct["constraints"] = [c.todict() for c in atoms.constraints]
    return dct


def _orjson_like(obj) -> bytes:
    """orjson.dumps(..., OPT_SERIALIZE_NUMPY): numpy arrays and scalars as plain JSON."""

    def default(o):
        if isinstance(o, np.ndarray | np.generic):
            return o.tolist()
        raise TypeError(type(o))

    return json.dumps(obj, default=default).encode()


def write_aselmdb(path: Path, frames: list[dict], *, ase_encoder=False, deleted=(), pbc=True):
    enc = (lambda o: ase_json_encode(o).encode()) if ase_encoder else _orjson_like
    entries = {}
    for i, fr in enumerate(frames, start=1):
        if i not in deleted:
            entries[f"{i}".encode("ascii")] = zlib.compress(enc(_ase_row(fr, pbc=pbc)))
    entries[b"nextid"] = zlib.compress(enc(len(frames) + 1))
    if deleted:
        entries[b"deleted_ids"] = zlib.compress(enc(list(deleted)))
    entries[b"metadata"] = zlib.compress(enc({"units": {"energy": "eV"}}))
    return _put_all(path, entries)


@pytest.mark.parametrize("ase_encoder", [False, True])
def test_aselmdb_roundtrip(tmp_path, ase_encoder):
    frames = [_frame(6, f"s{i}", i, _cells()[i % 2]) for i in range(4)]
    path = write_aselmdb(tmp_path / "oc22.aselmdb", frames, ase_encoder=ase_encoder, deleted=(2,))
    ds = OC20LmdbDataset(path)
    assert ds.forms == ["aselmdb"] and len(ds) == 3 and ds.skipped == {"deleted_rows": 1}
    for item, fr in zip([ds[0], ds[1], ds[2]], [frames[0], frames[2], frames[3]], strict=True):
        _check(item, fr)
    assert ds.locate(1) == (0, b"3")
    assert ds.raw(0)["key_value_pairs"] == {"bulk": "Pt"}
    assert OC20LmdbDataset(path, energy_key="ref_energy")[0].energy.item() == -3.0


def test_aselmdb_detected_without_extension_and_nonperiodic(tmp_path):
    fr = _frame(3, 7, 1, np.zeros((3, 3)))
    path = write_aselmdb(tmp_path / "mol.lmdb", [fr], pbc=False)
    ds = OC20LmdbDataset(path)
    assert ds.forms == ["aselmdb"]
    item = ds[0]
    assert item.pbc.tolist() == [[False, False, False]] and item.cell.shape == (1, 3, 3)
    assert OC20LmdbDataset(path, form="aselmdb").forms == ["aselmdb"]


def test_folder_of_mixed_files(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    g = [_frame(4, 1, i, _cells()[0]) for i in range(3)]
    a = [_frame(5, 2, i, _cells()[1]) for i in range(2)]
    write_graph_lmdb(folder / "data.0000.lmdb", g)
    write_aselmdb(folder / "data.0001.aselmdb", a)
    (folder / "notes.txt").write_text("ignored")
    ds = OC20LmdbDataset(folder)
    assert ds.forms == ["graph", "aselmdb"] and len(ds) == 5
    for i, fr in enumerate(g + a):
        _check(ds[i], fr)
    with pytest.raises(IndexError):
        ds[5]
    assert "5 frames" in ds.summary()


def test_dataloader_workers(tmp_path):
    frames = [_frame(3, i, i, _cells()[i % 2]) for i in range(6)]
    ds = OC20LmdbDataset(write_graph_lmdb(tmp_path / "w.lmdb", frames))
    assert len(ds[0].z) == 3  # opens the environment in this process before the fork
    loader = torch.utils.data.DataLoader(
        ds, batch_size=3, num_workers=2, collate_fn=Batch.from_data_list
    )
    batches = list(loader)
    assert [b.num_graphs for b in batches] == [3, 3]
    assert batches[1].mol_id == ["3", "4", "5"]


# ---------------------------------------------------------------- errors & safety
def test_corrupt_values_name_file_and_key(tmp_path):
    frames = [_frame(3, 1, 0, _cells()[0])]
    good = pickle.dumps(_graph_data(frames[0]), protocol=-1)
    path = _put_all(tmp_path / "bad.lmdb", {b"0": good, b"1": good[: len(good) // 2]})
    ds = OC20LmdbDataset(path)
    _check(ds[0], frames[0])
    with pytest.raises(ValueError, match=r"bad\.lmdb: key '1': corrupt value"):
        ds[1]
    ase_path = write_aselmdb(tmp_path / "bad.aselmdb", frames * 2)
    env = lmdb.open(str(ase_path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"2", b"\x78 not zlib")
    env.close()
    ds = OC20LmdbDataset(ase_path)
    with pytest.raises(ValueError, match=r"bad\.aselmdb: key '2': corrupt value"):
        ds[1]
    junk = _put_all(tmp_path / "junk.lmdb", {b"0": b"hello"})
    with pytest.raises(ValueError, match=r"junk\.lmdb: key '0'.*form="):
        OC20LmdbDataset(junk)


class _Evil:
    """Its __reduce__ would create the marker file when unpickled by plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _EvilStorage:
    """A tensor storage whose nested torch.save bytes carry the evil payload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import io

        buf = io.BytesIO()
        torch.save(_Evil(self.marker), buf, _use_new_zipfile_serialization=False)
        return (torch.storage._load_from_bytes, (buf.getvalue(),))


def test_crafted_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    fr = _frame(3, 1, 0, _cells()[0])
    # sanity: plain pickle would run both payloads
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_EvilStorage(marker)))
    assert marker.exists()
    marker.unlink()

    top = _graph_data(fr)
    top.evil = _Evil(marker)
    nested = _graph_data(fr)
    nested.evil = _EvilStorage(marker)
    path = _put_all(
        tmp_path / "evil.lmdb",
        {b"0": pickle.dumps(top, protocol=-1), b"1": pickle.dumps(nested, protocol=-1)},
    )
    ds = OC20LmdbDataset(path)
    with pytest.raises(
        UnsafePickleError, match=r"evil\.lmdb: key '0': refused to load global io\.open"
    ):
        ds[0]
    with pytest.raises(UnsafePickleError, match=r"evil\.lmdb: key '1': tensor storage refused"):
        ds[1]
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        decode_graph_value(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.", key=b"k")
    assert not marker.exists()


def test_missing_paths_and_bad_form(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.lmdb"):
        OC20LmdbDataset(tmp_path / "nope.lmdb")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.lmdb"):
        OC20LmdbDataset(empty)
    with pytest.raises(ValueError, match="form="):
        OC20LmdbDataset(tmp_path, form="xyz")
    not_lmdb = tmp_path / "text.lmdb"
    not_lmdb.write_text("not an lmdb file" * 100)
    with pytest.raises(ValueError, match=r"text\.lmdb"):
        OC20LmdbDataset(not_lmdb)
    assert os.listdir(empty) == []
