"""Shared helpers of the asv suite: fixed sizes, guarded imports, the smoke switch."""

from __future__ import annotations

import importlib
import os
from typing import ClassVar

# Fixed problem sizes (changing one changes what the numbers mean: bump `version`).
EDGES = 256  # edges of the edge-product benchmarks
CHANNELS = 16  # channels of the edge product
LS = [1, 2, 3, 4, 5, 6]  # l_in = l_sh = l_out = L
# Every backend the registry knows plus the peers; setup skips what cannot run here.
BACKENDS = ["cg", "path_shared", "sparse", "cp_eager", "cp_triton", "e3nn", "cueq"]

# TDN_ASV_SMOKE=1 (benchmarks/asv_quick.sh): shrink the training budget of the accuracy
# track so a smoke run finishes in minutes; its numbers are not comparable.
SMOKE = os.environ.get("TDN_ASV_SMOKE") == "1"

os.environ.setdefault("OMP_NUM_THREADS", "1")


def need(module: str, *names: str):
    """Import ``module`` and return its attributes ``names``; raise NotImplementedError
    (asv: skipped) when this commit lacks any of them."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise NotImplementedError(f"{module}: {e}") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise NotImplementedError(f"{module} has no {', '.join(missing)} at this commit")
    values = [getattr(mod, n) for n in names]
    return values[0] if len(values) == 1 else values


def usable_backend(name: str) -> None:
    """NotImplementedError unless ``name`` is registered and its timings mean something
    here (cp_triton off a GPU runs in Triton's interpreter: correct, not fast)."""
    import torch

    available = need("tdn_core", "available_backends")
    reasons = available()
    if name not in reasons:
        raise NotImplementedError(f"backend {name!r} not registered at this commit")
    if reasons[name] is not None:
        raise NotImplementedError(reasons[name])
    if name == "cp_triton" and not torch.cuda.is_available():
        raise NotImplementedError("cp_triton: timings off a GPU would be the interpreter's")


def threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


class BackendByL:
    """Base of the benchmarks parametrized over backend x L: asv's parameters, and a
    ``tensor_product(backend, L, channels)`` that skips what this commit or machine lacks."""

    params: ClassVar = (BACKENDS, LS)
    param_names: ClassVar = ["backend", "L"]
    timeout = 300
    version = "1"

    @staticmethod
    def tensor_product(backend: str, L: int, channels: int):
        threads()
        usable_backend(backend)
        return need("tdn_core", "TensorProduct")(L, L, L, channels, backend=backend)
