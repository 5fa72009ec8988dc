"""Test setup shared by every package's tests (pytest loads this for the whole tree)."""

import os

import pytest
import torch

# Without a GPU, cp_triton runs through Triton's CPU interpreter, which must be switched
# on before triton is first imported: set it here so every backend suite and model test
# includes cp_triton on CPU-only machines too.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same RNG state."""
    torch.manual_seed(0)
    return 0
