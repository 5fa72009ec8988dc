"""The one sample type every reader yields: a validated ``torch_geometric.data.Data``.

Fields (N atoms):

- ``z``: long [N], atomic numbers in 1..118
- ``pos``: float [N, 3], Å
- ``energy``: float [1], eV (shape [1] so ``Batch`` concatenates to [B])
- ``forces``: float [N, 3], eV/Å; absent where the source has none (e.g. QM9, which
  holds energies at equilibrium geometries only)
- ``cell``: float [1, 3, 3], Å, and ``pbc``: bool [1, 3]; only where periodic
- ``mol_id`` (str), ``step`` (int), ``source`` (str): provenance

Validation happens here so every reader fails the same way, with a message that
names the file and key the sample came from.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

MAX_Z = 118


def make_sample(
    z,
    pos,
    energy: float,
    forces,
    *,
    cell=None,
    pbc=None,
    mol_id: str = "",
    step: int = 0,
    source: str = "?",
    dtype: torch.dtype = torch.float64,
) -> Data:
    """Build and validate one sample (inputs already in eV, Å, eV/Å).

    Args:
        z: [N] atomic numbers.
        pos: [N, 3] positions, Å.
        energy: energy, eV.
        forces: [N, 3] forces, eV/Å, or None for a source without forces: the sample
            then has no ``forces`` attribute (never NaN-filled placeholders).
        cell: optional [3, 3] cell vectors (rows), Å; given with ``pbc`` for periodic systems.
        pbc: optional [3] periodicity flags; if any is True a cell is required.
        mol_id, step, source: provenance (source is e.g. ``"file.lmdb key '000015111'"``).
        dtype: floating dtype of pos, energy, forces, cell.

    Raises:
        ValueError: wrong shapes, non-finite values, atomic numbers outside 1..118;
            the message starts with ``source``.
    """
    where = f"{source}" + (f" step {step}" if step is not None else "")
    z_np = np.asarray(z)
    if z_np.ndim != 1 or z_np.size == 0:
        raise ValueError(f"{where}: atomic numbers must be a non-empty [N] array, got {z_np.shape}")
    if not np.issubdtype(z_np.dtype, np.integer):
        raise ValueError(f"{where}: atomic numbers must be integers, got dtype {z_np.dtype}")
    if z_np.min() < 1 or z_np.max() > MAX_Z:
        bad = sorted({int(v) for v in z_np if v < 1 or v > MAX_Z})
        raise ValueError(f"{where}: atomic numbers outside 1..{MAX_Z}: {bad}")
    n = z_np.shape[0]
    pos_np = np.asarray(pos, dtype=np.float64)
    forces_np = None if forces is None else np.asarray(forces, dtype=np.float64)
    checks = [("pos", pos_np)] + ([] if forces_np is None else [("forces", forces_np)])
    for name, arr in checks:
        if arr.shape != (n, 3):
            raise ValueError(f"{where}: {name} has shape {arr.shape}, expected ({n}, 3)")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: {name} contains NaN or inf")
    energy_np = np.asarray(energy, dtype=np.float64).reshape(-1)
    if energy_np.size != 1:
        raise ValueError(f"{where}: energy must be a scalar, got shape {energy_np.shape}")
    if not np.isfinite(energy_np).all():
        raise ValueError(f"{where}: energy is NaN or inf")

    fields = dict(
        z=torch.as_tensor(z_np, dtype=torch.long),
        pos=torch.as_tensor(pos_np, dtype=dtype),
        energy=torch.as_tensor(energy_np, dtype=dtype),
    )
    if forces_np is not None:
        fields["forces"] = torch.as_tensor(forces_np, dtype=dtype)
    data = Data(**fields, mol_id=str(mol_id), step=int(step), source=str(source))
    if pbc is not None and bool(np.any(pbc)):
        pbc_np = np.asarray(pbc, dtype=bool).reshape(-1)
        if pbc_np.shape != (3,):
            raise ValueError(f"{where}: pbc has shape {pbc_np.shape}, expected (3,)")
        if cell is None:
            raise ValueError(f"{where}: periodic (pbc={pbc_np.tolist()}) but no cell given")
        cell_np = np.asarray(cell, dtype=np.float64)
        if cell_np.shape != (3, 3):
            raise ValueError(f"{where}: cell has shape {cell_np.shape}, expected (3, 3)")
        if not np.isfinite(cell_np).all():
            raise ValueError(f"{where}: cell contains NaN or inf")
        # leading 1 so Batch concatenates to [B, 3, 3] and [B, 3]
        data.cell = torch.as_tensor(cell_np, dtype=dtype).unsqueeze(0)
        data.pbc = torch.as_tensor(pbc_np).unsqueeze(0)
    return data
