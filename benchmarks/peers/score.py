"""Score one trained potential, TDN or a peer, on the exported snapshots: THE evaluator.

Every model of the peer comparison is scored by this one file, through its ASE
calculator, one structure at a time, on the same extxyz files (``export.py``). It needs
numpy, ASE and the model's own package only, so it runs unchanged in the project's
``.venv`` (TDN) and in the peers' venvs (MACE, NequIP). What it reports, per file:

- energies: MAE and RMSE per structure (eV) and per atom (eV/atom), the median per-atom
  error (the offset between two energy zeros) and the MAE once it is removed;
- forces, per Cartesian component: MAE and RMSE (eV/Å);
- the tail: the error vector |F_pred - F_ref| per atom, its 99th and 99.9th percentiles
  and its maximum, with the frame, atom and element where the maximum sits. A potential
  whose MAE is fine but whose worst atom is off by eV/Å fails in MD.

Writes ``<out>/<set>.json`` (the metrics) and ``<out>/<set>.npz`` (every prediction, for
later analysis); a set whose JSON exists is skipped, so a killed run resumes.

    python benchmarks/peers/score.py --kind tdn \\
        --model docs/results/accuracy/tdn-cp_eager-s0/best.pt --data runs/peers/data --out /tmp/s
    benchmarks/peers/.venv-mace/bin/python benchmarks/peers/score.py --kind mace \\
        --model runs/peers/mace-epochs-s0/mace.model --data runs/peers/data --out /tmp/mace
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from ase.io import read

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
KINDS = ("tdn", "mace", "nequip")
DEFAULT_SETS = ("test", "ood_md17_ethanol", "ood_md17_aspirin", "ood_iso17")


def cpu_name() -> str:
    """The CPU model, with its family/model numbers (VMs often hide the marketing name)."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "unknown CPU")
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def calculator(
    kind: str, model: Path, dtype: str, backend: str | None = None, compile: bool = False
):
    """The ASE calculator of a trained ``model`` of package ``kind``, on the CPU.

    ``dtype``: "float32" or "float64" for TDN and MACE, which cast a model at load;
    NequIP runs in the dtype its model was trained in (``model_dtype``).
    ``backend`` (TDN only): the tensor-product backend to run it with (None: the
    checkpoint's). ``compile``: the package's own ``torch.compile`` path (TDN's
    ``compile=True``, MACE's ``compile_mode="default"``; NequIP compiles ahead of time
    with ``nequip-compile`` instead, not offered here).
    """
    if backend is not None and kind != "tdn":
        raise ValueError(f"backend: only TDN has tensor-product backends, not {kind}")
    if kind == "tdn":
        import torch

        from tdn_models import TDNCalculator

        return TDNCalculator(model, backend=backend, dtype=getattr(torch, dtype), compile=compile)
    if kind == "mace":
        from mace.calculators import MACECalculator

        fast = {"compile_mode": "default"} if compile else {}
        return MACECalculator(model_paths=str(model), device="cpu", default_dtype=dtype, **fast)
    if compile:
        raise ValueError("compile: NequIP compiles ahead of time (nequip-compile), not here")
    if kind == "nequip":
        from nequip.integrations.ase import NequIPCalculator

        # a training checkpoint, eager (compiled models are for speed, not for scoring)
        return NequIPCalculator._from_saved_model(
            str(model), device="cpu", chemical_species_to_atom_type_map=True
        )
    raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")


