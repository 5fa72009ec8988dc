"""MD stability: do a potential's simulations survive? TDN, SchNet and MACE side by side.

A force MAE does not say whether MD runs ("Forces are not enough", Fu et al., TMLR
2023): one atom with a 50 eV/Å error tears a molecule apart in femtoseconds. This runs
what users run, through each package's ASE calculator (score.py's), float32:

- starts: the most relaxed snapshot (lowest reference energy) of each of 16 test
  molecules, a seeded choice among the test split's 200 (``export``), relaxed again by
  each model (BFGS to 0.05 eV/Å, at most 300 steps);
- Langevin NVT (ASE), 0.5 fs steps, friction 0.01/fs, at 300 K and at 600 K, 5 ps
  (10,000 steps); Maxwell-Boltzmann velocities from a seed per (molecule, temperature),
  the same for every model;
- a run collapses at the first step where a bond of the start (a pair closer than 1.2x
  the sum of their covalent radii in the reference geometry) is more than 0.5 Å longer
  or shorter than there, or two atoms are closer than 0.5 Å. A relaxation that already
  does so collapses at 0 ps.

Each (model, molecule, temperature) writes ``docs/results/peers/md/<model>/<mol>-<T>K.json``;
a finished run is skipped, and a killed one resumes from its last state (saved every
0.5 ps under ``runs/peers/md/``). Runs go two at a time, one per core, one thread each.

    .venv/bin/python benchmarks/peers/md_stability.py export
    .venv/bin/python benchmarks/peers/md_stability.py run --models tdn-cp_eager schnet
    .venv/bin/python benchmarks/peers/md_stability.py table
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
from _repo import ROOT, repo_relative  # noqa: E402  (standard library only)
from score import _write_atomic, calculator, cpu_name  # noqa: E402  (runs in every venv)

DATA = ROOT / "runs" / "peers" / "data" / "md" / "starts.extxyz"
OUT = ROOT / "docs" / "results" / "peers" / "md"
STATE = ROOT / "runs" / "peers" / "md"
VENV = {"mace": HERE / ".venv-mace", "tdn": ROOT / ".venv"}
ACCURACY = ROOT / "docs" / "results" / "accuracy"
#: name -> (kind, trained model, TDN backend, compile): RESULTS budget (one epoch),
#: TDN at its default config (with ZBL),
#: seed 0 of each. TDN and MACE run their packages' compiled paths (the same numbers,
#: faster); SchNet is fast eager.
MODELS: dict[str, tuple[str, Path, str | None, bool]] = {
    "tdn-cp_eager": ("tdn", ACCURACY / "tdn-zbl-cp_eager-s0" / "best.pt", "cp_eager", True),
    "tdn-path_shared": (
        "tdn", ACCURACY / "tdn-zbl-path_shared-s0" / "best.pt", "path_shared", True,
    ),
    # section 3's SchNet run, trained again (its checkpoints are not committed): `tdn
    # train` with accuracy.py's schnet overrides, seed=0 output_dir=runs/peers/md/schnet-s0
    "schnet": ("tdn", STATE / "schnet-s0" / "checkpoints" / "best.pt", None, False),
    # section 5's one-epoch MACE-ell1 recipe, trained again for this (train.py's
    # mace_command, seed 0, into runs/peers/md/mace-ell1-s0)
    "mace-ell1": ("mace", STATE / "mace-ell1-s0" / "mace.model", None, True),
}  # fmt: skip
TEMPERATURES = (300, 600)
STEP_FS, FRICTION_PER_FS, PICOSECONDS = 0.5, 0.01, 5.0
BOND_FACTOR, STRETCH_A, CLASH_A = 1.2, 0.5, 0.5
SAVE_EVERY = 1000  # steps (0.5 ps)


# ----------------------------------------------------------------------------- starts
def export(molecules: int = 16, seed: int = 0) -> None:
    """Write the starts: the lowest-energy snapshot of ``molecules`` test molecules."""
    from ase import Atoms
    from ase.io import write

    from tdn_data import load_dataset

    test = load_dataset("embedded", split="test")
    best: dict[str, tuple[float, int]] = {}
    for i in range(len(test)):
        s = test[i]
        e = float(s.energy)
        if s.mol_id not in best or e < best[s.mol_id][0]:
            best[s.mol_id] = (e, i)
    ids = sorted(best)
    chosen = sorted(np.random.default_rng(seed).choice(len(ids), molecules, replace=False))
    frames = []
    for k in chosen:
        s = test[best[ids[k]][1]]
        atoms = Atoms(numbers=s.z.numpy(), positions=s.pos.double().numpy())
        atoms.info["molecule"] = f"mol{ids[k]}"  # a prefix keeps extxyz from reading an int
        frames.append(atoms)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(DATA, lambda t: write(t, frames, format="extxyz"))
    sizes = [len(a) for a in frames]
    print(f"wrote {repo_relative(DATA)}: {molecules} molecules, {min(sizes)}-{max(sizes)} atoms")


def bonds(atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) closer than BOND_FACTOR x their covalent radii sum, and their
    lengths (Å)."""
    from ase.data import covalent_radii

    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < BOND_FACTOR * (r[:, None] + r[None, :]), k=1))
    return i, j, d[i, j]


