"""``tdn data``: generate the embedded-style dataset, summarize a dataset, convert formats.

* ``generate OUT``: GFN2-xTB relaxation trajectories of RDKit (or QM9) seeds in
  PubChemQCR LMDB shards (``tdn_data.generate``; needs ``tdn-data[generate]``). A killed
  run, started again with the same arguments, resumes after its last complete shard.
* ``inspect SOURCE``: counts, elements, energy and force statistics (eV, Å, eV/Å).
* ``convert SOURCE DEST``: to extxyz (``.xyz``/``.extxyz``; energies in eV, forces in
  eV/Å, ``mol_id`` and ``step`` in each frame's info) or to one PubChemQCR LMDB file
  (``.lmdb``; Hartree and Hartree/Bohr as the schema says).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from tdn_core._io import atomic_write
from tdn_data import (
    BOHR_ANGSTROM,
    HARTREE_EV,
    PubChemQCRDataset,
    load_dataset,
    write_pubchemqcr,
)

from ._errors import UserError
from ._schema import POSITIVE, integer, number
from ._util import Parser, add_command, progress, write_json

EXAMPLES = """Examples:
  tdn data generate my_set --molecules 100 --processes 2
  tdn data inspect embedded --json embedded_stats.json
  tdn data inspect shards/ --split test
  tdn data convert embedded-tiny tiny.extxyz
  tdn data convert frames.extxyz frames.lmdb --mol-id-key mol_id
"""
FORMATS = {".xyz": "extxyz", ".extxyz": "extxyz", ".lmdb": "lmdb"}


def register(sub: argparse._SubParsersAction) -> None:
    summary = "generate, inspect or convert datasets"
    p = add_command(sub, "data", summary, __doc__.split("\n\n")[0], EXAMPLES, _no_action)
    actions = p.add_subparsers(title="actions", metavar="ACTION", parser_class=Parser)
    for name, add, func in (
        ("generate", _add_generate, generate),
        ("inspect", _add_inspect, inspect),
        ("convert", _add_convert, convert),
    ):
        add(add_command(actions, name, add.__doc__, add.__doc__, EXAMPLES, func))


def _no_action(args: argparse.Namespace) -> int:
    raise UserError("choose an action: generate, inspect or convert (see tdn data --help)")


def _add_generate(p: Parser) -> None:
    """run the dataset generator (GFN2-xTB relaxations), with progress and resume"""
    p.add_argument("out", help="output folder (created; an earlier run there is resumed)")
    p.add_argument("--molecules", type=POSITIVE.arg, default=100, help="accepted seeds to relax")
    p.add_argument(
        "--first", type=integer(0).arg, default=0, help="where the scan of the seed list starts"
    )
    p.add_argument("--shard-size", type=POSITIVE.arg, default=50, help="molecules per LMDB shard")
    p.add_argument(
        "--processes", type=integer(0).arg, default=2, help="worker processes (0: in-process)"
    )
    p.add_argument("--seed", type=integer(0).arg, default=0)
    p.add_argument(
        "--fmax", type=number(0, above=True).arg, default=0.05, help="BFGS convergence, eV/Å"
    )
    p.add_argument("--max-steps", type=POSITIVE.arg, default=200, help="BFGS steps per molecule")
    p.add_argument(
        "--displacement", type=number(0).arg, default=0.1, help="start-geometry noise, Å"
    )
    p.add_argument(
        "--max-atoms", type=POSITIVE.arg, default=24, help="largest seed (with hydrogens)"
    )
    p.add_argument("--precision", choices=["float32", "float64"], default="float64")
    p.add_argument("--source", choices=["nci", "qm9"], default="nci", help="seed molecules")


def _add_inspect(p: Parser) -> None:
    """summarize a dataset: counts, elements, energy and force statistics"""
    p.add_argument("source", help="dataset name (embedded, embedded-tiny, qm9) or path")
    p.add_argument("--split", choices=["train", "val", "test"], help="one split only")
    p.add_argument("--mol-id-key", help="ASE files: the info key that names each molecule")
    p.add_argument("--json", metavar="FILE", help="also write the summary to FILE")


def _add_convert(p: Parser) -> None:
    """convert a dataset to extxyz or to a PubChemQCR LMDB file"""
    p.add_argument("source", help="dataset name or path")
    p.add_argument("dest", help="output file: .xyz/.extxyz or .lmdb (see --format)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="default: by suffix")
    p.add_argument("--split", choices=["train", "val", "test"], help="one split only")
    p.add_argument("--mol-id-key", help="ASE files: the info key that names each molecule")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DEST")


def _open(source: str, split: str | None, mol_id_key: str | None) -> Dataset:
    options = {} if mol_id_key is None else {"mol_id_key": mol_id_key}
    return load_dataset(source, split=split, **options)


# ------------------------------------------------------------------------- generate


def generate(args: argparse.Namespace) -> int:
    """Run ``tdn data generate``; prints the generator's summary (JSON)."""
    from tdn_data.generate import generate_dataset

    needed = ("tblite", "rdkit") if args.source == "nci" else ("tblite",)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"generate needs {', '.join(missing)}: pip install 'tdn-data[generate]'")
    summary = generate_dataset(
        args.out,
        num_molecules=args.molecules,
        first=args.first,
        shard_size=args.shard_size,
        processes=args.processes,
        seed=args.seed,
        fmax=args.fmax,
        max_steps=args.max_steps,
        displacement=args.displacement,
        max_atoms=args.max_atoms,
        precision=args.precision,
        source=args.source,
        progress=True,
    )
    print(json.dumps(summary, indent=1, default=str))
    return 0


