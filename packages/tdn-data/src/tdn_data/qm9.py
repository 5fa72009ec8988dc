"""QM9 (B3LYP/6-31G(2df,p), equilibrium geometries, energies only) from the ``qm9pack`` package.

``qm9pack`` (MIT, PyPI; install with ``pip install 'tdn-data[qm9]'``) ships the QM9
table as CSV files in ``qm9pack/data/``: ``qm9_part1.csv``, ``qm9_part2.csv`` and
``qm9_part3.csv``, one row per molecule (130,831 in qm9pack 1.0.3), with columns
``Index`` (the QM9 number, 1..133885 with the 3,054 unconverged molecules missing),
``N_atoms``, ``Elements`` (``"['C','H',...]"``), ``XYZ_Ang`` (``"[[x,y,z],...]"``, Å)
and the energies in Hartree (the ``_au`` columns; qm9pack's ``helper`` documents
them as atomic units, and methane's U0 = -40.47893 Ha matches the original release).

We never import qm9pack's Python modules (they need ``pkg_resources`` and pandas):
the package directory is found with ``importlib.util.find_spec`` and the CSV files are
read with the standard ``csv`` module, once per process (a module-level cache).

Every item is one molecule at its equilibrium geometry: ``z``, ``pos`` (Å), ``energy``
([1], eV, the chosen ``target``), ``mol_id`` (the QM9 index as a string), ``step`` 0
and ``source``. There are no forces (the geometries are minima, and QM9 stores no
gradients): items have no ``forces`` attribute.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from ._sample import make_sample
from ._units import HARTREE_EV

__all__ = ["QM9_TARGETS", "QM9Dataset", "QM9Unavailable"]

SPLITS = ("train", "val", "test")

QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
"""The CSV files of qm9pack's ``data`` folder that hold the molecules, in order."""

QM9_TARGETS: dict[str, str] = {
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",  # sic: qm9pack's column name
    "G": "GibbsFreeEnergy_298K_au",
    "ZPVE": "ZPVE_au",
    "HOMO": "HOMO_au",
    "LUMO": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
}
"""Target name -> qm9pack column; every one is in Hartree and is returned in eV.

U0/U: internal energy at 0 K / 298.15 K; H, G: enthalpy and Gibbs free energy at
298.15 K; ZPVE: zero-point vibrational energy; HOMO, LUMO, gap: orbital energies.
"""

_SYMBOL_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_GEOMETRY_COLUMNS = ("Index", "N_atoms", "Elements", "XYZ_Ang")
_INSTALL_HINT = "pip install 'tdn-data[qm9]'"


class QM9Unavailable(ImportError):
    """qm9pack (the optional ``qm9`` extra) is not installed or holds no QM9 data."""


class _Table(NamedTuple):
    index: np.ndarray  # [M] int64, QM9 numbers
    file_of: np.ndarray  # [M] int8, position in QM9_FILES
    offsets: np.ndarray  # [M + 1] int64, atom ranges
    z: np.ndarray  # [sum N] int64
    pos: np.ndarray  # [sum N, 3] float64, Å
    energies: np.ndarray  # [M, len(QM9_TARGETS)] float64, eV
    data_dir: Path
    load_seconds: float


_TABLES: dict[tuple[str, int | None], _Table] = {}
_LOCK = threading.Lock()


