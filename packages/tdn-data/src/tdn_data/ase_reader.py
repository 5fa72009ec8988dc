"""Anything ASE reads (extxyz, ASE databases, ...) as a map-style Dataset in eV and Å.

Energies and forces may be stored in another unit (MD17 uses kcal/mol and
kcal/mol/Å); ``energy_unit`` names it and forces convert with the same factor per Å.
Where the labels live differs by file, so ``energy_key`` and ``forces_key`` name them:

- ASE db: key-value pairs (``row.total_energy``), ``row.data[name]``, or the
  stored calculator results (``row.energy``, ``row.forces``);
- other formats: the attached calculator's results, ``atoms.info[name]`` (energy)
  or ``atoms.arrays[name]`` (forces).

Files are read once, eagerly (ASE's text formats allow no random access); samples
are validated at load so a bad frame fails at construction, naming file and frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch.utils.data import Dataset
from torch_geometric.data import Data

from tdn_data._sample import make_sample
from tdn_data._units import energy_factor

_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _first_scalar(value, where: str) -> float:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 1:
        raise ValueError(f"{where}: energy has {arr.size} values, expected 1")
    return float(arr[0])


def _lookup(what: str, key: str | None, where: str, sources: list[tuple[str, object]]):
    """The first of ``sources`` (name, mapping or attribute value) that holds ``what``.

    ``key`` (default ``what``) is looked up in every mapping; an attribute source (a
    non-mapping value, e.g. ``row.energy``) counts only for the default key.
    """
    k = what if key is None else key
    for _, source in sources:
        if isinstance(source, dict) or hasattr(source, "keys"):
            if k in source:
                return source[k]
        elif k == what and source is not None:
            return source
    listed = ", ".join(f"{name} {sorted(src)}" for name, src in sources if hasattr(src, "keys"))
    raise ValueError(f"{where}: no {what} under key {k!r} ({listed}); set {what}_key")


def _row_energy(row, key: str | None, where: str):
    sources = [("key-value pairs", row.key_value_pairs), ("data", row.get("data", {}))]
    return _lookup("energy", key, where, [*sources, ("row", row.get("energy"))])


def _row_forces(row, key: str | None, where: str):
    return _lookup(
        "forces", key, where, [("data", row.get("data", {})), ("row", row.get("forces"))]
    )


def _atoms_results(atoms: Atoms) -> dict:
    return atoms.calc.results if atoms.calc is not None else {}


def _atoms_energy(atoms: Atoms, key: str | None, where: str):
    return _lookup("energy", key, where, [("results", _atoms_results(atoms)), ("info", atoms.info)])


def _atoms_forces(atoms: Atoms, key: str | None, where: str):
    sources = [("results", _atoms_results(atoms)), ("arrays", atoms.arrays)]
    return _lookup("forces", key, where, sources)


class ASEDataset(Dataset):
    """Frames of any ASE-readable file, in eV, Å and eV/Å.

    Args:
        path: a file ASE reads; ``.db``/``.sqlite`` files are opened with ``ase.db``.
        energy_unit: unit the energies are stored in: 'eV', 'meV', 'kcal/mol',
            'kJ/mol' or 'Hartree'; forces are taken as ``energy_unit`` per Å.
        energy_key: where the energy lives (see module doc); default: the calculator
            result ``energy`` (db: also key-value pair or data entry ``energy``).
        forces_key: where the forces live; default ``forces``.
        index: ASE frame selection (``':'``, ``'0:10'``, ...); for a db, a query string
            passed to ``db.select`` is given as ``select`` instead.
        select: ase.db selection (only for databases).
        format: ASE format name, if the suffix does not tell.
        mol_id_key: an ``info``/key-value entry holding the molecule id; default the
            file stem (MD17 files hold one molecule each).
        dtype: floating dtype of the items.

    Items are ``torch_geometric.data.Data`` (see :func:`tdn_data._sample.make_sample`),
    with ``step`` = frame index and ``cell``/``pbc`` where the frame is periodic.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown unit, missing energy/forces, bad values, or no frames;
            messages name the file and the frame (db row id).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        energy_unit: str = "eV",
        energy_key: str | None = None,
        forces_key: str | None = None,
        index: str | int | slice = ":",
        select: str | None = None,
        format: str | None = None,
        mol_id_key: str | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ASE dataset file {str(self.path)!r} does not exist")
        e_fac = energy_factor(energy_unit)
        # forces in energy_unit/Å: one factor keeps them the energy's gradient
        self.energy_unit, self.dtype = energy_unit, dtype
        self._samples: list[Data] = []
        is_db = format == "db" or (format is None and self.path.suffix.lower() in _DB_SUFFIXES)
        if is_db:
            self._load_db(select, energy_key, forces_key, mol_id_key, e_fac)
        else:
            self._load_frames(index, format, energy_key, forces_key, mol_id_key, e_fac)
        if not self._samples:
            raise ValueError(f"{self.path}: no frames (index={index!r}, select={select!r})")

    def _add(self, atoms: Atoms, energy, forces, mol_id: str, step: int, where: str, fac: float):
        pbc = atoms.pbc if atoms.pbc.any() else None
        self._samples.append(
            make_sample(
                atoms.numbers, atoms.positions, _first_scalar(energy, where) * fac,
                np.asarray(forces, dtype=np.float64) * fac,
                cell=np.asarray(atoms.cell) if pbc is not None else None, pbc=pbc,
                mol_id=mol_id, step=step, source=where, dtype=self.dtype,
            )
        )  # fmt: skip

    def _load_db(self, select, energy_key, forces_key, mol_id_key, fac: float) -> None:
        from ase.db import connect

        try:
            db = connect(str(self.path), type="db")
            rows = list(db.select(select) if select else db.select())
        except Exception as exc:  # sqlite and ase raise many types; say which file failed
            raise ValueError(f"{self.path}: not a readable ASE database ({exc})") from None
        for step, row in enumerate(rows):
            where = f"{self.path}: row id {row.id}"
            mol_id = str(row.get(mol_id_key)) if mol_id_key else self.path.stem
            self._add(
                row.toatoms(), _row_energy(row, energy_key, where),
                _row_forces(row, forces_key, where), mol_id, step, where, fac,
            )  # fmt: skip

    def _load_frames(self, index, format, energy_key, forces_key, mol_id_key, fac) -> None:
        from ase.io import read

        try:
            frames = read(str(self.path), index=index, format=format)
        except Exception as exc:  # ase.io raises many types; say which file failed
            msg = f"{self.path}: ASE could not read it ({type(exc).__name__}: {exc})"
            raise ValueError(msg) from None
        if isinstance(frames, Atoms):
            frames = [frames]
        for step, atoms in enumerate(frames):
            where = f"{self.path}: frame {step}"
            mol_id = str(atoms.info.get(mol_id_key)) if mol_id_key else self.path.stem
            self._add(
                atoms, _atoms_energy(atoms, energy_key, where),
                _atoms_forces(atoms, forces_key, where), mol_id, step, where, fac,
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, idx: int) -> Data:
        # a copy, so a caller's in-place edits never reach the stored sample
        return self._samples[idx].clone()

    @property
    def mol_ids(self) -> Sequence[str]:
        """Molecule id of each item."""
        return [s.mol_id for s in self._samples]
