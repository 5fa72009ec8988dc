"""LMDB values in the PubChemQCR format: gzip-compressed pickles of plain containers.

Pickles execute code when loaded, so values are read with :class:`SafeUnpickler`,
which admits only plain containers and numbers and refuses every global lookup
(a crafted value that tries to import or call anything raises UnsafePickleError
before anything runs). Shards are written to a temporary directory and renamed into
place, so a killed writer never leaves a half-written shard.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import lmdb


class UnsafePickleError(pickle.UnpicklingError):
    """A stored value tried to load a global (import, call, or construct an object)."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for plain data: dict, list, tuple, str, bytes, int, float, bool, None.

    Those types need no global lookup in pickle protocols 2..5; every global (and so
    every import, call or object construction) is refused.
    """

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"refused to load global {module}.{name}")


def encode_value(value: dict) -> bytes:
    """gzip(pickle(value)), the PubChemQCR value encoding (protocol 4: plain types only)."""
    return gzip.compress(pickle.dumps(value, protocol=4), mtime=0)


def decode_value(raw: bytes, *, key: bytes | str = b"?", source: str | os.PathLike = "?") -> dict:
    """Inverse of :func:`encode_value`, through :class:`SafeUnpickler`.

    Raises:
        UnsafePickleError: the value tries to load a global (names file and key).
        ValueError: truncated or corrupt gzip/pickle data (names file and key).
    """
    key_text = key.decode(errors="replace") if isinstance(key, bytes) else key
    try:
        payload = gzip.decompress(raw)
        return SafeUnpickler(io.BytesIO(payload)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: key {key_text!r}: {exc}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ValueError(
            f"{source}: key {key_text!r}: corrupt or truncated value ({type(exc).__name__}: {exc})"
        ) from None


def write_lmdb(
    path: str | os.PathLike, entries: Iterable[tuple[bytes, dict]], *, map_size: int = 1 << 34
) -> int:
    """Write ``(key, value)`` entries into a new LMDB file at ``path`` atomically.

    The database is built in a temporary directory beside ``path`` and renamed into
    place when complete (an existing ``path`` is replaced). Uses ``subdir=False``:
    one data file (plus its ``-lock`` file while open). Returns the entry count.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmpdir / path.name
        env = lmdb.open(str(tmp), map_size=map_size, subdir=False, lock=False)
        n = 0
        try:
            with env.begin(write=True) as txn:
                for key, value in entries:
                    txn.put(key, encode_value(value))
                    n += 1
            env.sync(True)
        finally:
            env.close()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return n
