"""``tdn data inspect|convert|generate``."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tdn_cli.main import main
from tdn_data import load_dataset


def test_inspect_embedded_tiny(capsys, tmp_path):
    js = tmp_path / "stats.json"
    assert main(["data", "inspect", "embedded-tiny", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "structures" in out and "elements" in out and "energy_per_atom_eV" in out
    stats = json.loads(js.read_text())
    ds = load_dataset("embedded-tiny")
    assert stats["structures"] == len(ds)
    assert stats["molecules"] == 5
    assert sum(s["molecules"] for s in stats["splits"].values()) == 5
    assert set(stats["elements"]) >= {"H", "C"}
    assert stats["force_component_eV_per_A"]["max_abs"] > 0


def test_convert_round_trips(capsys, tmp_path):
    xyz, lmdb = tmp_path / "tiny.extxyz", tmp_path / "tiny.lmdb"
    assert main(["data", "convert", "embedded-tiny", str(xyz)]) == 0
    assert main(["data", "convert", str(xyz), str(lmdb), "--mol-id-key", "mol_id"]) == 0
    original = load_dataset("embedded-tiny")
    for path in (xyz, lmdb):
        copy = load_dataset(path)
        assert len(copy) == len(original)
        energies = torch.cat([copy[i].energy for i in range(len(copy))])
        expected = torch.cat([original[i].energy for i in range(len(original))])
        torch.testing.assert_close(energies, expected, rtol=1e-10, atol=1e-8)
        i = len(copy) // 2
        torch.testing.assert_close(copy[i].forces, original[i].forces, rtol=1e-8, atol=1e-8)
    assert copy[i].mol_id == original[i].mol_id  # the LMDB keys are the original ones
    assert "wrote" in capsys.readouterr().out


def test_convert_split(capsys, tmp_path):
    xyz = tmp_path / "test.xyz"
    assert main(["data", "convert", "embedded-tiny", str(xyz), "--split", "test"]) == 0
    assert len(load_dataset(xyz)) == len(load_dataset("embedded-tiny", split="test"))


def summary(out: str) -> dict:
    """The JSON summary that ends the output (the generator logs a line before it)."""
    return json.loads("{" + ("\n" + out).split("\n{\n", 1)[1])


@pytest.mark.skipif(
    importlib.util.find_spec("tblite") is None or importlib.util.find_spec("rdkit") is None,
    reason="needs tdn-data[generate]",
)
def test_generate_and_resume(capsys, tmp_path):
    argv = ["data", "generate", str(tmp_path / "set"), "--molecules", "1", "--shard-size",
            "1", "--processes", "0", "--max-steps", "3", "--max-atoms", "8"]  # fmt: skip
    assert main(argv) == 0
    assert summary(capsys.readouterr().out)["shards_written"] == 1
    assert main(argv) == 0  # resumes: the complete shard is reused
    assert summary(capsys.readouterr().out)["shards_reused"] == 1
    assert len(load_dataset(tmp_path / "set")) >= 1
