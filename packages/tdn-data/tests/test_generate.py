"""Tests of the GFN2-xTB relaxation generator (tdn_data.generate)."""

from __future__ import annotations

import importlib.util
import json
import os

import lmdb
import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("tblite")

from tdn_data import generate as gen
from tdn_data._lmdb_io import decode_value

# Tiny seeds keep each relaxation well under a second.
TINY = ["O", "CO", "C#N", "[NH4+].[Cl-]", "CC", "N", "C=O"]


def _read_shard(path) -> dict[bytes, dict]:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {k: decode_value(v, key=k) for k, v in txn.cursor()}
    finally:
        env.close()


@pytest.fixture(scope="module")
def methanol() -> list[dict]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return gen.relax_trajectory("CO", seed=3, fmax=0.05, max_steps=100)


def test_trajectory_shape_and_descent(methanol):
    steps = methanol
    assert len(steps) >= 2
    energies = [s["energy"] for s in steps]
    # Hartree scale of methanol at GFN2-xTB (about -8.2 Eh), not eV.
    assert -9.0 < energies[-1] < -7.5
    assert energies[-1] < energies[0]
    assert gen._max_force(steps[-1]) <= 0.05
    for s in steps:
        assert len(s["coordinates"]) == len(s["gradient"]) == 6
        assert [a["atom"] for a in s["coordinates"]] == [a["atom"] for a in s["gradient"]]
        assert set(s["coordinates"][0]) == {"atom", "charge", "x", "y", "z"}
        assert set(s["gradient"][0]) == {"atom", "charge", "dx", "dy", "dz"}


def test_gradient_matches_tblite_finite_difference(methanol):
    """The stored gradient (Hartree/Bohr) is dE/dx of tblite's energy (Hartree)."""
    from tblite.interface import Calculator

    step = methanol[1]
    numbers = {"H": 1, "C": 6, "O": 8}
    z = np.array([numbers[a["atom"]] for a in step["coordinates"]])
    pos = np.array([[a["x"], a["y"], a["z"]] for a in step["coordinates"]]) / gen._BOHR_ANG
    grad = np.array([[a["dx"], a["dy"], a["dz"]] for a in step["gradient"]])

    def energy(p: np.ndarray) -> tuple[float, np.ndarray]:
        calc = Calculator("GFN2-xTB", z, p, charge=0.0, uhf=0)
        calc.set("verbosity", 0)
        res = calc.singlepoint()
        return float(res.get("energy")), np.asarray(res.get("gradient"))

    e0, g0 = energy(pos)
    assert e0 == pytest.approx(step["energy"], abs=1e-7)
    # The relaxation restarts each SCF from the previous step's wavefunction, a fresh
    # calculation does not: both converge to within tblite's SCF tolerance.
    np.testing.assert_allclose(grad, g0, atol=1e-5)
    h = 1e-4  # Bohr
    for atom, axis in [(0, 0), (1, 2), (3, 1)]:
        dp = np.zeros_like(pos)
        dp[atom, axis] = h
        fd = (energy(pos + dp)[0] - energy(pos - dp)[0]) / (2 * h)
        assert fd == pytest.approx(grad[atom, axis], abs=2e-5)


def test_seed_filter():
    assert gen.check_seed("CO") is None
    assert gen.check_seed("[NH4+]") == "charged"
    assert gen.check_seed("[Na+].[Cl-]") == "elements"
    assert gen.check_seed("CC.O") == "fragments"
    assert gen.check_seed("CBr") == "elements"
    assert gen.check_seed("C" * 20) == "too_many_atoms"
    assert gen.check_seed("not a smiles") == "unparsable"
    smiles = gen.nci_smiles()
    assert len(smiles) > 4000
    chosen, skipped = gen.select_seeds(smiles, 0, 20)
    assert len(chosen) == 20 and sum(skipped.values()) > 0


