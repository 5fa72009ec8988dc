"""ASE calculator for any tdn-models :class:`Potential` (TDN or a baseline).

>>> from ase.build import molecule
>>> from tdn_models import TDN, TDNCalculator
>>> atoms = molecule("H2O")
>>> atoms.calc = TDNCalculator(TDN(lmax=1, channels=8, layers=1, backend="path_shared"))
>>> atoms.get_forces().shape
(3, 3)
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch_geometric.data import Data

from ._checkpoint import load_checkpoint
from ._potential import Potential
from ._structure import StructureError, check_structure

__all__ = ["TDNCalculator"]


class TDNCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, Voigt) from a tdn-models potential.

    Follows ASE's Calculator contract: ``calculate`` fills ``self.results`` and ASE's
    ``check_state`` recomputes only when the atoms change. Forces are ``-dE/dpos`` and the
    stress is the strain derivative ``(1/V) dE/d(eps)``, both by autograd, so they are
    exactly consistent with the energy (conservative MD, converging relaxations).

    Args:
        model: a checkpoint path (read with :func:`load_checkpoint`) or a
            :class:`Potential` instance. An instance is moved to ``device``/``dtype`` and
            put in eval mode in place.
        backend: tdn-core backend for the tensor products (None: the checkpoint's, or
            the instance's current one).
        device: torch device to run on.
        dtype: dtype of the model. The default float64 keeps energies and forces
            consistent to ~1e-12 relative: in float32 the energy of a system sums
            per-atom terms with ~1e-7 relative round-off (~1e-4 eV on a -1e3 eV total), so
            finite-difference checks fail and NVE energy drifts visibly. On the CPU the
            float64 penalty is small for molecule-sized systems; pass ``torch.float32``
            for speed on large systems / GPUs.
        compile: run the model under :meth:`Potential.compile` (``torch.compile``): the
            first calculation compiles (minutes on a small CPU), later ones run faster;
            worth it for long MD runs.
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator` (``label``,
            ``directory``...).

    Results: ``energy`` and ``free_energy`` (float, eV; free_energy = energy: no
    electronic entropy), ``forces`` ``(natoms, 3)`` eV/Å, and ``stress`` ``(6,)`` eV/Å^3
    in Voigt order (xx, yy, zz, yz, xz, xy) for fully periodic cells only; asking the
    stress of anything else raises ``PropertyNotImplementedError``.

    Raises :class:`StructureError` for a structure the model cannot answer
    (:func:`check_structure`). A new structure (other atoms, cell or pbc than the last,
    or after ``reset()``) gets every check; a step that moves atoms only, as in MD and
    relaxation, gets the cheap one (finite positions), so that a step costs no
    neighbour search beyond the model's own.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: str | os.PathLike | Potential,
        backend: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.dtype = dtype
        self.checkpoint_info: dict | None = None
        if isinstance(model, Potential):
            norm = {k: v.clone() for k, v in model.normalization.state_dict().items()}
            model.to(device=self.device, dtype=dtype)
            # keep the normalization buffers at full float64 precision under any dtype
            model.normalization.to(dtype=torch.float64)
            model.normalization.load_state_dict(norm)
            if backend is not None:
                model.set_backend(backend)
        elif isinstance(model, str | os.PathLike):
            model, self.checkpoint_info = load_checkpoint(
                model, backend=backend, device=self.device, dtype=dtype
            )
        else:
            raise TypeError(
                f"model: expected a checkpoint path or a tdn_models.Potential, got "
                f"{type(model).__name__}"
            )
        self.model = model.eval()
        if compile:
            self.model.compile()
        self.elements = self.model.trained_elements()

    def _data(self, atoms: Atoms) -> Data:
        """One graph from ``atoms``: z [N], pos [N, 3] Å, and cell [1, 3, 3] Å / pbc [1, 3]
        when any direction is periodic."""
        data = Data(
            z=torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device),
            pos=torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device),
        )
        if atoms.pbc.any():
            cell = np.asarray(atoms.cell.array, dtype=np.float64).reshape(1, 3, 3)
            data.cell = torch.as_tensor(cell, dtype=self.dtype, device=self.device)
            data.pbc = torch.as_tensor(atoms.pbc, device=self.device).reshape(1, 3)
        return data

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        """Fill ``self.results`` for ``atoms`` (energy, free_energy, forces; stress if asked)."""
        properties = ["energy"] if properties is None else properties
        super().calculate(atoms, properties, system_changes)  # sets self.atoms
        atoms = self.atoms
        # a new structure gets every check; a step of MD or relaxation the cheap one
        new = {"numbers", "pbc", "cell"} & set(system_changes)
        if new or not np.isfinite(atoms.positions).all():
            try:
                check_structure(atoms, self.model.cutoff, self.elements)
            except StructureError:
                self.reset()  # the next structure, whatever its changes, is checked in full
                raise
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress: needs a cell periodic in all three directions (atoms.pbc = "
                f"{atoms.pbc.tolist()}); set atoms.pbc = True with a full cell, or do not "
                "ask for the stress"
            )
        with torch.no_grad():  # forces/stress still come from autograd inside the model
            out = self.model(self._data(atoms), forces=True, stress=want_stress)
        energy = float(out["energy"].double().sum())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].double().cpu().numpy().reshape(len(atoms), 3)
        if want_stress:
            stress = out["stress"].double().cpu().numpy().reshape(3, 3)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
