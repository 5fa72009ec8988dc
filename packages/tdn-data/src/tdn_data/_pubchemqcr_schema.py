"""The PubChemQCR record schema: parse one decoded LMDB value into arrays in eV and Å.

A value is ``{'pm3', 'hf', 'DFT_1st', 'DFT_2nd'}`` -> list of steps (or None); each
step has ``coordinates`` (``{atom, charge, x, y, z}``, Å; ``charge`` may be absent),
``energy`` (Hartree) and ``gradient`` (``{atom, charge, dx, dy, dz}``, Hartree/Bohr).
Every problem is a :class:`BadRecordError` with a short ``reason``, so the reader can
either raise it (naming file, key and step) or skip and count the molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from ase.data import atomic_numbers as _ASE_NUMBERS

from tdn_data._sample import MAX_Z
from tdn_data._units import HARTREE_BOHR_EV_ANGSTROM, HARTREE_EV

STAGES = ("pm3", "hf", "DFT_1st", "DFT_2nd")
# symbol -> Z for real elements only (ASE's table also holds 'X' = 0)
_SYMBOL_Z = {s.lower(): z for s, z in _ASE_NUMBERS.items() if 1 <= z <= MAX_Z}


class BadRecordError(ValueError):
    """A stored molecule that cannot be used; ``reason`` is a short category for ``skipped``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Molecule(NamedTuple):
    """One parsed trajectory (S steps, N atoms), in eV and Å."""

    z: np.ndarray  # [N] int64
    pos: np.ndarray  # [S, N, 3] Å
    energy: np.ndarray  # [S] eV
    forces: np.ndarray  # [S, N, 3] eV/Å


def _element(atom, where: str) -> int:
    if isinstance(atom, (int, np.integer)) and not isinstance(atom, bool):
        z = int(atom)
        if 1 <= z <= MAX_Z:
            return z
    elif isinstance(atom, str) and atom.strip().lower() in _SYMBOL_Z:
        return _SYMBOL_Z[atom.strip().lower()]
    raise BadRecordError("unknown_element", f"{where}: unknown element {atom!r}")


def parse_molecule(value: object, stages: Sequence[str], where: str) -> Molecule:
    """Parse one decoded value into arrays for the given stage(s), converting units.

    Several stages are concatenated, dropping a later stage's first step when it
    repeats the previous stage's last step (the format stores that step twice).

    Raises:
        BadRecordError: reason ``stage_absent`` (a stage is None), ``stage_empty``,
            ``malformed``, ``atom_count_mismatch``, ``unknown_element`` or ``non_finite``;
            the message starts with ``where`` (file and key) and names the step.
    """
    if not isinstance(value, dict):
        raise BadRecordError("malformed", f"{where}: value is {type(value).__name__}, not dict")
    steps: list = []
    for stage in stages:
        got = value.get(stage)
        if got is None:
            raise BadRecordError("stage_absent", f"{where}: stage {stage!r} is absent (None)")
        if not isinstance(got, (list, tuple)):
            raise BadRecordError("malformed", f"{where}: stage {stage!r} is not a list of steps")
        if len(got) == 0:
            raise BadRecordError("stage_empty", f"{where}: stage {stage!r} has no steps")
        if steps and got[0] == steps[-1]:
            got = got[1:]
        steps.extend(got)

    z = None
    pos = np.empty((len(steps), 0, 3))
    grad = pos
    energy = np.empty(len(steps))
    for s, step in enumerate(steps):
        at = f"{where} step {s}"
        try:
            coords, gradient, e = step["coordinates"], step["gradient"], step["energy"]
        except (KeyError, TypeError) as exc:
            raise BadRecordError("malformed", f"{at}: missing field {exc}") from None
        if len(coords) != len(gradient):
            raise BadRecordError(
                "atom_count_mismatch",
                f"{at}: {len(coords)} coordinates but {len(gradient)} gradient entries",
            )
        try:
            step_z = np.array([_element(c["atom"], at) for c in coords], dtype=np.int64)
            grad_z = np.array([_element(g["atom"], at) for g in gradient], dtype=np.int64)
            xyz = np.array([(c["x"], c["y"], c["z"]) for c in coords], dtype=np.float64)
            dxyz = np.array([(g["dx"], g["dy"], g["dz"]) for g in gradient], dtype=np.float64)
            energy[s] = float(e)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadRecordError):
                raise
            raise BadRecordError("malformed", f"{at}: bad atom entry ({exc!r})") from None
        if len(step_z) == 0:
            raise BadRecordError("malformed", f"{at}: no atoms")
        if not np.array_equal(step_z, grad_z):
            raise BadRecordError(
                "atom_count_mismatch", f"{at}: gradient atoms differ from coordinates"
            )
        if z is None:
            z = step_z
            pos = np.empty((len(steps), len(z), 3))
            grad = np.empty_like(pos)
        elif not np.array_equal(z, step_z):
            raise BadRecordError("atom_count_mismatch", f"{at}: atoms differ from step 0")
        pos[s], grad[s] = xyz, dxyz
    for name, arr in (("coordinates", pos), ("gradient", grad), ("energy", energy)):
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(len(steps), -1)))[0, 0])
            raise BadRecordError("non_finite", f"{where} step {bad}: {name} has NaN or inf")
    return Molecule(z, pos, energy * HARTREE_EV, -grad * HARTREE_BOHR_EV_ANGSTROM)