def test_determinism_and_schema(tmp_path):
    kw = dict(num_molecules=3, shard_size=3, processes=0, smiles=TINY, progress=False, max_steps=60)
    s1 = gen.generate_dataset(tmp_path / "a", **kw)
    gen.generate_dataset(tmp_path / "b", **kw)
    assert s1["molecules_written"] == 3 and s1["molecules_failed"] == 0
    a = _read_shard(tmp_path / "a" / "shard_00000.lmdb")
    b = _read_shard(tmp_path / "b" / "shard_00000.lmdb")
    assert list(a) == [b"000000000", b"000000001", b"000000002"]
    assert a == b  # bit-identical floats
    v = a[b"000000001"]
    assert v["pm3"] is None and v["hf"] is None and v["DFT_2nd"] is None
    assert v["meta"]["smiles"] == "CO" and v["meta"]["level"] == "GFN2-xTB"
    assert s1["snapshots_written"] == sum(len(x["DFT_1st"]) for x in a.values())


def test_skipped_seeds_are_counted(tmp_path):
    s = gen.generate_dataset(
        tmp_path,
        num_molecules=4,
        shard_size=4,
        processes=0,
        smiles=TINY,
        progress=False,
        max_steps=60,
    )
    assert s["seeds_skipped"] == {"fragments": 1}
    assert s["seeds_accepted"] == 4
    keys = json.loads((tmp_path / "shard_00000.json").read_text())["requested"]
    assert "000000003" not in keys  # the salt


def test_resume_recomputes_only_missing_shard(tmp_path, monkeypatch):
    kw = dict(num_molecules=4, shard_size=2, processes=0, smiles=TINY, progress=False, max_steps=60)
    s1 = gen.generate_dataset(tmp_path, **kw)
    assert s1["shards_written"] == 2
    (tmp_path / "shard_00001.lmdb").unlink()
    before = _read_shard(tmp_path / "shard_00000.lmdb")

    calls: list[str] = []
    real = gen.relax_trajectory

    def counting(smiles, seed, **k):
        calls.append(smiles)
        return real(smiles, seed, **k)

    monkeypatch.setattr(gen, "relax_trajectory", counting)
    s2 = gen.generate_dataset(tmp_path, **kw)
    assert s2["shards_reused"] == 1 and s2["shards_written"] == 1
    # Accepted seeds are indices 0, 1, 2, 4 (3 is a salt); shard 1 holds 2 and 4.
    assert calls == ["C#N", "CC"]
    assert _read_shard(tmp_path / "shard_00000.lmdb") == before
    # Same parameters or nothing: a restart with other settings is refused.
    with pytest.raises(ValueError, match="other parameters"):
        gen.generate_dataset(tmp_path, **{**kw, "seed": 1})


def test_failure_is_recorded(tmp_path, monkeypatch):
    real = gen.relax_trajectory

    def flaky(smiles, seed, **k):
        if smiles == "CO":
            raise RuntimeError("SCF did not converge (simulated)")
        return real(smiles, seed, **k)

    monkeypatch.setattr(gen, "relax_trajectory", flaky)
    s = gen.generate_dataset(
        tmp_path,
        num_molecules=3,
        shard_size=3,
        processes=0,
        smiles=TINY,
        progress=False,
        max_steps=60,
    )
    assert s["molecules_failed"] == 1 and s["molecules_written"] == 2
    assert "SCF did not converge" in s["failures"]["000000001"]
    shard = json.loads((tmp_path / "shard_00000.json").read_text())
    assert "000000001" in shard["failed"]
    assert b"000000001" not in _read_shard(tmp_path / "shard_00000.lmdb")


def test_parallel_matches_serial(tmp_path):
    kw = dict(num_molecules=3, shard_size=3, smiles=TINY, progress=False, max_steps=60)
    gen.generate_dataset(tmp_path / "serial", processes=0, **kw)
    gen.generate_dataset(tmp_path / "pool", processes=2, **kw)
    a = _read_shard(tmp_path / "serial" / "shard_00000.lmdb")
    b = _read_shard(tmp_path / "pool" / "shard_00000.lmdb")
    assert a == b


def test_float32_precision_rounds_geometry_and_gradient_only():
    from tdn_data.generate import relax_trajectory

    full = relax_trajectory("CO", 3, max_steps=3)
    half = relax_trajectory("CO", 3, max_steps=3, precision="float32")
    assert len(full) == len(half)
    for a, b in zip(full, half, strict=True):
        xs = [atom[c] for atom in b["coordinates"] for c in "xyz"]
        gs = [atom[c] for atom in b["gradient"] for c in ("dx", "dy", "dz")]
        assert all(float(np.float32(v)) == v for v in xs + gs)
        ref = [atom[c] for atom in a["coordinates"] for c in "xyz"]
        assert np.allclose(xs, ref, rtol=1e-6, atol=1e-6)
        assert abs(a["energy"] - b["energy"]) < 1e-6  # Hartree; same geometry to 1e-6 Å
    with pytest.raises(ValueError, match="precision: expected"):
        relax_trajectory("CO", 3, precision="half")


