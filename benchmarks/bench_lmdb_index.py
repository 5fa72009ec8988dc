"""How the PubChemQCR reader scales: open a large LMDB twice, read random items.

    python benchmarks/bench_lmdb_index.py                    # 1,000,000 snapshots
    python benchmarks/bench_lmdb_index.py --molecules 2000   # 100,000 snapshots

Writes a synthetic shard (3-atom molecules, 50 steps each; about 125 MB at the
default size) into a temporary folder, then reports the first open (one pass that
builds the index cached beside the shard), the second open (index reused), the time
of random items, and the peak memory added by opening.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tdn_data import PubChemQCRDataset, write_pubchemqcr


def molecules(n_mol: int, n_steps: int):
    """(cid, {stage: steps}) records of water-like molecules in the PubChemQCR schema."""
    rng = np.random.default_rng(0)
    for m in range(n_mol):
        base = rng.normal(size=(3, 3))
        steps = []
        for s in range(n_steps):
            pos = base + 0.01 * s
            steps.append(
                {
                    "coordinates": [
                        {"atom": a, "charge": 0, "x": float(x), "y": float(y), "z": float(z)}
                        for a, (x, y, z) in zip("OHH", pos, strict=True)
                    ],
                    "energy": -76.0 - 0.001 * s,
                    "gradient": [
                        {"atom": a, "charge": 0, "dx": 0.01, "dy": 0.0, "dz": -0.01} for a in "OHH"
                    ],
                }
            )
        yield f"{m:09d}", {"DFT_1st": steps}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--molecules", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.lmdb"
        t0 = time.perf_counter()
        write_pubchemqcr(path, molecules(args.molecules, args.steps))
        seconds = time.perf_counter() - t0
        print(f"wrote {args.molecules * args.steps:,} snapshots in {seconds:.1f} s")
        before = peak_mb()
        t0 = time.perf_counter()
        ds = PubChemQCRDataset(path)
        print(f"first open (builds the index): {time.perf_counter() - t0:.2f} s, {len(ds):,} items")
        t0 = time.perf_counter()
        ds = PubChemQCRDataset(path)
        print(f"second open (cached index):    {time.perf_counter() - t0:.3f} s")
        picks = random.Random(0).sample(range(len(ds)), 200)
        t0 = time.perf_counter()
        for i in picks:
            ds[i]
        per_item_ms = 1e3 * (time.perf_counter() - t0) / len(picks)
        print(f"random item:                   {per_item_ms:.2f} ms")
        print(f"peak memory added by opening:  {peak_mb() - before:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
