"""OC20/OC22 frames from fairchem's two LMDB layouts (one ``subdir=False`` LMDB file
each; a folder holds several), as a lazy map-style Dataset:

- ``"graph"``: fairchem's older S2EF/IS2RE LMDBs. Key ``b"0"``, ``b"1"``, ... (ascii
  integers from 0) -> ``pickle.dumps(torch_geometric Data, protocol=-1)``, plus an optional
  ``b"length"`` key holding a pickled int. Data attributes: ``atomic_numbers`` (float
  [N]), ``pos`` [N, 3] Å, ``cell`` [1, 3, 3] Å, ``y`` eV (OC20 S2EF: adsorption energy,
  i.e. already referenced; OC22: total energy), ``force`` [N, 3] eV/Å, ``natoms``,
  ``fixed``, ``tags``, ``sid``, ``fid``. Values are pickles, so they are read by
  :class:`GraphUnpickler`, which admits only an allow-list of globals and rebuilds the
  PyG objects as inert stand-ins (no PyG code runs).
- ``"aselmdb"``: fairchem's LMDB-backed ``ase.db``. Key ``b"<id>"`` (ids 1..nextid-1
  minus deleted ones) -> ``zlib.compress(JSON of the row dict)``, the row holding
  ``numbers``, ``positions``, ``cell``, ``pbc``, ``energy``, ``forces``, ``data``,
  ``key_value_pairs``, ...; reserved keys ``b"nextid"``, ``b"deleted_ids"``,
  ``b"metadata"`` (zlib JSON too). Arrays are plain nested lists (orjson writer) or
  ASE's ``{"__ndarray__": [shape, dtype, flat]}`` (older writer); both are decoded with
  the standard ``json`` module, never pickle and never ASE object construction.

Environments are opened lazily per process with the shared helper of
:mod:`tdn_data.pubchemqcr` (read-only, no lock, reopened after a fork).
"""

from __future__ import annotations

import bisect
import collections
import io
import json
import os
import pickle
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from tdn_data._lmdb_io import SafeUnpickler, UnsafePickleError
from tdn_data._sample import make_sample
from tdn_data.pubchemqcr import _open_env

__all__ = [
    "FORMS",
    "GraphUnpickler",
    "OC20LmdbDataset",
    "decode_aselmdb_value",
    "decode_graph_value",
]

FORMS = ("graph", "aselmdb")
SUFFIXES = (".lmdb", ".aselmdb")
LENGTH_KEY = b"length"
ASE_RESERVED_KEYS = (b"nextid", b"deleted_ids", b"metadata")
DEFAULT_ENERGY_KEYS = {"graph": ("energy", "y"), "aselmdb": ("energy",)}
DEFAULT_FORCES_KEYS = {"graph": ("forces", "force"), "aselmdb": ("forces",)}


# --------------------------------------------------------------------- graph form
class _PygStandIn:
    """Inert stand-in for a pickled PyG class: records the pickled state, runs nothing."""

    pyg_name = "?"  # set per subclass by _stand_in

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(name: str) -> type:
    return type(f"PygStandIn_{name}", (_PygStandIn,), {"pyg_name": name})


_PYG_CLASSES = {
    name: _stand_in(name)
    for name in ("Data", "DataEdgeAttr", "DataTensorAttr", "GlobalStorage", "BaseStorage")
}
_NP_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved numpy.core


def _check_dtype(dt: np.dtype) -> np.dtype:
    # object arrays would unpickle arbitrary elements; fairchem never stores them
    if not isinstance(dt, np.dtype) or dt.hasobject:
        raise UnsafePickleError(f"refused numpy dtype {dt!r} (object dtypes are not allowed)")
    return dt


def _np_dtype(*args: Any) -> np.dtype:
    return _check_dtype(np.dtype(*args))


class _NdarrayToken:
    """What the pickle gets for ``numpy.ndarray``: only a marker for ``_reconstruct``
    (the real class, called through REDUCE, could build arrays of any dtype)."""


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NdarrayToken:
        raise UnsafePickleError(f"refused numpy array subtype {subtype!r}")
    return _NP_CORE.multiarray._reconstruct(np.ndarray, shape, dtype)


