"""Speed side by side: inference and ASE molecular dynamics of TDN, MACE and NequIP.

Every model is timed through its ASE calculator (score.py's), in float32, one thread
pinned to one core, on the same structures:

- ``molecules16``: one snapshot of each of the 16 smallest training molecules, the
  batch of ``tdn bench --model`` (143 atoms), each its own calculation: inference
  (energy + forces) in atoms/s;
- ``mol20``: a 20-atom test molecule; ``box200``: ten copies of it on a grid in a
  periodic cell (200 atoms): velocity-Verlet MD at 0.5 fs, in steps/s.

Each model runs in its own process (its own venv) once per round; rounds alternate the
models' order, so a change in the machine's load hits every model alike. The table
shows the median over rounds. Compile time (first call) is reported, never timed in.

    python benchmarks/peers/speed.py export             # the structures (.venv)
    python benchmarks/peers/speed.py run --rounds 3     # every model -> speed.json
    python benchmarks/peers/speed.py table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from score import _write_atomic, calculator, describe  # noqa: E402  (runs in every venv)

ROOT = HERE.parents[1]
DATA = ROOT / "runs" / "peers" / "data" / "speed"
OUT = ROOT / "docs" / "results" / "peers" / "speed"
RUNS = ROOT / "runs" / "peers"
VENV = {"mace": HERE / ".venv-mace", "nequip": HERE / ".venv-nequip", "tdn": ROOT / ".venv"}
#: name -> (kind, trained model, TDN backend, compile): the section 5 models at one epoch
MODELS: dict[str, tuple[str, Path, str | None, bool]] = {
    "tdn-cp_eager": ("tdn", RUNS / "tdn-cp_eager-epochs-s0/checkpoints/best.pt", "cp_eager", False),
    "tdn-path_shared": (
        "tdn", RUNS / "tdn-cp_eager-epochs-s0/checkpoints/best.pt", "path_shared", False
    ),
    "tdn-cp_eager-compiled": (
        "tdn", RUNS / "tdn-cp_eager-epochs-s0/checkpoints/best.pt", "cp_eager", True
    ),
    "mace-ell1": ("mace", RUNS / "mace-ell1-epochs-s0/mace.model", None, False),
    "mace-ell1-compiled": ("mace", RUNS / "mace-ell1-epochs-s0/mace.model", None, True),
    "mace": ("mace", RUNS / "mace-epochs-s0/mace.model", None, False),
    "nequip": ("nequip", RUNS / "nequip-epochs-s0/best.ckpt", None, False),
}  # fmt: skip
MD_STEPS = {"mol20": 100, "box200": 20}


def periodic_box(mol, copies: int, grid: tuple[int, int, int], gap: float):
    """``copies`` translated copies of the molecule ``mol`` (ASE Atoms) on a ``grid`` of
    slots in a periodic orthorhombic cell, filled in order; ``gap`` (Å): the closest two
    copies come, also across the cell's faces."""
    from ase import Atoms

    slots = [(i, j, k) for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])]
    if not 0 < copies <= len(slots):
        raise ValueError(f"copies: expected 1 to {len(slots)} for grid {grid}, got {copies}")
    pos = mol.positions - mol.positions.min(axis=0)
    step = pos.max(axis=0) + gap
    box = Atoms(cell=np.diag(step * np.asarray(grid)), pbc=True)
    for slot in slots[:copies]:
        box += Atoms(numbers=mol.numbers, positions=pos + step * np.asarray(slot))
    return box


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, lambda t: t.write_text(json.dumps(obj, indent=1) + "\n"))


def export() -> None:
    """Write molecules16.extxyz, mol20.extxyz and box200.extxyz (``.venv`` only)."""
    from ase import Atoms
    from ase.io import write

    from tdn_cli._bench_model import reference_batch
    from tdn_data import load_dataset

    DATA.mkdir(parents=True, exist_ok=True)
    _, batch = reference_batch(16)
    mols = [
        Atoms(numbers=g.z.numpy(), positions=g.pos.double().numpy()) for g in batch.to_data_list()
    ]
    test = load_dataset("embedded", split="test")
    mol20 = next(test[i] for i in range(len(test)) if test[i].num_nodes == 20)
    mol = Atoms(numbers=mol20.z.numpy(), positions=mol20.pos.double().numpy())
    box = periodic_box(mol, copies=10, grid=(3, 2, 2), gap=3.0)
    for name, frames in (("molecules16", mols), ("mol20", [mol]), ("box200", [box])):
        _write_atomic(DATA / f"{name}.extxyz", lambda t, f=frames: write(t, f, format="extxyz"))
    print(f"wrote {DATA}: {sum(len(m) for m in mols)} atoms in 16 molecules, "
          f"{len(mol)}-atom molecule, {len(box)}-atom box")  # fmt: skip


