"""``cp_triton``: fused Triton kernels for the CP product (slot; kernels not built yet).

The registry lists this backend so that users and benchmarks see it and why it cannot
run. It needs triton, and either a CUDA device or Triton's CPU interpreter
(``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch

from ._base import Backend


class CPTritonBackend(Backend):
    name = "cp_triton"
    exact = False
    requires = ("triton",)
    devices = ("cuda", "cpu")

    @classmethod
    def environment_problem(cls) -> str | None:
        if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
            return "needs a CUDA device or TRITON_INTERPRET=1"
        return "the fused Triton kernels are not implemented yet"