def collapse(positions: np.ndarray, bond: tuple) -> str | None:
    """Why the geometry ``positions`` [N, 3] (Å) has collapsed against ``bond`` (from
    :func:`bonds` of the start), or None."""
    i, j, d0 = bond
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    change = d[i, j] - d0
    k = int(np.abs(change).argmax()) if len(change) else -1
    if k >= 0 and abs(change[k]) > STRETCH_A:
        how = "stretched" if change[k] > 0 else "shrunk"
        return f"bond {i[k]}-{j[k]} {how} by {abs(change[k]):.2f} Å"
    np.fill_diagonal(d, np.inf)
    if d.min() < CLASH_A:
        a, b = np.unravel_index(d.argmin(), d.shape)
        return f"atoms {a} and {b} {d.min():.2f} Å apart"
    return None


# ----------------------------------------------------------------------------- one run
def simulate(calc, start, temperature: int, seed: int, state_file: Path) -> dict:
    """Relax ``start`` with ``calc``, then Langevin MD at ``temperature`` K until 5 ps or
    a collapse; resumes from ``state_file``. Returns the run's record."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.optimize import BFGS

    bond = bonds(start)
    atoms = start.copy()
    atoms.calc = calc
    atoms.set_constraint(FixCom())  # no drift of the whole molecule (ASE's advice)
    steps = round(PICOSECONDS * 1000 / STEP_FS)
    rng = np.random.default_rng(seed)
    done, temps, wall = 0, [], 0.0
    if state_file.exists():
        state = json.loads(state_file.read_text())
        atoms.positions = np.array(state["positions"])
        atoms.set_momenta(np.array(state["momenta"]))
        rng.bit_generator.state = state["rng"]
        done, temps, wall = state["step"], state["temperatures"], state["wall_s"]
        relax_steps = state["relax_steps"]
    else:
        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=0.05, steps=300)
        relax_steps = int(opt.nsteps)
        why = collapse(atoms.positions, bond)
        if why is not None:
            return _record(0, steps, f"relaxation: {why}", relax_steps, [], 0.0)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
    md = Langevin(
        atoms, STEP_FS * units.fs, temperature_K=temperature,
        friction=FRICTION_PER_FS / units.fs, fixcm=False, rng=rng,
    )  # fmt: skip
    why = None
    while done < steps and why is None:
        t0 = time.perf_counter()
        chunk = min(SAVE_EVERY, steps - done)
        for _ in range(chunk):
            md.run(1)
            done += 1
            why = collapse(atoms.positions, bond)
            if why is not None:
                break
        wall += time.perf_counter() - t0
        temps.append(float(atoms.get_temperature()))
        if why is None and done < steps:
            state = {
                "step": done, "positions": atoms.positions.tolist(),
                "momenta": atoms.get_momenta().tolist(), "rng": rng.bit_generator.state,
                "temperatures": temps, "wall_s": wall, "relax_steps": relax_steps,
            }  # fmt: skip
            _write_atomic(state_file, lambda t, s=state: t.write_text(json.dumps(s)))
    return _record(done, steps, why, relax_steps, temps, wall)


def _record(done: int, steps: int, why: str | None, relax_steps: int, temps, wall) -> dict:
    return {
        "stable": why is None and done == steps,
        "steps": done,
        "time_ps": done * STEP_FS / 1000,
        "collapse": why,
        "relax_steps": relax_steps,
        "temperature_K_at_saves": [round(t, 1) for t in temps],
        "md_wall_s": wall,
        "steps_per_s": done / wall if wall else None,
    }


def worker(name: str, runs: list[tuple[int, int]]) -> None:
    """Run ``runs`` ((molecule index, temperature), ...) of model ``name`` in this venv."""
    from ase.io import read

    kind, model, backend, compile_ = MODELS[name]
    calc = calculator(kind, model, "float32", backend=backend, compile=compile_)
    starts = read(DATA, index=":")
    for k, temperature in runs:
        start = starts[k]
        tag = f"{start.info['molecule']}-{temperature}K"
        target = OUT / name / f"{tag}.json"
        if target.exists():
            continue
        state_file = STATE / name / f"{tag}.state.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        record = simulate(calc, start, temperature, seed=1000 * k + temperature,
                          state_file=state_file)  # fmt: skip
        record.update(model=name, molecule=start.info["molecule"], atoms=len(start),
                      temperature_K=temperature, cpu=cpu_name(), dtype="float32",
                      compile=compile_, checkpoint=repo_relative(model))  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(target, lambda t, r=record: t.write_text(json.dumps(r, indent=1) + "\n"))
        state_file.unlink(missing_ok=True)
        print(f"{name} {tag}: {'stable' if record['stable'] else record['collapse']} "
              f"({record['time_ps']:.2f} ps)", flush=True)  # fmt: skip


# ----------------------------------------------------------------------------- driver
def run(names: list[str], workers: int, cpus: list[int]) -> int:
    """Every pending run of each model in ``names``, ``workers`` pinned processes at a
    time, each in its model's venv."""
    from accuracy import report_failures, run_pinned
    from ase.io import read

    count = len(read(DATA, index=":"))
    failures = []
    for name in names:
        kind = MODELS[name][0]
        runs = [(k, t) for t in TEMPERATURES for k in range(count)]
        shares = [runs[w::workers] for w in range(workers)]
        log = STATE / name / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)

        def one(share: list, cpu: int, name=name, kind=kind, log=log) -> None:
            cmd = [str(VENV[kind] / "bin" / "python"), __file__, "worker", "--model", name,
                   "--runs", ",".join(f"{k}:{t}" for k, t in share)]  # fmt: skip
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            pin = lambda: os.sched_setaffinity(0, {cpu})  # noqa: E731
            with log.open("a") as f:
                subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env,
                               cwd=ROOT, preexec_fn=pin)  # fmt: skip

        failures += run_pinned([(s,) for s in shares if s], one, lambda s, n=name: n,
                               workers, cpus, log.parent)  # fmt: skip
        print(f"{name}: {len(list((OUT / name).glob('*.json')))} runs done", flush=True)
    return report_failures(failures)


