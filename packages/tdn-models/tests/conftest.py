import os

import pytest
import torch

# cp_triton runs through Triton's CPU interpreter without a GPU (must be set before import)
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same RNG state."""
    torch.manual_seed(0)
    return 0
