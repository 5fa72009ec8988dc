"""The PubChemQCR value encoding: round trip, refusal of code, clear errors, atomic writes."""

from __future__ import annotations

import gzip
import os
import pickle

import lmdb
import pytest

from tdn_data._lmdb_io import UnsafePickleError, decode_value, encode_value, write_lmdb

VALUE = {
    "pm3": None,
    "DFT_1st": [{"energy": -40.5, "coordinates": [{"atom": "C", "x": 0.0, "y": 0.1, "z": 0.2}]}],
    "flags": (True, 3, b"raw"),
}


class _WritesMarker:
    """Unpickling this would create the file at ``path`` (if the unpickler let it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def read_all(path) -> dict:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {k: decode_value(v, key=k, source=path) for k, v in txn.cursor()}
    finally:
        env.close()


def test_round_trip_is_exact_and_deterministic(tmp_path):
    assert decode_value(encode_value(VALUE)) == VALUE
    assert encode_value(VALUE) == encode_value(VALUE)  # gzip without a timestamp
    path = tmp_path / "shard.lmdb"
    assert write_lmdb(path, [(b"000000001", VALUE), (b"000000002", {"pm3": None})]) == 2
    assert read_all(path) == {b"000000001": VALUE, b"000000002": {"pm3": None}}


def test_crafted_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    raw = gzip.compress(pickle.dumps({"DFT_1st": _WritesMarker(str(marker))}))
    with pytest.raises(UnsafePickleError, match=r"data\.lmdb: key '000000007': refused .*open"):
        decode_value(raw, key=b"000000007", source="data.lmdb")
    assert not marker.exists()


def test_truncated_value_names_file_and_key():
    raw = encode_value(VALUE)
    with pytest.raises(ValueError, match=r"s\.lmdb: key '42': corrupt or truncated"):
        decode_value(raw[: len(raw) // 2], key=b"42", source="s.lmdb")


def test_write_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "shard.lmdb"
    write_lmdb(path, [(b"a", {"v": 1})])

    def failing():
        yield b"b", {"v": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_lmdb(path, failing())
    assert read_all(path) == {b"a": {"v": 1}}  # the old shard is intact
    assert sorted(os.listdir(tmp_path)) == ["shard.lmdb"]
