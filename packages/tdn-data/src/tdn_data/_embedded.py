"""The embedded dataset: where it lives, how it was made, and how to remake it.

``embedded``: GFN2-xTB (semi-empirical, not DFT) BFGS relaxation trajectories of the
first 1,000 accepted RDKit NCI seeds with at most 24 atoms, every step kept, in the
PubChemQCR LMDB schema (so it is read by the same code as the real dataset).
``embedded-tiny``: the first 5 of those molecules, bit-identical, for fast tests.

    python -m tdn_data._embedded --stats embedded          # the numbers of DATACARD.md
    python -m tdn_data._embedded --regenerate embedded --out /tmp/embedded
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent

#: name -> (folder, number of molecules)
EMBEDDED = {
    "embedded": (_HERE / "embedded", 1000),
    "embedded-tiny": (_HERE / "embedded_tiny", 5),
}

#: generate_dataset settings of both (fmax in eV/Å; float32 geometry keeps the full set
#: within its 25 MB budget in git: the schema's per-atom dicts cost ~34 bytes per atom
#: and step even so)
PARAMS = {"shard_size": 50, "seed": 0, "fmax": 0.1, "max_atoms": 24, "precision": "float32"}


def embedded_path(name: str) -> Path:
    """Folder of the embedded dataset ``name`` ("embedded" or "embedded-tiny")."""
    if name not in EMBEDDED:
        raise ValueError(f"name: expected one of {sorted(EMBEDDED)}, got {name!r}")
    return EMBEDDED[name][0]


def regenerate(name: str, out_dir: str | Path, processes: int = 2) -> dict:
    """Run the generator with the shipped settings into ``out_dir`` (needs tdn-data[generate])."""
    from .generate import generate_dataset

    return generate_dataset(out_dir, num_molecules=EMBEDDED[name][1], processes=processes, **PARAMS)


def statistics(name: str) -> dict:
    """Counts, elements, energy and force statistics, and split sizes of ``name``."""
    from .pubchemqcr import PubChemQCRDataset

    path = embedded_path(name)
    full = PubChemQCRDataset(path, cache_index=False)
    z_all, energies_per_atom, forces = [], [], []
    for i in range(len(full)):
        s = full[i]
        z_all.append(s.z.numpy())
        energies_per_atom.append(float(s.energy) / len(s.z))
        forces.append(s.forces.numpy().ravel())
    z = np.concatenate(z_all)
    f = np.concatenate(forces)
    sizes = [len(a) for a in z_all]
    splits = {}
    for split in ("train", "val", "test"):
        part = PubChemQCRDataset(path, split=split, cache_index=False)
        splits[split] = {"molecules": part.num_molecules, "snapshots": len(part)}
    elements = {int(k): int(v) for k, v in zip(*np.unique(z, return_counts=True), strict=True)}
    return {
        "molecules": full.num_molecules,
        "snapshots": len(full),
        "atoms_per_snapshot": {"mean": float(np.mean(sizes)), "min": min(sizes), "max": max(sizes)},
        "element_counts_over_snapshots": elements,
        "energy_per_atom_eV": {
            "mean": float(np.mean(energies_per_atom)),
            "std": float(np.std(energies_per_atom)),
        },
        "force_component_eV_per_A": {"std": float(np.std(f)), "max_abs": float(np.abs(f).max())},
        "splits_by_molecule_60_20_20_seed0": splits,
        "skipped": dict(full.skipped or {}),
    }


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tdn_data._embedded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stats", choices=sorted(EMBEDDED))
    parser.add_argument("--regenerate", choices=sorted(EMBEDDED))
    parser.add_argument("--out", type=Path, help="output folder of --regenerate")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    if args.stats:
        print(json.dumps(statistics(args.stats), indent=1))
    if args.regenerate:
        if args.out is None:
            parser.error("--regenerate needs --out (the shipped folders are not overwritten)")
        print(json.dumps(regenerate(args.regenerate, args.out, args.processes), indent=1))
    if not (args.stats or args.regenerate):
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