def qm9pack_data_dir() -> Path:
    """qm9pack's ``data`` folder, found without importing qm9pack.

    Raises:
        QM9Unavailable: qm9pack is not installed, or its data files are missing.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9Unavailable(
            f"QM9 needs the optional package qm9pack, which is not installed: {_INSTALL_HINT}"
        )
    for root in spec.submodule_search_locations:
        data = Path(root) / "data"
        if all((data / f).is_file() for f in QM9_FILES):
            return data
    raise QM9Unavailable(
        f"qm9pack is installed at {list(spec.submodule_search_locations)} but its data "
        f"files {list(QM9_FILES)} are missing; reinstall it: {_INSTALL_HINT}"
    )


def _parse_elements(elements: list[str], path: Path) -> np.ndarray:
    """``["['C','H']", ...]`` -> atomic numbers, all rows concatenated."""
    if not elements:
        return np.zeros(0, dtype=np.int64)
    symbols = ",".join(elements).translate(str.maketrans("", "", "[]' ")).split(",")
    try:
        return np.fromiter((_SYMBOL_Z[s] for s in symbols), dtype=np.int64, count=len(symbols))
    except KeyError as err:
        raise ValueError(f"{path}: element {err} outside QM9's H, C, N, O, F") from err


def _parse_coords(coords: list[str], expected: int, path: Path) -> np.ndarray:
    """``["[[x,y,z],...]", ...]`` -> [sum N, 3] float64, all rows concatenated."""
    if not coords:
        return np.zeros((0, 3), dtype=np.float64)
    numbers = ",".join(coords).translate(str.maketrans("", "", "[] ")).split(",")
    try:
        pos = np.array(numbers, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: malformed XYZ_Ang coordinates: {err}") from err
    if pos.size != expected:
        raise ValueError(f"{path}: XYZ_Ang holds {pos.size} numbers, expected {expected}")
    if not np.isfinite(pos).all():
        raise ValueError(f"{path}: XYZ_Ang contains NaN or inf")
    return pos.reshape(-1, 3)


def _read_table(data_dir: Path, limit: int | None) -> _Table:
    t0 = time.perf_counter()
    index: list[int] = []
    natoms: list[int] = []
    file_of: list[int] = []
    elements: list[str] = []
    coords: list[str] = []
    energies: list[list[float]] = []
    z_parts: list[np.ndarray] = []
    pos_parts: list[np.ndarray] = []
    columns = list(QM9_TARGETS.values())
    for k, name in enumerate(QM9_FILES):
        if limit is not None and len(index) >= limit:
            break
        path = data_dir / name
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file, expected a QM9 CSV table")
            col = {c: i for i, c in enumerate(header)}
            missing = [c for c in (*_GEOMETRY_COLUMNS, *columns) if c not in col]
            if missing:
                raise ValueError(f"{path}: not a qm9pack QM9 table, missing columns {missing}")
            ci, cn, ce, cx = (col[c] for c in _GEOMETRY_COLUMNS)
            cenergy = [col[c] for c in columns]
            for line, row in enumerate(reader, start=2):
                if limit is not None and len(index) >= limit:
                    break
                try:
                    n = int(row[cn])
                    el, xyz = row[ce], row[cx]
                    # cheap shape checks: N symbols and 3N numbers
                    if el.count(",") + 1 != n or xyz.count(",") + 1 != 3 * n:
                        raise ValueError(
                            f"N_atoms={n} but {el.count(',') + 1} elements and "
                            f"{xyz.count(',') + 1} coordinates"
                        )
                    index.append(int(row[ci]))
                    energies.append([float(row[c]) for c in cenergy])
                except (ValueError, IndexError) as err:
                    raise ValueError(f"{path} line {line}: malformed QM9 row: {err}") from err
                natoms.append(n)
                file_of.append(k)
                elements.append(el)
                coords.append(xyz)
        # parse this file's geometries in one go, then drop its strings (memory)
        z_parts.append(_parse_elements(elements, path))
        pos_parts.append(_parse_coords(coords, 3 * sum(natoms[len(natoms) - len(coords) :]), path))
        elements.clear()
        coords.clear()
    if not index:
        raise ValueError(f"{data_dir}: no molecules in {list(QM9_FILES)}")
    z = np.concatenate(z_parts)
    pos = np.concatenate(pos_parts)
    n_at = np.asarray(natoms, dtype=np.int64)
    offsets = np.zeros(len(n_at) + 1, dtype=np.int64)
    np.cumsum(n_at, out=offsets[1:])
    if z.size != offsets[-1]:
        raise ValueError(f"{data_dir}: QM9 element counts do not match N_atoms")
    index_np = np.asarray(index, dtype=np.int64)
    if np.unique(index_np).size != index_np.size:
        raise ValueError(f"{data_dir}: QM9 indices are not unique")
    energies_ev = np.asarray(energies, dtype=np.float64) * HARTREE_EV
    if not np.isfinite(energies_ev).all():
        bad = index_np[~np.isfinite(energies_ev).all(axis=1)][:5].tolist()
        raise ValueError(f"{data_dir}: non-finite energies for QM9 indices {bad}")
    return _Table(
        index=index_np,
        file_of=np.asarray(file_of, dtype=np.int8),
        offsets=offsets,
        z=z,
        pos=pos,
        energies=energies_ev,
        data_dir=data_dir,
        load_seconds=time.perf_counter() - t0,
    )


def load_qm9_table(data_dir: Path, limit: int | None = None) -> _Table:
    """The QM9 table of ``data_dir`` (its first ``limit`` molecules), read once per process."""
    key_dir = str(Path(data_dir).resolve())
    with _LOCK:
        full = _TABLES.get((key_dir, None))
        if full is not None:
            return full
        if limit is not None:
            for (d, lim), table in _TABLES.items():
                if d == key_dir and lim is not None and lim >= limit:
                    return table
        table = _read_table(Path(data_dir), limit)
        _TABLES[(key_dir, limit)] = table
        return table


class QM9Dataset(Dataset):
    """QM9 molecules at their B3LYP/6-31G(2df,p) equilibrium geometries (energies, no forces).

    Args:
        target: which energy is ``energy`` (eV): one of :data:`QM9_TARGETS`
            (``"U0"``, ``"U"``, ``"H"``, ``"G"``, ``"ZPVE"``, ``"HOMO"``, ``"LUMO"``, ``"gap"``).
        split: ``"train"``, ``"val"``, ``"test"``, or None/``"all"`` (every molecule).
        fractions: train/val/test fractions of molecules (non-negative, sum <= 1).
        seed: seed of the molecule shuffle that defines the splits.
        dtype: floating dtype of ``pos`` and ``energy``.
        limit: use only the first ``limit`` molecules in QM9 order (then split them).
        data_dir: folder holding ``qm9_part{1,2,3}.csv``; default: qm9pack's own.

    Raises:
        QM9Unavailable: qm9pack is not installed (an ImportError naming
            ``pip install 'tdn-data[qm9]'``).
        ValueError: unknown target (lists the available ones), bad split, fractions or
            limit, an empty split, or a malformed table (names the file).
    """

    def __init__(
        self,
        *,
        target: str = "U0",
        split: str | None = None,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        limit: int | None = None,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        if target not in QM9_TARGETS:
            raise ValueError(
                f"target={target!r} is not a QM9 target; use one of {list(QM9_TARGETS)}"
            )
        split = "all" if split is None else split
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split={split!r}: use one of {(*SPLITS, 'all', None)}")
        f = tuple(float(x) for x in fractions)
        if len(f) != 3 or min(f) < 0 or sum(f) > 1 + 1e-9:
            raise ValueError(
                f"fractions={tuple(fractions)!r}: need three non-negative train/val/test "
                "fractions summing to at most 1"
            )
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
            raise ValueError(f"limit={limit!r}: need a positive integer or None")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype={dtype!r}: need a floating torch dtype")
        self.target, self.split, self.fractions = target, split, f
        self.seed, self.dtype = int(seed), dtype
        self.limit = None if limit is None else int(limit)
        path = qm9pack_data_dir() if data_dir is None else Path(data_dir)
        self._table = load_qm9_table(path, self.limit)
        self._n_total = min(self._table.index.size, self.limit or self._table.index.size)
        self._column = list(QM9_TARGETS).index(target)
        self._mols = self.split_molecules(split)
        if self._mols.size == 0:
            raise ValueError(
                f"QM9 split {split!r} is empty ({self._n_total} molecules, fractions {f})"
            )

    def split_molecules(self, split: str) -> np.ndarray:
        """Positions (QM9 order, sorted) of the molecules in ``split`` (or ``'all'``)."""
        n = self._n_total
        if split == "all":
            return np.arange(n)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {(*SPLITS, 'all')}")
        perm = np.random.default_rng(self.seed).permutation(n)
        bounds = np.floor(np.cumsum(self.fractions) * n + 1e-9).astype(np.int64)
        if abs(sum(self.fractions) - 1) < 1e-9:
            bounds[-1] = n
        k = SPLITS.index(split)
        start = 0 if k == 0 else bounds[k - 1]
        return np.sort(perm[start : bounds[k]])

    @property
    def load_seconds(self) -> float:
        """Seconds the (process-wide, cached) table took to read."""
        return self._table.load_seconds

    @property
    def mol_ids(self) -> list[str]:
        """QM9 indices (as strings) of this split's molecules, in item order."""
        return [str(i) for i in self._table.index[self._mols]]

    def __len__(self) -> int:
        return int(self._mols.size)

    def __getitem__(self, idx: int) -> Data:
        n = len(self)
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"QM9 index {idx} out of range for {n} molecules")
        m = int(self._mols[i])
        t = self._table
        a, b = int(t.offsets[m]), int(t.offsets[m + 1])
        qm9_index = int(t.index[m])
        return make_sample(
            t.z[a:b],
            t.pos[a:b],
            float(t.energies[m, self._column]),
            None,
            mol_id=str(qm9_index),
            step=0,
            source=f"qm9pack {QM9_FILES[t.file_of[m]]} Index {qm9_index}",
            dtype=self.dtype,
        )

    def __repr__(self) -> str:
        return (
            f"QM9Dataset(target={self.target!r}, split={self.split!r}, "
            f"molecules={len(self)} of {self._n_total}, seed={self.seed})"
        )
