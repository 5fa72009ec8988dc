"""``tdn md`` and ``tdn relax``: ASE dynamics of a structure with a TDN checkpoint.

The structure is any file ASE reads (xyz, extxyz, cif, POSCAR, traj...; the last frame
by default). Forces come from :class:`tdn_models.TDNCalculator` on the chosen backend.
The trajectory (ASE ``.traj``, readable with ``ase.io.read(path, ":")``) is written to
a temp file and renamed into place at the end, so an existing file is only ever
replaced by a complete new one.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from tdn_models import TDNCalculator

from ._errors import UserError
from ._schema import POSITIVE, integer, number
from ._schema import device as check_device
from ._util import Parser, add_command, atomic_path, existing_file

MD_EXAMPLES = """Examples:
  tdn md model.pt molecule.xyz --steps 1000 --temperature 300 --out md.traj
  tdn md model.pt molecule.xyz --friction 0 --timestep 0.25    # NVE (velocity Verlet)
  tdn md model.pt slab.cif --backend cp_triton --device cuda --dtype float32
"""
RELAX_EXAMPLES = """Examples:
  tdn relax model.pt molecule.xyz --fmax 0.05 --out relax.traj
  tdn relax model.pt molecule.xyz --optimizer FIRE --steps 500 --backend path_shared
"""
OPTIMIZERS = ("BFGS", "LBFGS", "FIRE")


def _common(p: Parser) -> None:
    p.add_argument("checkpoint", help="a file written by tdn train / tdn_models.save_checkpoint")
    p.add_argument("structure", help="a structure file ASE reads")
    p.add_argument("--index", default="-1", help="frame of STRUCTURE to start from")
    p.add_argument("--backend", help="tensor-product backend (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="model dtype (float64 keeps energy and forces consistent)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: the first step compiles for minutes, later ones run faster",
    )


def register(sub: argparse._SubParsersAction) -> None:
    description = (
        "Molecular dynamics with ASE and a TDN checkpoint: Langevin at --temperature, "
        "or NVE velocity Verlet with --friction 0."
    )
    summary = "molecular dynamics (Langevin or NVE) with a checkpoint"
    p = add_command(sub, "md", summary, description, MD_EXAMPLES, run_md)
    _common(p)
    p.add_argument("--steps", type=POSITIVE.arg, default=100)
    p.add_argument("--timestep", type=number(0, above=True).arg, default=0.5, help="fs")
    p.add_argument(
        "--temperature", type=number(0).arg, default=300.0, help="K (initial velocities too)"
    )
    p.add_argument("--friction", type=number(0).arg, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--seed", type=integer(0).arg, default=0, help="velocities and Langevin noise")
    p.add_argument("--interval", type=POSITIVE.arg, default=1, help="write every N steps")
    p.add_argument("--out", default="md.traj", help="trajectory file")

    description = "Relax a structure (positions) with ASE and a TDN checkpoint."
    summary = "relax a structure with a checkpoint"
    r = add_command(sub, "relax", summary, description, RELAX_EXAMPLES, run_relax)
    _common(r)
    r.add_argument(
        "--fmax", type=number(0, above=True).arg, default=0.05, help="convergence: max force, eV/Å"
    )
    r.add_argument("--steps", type=POSITIVE.arg, default=200, help="maximum optimizer steps")
    r.add_argument("--optimizer", choices=OPTIMIZERS, default="BFGS")
    r.add_argument("--out", default="relax.traj", help="trajectory file")


def _atoms(args: argparse.Namespace):
    """The structure with a TDNCalculator attached."""
    from ase.io import read

    path = existing_file(args.structure, "STRUCTURE")
    try:
        atoms = read(path, index=args.index)
    except Exception as exc:  # ASE raises many types for unreadable or unknown files
        raise UserError(f"STRUCTURE: ASE cannot read {str(path)!r}: {exc}") from None
    if not hasattr(atoms, "get_positions"):
        raise UserError(f"--index: {args.index!r} selects several frames; give one")
    checkpoint = existing_file(args.checkpoint, "CHECKPOINT")
    dtype = getattr(torch, args.dtype)
    atoms.calc = TDNCalculator(
        checkpoint,
        backend=args.backend,
        device=check_device(args.device, "--device"),
        dtype=dtype,
        compile=args.compile,
    )
    return atoms


def _run(dynamics, steps: int, **run_args) -> bool:
    """``dynamics.run(steps=steps, ...)`` with a progress bar on stderr."""
    from tqdm import tqdm

    with tqdm(
        total=steps, desc=type(dynamics).__name__, file=sys.stderr, disable=None, leave=False
    ) as bar:

        def advance() -> None:
            bar.n = dynamics.nsteps
            bar.refresh()

        dynamics.attach(advance, interval=1)
        return dynamics.run(steps=steps, **run_args)


def run_md(args: argparse.Namespace) -> int:
    """Run ``tdn md``; returns the exit status."""
    from ase import units
    from ase.constraints import FixCom
    from ase.io import Trajectory
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    atoms = _atoms(args)
    rng = np.random.default_rng(args.seed)
    # ASE 3.28 renamed MaxwellBoltzmannDistribution (same arguments); tdn-data needs >= 3.23
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=args.temperature, rng=rng)
    vd.Stationary(atoms)  # no drift of the centre of mass
    dt = args.timestep * units.fs
    if args.friction > 0:
        # ASE's own fixcm=True biases the sampling of small systems; a constraint does not
        atoms.set_constraint([*atoms.constraints, FixCom()])
        dyn = Langevin(
            atoms,
            dt,
            temperature_K=args.temperature,
            friction=args.friction / units.fs,
            rng=rng,
            fixcm=False,
        )
    else:
        dyn = VelocityVerlet(atoms, dt)
    e0 = atoms.get_total_energy()
    with atomic_path(args.out) as tmp:
        with Trajectory(str(tmp), "w", atoms) as traj:
            dyn.attach(traj.write, interval=args.interval)
            _run(dyn, args.steps)
    ensemble = f"Langevin {args.temperature:g} K" if args.friction > 0 else "NVE"
    print(
        f"{args.steps} steps of {args.timestep:g} fs ({ensemble}), {len(atoms)} atoms\n"
        f"total energy {e0:.4f} -> {atoms.get_total_energy():.4f} eV, "
        f"temperature {atoms.get_temperature():.1f} K\nwrote {args.out}"
    )
    return 0


def run_relax(args: argparse.Namespace) -> int:
    """Run ``tdn relax``; returns the exit status (0 also when not converged: it says so)."""
    import ase.optimize
    from ase.io import Trajectory

    atoms = _atoms(args)
    e0 = atoms.get_potential_energy()
    with atomic_path(args.out) as tmp:
        with Trajectory(str(tmp), "w", atoms) as traj:
            opt = getattr(ase.optimize, args.optimizer)(atoms, logfile=None)
            opt.attach(traj.write, interval=1)
            converged = _run(opt, args.steps, fmax=args.fmax)
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    state = "converged" if converged else f"NOT converged within {args.steps} steps"
    print(
        f"{args.optimizer}: {state} after {opt.nsteps} steps, {len(atoms)} atoms\n"
        f"energy {e0:.4f} -> {atoms.get_potential_energy():.4f} eV, max force {fmax:.4f} eV/Å\n"
        f"wrote {args.out}"
    )
    return 0