def time_one(
    kind: str, model: Path, backend: str | None, compile: bool, inference_reps: int
) -> dict:
    """One round of one model, in this process: inference atoms/s and MD steps/s, with
    its package version and parameter count."""
    import torch
    from ase import units
    from ase.calculators.calculator import all_changes
    from ase.io import read
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(1)
    calc = calculator(kind, model, "float32", backend=backend, compile=compile)
    mols = read(DATA / "molecules16.extxyz", index=":")

    def infer() -> None:
        for atoms in mols:  # calculate() itself: ASE's cache would skip repeats
            calc.calculate(atoms, ["energy", "forces"], all_changes)

    t0 = time.perf_counter()
    infer()  # the first call: compiles, where the model compiles
    first_s = time.perf_counter() - t0
    infer()
    passes = []
    for _ in range(inference_reps):
        t0 = time.perf_counter()
        infer()
        passes.append(time.perf_counter() - t0)
    result = {
        **describe(kind, calc),
        "first_call_s": first_s,
        "inference_atoms_per_s": sum(len(m) for m in mols) / statistics.median(passes),
    }
    for name, steps in MD_STEPS.items():
        atoms = read(DATA / f"{name}.extxyz")
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
        md = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        md.run(5)  # warm-up: new sizes (and compiled shapes) settle
        t0 = time.perf_counter()
        md.run(steps)
        result[f"md_{name}_steps_per_s"] = steps / (time.perf_counter() - t0)
        result[f"md_{name}_atoms"] = len(atoms)
    return result


def run(names: list[str], rounds: int, cpu: int, inference_reps: int) -> None:
    """``rounds`` rounds over ``names``, each model in its own pinned process."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            target = OUT / f"{name}-r{r}.json"
            if target.exists():
                continue
            kind, model, backend, compile = MODELS[name]
            cmd = [str(VENV[kind] / "bin" / "python"), str(Path(__file__).resolve()), "time"]
            cmd += [f"--kind={kind}", f"--model={model}", f"--out={target}"]
            cmd += [f"--inference-reps={inference_reps}"]
            cmd += [f"--backend={backend}"] * (backend is not None) + ["--compile"] * compile
            print(f"round {r}: {name}", flush=True)
            subprocess.run(
                cmd, check=True, env=env, cwd=ROOT,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            )  # fmt: skip


def table() -> str:
    """Markdown (medians over rounds) and speed.json beside the per-round files."""
    rows = {}
    for name in MODELS:
        rounds = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{name}-r*.json"))]
        if rounds:
            keys = [k for k in rounds[0] if k.endswith("_per_s") or k == "first_call_s"]
            rows[name] = {k: statistics.median(r[k] for r in rounds) for k in keys}
            rows[name]["rounds"] = len(rounds)
            rows[name]["package"] = rounds[0]["package"]
    lines = [
        "| model | package | rounds | first call s | inference atoms/s | MD 20 atoms steps/s "
        "| MD 200-atom box steps/s |",
        "|" + "---|" * 7,
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['package']} | {r['rounds']} | {r['first_call_s']:.1f} | "
            f"{r['inference_atoms_per_s']:.0f} | {r['md_mol20_steps_per_s']:.1f} | "
            f"{r['md_box200_steps_per_s']:.2f} |"
        )
    _write_json(OUT.parent / "speed.json", rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/peers/speed.py run --rounds 3 "
        "--models mace-ell1 tdn-cp_eager",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("export", help="write the structures")
    r = sub.add_parser("run", help="time every model, alternating, in pinned processes")
    r.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    r.add_argument("--inference-reps", type=int, default=5)
    sub.add_parser("table", help="print the table, write speed.json")
    t = sub.add_parser("time", help="one round of one model, in this venv (run calls it)")
    t.add_argument("--kind", required=True, choices=("tdn", "mace", "nequip"))
    t.add_argument("--model", required=True, type=Path)
    t.add_argument("--backend")
    t.add_argument("--compile", action="store_true")
    t.add_argument("--inference-reps", type=int, default=5)
    t.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.cmd == "export":
        export()
    elif args.cmd == "run":
        if args.rounds < 1:
            p.error(f"--rounds: expected a positive integer, got {args.rounds}")
        missing = [n for n in args.models if not MODELS[n][1].exists()]
        if missing:
            p.error(f"trained models missing for {missing}: run train.py --budget epochs first")
        run(args.models, args.rounds, args.cpu, args.inference_reps)
        print(table())
    elif args.cmd == "table":
        print(table())
    else:
        result = time_one(args.kind, args.model, args.backend, args.compile, args.inference_reps)
        result.update(kind=args.kind, model=str(args.model), backend=args.backend,
                      compile=args.compile, threads=1, dtype="float32")  # fmt: skip
        _write_json(args.out, result)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
