"""Conversions between tdn's layout and other libraries' layouts.

tdn's ``[N, (L+1)^2, C]`` layout is cuequivariance's ``ir_mul`` layout of
``Cx0 + Cx1 + ... + CxL`` flattened (each degree block is ``[2l+1, C]``), so cueq needs
no adapter; e3nn's ``mul_ir`` layout is handled by :mod:`tdn_core.adapters.e3nn`.
Checkpoints never hold converted tensors: layers keep tdn's layout (DESIGN.md, 3).
"""

from __future__ import annotations

from . import e3nn
from .e3nn import (
    from_e3nn_layout,
    to_e3nn_layout,
    uvu_instructions,
    weights_from_e3nn,
    weights_to_e3nn,
)
from .e3nn import irreps as e3nn_irreps

__all__ = [
    "e3nn",
    "e3nn_irreps",
    "from_e3nn_layout",
    "to_e3nn_layout",
    "uvu_instructions",
    "weights_from_e3nn",
    "weights_to_e3nn",
]