_needs_qm9 = pytest.mark.skipif(
    importlib.util.find_spec("qm9pack") is None, reason="qm9pack (tdn-data[qm9]) not installed"
)


@_needs_qm9
def test_qm9_source(tmp_path):
    from tdn_data.qm9 import QM9Dataset

    s = gen.generate_dataset(
        tmp_path,
        num_molecules=2,
        shard_size=2,
        processes=0,
        source="qm9",
        progress=False,
        max_steps=60,
    )
    assert s["molecules_written"] == 2 and s["molecules_failed"] == 0
    assert s["seeds_total"] < 1000  # a partial read, not the whole table
    assert json.loads((tmp_path / "config.json").read_text())["source"] == "qm9pack QM9"
    shard = _read_shard(tmp_path / "shard_00000.lmdb")
    assert list(shard) == [b"000000001", b"000000002"]  # QM9 indices: methane, ammonia
    ref = QM9Dataset(limit=2)
    for key, item in zip(shard, ref, strict=True):
        v = shard[key]
        assert v["meta"]["source"] == "qm9pack QM9"
        assert v["meta"]["qm9_index"] == int(key) == int(item.mol_id)
        assert "smiles" not in v["meta"]
        steps = v["DFT_1st"]
        first = np.array([[a["x"], a["y"], a["z"]] for a in steps[0]["coordinates"]])
        qm9_pos = item.pos.numpy()
        # start = QM9 geometry + the seeded displacement (0.1 Å std per component)
        seed = int(gen._molecule_seed(0, int(key)).generate_state(1)[0])
        np.testing.assert_array_equal(first, gen.displace(qm9_pos, seed, 0.1))
        assert np.abs(first - qm9_pos).max() < 0.5 and not np.array_equal(first, qm9_pos)
        assert [a["atom"] for a in steps[0]["coordinates"]] == [
            {1: "H", 6: "C", 7: "N"}[int(z)] for z in item.z
        ]
        assert all(a["charge"] == 0 for a in steps[0]["coordinates"])
        energies = [st["energy"] for st in steps]
        assert len(steps) >= 2 and energies[-1] < energies[0]


@_needs_qm9
def test_mixing_sources_is_refused(tmp_path):
    kw = dict(num_molecules=1, shard_size=1, processes=0, progress=False, max_steps=5)
    gen.generate_dataset(tmp_path / "q", source="qm9", **kw)
    with pytest.raises(ValueError, match="other parameters"):
        gen.generate_dataset(tmp_path / "q", smiles=TINY, **kw)
    with pytest.raises(ValueError, match="other parameters"):
        gen.generate_dataset(tmp_path / "q", **{**kw, "num_molecules": 0})
    gen.generate_dataset(tmp_path / "n", smiles=TINY, **kw)
    with pytest.raises(ValueError, match="other parameters"):
        gen.generate_dataset(tmp_path / "n", source="qm9", **kw)
    with pytest.raises(ValueError, match="source: expected"):
        gen.generate_dataset(tmp_path / "x", source="pubchem", **kw)
    with pytest.raises(ValueError, match="needs source='nci'"):
        gen.generate_dataset(tmp_path / "x", source="qm9", smiles=TINY, **kw)


def test_relax_atoms_matches_relax_trajectory():
    """relax_trajectory is ETKDG + relax_atoms: same steps from the same embedding."""
    symbols, charges, pos = gen.etkdg_conformer("CO", 3)
    direct = gen.relax_atoms(symbols, charges, pos, 3, max_steps=3)
    assert direct == gen.relax_trajectory("CO", 3, max_steps=3)
    first = np.array([[a["x"], a["y"], a["z"]] for a in direct[0]["coordinates"]])
    np.testing.assert_array_equal(first, gen.embed("CO", 3)[2])
    with pytest.raises(ValueError, match="expected"):
        gen.relax_atoms(symbols[:-1], charges, pos, 3)
