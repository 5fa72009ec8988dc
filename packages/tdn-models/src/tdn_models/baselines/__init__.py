"""Baseline potentials on the same :class:`~tdn_models.Potential` interface as TDN.

- :class:`SchNetPotential`: PyTorch Geometric's SchNet (invariant, distances only).
- :class:`NequIPPotential`: a small NequIP-style model with exact CG tensor products built
  from e3nn's layers (needs the ``e3nn`` extra: ``pip install 'tdn-models[e3nn]'``).

Both are registered in :data:`tdn_models.MODELS` (``"schnet"``, ``"nequip"``), so
``build_model(name, **model.config)`` rebuilds them. ``NequIPPotential`` is imported on
first access so that the SchNet baseline works without e3nn installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schnet import SchNetPotential

if TYPE_CHECKING:
    from .nequip import NequIPPotential

__all__ = ["NequIPPotential", "SchNetPotential"]


def __getattr__(name: str):
    # e3nn is optional: import the NequIP module (and e3nn) only when it is asked for
    if name == "NequIPPotential":
        from .nequip import NequIPPotential

        return NequIPPotential
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