def describe(kind: str, calc) -> dict:
    """The package version and the trained parameter count of ``calc``'s model."""
    import importlib.metadata

    package = {"tdn": "tdn-models", "mace": "mace-torch", "nequip": "nequip"}[kind]
    model = calc.models[0] if kind == "mace" else calc.model
    return {
        "package": f"{package} {importlib.metadata.version(package)}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def predict(frames: list, calc, desc: str | None = None) -> dict:
    """Reference and predicted values over ``frames`` (ASE Atoms carrying REF_* labels):
    ``energy``/``energy_pred`` [B] eV, ``atoms`` [B], ``z`` [N], ``forces``/``forces_pred``
    [N, 3] eV/Å, ``frame`` [N] (each atom's frame index); numpy float64. ``desc``: print
    progress under this name, every tenth of the frames."""
    out: dict[str, list] = {k: [] for k in ("energy", "energy_pred", "atoms", "z", "f", "f_pred")}
    t0, step = time.perf_counter(), max(1, len(frames) // 10)
    for i, atoms in enumerate(frames):
        ref_e, ref_f = atoms.info[ENERGY_KEY], atoms.arrays[FORCES_KEY].copy()
        atoms.calc = calc
        out["energy"].append(ref_e)
        out["energy_pred"].append(atoms.get_potential_energy())
        out["atoms"].append(len(atoms))
        out["z"].append(atoms.numbers.copy())
        out["f"].append(ref_f)
        out["f_pred"].append(atoms.get_forces())
        if desc is not None and ((i + 1) % step == 0 or i + 1 == len(frames)):
            print(f"  {desc}: {i + 1}/{len(frames)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not out["energy"]:
        raise ValueError("frames: no structures to score")
    p = {k: np.asarray(out[k], dtype=np.float64) for k in ("energy", "energy_pred")}
    p["atoms"] = np.asarray(out["atoms"])
    p["z"] = np.concatenate(out["z"])
    p["forces"] = np.concatenate(out["f"]).astype(np.float64)
    p["forces_pred"] = np.concatenate(out["f_pred"]).astype(np.float64)
    p["frame"] = np.repeat(np.arange(len(p["atoms"])), p["atoms"])
    return p


def metrics(p: dict) -> dict:
    """Energy, force and force-tail errors of the predictions ``p`` (see :func:`predict`).

    Units: eV, eV/atom, eV/Å. The median per-atom energy error is the constant shift that
    minimizes the MAE; the debiased MAE is the number to read when the labels come from
    another level of theory (another energy zero) than the training data.
    """
    de = p["energy_pred"] - p["energy"]
    de_atom = de / p["atoms"]
    bias = float(np.median(de_atom))
    df = p["forces_pred"] - p["forces"]
    per_atom = np.linalg.norm(df, axis=1)  # [N] eV/Å
    worst = int(np.argmax(per_atom))
    frame = int(p["frame"][worst])
    first = int(np.searchsorted(p["frame"], frame))
    return {
        "structures": len(de),
        "atoms": int(p["atoms"].sum()),
        "energy_mae_eV": float(np.abs(de).mean()),
        "energy_rmse_eV": float(np.sqrt((de**2).mean())),
        "energy_mae_eV_per_atom": float(np.abs(de_atom).mean()),
        "energy_rmse_eV_per_atom": float(np.sqrt((de_atom**2).mean())),
        "energy_median_error_eV_per_atom": bias,
        "energy_mae_debiased_eV_per_atom": float(np.abs(de_atom - bias).mean()),
        "force_mae_eV_per_A": float(np.abs(df).mean()),
        "force_rmse_eV_per_A": float(np.sqrt((df**2).mean())),
        "force_atom_p99_eV_per_A": float(np.percentile(per_atom, 99)),
        "force_atom_p999_eV_per_A": float(np.percentile(per_atom, 99.9)),
        "force_worst_atom_eV_per_A": float(per_atom[worst]),
        "force_worst_atom": {
            "frame": frame,
            "atom": worst - first,
            "z": int(p["z"][worst]),
            "ref_norm_eV_per_A": float(np.linalg.norm(p["forces"][worst])),
        },
    }


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def score(kind: str, model: Path, data: Path, out: Path, sets: Iterable[str], dtype: str) -> dict:
    """Score ``model`` on every ``<data>/<set>.extxyz``; returns {set: metrics}."""
    if not model.exists():
        raise FileNotFoundError(f"model: {model} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    calc, results = None, {}
    for name in sets:
        target = out / f"{name}.json"
        if target.exists():
            results[name] = json.loads(target.read_text())
            continue
        path = data / f"{name}.extxyz"
        if not path.exists():
            raise FileNotFoundError(f"--sets: {path} does not exist (run export.py first)")
        frames = read(path, index=":", format="extxyz")
        calc = calc or calculator(kind, model, dtype)
        t0 = time.perf_counter()
        p = predict(frames, calc, desc=name)
        m = metrics(p)
        m.update(
            **describe(kind, calc),
            kind=kind,
            model=str(model),
            dtype="as trained" if kind == "nequip" else dtype,
            seconds=time.perf_counter() - t0,
            file=str(path),
        )
        _write_atomic(out / f"{name}.npz", lambda t, p=p: np.savez_compressed(t, **p))
        _write_atomic(target, lambda t, m=m: t.write_text(json.dumps(m, indent=2) + "\n"))
        print(
            f"{name}: E MAE {1e3 * m['energy_mae_eV_per_atom']:.2f} meV/atom "
            f"(debiased {1e3 * m['energy_mae_debiased_eV_per_atom']:.2f}), "
            f"F MAE {1e3 * m['force_mae_eV_per_A']:.1f} / RMSE {1e3 * m['force_rmse_eV_per_A']:.1f}"
            f" meV/Å, worst atom {m['force_worst_atom_eV_per_A']:.3f} eV/Å",
            flush=True,
        )
        results[name] = m
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/peers/score.py --kind tdn --model best.pt "
        "--data runs/peers/data --out scores/",
    )
    p.add_argument("--kind", required=True, choices=KINDS, help="the model's package")
    p.add_argument("--model", required=True, type=Path, help="checkpoint or model file")
    p.add_argument("--data", type=Path, default=Path("runs/peers/data"), help="export.py's folder")
    p.add_argument("--out", required=True, type=Path, help="folder for <set>.json and .npz")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), help="files to score")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads: expected a positive integer, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    try:
        score(args.kind, args.model, args.data, args.out, args.sets, args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"score.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
