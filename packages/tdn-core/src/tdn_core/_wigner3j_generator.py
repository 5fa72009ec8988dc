"""Regenerates ``data/wigner3j.npz`` from e3nn's ``wigner_3j`` (needs ``tdn-core[e3nn]``).

    python -m tdn_core._wigner3j_generator

The table holds every triangle-allowed block with degrees <= LMAX_TABLE, float64,
so that tdn-core itself needs neither e3nn nor sympy. Blocks above the table are
computed through e3nn at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LMAX_TABLE = 8
TABLE_PATH = Path(__file__).parent / "data" / "wigner3j.npz"


def block_from_e3nn(l1: int, l2: int, l3: int) -> np.ndarray:
    """e3nn's real Wigner 3j block [2l1+1, 2l2+1, 2l3+1], float64, unit Frobenius norm."""
    import torch

    from ._optional import require

    o3 = require("e3nn.o3", f"Clebsch-Gordan blocks above l={LMAX_TABLE}")
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()


def main() -> None:
    from ._io import atomic_write

    blocks = {
        f"{l1}_{l2}_{l3}": block_from_e3nn(l1, l2, l3)
        for l1 in range(LMAX_TABLE + 1)
        for l2 in range(LMAX_TABLE + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, LMAX_TABLE) + 1)
    }
    atomic_write(TABLE_PATH, lambda f: np.savez_compressed(f, **blocks))
    print(f"wrote {len(blocks)} blocks to {TABLE_PATH}")


if __name__ == "__main__":
    main()
