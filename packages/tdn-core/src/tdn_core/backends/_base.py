"""The backend contract.

A backend is a stateless class: capability flags, ``check(desc)`` (None, or why it
cannot compute ``desc``) and ``build(desc, dtype, device)``, which returns an executor:
an ``nn.Module`` without trainable parameters whose ``forward(x, y, weight)`` computes
the product described by ``desc`` (shapes in :class:`~tdn_core.TPDescriptor`).
Constant tensors (CG or CP factors) are non-persistent buffers, so a layer's
``state_dict`` is the same under every backend.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..descriptors import TPDescriptor


class Backend:
    """Base class of tensor-product backends. Subclasses override ``build``."""

    name: ClassVar[str]
    #: True if the backend computes the CG product exactly (up to rounding)
    exact: ClassVar[bool]
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: devices where it runs compiled code, not an interpreter (``backend="auto"`` times
    #: and picks it only there)
    fast_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64)
    modes: ClassVar[tuple[str, ...]] = ("uvu",)
    path_weights: ClassVar[tuple[str, ...]] = ("shared",)
    #: modules that must import for the backend to run (checked by the registry)
    requires: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def environment_problem(cls) -> str | None:
        """Why the backend cannot run on this machine at all (None: it can)."""
        return None

    @classmethod
    def check(cls, desc: TPDescriptor) -> str | None:
        """None if this backend can compute ``desc``, else the reason it cannot."""
        if desc.mode not in cls.modes:
            return f"{cls.name} supports mode {cls.modes}, not {desc.mode!r}"
        if desc.path_weights not in cls.path_weights:
            hint = (
                " (use 'cg' or 'e3nn' for per-path weights)"
                if desc.path_weights == "per_path"
                else ""
            )
            return (
                f"{cls.name} supports path_weights {cls.path_weights}, "
                f"not {desc.path_weights!r}{hint}"
            )
        if not cls.exact and desc.rank is None:
            return f"{cls.name} needs a CP rank in the descriptor"
        return None

    @classmethod
    def check_placement(cls, dtype: torch.dtype, device: torch.device) -> str | None:
        """None if the executor can run in ``dtype`` on ``device``."""
        if dtype not in cls.dtypes:
            return f"{cls.name} supports dtypes {cls.dtypes}, not {dtype}"
        if torch.device(device).type not in cls.devices:
            return f"{cls.name} runs on {cls.devices}, not {torch.device(device).type}"
        return None

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        raise NotImplementedError
