"""Checks of a structure before a potential runs on it (the ASE calculator's input).

A potential answers any input with numbers; these catch the inputs whose numbers mean
nothing, and say why in one line: non-finite positions, a periodic cell that is empty,
elements the model never saw, atoms closer than :data:`MIN_DISTANCE` (two atoms on one
site: a bad file or units) and, in a structure of several atoms, an atom with no
neighbour within the cutoff (the model cannot see it: often Bohr or nm read as Å).
A periodic structure whose radius graph would not fit in memory (a cutoff far beyond a
tiny cell) is refused before the search allocates it.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from tdn_core import AllocationTooLarge, TDNError, check_fits
from tdn_data.graphs import periodic_edge_estimate, radius_graph

__all__ = ["MIN_DISTANCE", "StructureError", "check_graphs", "check_structure"]

#: Å; no two atoms of a physical structure come closer (H2's bond is 0.74 Å)
MIN_DISTANCE = 0.1
#: bytes the radius graph search holds per edge at its peak: the search's (i, j, shift)
#: and their sorted copies (2 x 40), then edge_index, cell_shifts, edge_vec and edge_len
#: in float64 (72)
_GRAPH_BYTES_PER_EDGE = 152


class StructureError(TDNError, ValueError):
    """A structure a potential cannot give meaningful results for."""


def _name(atoms: Atoms, i: int) -> str:
    return f"atom {i} ({chemical_symbols[atoms.numbers[i]]})"


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) within ``cutoff`` and their distances (Å): tdn_data's radius graph,
    the one every model builds; two atoms on one site are a StructureError."""
    periodic = bool(atoms.pbc.any())
    try:
        graph = radius_graph(
            torch.as_tensor(atoms.positions, dtype=torch.float64), cutoff,
            cell=torch.as_tensor(atoms.cell.array, dtype=torch.float64) if periodic else None,
            pbc=atoms.pbc.tolist() if periodic else None,
        )  # fmt: skip
    except ValueError as e:  # overlapping atoms: no edge direction
        raise StructureError(str(e)) from None
    src, dst = graph.edge_index.numpy()
    return dst, src, graph.edge_len.numpy()


def check_structure(atoms: Atoms, cutoff: float, elements: set[int] | None = None) -> None:
    """Raise :class:`StructureError` naming the first problem of ``atoms``.

    cutoff: the model's radius (Å); elements: the atomic numbers the model was trained on
    (``None``: not known, not checked). Cost: one radius graph, O(N).
    """
    if len(atoms) == 0:
        raise StructureError("the structure has no atoms")
    if not np.isfinite(atoms.positions).all():
        i = int(np.flatnonzero(~np.isfinite(atoms.positions).all(1))[0])
        raise StructureError(f"{_name(atoms, i)} has a non-finite position (NaN or inf)")
    if atoms.pbc.any():
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        periodic = cell[atoms.pbc]
        if not np.isfinite(cell).all() or (np.linalg.norm(periodic, axis=1) == 0).any():
            raise StructureError(
                f"pbc={atoms.pbc.tolist()} but the cell has an empty periodic vector "
                f"({cell.tolist()}); give the cell, or set pbc=False"
            )
        if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-9:
            raise StructureError(f"the periodic cell has no volume ({cell.tolist()})")
        edges = periodic_edge_estimate(len(atoms), cutoff, cell, atoms.pbc)
        try:
            check_fits(
                edges * _GRAPH_BYTES_PER_EDGE,
                f"the radius graph of {len(atoms)} atom(s) in this cell at the cutoff "
                f"{cutoff:g} Å (about {edges:.3g} edges: the cell is tiny for the cutoff)",
            )
        except AllocationTooLarge as e:
            raise StructureError(str(e)) from None
    if elements:
        unknown = sorted({int(z) for z in atoms.numbers} - elements)
        if unknown:
            known = ", ".join(chemical_symbols[z] for z in sorted(elements))
            raise StructureError(
                f"elements {[chemical_symbols[z] for z in unknown]} are not among those "
                f"the model was trained on ({known})"
            )
    i, j, d = _pairs(atoms, cutoff)
    if len(d) and d.min() < MIN_DISTANCE:
        k = int(d.argmin())
        raise StructureError(
            f"{_name(atoms, int(i[k]))} and {_name(atoms, int(j[k]))} are {d[k]:.3g} Å apart,"
            f" closer than {MIN_DISTANCE} Å"
        )
    if len(atoms) > 1:
        alone = np.setdiff1d(np.arange(len(atoms)), i)
        if alone.size:
            raise StructureError(
                f"{alone.size} atom(s), first {_name(atoms, int(alone[0]))}, have no neighbour "
                f"within the cutoff {cutoff:g} Å: the model cannot see them (positions in Å?)"
            )


def check_graphs(batch, cutoff: float, elements: set[int] | None = None, first: int = 0) -> None:
    """:func:`check_structure` on every graph of a torch_geometric ``batch`` (z, pos,
    ptr; cell [B, 3, 3] and pbc [B, 3] where periodic); the error names the structure
    by its index, ``first`` being the batch's first."""
    z = batch.z.cpu().numpy()
    pos = batch.pos.detach().double().cpu().numpy()
    ptr = batch.ptr.cpu().numpy() if hasattr(batch, "ptr") else np.array([0, len(z)])
    cell = getattr(batch, "cell", None)
    pbc = getattr(batch, "pbc", None)
    for g in range(len(ptr) - 1):
        atoms = Atoms(numbers=z[ptr[g] : ptr[g + 1]], positions=pos[ptr[g] : ptr[g + 1]])
        if cell is not None and pbc is not None:
            atoms.cell = cell[g].detach().double().cpu().numpy()
            atoms.pbc = pbc[g].cpu().numpy()
        try:
            check_structure(atoms, cutoff, elements)
        except StructureError as e:
            raise StructureError(f"structure {first + g}: {e}") from None
