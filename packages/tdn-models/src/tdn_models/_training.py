"""The loss of an energy+forces potential and a minimal training loop.

The full trainer (schedules, EMA, checkpoints, DDP) lives in tdn-cli; this is what tests,
benchmarks and the CLI share: one definition of the loss and of a training step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import cycle, islice

import torch
from torch import Tensor

from ._potential import Potential


def potential_loss(
    model: Potential, out: dict, batch, energy_weight: float = 1.0, force_weight: float = 1.0
) -> tuple[Tensor, dict]:
    r"""``w_E mean_b ((E_b - E*_b) / (s N_b))^2 + w_F mean_i,a ((F - F*) / s)^2``.

    Errors are divided by the normalization scale s (eV/Å) so both terms are of order
    one; energies are per atom. Returns the loss and its parts (floats, eV and eV/Å MAE).
    """
    scale = model.normalization.scale.to(out["energy"].dtype)
    n_atoms = torch.bincount(batch.batch, minlength=out["energy"].shape[0]).to(scale.dtype)
    de = (out["energy"] - batch.energy.to(scale.dtype)) / n_atoms
    loss = energy_weight * (de / scale).pow(2).mean()
    parts = {"energy_mae_per_atom": float(de.detach().abs().mean())}
    if force_weight and getattr(batch, "forces", None) is not None and "forces" in out:
        df = out["forces"] - batch.forces.to(scale.dtype)
        loss = loss + force_weight * (df / scale).pow(2).mean()
        parts["force_mae"] = float(df.detach().abs().mean())
    return loss, parts


def train_steps(
    model: Potential,
    batches: Iterable,
    steps: int,
    lr: float = 1e-3,
    energy_weight: float = 1.0,
    force_weight: float = 10.0,
) -> Iterator[dict]:
    """Run ``steps`` Adam steps over ``batches`` (cycled); yields each step's loss parts."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for batch in islice(cycle(batches), steps):
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, forces=force_weight > 0)
        loss, parts = potential_loss(model, out, batch, energy_weight, force_weight)
        loss.backward()
        optimizer.step()
        yield {"loss": float(loss.detach()), **parts}
    model.eval()