def _np_scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar payload must be bytes")
    return _NP_CORE.multiarray.scalar(_check_dtype(dtype), data)


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: str, axis_order: Any = None) -> Any:
    arr = np.frombuffer(bytes(buf), dtype=_check_dtype(dtype)).copy()
    if order == "K" and axis_order is not None:
        return arr.reshape(shape, order="C").transpose(axis_order)
    return arr.reshape(shape, order=order)


def _load_storage(payload: Any) -> Any:
    """``torch.storage._load_from_bytes`` replacement: the nested ``torch.save`` bytes go
    through torch's weights-only unpickler instead of a full ``torch.load``."""
    if not isinstance(payload, bytes):
        raise UnsafePickleError(f"storage payload must be bytes, got {type(payload).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation noise
            storage = torch.load(io.BytesIO(payload), weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            msg = f"tensor storage refused by the weights-only loader: {exc}"
            raise UnsafePickleError(msg) from None
        raise ValueError(f"corrupt tensor storage ({exc})") from None
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"tensor storage decoded to {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    """``torch._utils._rebuild_tensor_v2`` with its arguments checked (hooks are dropped:
    a pickled hook would be a callable run in backward)."""
    if not isinstance(storage, torch.storage.TypedStorage) or not isinstance(
        storage._untyped_storage, torch.UntypedStorage
    ):
        raise UnsafePickleError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or not all(isinstance(v, int) for v in (*size, *stride)):
        raise UnsafePickleError("tensor rebuild arguments are not integers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1"); nothing else passes
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # protocol 0/1 pickles build objects via copyreg._reconstructor(cls, object, None)
    if not (isinstance(cls, type) and issubclass(cls, _PygStandIn)) or base is not object:
        raise UnsafePickleError(f"refused copyreg._reconstructor({cls!r}, {base!r})")
    return cls.__new__(cls)


_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch_geometric.data.data", n): c for n, c in _PYG_CLASSES.items()},
    **{("torch_geometric.data.storage", n): c for n, c in _PYG_CLASSES.items()},
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # protocol 0/1 pickles name them Python-2 style (pickle's fix_imports)
    **{(m, "_reconstructor"): _reconstructor for m in ("copyreg", "copy_reg")},
    **{(m, "object"): object for m in ("builtins", "__builtin__")},
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NdarrayToken,
    **{(f"numpy.{m}.multiarray", "_reconstruct"): _np_reconstruct for m in ("core", "_core")},
    **{(f"numpy.{m}.multiarray", "scalar"): _np_scalar for m in ("core", "_core")},
    **{(f"numpy.{m}.numeric", "_frombuffer"): _np_frombuffer for m in ("core", "_core")},
}


class GraphUnpickler(SafeUnpickler):
    """Unpickler for fairchem's pickled PyG ``Data`` values.

    Admits only the globals in an explicit allow-list: the PyG ``Data``/storage classes
    (old and new layouts), mapped to inert stand-ins; tensor rebuilding (storages are
    decoded by torch's weights-only loader); ``OrderedDict``; plain numpy arrays and
    scalars. Everything else raises :class:`UnsafePickleError` before it is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load global {module}.{name}") from None


def _where(source: Any, key: bytes | str) -> str:
    return f"{source}: key {key.decode(errors='replace') if isinstance(key, bytes) else key!r}"


def decode_graph_value(raw: bytes, *, key: bytes | str = b"?", source: Any = "?") -> dict:
    """The attribute dict of one pickled PyG ``Data`` value (tensors stay tensors).

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (never run).
        ValueError: corrupt value or not a ``Data`` object (names file and key).
    """
    where = _where(source, key)
    try:
        obj = GraphUnpickler(io.BytesIO(raw)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{where}: {exc}") from None
    except Exception as exc:  # truncated pickles fail in many ways
        raise ValueError(f"{where}: corrupt value ({type(exc).__name__}: {exc})") from None
    state = getattr(obj, "state", None) if isinstance(obj, _PygStandIn) else obj
    if isinstance(obj, _PygStandIn) and obj.pyg_name != "Data":
        raise ValueError(f"{where}: value is a PyG {obj.pyg_name}, not Data")
    if isinstance(state, dict) and "_store" in state:  # PyG >= 2: attributes in _store
        store = state["_store"]
        store_state = getattr(store, "state", None) if isinstance(store, _PygStandIn) else None
        state = store_state.get("_mapping") if isinstance(store_state, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{where}: value is not a torch_geometric Data object")
    return state  # PyG 1.x pickles its attributes straight in __dict__


# ------------------------------------------------------------------- ASE-LMDB form
def _json_hook(dct: dict) -> Any:
    """Decode ASE's array encoding only; other tagged objects stay plain dicts."""
    if "__ndarray__" in dct:
        shape, dtype, flat = dct["__ndarray__"]
        dt = np.dtype(dtype)
        if dt.kind not in "biufc":
            raise ValueError(f"refused ndarray of dtype {dtype!r}")
        real = np.empty(0, dtype=dt).real.dtype
        arr = np.asarray(flat, dtype=real)
        return (arr.view(dt) if dt.kind == "c" else arr).reshape(shape)
    return dct


def decode_aselmdb_value(raw: bytes, *, key: bytes | str = b"?", source: Any = "?") -> Any:
    """``json.loads(zlib.decompress(raw))`` with ASE ``__ndarray__`` arrays decoded.

    Raises:
        ValueError: not zlib-compressed JSON (names file and key).
    """
    try:
        return json.loads(zlib.decompress(raw), object_hook=_json_hook)
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{_where(source, key)}: corrupt value, not zlib-compressed JSON "
            f"({type(exc).__name__}: {exc})"
        ) from None


# ------------------------------------------------------------------------ helpers
def _lmdb_files(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"OC20 LMDB path {str(path)!r} does not exist")
    if not path.is_dir() or (path / "data.mdb").exists():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"OC20 folder {str(path)!r} holds no *.lmdb or *.aselmdb files")
    return files


def _detect_form(path: Path, txn) -> str:
    """``'aselmdb'`` by extension or an ase.db reserved key, else by the first value's
    leading byte: pickle protocol >= 2 starts with 0x80, zlib with 0x78."""
    if path.suffix == ".aselmdb" or txn.get(b"nextid") is not None:
        return "aselmdb"
    for key, raw in txn.cursor():
        if key == LENGTH_KEY or key in ASE_RESERVED_KEYS:
            continue
        if raw[:1] == b"\x80":
            return "graph"
        if raw[:1] == b"\x78":
            return "aselmdb"
        raise ValueError(
            f"{_where(path, key)}: neither a pickle nor zlib data; pass form='graph' or 'aselmdb'"
        )
    return "graph"  # empty file: no entries either way


def _graph_keys(path: Path, txn, n_entries: int) -> np.ndarray:
    raw = txn.get(LENGTH_KEY)
    if raw is None:
        return np.arange(n_entries, dtype=np.int64)
    try:
        n = SafeUnpickler(io.BytesIO(raw)).load()  # a plain int: no global needed
    except Exception as exc:
        raise ValueError(f"{_where(path, LENGTH_KEY)}: unreadable ({exc})") from None
    if not isinstance(n, int) or not 0 <= n <= n_entries - 1:
        raise ValueError(
            f"{_where(path, LENGTH_KEY)}: {n!r} but the file has {n_entries - 1} frames"
        )
    return np.arange(n, dtype=np.int64)


def _ase_ids(path: Path, txn) -> tuple[np.ndarray, int]:
    """(row ids, deleted count): ids 1..nextid-1 minus ``deleted_ids``, as fairchem does."""
    raw = txn.get(b"nextid")
    if raw is None:  # no row was ever written
        return np.zeros(0, dtype=np.int64), 0
    nextid = decode_aselmdb_value(raw, key=b"nextid", source=path)
    raw = txn.get(b"deleted_ids")
    deleted = decode_aselmdb_value(raw, key=b"deleted_ids", source=path) if raw else []
    if not isinstance(nextid, int) or not isinstance(deleted, list):
        raise ValueError(f"{path}: malformed nextid {nextid!r} or deleted_ids")
    ids = np.arange(1, nextid, dtype=np.int64)
    return ids[~np.isin(ids, np.asarray(deleted, dtype=np.int64))], len(deleted)


def _plain(value: Any) -> Any:
    """Tensor -> numpy; everything else unchanged."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _scalar(value: Any) -> Any:
    """A one-element tensor/array/list (sid, fid) -> its Python value."""
    value = _plain(value)
    if isinstance(value, np.ndarray | np.generic | list | tuple) and np.size(value) == 1:
        return np.asarray(value).reshape(-1)[0].item()
    return value


def _first(dicts: tuple[dict, ...], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        for d in dicts:
            if isinstance(d, dict) and d.get(k) is not None:
                return k, d[k]
    return None, None


class OC20LmdbDataset(Dataset):
    """OC20/OC22 frames from fairchem LMDB files: one item per stored frame.

    Args:
        path: one ``.lmdb``/``.aselmdb`` file or a folder of them (sorted by name).
        form: ``"graph"`` (pickled PyG Data), ``"aselmdb"`` (ase.db rows) or None to
            detect per file (``.aselmdb`` extension, reserved key or first value).
        dtype: floating dtype of the items.
        energy_key: attribute/row key of the energy (eV). Default: graph ``energy`` then
            ``y``; aselmdb ``energy`` (row, then ``data``, then ``key_value_pairs``).
        forces_key: key of the forces (eV/Å). Default: graph ``forces`` then ``force``;
            aselmdb ``forces``.

    Items (see :func:`tdn_data._sample.make_sample`) always carry ``cell`` [1, 3, 3] Å
    and ``pbc`` [1, 3] (stored pbc, else all True; a frame without a cell gets a zero
    cell and pbc False). ``mol_id`` = ``sid`` and ``step`` = ``fid`` where stored
    (graph: attributes; aselmdb: ``data`` then ``key_value_pairs``), else
    ``"<file>:<key>"`` and 0. Energies are as fairchem stored them (OC20 S2EF ``y`` is
    an adsorption energy; OC22 and ase rows hold total energies).

    Raises:
        FileNotFoundError: missing path or a folder without LMDB files.
        ValueError: unreadable LMDB, undetectable form, bad ``length`` key, no frames,
            or (on access) a corrupt or malformed value; messages name file and key.
        UnsafePickleError: a pickled value names a global outside the allow-list.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        form: str | None = None,
        dtype: torch.dtype = torch.float64,
        energy_key: str | None = None,
        forces_key: str | None = None,
    ):
        if form not in (None, *FORMS):
            raise ValueError(f"form={form!r}: use None (auto), 'graph' or 'aselmdb'")
        self.path = Path(path)
        self.dtype, self.energy_key, self.forces_key = dtype, energy_key, forces_key
        self.files = _lmdb_files(self.path)
        self.forms: list[str] = []
        self._keys: list[np.ndarray] = []
        self.skipped: dict[str, int] = {}
        """Rows not served, by reason (``deleted_rows``: ids listed in ``deleted_ids``)."""
        for f in self.files:
            env = _open_env(f)
            with env.begin() as txn:
                fform = form or _detect_form(f, txn)
                if fform == "graph":
                    keys = _graph_keys(f, txn, env.stat()["entries"])
                else:
                    keys, n_deleted = _ase_ids(f, txn)
                    if n_deleted:
                        self.skipped["deleted_rows"] = (
                            self.skipped.get("deleted_rows", 0) + n_deleted
                        )
            self.forms.append(fform)
            self._keys.append(keys)
        self._cum = np.cumsum([len(k) for k in self._keys]).tolist()
        if not self._cum or self._cum[-1] == 0:
            raise ValueError(f"{self.path}: no frames in {[str(f) for f in self.files]}")

    def __len__(self) -> int:
        return int(self._cum[-1])

    def locate(self, idx: int) -> tuple[int, bytes]:
        """(index into :attr:`files`, LMDB key) of item ``idx``."""
        n = len(self)
        idx = int(idx) + (n if int(idx) < 0 else 0)
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} frames")
        i = bisect.bisect_right(self._cum, idx)
        j = idx - (self._cum[i - 1] if i else 0)
        return i, str(int(self._keys[i][j])).encode("ascii")

    def raw(self, idx: int) -> dict:
        """The decoded attribute dict (graph) or row dict (aselmdb) of item ``idx``."""
        return self._record(*self.locate(idx))

    def _record(self, i: int, key: bytes) -> dict:
        f = self.files[i]
        with _open_env(f).begin() as txn:
            raw = txn.get(key)
        if raw is None:
            raise KeyError(f"{_where(f, key)}: missing (the file changed since it was opened?)")
        decode = decode_graph_value if self.forms[i] == "graph" else decode_aselmdb_value
        value = decode(raw, key=key, source=f)
        if not isinstance(value, dict):
            raise ValueError(f"{_where(f, key)}: value is a {type(value).__name__}, not a record")
        return value

    def __getitem__(self, idx: int) -> Data:
        i, key = self.locate(idx)
        f, form, rec = self.files[i], self.forms[i], self._record(i, key)
        where = _where(f, key)
        if form == "graph":
            z_key, z = _first((rec,), ("atomic_numbers", "z"))
            pos, cell, pbc = rec.get("pos"), rec.get("cell"), rec.get("pbc")
            look: tuple[dict, ...] = (rec,)
            ids = (rec,)
        else:
            z_key, z = _first((rec,), ("numbers",))
            pos, cell, pbc = rec.get("positions"), rec.get("cell"), rec.get("pbc")
            look = (rec, rec.get("data") or {}, rec.get("key_value_pairs") or {})
            ids = (rec.get("data") or {}, rec.get("key_value_pairs") or {})
        e_keys = (self.energy_key,) if self.energy_key else DEFAULT_ENERGY_KEYS[form]
        f_keys = (self.forces_key,) if self.forces_key else DEFAULT_FORCES_KEYS[form]
        _, energy = _first(look, e_keys)
        _, forces = _first(look, f_keys)
        required = (("atomic numbers", z, ()), ("positions", pos, ()),
                    ("energy", energy, e_keys), ("forces", forces, f_keys))  # fmt: skip
        for name, value, tried in required:
            if value is None:
                hint = f" (looked for {list(tried)}; pass energy_key/forces_key)" if tried else ""
                raise ValueError(f"{where}: no {name}{hint}; keys: {sorted(rec)}")
        try:
            z_arr = np.asarray(_plain(z), dtype=np.float64).reshape(-1)
            pos_arr = np.asarray(_plain(pos), dtype=np.float64)
            forces_arr = np.asarray(_plain(forces), dtype=np.float64)
            energy_val = np.asarray(_plain(energy), dtype=np.float64)
            if isinstance(cell, dict):  # ASE's tagged Cell object: {"array": ...}
                cell = cell.get("array")
            cell_arr = None if cell is None else np.asarray(_plain(cell), dtype=np.float64)
            pbc_arr = None if pbc is None else np.asarray(_plain(pbc), dtype=bool).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: non-numeric field ({exc})") from None
        # OC20 stores atomic numbers as floats; anything fractional is corruption
        if not np.all(np.isfinite(z_arr)) or not np.all(z_arr == np.round(z_arr)):
            raise ValueError(f"{where}: {z_key} are not integers")
        if cell_arr is None or not np.any(cell_arr):
            cell_arr, pbc_arr = np.zeros((3, 3)), np.zeros(3, dtype=bool)
        else:
            if cell_arr.size != 9:
                raise ValueError(f"{where}: cell has shape {cell_arr.shape}, expected [1, 3, 3]")
            cell_arr = cell_arr.reshape(3, 3)
            pbc_arr = np.ones(3, dtype=bool) if pbc_arr is None else pbc_arr
        sid = _scalar(_first(ids, ("sid",))[1])
        fid = _scalar(_first(ids, ("fid",))[1])
        try:
            step = 0 if fid is None else int(fid)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: fid {fid!r} is not an integer") from None
        sample = make_sample(
            z_arr.astype(np.int64), pos_arr, energy_val, forces_arr,
            cell=cell_arr, pbc=pbc_arr,
            mol_id=f"{f.name}:{key.decode()}" if sid is None else str(sid),
            step=step, source=where, dtype=self.dtype,
        )  # fmt: skip
        # make_sample omits cell/pbc when non-periodic; keep one schema for Batch
        if "cell" not in sample:
            sample.cell = torch.as_tensor(cell_arr, dtype=self.dtype).unsqueeze(0)
            sample.pbc = torch.as_tensor(pbc_arr.reshape(3)).unsqueeze(0)
        return sample

    def summary(self) -> str:
        """One line: path, files per form, frames, skipped."""
        counts = {fm: self.forms.count(fm) for fm in FORMS if fm in self.forms}
        return f"OC20 LMDB {self.path}: {len(self)} frames, files {counts}; skipped {self.skipped}"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"