# -------------------------------------------------------------------------- inspect


def summarize(dataset: Dataset, desc: str = "inspect") -> dict:
    """Counts, elements and energy/force statistics of every item of ``dataset``
    (energies in eV and eV/atom, force components in eV/Å)."""
    from ase.data import chemical_symbols

    if len(dataset) == 0:
        raise UserError("the dataset has no structures")
    sizes, energies, per_atom, force_sq, force_max = [], [], [], 0.0, 0.0
    elements: Counter = Counter()
    molecules, periodic, n_force = set(), 0, 0
    for i in progress(range(len(dataset)), desc):
        s = dataset[i]
        n = len(s.z)
        sizes.append(n)
        elements.update(s.z.tolist())
        molecules.add(s.mol_id)
        energies.append(float(s.energy))
        per_atom.append(float(s.energy) / n)
        if getattr(s, "forces", None) is not None:
            f = s.forces.double()
            force_sq += float((f**2).sum())
            n_force += f.numel()
            force_max = max(force_max, float(f.abs().max()))
        periodic += int(getattr(s, "pbc", None) is not None)
    summary = {
        "structures": len(sizes),
        "molecules": len(molecules),
        "atoms": int(np.sum(sizes)),
        "atoms_per_structure": {
            "mean": float(np.mean(sizes)),
            "min": min(sizes),
            "max": max(sizes),
        },
        "elements": {chemical_symbols[z]: elements[z] for z in sorted(elements)},
        "energy_eV": _stats(energies),
        "energy_per_atom_eV": _stats(per_atom),
        "periodic_structures": periodic,
    }
    if n_force:
        summary["force_component_eV_per_A"] = {
            "rms": (force_sq / n_force) ** 0.5,
            "max_abs": force_max,
        }
    return summary


def _stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def inspect(args: argparse.Namespace) -> int:
    """Run ``tdn data inspect``: prints the summary (and the split sizes where the
    source has splits)."""
    dataset = _open(args.source, args.split, args.mol_id_key)
    summary = {"source": str(args.source), "split": args.split or "all", **summarize(dataset)}
    if isinstance(dataset, PubChemQCRDataset) and args.split is None:
        summary["splits"] = {
            s: {"structures": len(part), "molecules": part.num_molecules}
            for s in ("train", "val", "test")
            for part in [load_dataset(args.source, split=s)]
        }
    if getattr(dataset, "skipped", None):
        summary["skipped_molecules"] = dict(dataset.skipped)
    for key, value in summary.items():
        text = value if not isinstance(value, dict) else json.dumps(value)
        print(f"{key:<26} {text}")
    if args.json:
        write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 0