def summary() -> dict[str, dict]:
    """Per model and temperature: runs, stable fraction, mean time to collapse."""
    rows: dict[str, dict] = {}
    for folder in sorted(p for p in OUT.glob("*") if p.is_dir()):
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        for t in TEMPERATURES:
            rs = [r for r in records if r["temperature_K"] == t]
            if not rs:
                continue
            failed = [r["time_ps"] for r in rs if not r["stable"]]
            rates = [r["steps_per_s"] for r in rs if r["steps_per_s"]]
            rows[f"{folder.name}@{t}"] = {
                "model": folder.name, "temperature_K": t, "runs": len(rs),
                "stable": len(rs) - len(failed),
                "stable_fraction": (len(rs) - len(failed)) / len(rs),
                "mean_ps_to_collapse": statistics.mean(failed) if failed else None,
                "median_steps_per_s": statistics.median(rates) if rates else None,
                "cpu": rs[0]["cpu"],
            }  # fmt: skip
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| model | T (K) | runs | stable | stable fraction | mean time to collapse (ps) "
        "| MD steps/s (1 thread) |",
        "|" + "---|" * 7,
    ]
    for r in rows.values():
        ttc = "-" if r["mean_ps_to_collapse"] is None else f"{r['mean_ps_to_collapse']:.2f}"
        rate = "-" if r["median_steps_per_s"] is None else f"{r['median_steps_per_s']:.0f}"
        lines.append(
            f"| {r['model']} | {r['temperature_K']} | {r['runs']} | {r['stable']} | "
            f"{r['stable_fraction']:.0%} | {ttc} | {rate} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  .venv/bin/python benchmarks/peers/md_stability.py run "
        "--models tdn-cp_eager mace-ell1",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the 16 starting molecules (.venv)")
    e.add_argument("--molecules", type=int, default=16)
    r = sub.add_parser("run", help="every pending run of the models, two at a time")
    r.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    r.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    r.add_argument("--cpus", nargs="+", type=int, help="cores to pin to (default: all)")
    sub.add_parser("table", help="print the table, write md.json")
    w = sub.add_parser("worker", help="runs of one model in this venv (run calls it)")
    w.add_argument("--model", required=True, choices=list(MODELS))
    w.add_argument("--runs", required=True, help="molecule:temperature,...")
    args = p.parse_args(argv)
    if args.cmd == "export":
        if args.molecules < 1:
            p.error(f"--molecules: expected a positive integer, got {args.molecules}")
        export(args.molecules)
    elif args.cmd == "run":
        if not DATA.exists():
            p.error(f"{repo_relative(DATA)} missing: run `md_stability.py export` first")
        missing = [n for n in args.models if not MODELS[n][1].exists()]
        if missing:
            where = "; ".join(f"{n}: {repo_relative(MODELS[n][1])}" for n in missing)
            p.error(f"trained models missing: {where}")
        if args.workers < 1:
            p.error(f"--workers: expected a positive integer, got {args.workers}")
        status = run(args.models, args.workers, args.cpus or sorted(os.sched_getaffinity(0)))
        print(table(summary()))
        return status
    elif args.cmd == "table":
        rows = summary()
        OUT.mkdir(parents=True, exist_ok=True)
        _write_atomic(OUT / "md.json", lambda t: t.write_text(json.dumps(rows, indent=1) + "\n"))
        print(table(rows))
    else:
        runs = [(int(k), int(t)) for k, t in (x.split(":") for x in args.runs.split(","))]
        worker(args.model, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
