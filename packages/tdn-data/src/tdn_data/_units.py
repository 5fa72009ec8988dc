"""Unit constants and conversion factors into the project's units (eV, Å, eV/Å).

Every reader converts at the boundary (DESIGN.md section 3), so nothing downstream
ever sees Hartree, Bohr or kcal/mol. Constants are CODATA 2018.
"""

from __future__ import annotations

HARTREE_EV: float = 27.211386245988
"""1 Hartree in eV."""

BOHR_ANGSTROM: float = 0.529177210903
"""1 Bohr in Å."""

KCAL_MOL_EV: float = 4.184 / 96.48533212331
"""1 kcal/mol in eV (about 0.0433641); 96.485... kJ/mol = 1 eV."""

KJ_MOL_EV: float = 1.0 / 96.48533212331
"""1 kJ/mol in eV."""

HARTREE_BOHR_EV_ANGSTROM: float = HARTREE_EV / BOHR_ANGSTROM
"""1 Hartree/Bohr in eV/Å (gradients in the PubChemQCR format)."""

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": KCAL_MOL_EV,
    "kJ/mol": KJ_MOL_EV,
    "Hartree": HARTREE_EV,
}
"""Energy unit name -> eV per unit."""

LENGTH_UNITS: dict[str, float] = {
    "Å": 1.0,
    "Angstrom": 1.0,
    "Bohr": BOHR_ANGSTROM,
}
"""Length unit name -> Å per unit."""

# case-insensitive aliases so 'ev', 'hartree', 'kcal/mol', 'angstrom' all work
_ENERGY_ALIASES = {k.lower(): k for k in ENERGY_UNITS} | {"ha": "Hartree", "au": "Hartree"}
_LENGTH_ALIASES = {k.lower(): k for k in LENGTH_UNITS} | {"a": "Å", "ang": "Å"}


def _factor(unit: str, table: dict, aliases: dict, kind: str, argument: str) -> float:
    name = aliases.get(str(unit).strip().lower())
    if name is None:
        raise ValueError(
            f"{argument}={unit!r} is not a known {kind} unit; use one of {sorted(table)}"
        )
    return table[name]


def energy_factor(unit: str, *, argument: str = "energy_unit") -> float:
    """eV per ``unit`` (multiply values stored in ``unit`` by this to get eV).

    Raises:
        ValueError: unknown unit (names ``argument`` and lists the accepted units).
    """
    return _factor(unit, ENERGY_UNITS, _ENERGY_ALIASES, "energy", argument)


def length_factor(unit: str, *, argument: str = "length_unit") -> float:
    """Å per ``unit``.

    Raises:
        ValueError: unknown unit (names ``argument`` and lists the accepted units).
    """
    return _factor(unit, LENGTH_UNITS, _LENGTH_ALIASES, "length", argument)


def force_factor(energy_unit: str, length_unit: str = "Å") -> float:
    """eV/Å per (``energy_unit`` / ``length_unit``): forces convert consistently with energy."""
    return energy_factor(energy_unit) / length_factor(length_unit)


def convert_energy(value, unit: str):
    """``value`` (scalar or array, in ``unit``) in eV."""
    return value * energy_factor(unit)