# -------------------------------------------------------------------------- convert


def _to_atoms(sample):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    pbc = getattr(sample, "pbc", None)
    cell = getattr(sample, "cell", None)
    atoms = Atoms(
        numbers=sample.z.numpy(),
        positions=sample.pos.double().numpy(),
        cell=None if cell is None else cell.double().numpy().reshape(3, 3),
        pbc=False if pbc is None else pbc.numpy().reshape(3),
    )
    forces = getattr(sample, "forces", None)
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=float(sample.energy),
        forces=None if forces is None else forces.double().numpy(),
    )
    atoms.info.update(mol_id=str(sample.mol_id), step=int(sample.step))
    return atoms


def _write_extxyz(dest: Path, dataset: Dataset) -> int:
    from ase.io import write

    images = [_to_atoms(dataset[i]) for i in progress(range(len(dataset)), "convert")]

    def dump(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8")
        write(text, images, format="extxyz")
        text.flush()
        text.detach()  # leave f open: atomic_write fsyncs and closes it

    atomic_write(dest, dump)
    return len(images)


def _pubchemqcr_step(sample) -> dict:
    if getattr(sample, "forces", None) is None:
        raise UserError(f"{sample.source}: no forces; the PubChemQCR schema needs gradients")
    if getattr(sample, "pbc", None) is not None:
        raise UserError(f"{sample.source}: periodic; the PubChemQCR schema has no cell")
    # the schema stores Hartree and Hartree/Bohr; the gradient is minus the force
    gradient = -sample.forces.double().numpy() * (BOHR_ANGSTROM / HARTREE_EV)
    pos = sample.pos.double().numpy()
    z = sample.z.tolist()
    return {
        "coordinates": [
            {"atom": a, "charge": 0, "x": x, "y": y, "z": w}
            for a, (x, y, w) in zip(z, pos.tolist(), strict=True)
        ],
        "energy": float(sample.energy) / HARTREE_EV,
        "gradient": [
            {"atom": a, "charge": 0, "dx": x, "dy": y, "dz": w}
            for a, (x, y, w) in zip(z, gradient.tolist(), strict=True)
        ],
    }


def _write_lmdb(dest: Path, dataset: Dataset) -> int:
    trajectories: dict[str, list] = {}
    atoms_of: dict[str, list] = {}
    for i in progress(range(len(dataset)), "convert"):
        s = dataset[i]
        z = s.z.tolist()
        if atoms_of.setdefault(s.mol_id, z) != z:
            raise UserError(
                f"{s.source}: molecule {s.mol_id!r} changes its atoms between frames; "
                "name each molecule with --mol-id-key"
            )
        trajectories.setdefault(s.mol_id, []).append(_pubchemqcr_step(s))
    # PubChemQCR keys are 9-digit zero-padded CIDs; ASE's extxyz reads "000000042" back
    # as the number 42, so numeric ids are padded again
    molecules = (
        (m.zfill(9) if m.isdigit() else m, {"DFT_1st": steps}) for m, steps in trajectories.items()
    )
    write_pubchemqcr(dest, molecules)
    return len(dataset)


def convert(args: argparse.Namespace) -> int:
    """Run ``tdn data convert``; refuses to replace DEST without ``--overwrite``."""
    dest = Path(args.dest)
    fmt = args.format or FORMATS.get(dest.suffix.lower())
    if fmt is None:
        raise UserError(
            f"DEST: cannot tell the format of {args.dest!r} from its suffix; "
            f"use one of {sorted(FORMATS)} or --format"
        )
    if dest.exists() and not args.overwrite:
        raise UserError(f"DEST: {args.dest!r} exists; pass --overwrite to replace it")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"DEST: folder {str(dest.parent)!r} does not exist")
    dataset = _open(args.source, args.split, args.mol_id_key)
    if len(dataset) == 0:
        raise UserError(f"{args.source}: the dataset has no structures")
    count = (_write_extxyz if fmt == "extxyz" else _write_lmdb)(dest, dataset)
    print(f"wrote {count} structures to {dest} ({fmt})")
    return 0
