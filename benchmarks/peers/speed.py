"""Speed side by side: training, inference and ASE molecular dynamics of TDN, MACE and NequIP.

Every model is timed through its ASE calculator (score.py's), in float32, one thread
pinned to one core, on the same structures:

- ``molecules16``: one snapshot of each of the 16 smallest training molecules, the
  batch of ``tdn bench --model`` (143 atoms), each its own calculation: inference
  (energy + forces) in atoms/s;
- ``mol20``: a 20-atom test molecule; ``box200``: ten copies of it on a grid in a
  periodic cell (200 atoms): velocity-Verlet MD at 0.5 fs, in steps/s;
- training: an Adam step on ``molecules16`` as one batch, forces by autograd with the
  graph kept, in atoms/s (eager models only: the compiled paths here serve inference).

TDN runs its best config's committed checkpoint; a peer runs the model of any finished
``train.py`` run of it (``runs/peers/``): weights do not change the work.

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
sys.path[:0] = [str(HERE), str(HERE.parents[0] / "claims")]
from _repo import repo_relative  # noqa: E402  (standard library only)
from score import _write_atomic, calculator, cpu_name, describe  # noqa: E402  (runs in every venv)

ROOT = HERE.parents[1]
DATA = ROOT / "runs" / "peers" / "data" / "speed"
OUT = ROOT / "docs" / "results" / "peers" / "speed"
RUNS = ROOT / "runs" / "peers"
VENV = {"mace": HERE / ".venv-mace", "nequip": HERE / ".venv-nequip", "tdn": ROOT / ".venv"}
#: TDN's best config (the default of ``tdn train``), its committed seed-0 checkpoint
TDN_BEST = ROOT / "docs" / "results" / "accuracy" / "tdn-best-cp_eager-s0" / "best.pt"
#: name -> (kind, trained model: a path, or a train.py model name whose run serves,
#: TDN backend, compile)
MODELS: dict[str, tuple[str, Path | str, str | None, bool]] = {
    "tdn-best-cp_eager": ("tdn", TDN_BEST, "cp_eager", False),
    "tdn-best-path_shared": ("tdn", TDN_BEST, "path_shared", False),
    "tdn-best-cp_eager-compiled": ("tdn", TDN_BEST, "cp_eager", True),
    "mace-ell1": ("mace", "mace-ell1", None, False),
    "mace-ell1-compiled": ("mace", "mace-ell1", None, True),
    "mace": ("mace", "mace", None, False),
    "nequip": ("nequip", "nequip", None, False),
}  # fmt: skip


def trained_model(name: str) -> Path | None:
    """The model file of ``MODELS[name]``: its path, or that of any finished train.py run
    of its model (any budget, any seed: the weights do not change the work); None if
    there is none."""
    kind, model, _, _ = MODELS[name]
    if isinstance(model, Path):
        return model if model.exists() else None
    file = {"mace": "mace.model", "nequip": "best.ckpt"}[kind]
    found = [p for b in ("epochs", "wall") for p in sorted(RUNS.glob(f"{model}-{b}-s*/{file}"))]
    return found[0] if found else None


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


def training_step(kind: str, calc, mols: list):
    """One Adam step of ``calc``'s model on the molecules ``mols`` (ASE Atoms) as one
    batch, built by the package's own code: forces by autograd with the graph kept, as
    in training; loss mean(E^2) + mean(|F|^2) against zero targets (values do not change
    the work). Returns the step as a function of no arguments."""
    import torch

    if kind == "tdn":
        from torch_geometric.data import Batch

        model, batch = calc.model, Batch.from_data_list([calc._data(a) for a in mols])

        def forward():
            out = model(batch, forces=True)
            return out["energy"], out["forces"]
    elif kind == "mace":
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        model = calc.models[0]
        keys = mace_data.KeySpecification(info_keys=calc.info_keys, arrays_keys=calc.arrays_keys)
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(a, key_specification=keys, head_name=calc.head),
                    z_table=calc.z_table, cutoff=calc.r_max, heads=calc.available_heads,
                )
                for a in mols
            ]  # fmt: skip
        batch = torch_geometric.Batch.from_data_list(graphs).to_dict()

        def forward():
            out = model(batch, training=True, compute_force=True)
            return out["energy"], out["forces"]
    else:
        from nequip.data import AtomicDataDict

        model = calc.model
        batch = AtomicDataDict.batched_from_list([calc.atoms_to_data(a) for a in mols])

        def forward():
            out = model(dict(batch))  # the model writes its outputs into the dict
            return out[AtomicDataDict.TOTAL_ENERGY_KEY], out[AtomicDataDict.FORCE_KEY]

    params = [p.requires_grad_(True) for p in model.parameters()]  # calculators freeze them
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        model.train()  # forces keep their graph only in training mode
        optimizer.zero_grad(set_to_none=True)
        energy, forces = forward()
        (energy.pow(2).mean() + forces.pow(2).sum(-1).mean()).backward()
        optimizer.step()

    return step


def _median_s(fn, reps: int) -> float:
    """The median wall time (s) of ``reps`` calls of ``fn``."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_one(
    kind: str, model: Path, backend: str | None, compile: bool, inference_reps: int
) -> dict:
    """One round of one model, in this process: inference atoms/s and MD steps/s, then
    (eager models) the training step in atoms/s, with its package version and
    parameter count."""
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
    n_atoms = sum(len(m) for m in mols)
    result = {
        **describe(kind, calc),
        "first_call_s": first_s,
        "inference_atoms_per_s": n_atoms / _median_s(infer, inference_reps),
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
    if not compile:  # the compiled paths here are the packages' inference paths
        step = training_step(kind, calc, mols)
        step()  # warm-up
        result["train_atoms_per_s"] = n_atoms / _median_s(step, inference_reps)
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
            kind, _, backend, compile = MODELS[name]
            model = trained_model(name)
            cmd = [str(VENV[kind] / "bin" / "python"), str(Path(__file__).resolve()), "time"]
            cmd += [f"--kind={kind}", f"--model={repo_relative(model)}", f"--out={target}"]
            cmd += [f"--inference-reps={inference_reps}"]
            cmd += [f"--backend={backend}"] * (backend is not None) + ["--compile"] * compile
            print(f"round {r}: {name}", flush=True)
            subprocess.run(
                cmd, check=True, env=env, cwd=ROOT,
                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            )  # fmt: skip


def summary() -> dict[str, dict]:
    """Per model: the median over its rounds of every rate and of the first call's time,
    with its rounds, package, parameter count and CPU (from the per-round JSON)."""
    rows = {}
    for name in MODELS:
        rounds = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{name}-r*.json"))]
        if rounds:
            keys = [k for k in rounds[0] if k.endswith("_per_s") or k == "first_call_s"]
            rows[name] = {k: statistics.median(r[k] for r in rounds) for k in keys}
            rows[name]["rounds"] = len(rounds)
            rows[name].update({k: rounds[0][k] for k in ("package", "parameters", "cpu")})
    return rows


def table(rows: dict[str, dict]) -> str:
    """Markdown of :func:`summary`'s rows."""
    lines = [
        "| model | package | parameters | rounds | first call s | inference atoms/s "
        "| training atoms/s | MD 20 atoms steps/s | MD 200-atom box steps/s |",
        "|" + "---|" * 9,
    ]
    for name, r in rows.items():
        train = r.get("train_atoms_per_s")
        lines.append(
            f"| {name} | {r['package']} | {r['parameters']:,} | {r['rounds']} | "
            f"{r['first_call_s']:.1f} | {r['inference_atoms_per_s']:.0f} | "
            f"{'-' if train is None else f'{train:.0f}'} | {r['md_mol20_steps_per_s']:.1f} | "
            f"{r['md_box200_steps_per_s']:.2f} |"
        )
    cpus = sorted({r["cpu"] for r in rows.values()})
    lines.append(f"\nfloat32, one thread pinned; medians over rounds; CPU: {', '.join(cpus)}")
    return "\n".join(lines)


def write_summary() -> str:
    """speed.json beside the per-round files; returns the table."""
    rows = summary()
    _write_json(OUT.parent / "speed.json", rows)
    return table(rows)


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
        missing = [n for n in args.models if trained_model(n) is None]
        if missing:
            p.error(f"trained models missing for {missing}: run train.py for them first")
        run(args.models, args.rounds, args.cpu, args.inference_reps)
        print(write_summary())
    elif args.cmd == "table":
        print(write_summary())
    else:
        result = time_one(args.kind, args.model, args.backend, args.compile, args.inference_reps)
        result.update(kind=args.kind, model=str(args.model), backend=args.backend,
                      compile=args.compile, threads=1, dtype="float32", cpu=cpu_name())  # fmt: skip
        _write_json(args.out, result)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
