"""Energy normalization: per-element reference energies and a scale, fitted on training data."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

#: atomic numbers 0..Z_MAX have a reference energy slot (0 is unused)
Z_MAX = 118


class Normalization(nn.Module):
    r"""Maps normalized per-atom outputs to energies in eV.

    ``E_i = scale * u_i + shift + E0[z_i]`` and ``E = sum_i E_i``, where u is the
    network's per-atom output, E0 the per-element reference energies (eV, least-squares
    fit of total energies on element counts), shift the mean per-atom residual energy
    (eV) and scale the RMS force component (eV/Å; or the per-atom residual energy's
    standard deviation when the data have no forces). Networks then train on targets of
    order one. The values are buffers: they travel in the state_dict and checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("element_energies", torch.zeros(Z_MAX + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """z [N] long, u [N] normalized -> per-atom energies [N] (eV), u's dtype."""
        e0 = self.element_energies.to(u.dtype).index_select(0, z)
        return self.scale.to(u.dtype) * u + self.shift.to(u.dtype) + e0

    @torch.no_grad()
    def fit(self, samples: Iterable, ridge: float = 1e-8, prior: Callable | None = None) -> dict:
        """Fit E0, shift and scale on samples with ``z``, ``energy`` and optional ``forces``.

        ``prior(sample) -> float`` (eV): a part of the energy the model adds by itself
        (:class:`ZBLRepulsion`); the fit is on the energies less it.

        Returns the fitted values as plain Python numbers (for logs and checkpoints).
        Raises ValueError when there are no samples or no energies.
        """
        rows, energies, force_sq, n_force = [], [], 0.0, 0
        for s in samples:
            if getattr(s, "energy", None) is None:
                continue
            z = s.z.detach().cpu().numpy()
            rows.append(np.bincount(z, minlength=Z_MAX + 1))
            energies.append(float(s.energy.reshape(-1)[0]) - (prior(s) if prior else 0.0))
            f = getattr(s, "forces", None)
            if f is not None:
                force_sq += float(f.double().pow(2).sum())
                n_force += f.numel()
        if not rows:
            raise ValueError("samples: expected samples with 'z' and 'energy', got none")
        counts, E = np.asarray(rows, dtype=np.float64), np.asarray(energies)
        present = counts.sum(0) > 0
        A = counts[:, present]
        # ridge keeps the fit defined when two elements always appear in fixed ratio
        e0 = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ E)
        n_atoms = counts.sum(1)
        per_atom = (E - A @ e0) / n_atoms
        shift = float(per_atom.mean())
        if n_force:
            scale = float(np.sqrt(force_sq / n_force))
        else:
            scale = float(per_atom.std()) if len(per_atom) > 1 else 1.0
        scale = scale if scale > 0 else 1.0
        full = np.zeros(Z_MAX + 1)
        full[present] = e0
        self.element_energies.copy_(torch.from_numpy(full))
        self.scale.fill_(scale)
        self.shift.fill_(shift)
        return {
            "element_energies": {int(z): float(full[z]) for z in np.flatnonzero(present)},
            "shift": shift,
            "scale": scale,
        }

    def extra_repr(self) -> str:
        known = torch.nonzero(self.element_energies).flatten().tolist()
        return f"elements={known}, scale={float(self.scale):.4g}, shift={float(self.shift):.4g}"
