"""Export the data of the peer comparison to extended XYZ, the format every peer reads.

Runs in the project's ``.venv`` (it reads the data through ``tdn_data``, the same
readers and unit conversions ``tdn train`` and ``tdn eval`` use). Writes, under
``runs/peers/data/`` by default:

- ``train.extxyz``: the embedded dataset's training split, every snapshot (18,542),
  split by molecule exactly as ``tdn train`` splits it;
- ``val-s<seed>.extxyz``: the seeded 1,000-snapshot subset of the validation molecules
  that ``tdn train`` validates on for that seed (``data.max_val_samples=1000``);
- ``test.extxyz``: the test split (6,236 snapshots of unseen molecules);
- ``ood_md17_ethanol.extxyz``, ``ood_md17_aspirin.extxyz``, ``ood_iso17.extxyz``: the
  DFT fixtures of ``../shared/data``, converted to eV and eV/Å;
- ``meta.json``: the elements, the per-element energy references fitted by least squares
  on the training split (given to MACE as E0s and to NequIP as per-type shifts, so every
  peer starts from the same references), and the frame counts.

Energies go to ``atoms.info["REF_energy"]`` (eV), forces to ``atoms.arrays["REF_forces"]``
(eV/Å): keys no ASE calculator claims, so no reader mistakes them for predictions.
Each file is written to a temporary name and renamed, so a kill never leaves half a file;
files that exist are kept (``--force`` rewrites them).

    python benchmarks/peers/export.py                    # seeds 0 1 2
    python benchmarks/peers/export.py --seeds 0 --out /tmp/peers-data
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "claims"))
from accuracy import OOD, SHARED  # noqa: E402  (the fixtures and their reader options)

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
#: ``tdn train``'s validation subset in the RESULTS budget (``data.max_val_samples``)
VAL_SAMPLES = 1000


def _options(flags: list[str]) -> dict:
    """``tdn eval`` reader flags (``--energy-unit kcal/mol``...) as load_dataset options."""
    pairs = zip(flags[::2], flags[1::2], strict=True)
    return {k.lstrip("-").replace("-", "_"): v for k, v in pairs}


def to_atoms(item) -> Atoms:
    """A ``tdn_data`` item (pos [N, 3] Å, z [N], energy [1] eV, forces [N, 3] eV/Å,
    optional cell [1, 3, 3] / pbc) as ASE Atoms carrying the labels under REF_* keys."""
    cell = getattr(item, "cell", None)
    pbc = getattr(item, "pbc", None)
    atoms = Atoms(
        numbers=item.z.numpy(),
        positions=item.pos.double().numpy(),
        cell=None if cell is None else cell.reshape(3, 3).double().numpy(),
        pbc=False if cell is None else (True if pbc is None else np.asarray(pbc).reshape(3)),
    )
    atoms.info[ENERGY_KEY] = float(item.energy.reshape(-1)[0])
    if getattr(item, "forces", None) is not None:
        atoms.arrays[FORCES_KEY] = item.forces.double().numpy()
    return atoms


def write_frames(path: Path, frames: Iterable[Atoms]) -> int:
    """Write ``frames`` to ``path`` (extxyz) atomically; returns the number written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frames = list(frames)
    try:
        write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(frames)


def energy_references(frames: list[Atoms]) -> dict[int, float]:
    """Per-element energies E0[Z] (eV) minimizing sum_frames (E - sum_atoms E0[Z])^2."""
    elements = sorted({int(z) for a in frames for z in a.numbers})
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in elements] for a in frames])
    energies = np.array([a.info[ENERGY_KEY] for a in frames])
    e0, *_ = np.linalg.lstsq(counts.astype(float), energies, rcond=None)
    return {z: float(e) for z, e in zip(elements, e0, strict=True)}


def _items(dataset) -> Iterator:
    return (dataset[i] for i in range(len(dataset)))


def export(
    out: Path,
    seeds: list[int],
    *,
    source: str = "embedded",
    shared: Path | None = SHARED,
    force: bool = False,
) -> dict:
    """Write every file of the comparison under ``out``; returns meta.json's content.

    ``source``: the split dataset (``embedded``; tests use ``embedded-tiny``).
    ``shared``: the folder of the MD17/ISO17 fixtures; None or missing: no OOD files.
    """
    from tdn_cli._util import write_json
    from tdn_cli.train import _subset
    from tdn_data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    def need(name: str) -> Path | None:
        path = out / f"{name}.extxyz"
        return path if force or not path.exists() else None

    train = [to_atoms(x) for x in _items(load_dataset(source, split="train"))]
    if path := need("train"):
        counts["train"] = write_frames(path, train)
    if path := need("test"):
        test = load_dataset(source, split="test")
        counts["test"] = write_frames(path, map(to_atoms, _items(test)))
    val = load_dataset(source, split="val")
    for seed in seeds:
        # the subset tdn train validates on (seed + 1: see tdn_cli.train._datasets)
        if path := need(f"val-s{seed}"):
            subset = _subset(val, VAL_SAMPLES, seed + 1)
            counts[f"val-s{seed}"] = write_frames(path, map(to_atoms, _items(subset)))
    ood = [o for o in OOD if shared is not None and (shared / o[1]).exists()]
    for tag, fname, flags in ood:
        if path := need(tag):
            ds = load_dataset(str(shared / fname), **_options(flags))
            counts[tag] = write_frames(path, map(to_atoms, _items(ds)))
    e0 = energy_references(train)
    meta = {
        "energy_key": ENERGY_KEY,
        "forces_key": FORCES_KEY,
        "elements": sorted(e0),
        "e0_eV": {str(z): e for z, e in e0.items()},
        "train_frames": len(train),
        "val_samples": VAL_SAMPLES,
        "source": source,
        "ood": [tag for tag, _, _ in ood],
    }
    write_json(out / "meta.json", meta)
    for name, n in counts.items():
        print(f"wrote {out / (name + '.extxyz')} ({n} frames)")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/peers/export.py --seeds 0",
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "peers" / "data")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = p.parse_args(argv)
    export(args.out, args.seeds, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
