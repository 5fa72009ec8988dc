"""Generator of the embedded relaxation dataset: GFN2-xTB relaxations of RDKit seeds.

Seeds are the SMILES strings that RDKit ships in ``Data/NCI/first_5K.smi``. Each seed
that passes the filter (neutral, elements in {H, C, N, O, F, S, Cl}, at most
:data:`MAX_ATOMS` atoms with hydrogens, one fragment, no radicals) is embedded in 3D
with ETKDG (fixed random seed per molecule), displaced by a seeded Gaussian, and
relaxed with ASE's BFGS on tblite's GFN2-xTB. Every optimizer step is kept.

With ``source="qm9"`` the seeds are instead QM9 molecules (H, C, N, O, F; neutral,
closed-shell) read through :mod:`tdn_data.qm9` (optional ``qm9pack``) and filtered by
``max_atoms``: the start geometry is the QM9 equilibrium geometry (Å) plus the same
seeded Gaussian displacement, relaxed the same way (:func:`relax_atoms`). Seed reading
and filtering live in :mod:`tdn_data._seeds`.

The labels are **semi-empirical GFN2-xTB, not DFT**. They are written in the
PubChemQCR LMDB schema so the embedded data goes through the same reader as the real
dataset:

- key: the seed's 0-based index in :func:`nci_smiles`, zero-padded to 9 digits
  (``b'000000042'``); for ``source="qm9"`` the **QM9 index**, zero-padded the same
  way (``b'000000001'`` is methane). **Neither is a PubChem CID.**
- value: ``{'pm3': None, 'hf': None, 'DFT_1st': [step, ...], 'DFT_2nd': None,
  'meta': {...}}``; the trajectory sits in ``DFT_1st`` only because that is the stage
  the reader trains on. Each step is ``{'coordinates': [{'atom', 'charge', 'x', 'y',
  'z'}] (Å), 'energy': Hartree, 'gradient': [{'atom', 'charge', 'dx', 'dy', 'dz'}]
  (Hartree/Bohr)}``; ``charge`` is the RDKit formal charge of the atom (0 for QM9).
  ``meta`` holds ``smiles``, ``source``, ``index`` for NCI seeds and ``source``
  (``"qm9pack QM9"``), ``qm9_index`` (no SMILES) for QM9 seeds.

Output layout of :func:`generate_dataset` in ``out_dir``: ``config.json`` (the
parameters; a restart with different ones is refused), ``shard_XXXXX.lmdb`` (via
:func:`~tdn_data._lmdb_io.write_lmdb`, atomic) and ``shard_XXXXX.json`` (per-shard
summary, written atomically after the shard, so its presence marks a complete shard).
A killed run, restarted with the same arguments, skips the complete shards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tdn_data._io import atomic_write
from tdn_data._lmdb_io import write_lmdb
from tdn_data._seeds import (
    ALLOWED_ELEMENTS,
    MAX_ATOMS,
    QM9_SOURCE,
    SOURCE,
    QM9Seed,
    check_seed,
    displace,
    embed,
    etkdg_conformer,
    nci_smiles,
    qm9_seeds,
    select_seeds,
)

__all__ = [
    "ALLOWED_ELEMENTS",
    "LEVEL",
    "MAX_ATOMS",
    "QM9_SOURCE",
    "SOURCE",
    "QM9Seed",
    "check_seed",
    "displace",
    "embed",
    "etkdg_conformer",
    "generate_dataset",
    "nci_smiles",
    "qm9_seeds",
    "relax_atoms",
    "relax_trajectory",
    "select_seeds",
]

LEVEL = "GFN2-xTB"

# Unit conversions: tblite.ase converts its native Hartree and Hartree/Bohr results with
# ase.units (CODATA 2014), so converting back with the same constants recovers tblite's
# numbers up to float rounding (the reader's 27.2114/0.529177 agrees to ~1e-6 relative).
_HARTREE_EV = 27.211386024367243  # ase.units.Hartree, CODATA 2014
_BOHR_ANG = 0.5291772105638411  # ase.units.Bohr, CODATA 2014

# Thread settings for workers: one BLAS/OpenMP thread per process keeps two processes
# from oversubscribing two cores, and single-threaded reductions make results
# bit-reproducible.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """Run tblite with one OpenMP thread in this thread, restoring the count afterwards.

    Threaded reductions change the last bits of energies between runs, so every
    relaxation runs single-threaded (parallelism comes from processes). tblite links
    the system libgomp; if it cannot be found, the environment's setting stands.
    """
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        before = int(gomp.omp_get_max_threads())
    except (OSError, AttributeError):
        yield
        return
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)


def _molecule_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Per-molecule seed sequence: independent of shard layout and process count."""
    return np.random.SeedSequence([seed, index])


def _step(
    symbols: list[str],
    charges: list[int],
    pos_ang: np.ndarray,
    energy_ev: float,
    forces_ev_ang: np.ndarray,
    precision: str = "float64",
) -> dict:
    """One PubChemQCR step from ASE units (eV, eV/Å) to Å, Hartree, Hartree/Bohr.

    ``precision="float32"`` rounds coordinates and gradient components to float32
    (1e-7 relative; the energy stays float64): their doubles then end in zero bits,
    which gzip stores in about half the bytes.
    """
    grad = -np.asarray(forces_ev_ang, dtype=np.float64) * (_BOHR_ANG / _HARTREE_EV)
    if precision == "float32":
        pos_ang, grad = np.float32(pos_ang), np.float32(grad)
    return {
        "coordinates": [
            {"atom": s, "charge": q, "x": float(p[0]), "y": float(p[1]), "z": float(p[2])}
            for s, q, p in zip(symbols, charges, pos_ang, strict=True)
        ],
        "energy": float(energy_ev) / _HARTREE_EV,
        "gradient": [
            {"atom": s, "charge": q, "dx": float(g[0]), "dy": float(g[1]), "dz": float(g[2])}
            for s, q, g in zip(symbols, charges, grad, strict=True)
        ],
    }


def relax_trajectory(
    smiles: str,
    seed: int,
    *,
    fmax: float = 0.05,
    max_steps: int = 200,
    displacement: float = 0.1,
    maxstep: float = 0.2,
    precision: str = "float64",
) -> list[dict]:
    """Embed ``smiles`` with ETKDG and relax it (see :func:`relax_atoms`).

    Args:
        smiles: the molecule (hydrogens are added).
        seed: integer seed for the embedding and the displacement.
        fmax, max_steps, displacement, maxstep, precision: as in :func:`relax_atoms`.

    Returns:
        A list of step dicts (Å, Hartree, Hartree/Bohr), the start geometry first.
        The labels are GFN2-xTB (semi-empirical), not DFT.

    Raises:
        ValueError: embedding failed, or a bad ``precision``. Exceptions from tblite
        (e.g. SCF not converged) propagate.
    """
    _check_precision(precision)
    symbols, charges, pos = etkdg_conformer(smiles, seed)
    return relax_atoms(
        symbols,
        charges,
        pos,
        seed,
        fmax=fmax,
        max_steps=max_steps,
        displacement=displacement,
        maxstep=maxstep,
        precision=precision,
    )


def _check_precision(precision: str) -> None:
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision: expected 'float64' or 'float32', got {precision!r}")


def relax_atoms(
    symbols: list[str],
    charges: list[int],
    positions: np.ndarray,
    seed: int,
    *,
    fmax: float = 0.05,
    max_steps: int = 200,
    displacement: float = 0.1,
    maxstep: float = 0.2,
    precision: str = "float64",
) -> list[dict]:
    """Displace a geometry, relax it with BFGS on GFN2-xTB and return every step.

    The molecule is run neutral and closed-shell (total charge 0, singlet); ``charges``
    are the per-atom formal charges stored with each atom (0 for QM9).

    Args:
        symbols: element symbols.
        charges: per-atom formal charges (stored, not used by the calculation).
        positions: start geometry before the displacement, shape (n, 3), Å.
        seed: integer seed of the Gaussian displacement (see :func:`displace`).
        fmax: convergence threshold on the largest atomic force, eV/Å.
        max_steps: maximum number of BFGS steps; the trajectory has at most
            ``max_steps + 1`` snapshots (the start included). An unconverged
            trajectory is still returned.
        displacement: Gaussian displacement of the start geometry, Å.
        maxstep: BFGS step cap (largest atomic move per step), Å.
        precision: ``"float64"`` or ``"float32"``: the precision coordinates and
            gradients are stored at (see :func:`_step`); the energy is always float64.

    Returns:
        A list of PubChemQCR step dicts (Å, Hartree, Hartree/Bohr), the displaced
        start geometry first. The labels are GFN2-xTB (semi-empirical), not DFT.

    Raises:
        ValueError: bad ``precision`` or mismatched lengths. Exceptions from tblite
        (e.g. SCF not converged) propagate.
    """
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    _check_precision(precision)
    symbols, charges = list(symbols), list(charges)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (len(symbols), 3) or len(charges) != len(symbols):
        raise ValueError(
            f"{len(symbols)} symbols, {len(charges)} charges and positions of shape "
            f"{pos.shape}: expected (n, 3) positions and n of each"
        )
    pos = displace(pos, seed, displacement)
    atoms = Atoms(symbols=symbols, positions=pos)
    # verbosity=0 silences tblite's per-call printout; charge 0 / closed shell.
    atoms.calc = TBLite(method=LEVEL, charge=0.0, multiplicity=1, verbosity=0)
    steps: list[dict] = []

    def record() -> None:
        # Called by the optimizer after the forces of the current geometry are
        # computed (start included), so the energy below is cached, not recomputed.
        steps.append(
            _step(
                symbols,
                charges,
                atoms.get_positions(),
                atoms.get_potential_energy(),
                atoms.get_forces(),
                precision,
            )
        )

    opt = BFGS(atoms, maxstep=maxstep, logfile=None)
    opt.attach(record, interval=1)
    with _one_openmp_thread():
        opt.run(fmax=fmax, steps=max_steps)
    return steps


def _max_force(step: dict) -> float:
    """Largest atomic force norm of a step, eV/Å."""
    g = np.array([[a["dx"], a["dy"], a["dz"]] for a in step["gradient"]])
    return float(np.linalg.norm(g, axis=1).max() * _HARTREE_EV / _BOHR_ANG)


@contextlib.contextmanager
def _single_thread_env() -> Iterator[None]:
    """Set one-thread variables in os.environ while worker processes are spawned.

    Spawned children copy the environment at start, before they import numpy or
    tblite, so their BLAS and OpenMP runtimes start single-threaded.
    """
    saved = {var: os.environ.get(var) for var in _THREAD_ENV}
    os.environ.update({var: "1" for var in _THREAD_ENV})
    try:
        yield
    finally:
        for var, val in saved.items():
            if val is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = val


def _process_molecule(
    task: tuple[int, str | QM9Seed, dict],
) -> tuple[int, dict | None, str | None, float]:
    """Worker: (key, seed molecule, params) -> (key, value or None, error or None, seconds).

    The seed molecule is a SMILES (NCI or custom list; key = list index) or a
    :class:`QM9Seed` (key = QM9 index).
    """
    index, mol, params = task
    t0 = time.perf_counter()
    seed = int(_molecule_seed(params["seed"], index).generate_state(1)[0])
    kw = {
        "fmax": params["fmax"],
        "max_steps": params["max_steps"],
        "displacement": params["displacement"],
        "precision": params["precision"],
    }
    try:
        if isinstance(mol, QM9Seed):
            steps = relax_atoms(mol.symbols, [0] * len(mol.symbols), mol.positions, seed, **kw)
        else:
            steps = relax_trajectory(mol, seed, **kw)
        if not steps:
            raise RuntimeError("empty trajectory")
    except Exception as exc:  # any failure is recorded in the shard summary, never silent
        return index, None, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - t0
    converged = _max_force(steps[-1]) <= params["fmax"]
    if isinstance(mol, QM9Seed):
        meta = {
            "source": QM9_SOURCE,
            "qm9_index": mol.qm9_index,
            "level": LEVEL,
            "converged": converged,
            "key_is_pubchem_cid": False,
        }
    else:
        meta = {
            "smiles": mol,
            "source": SOURCE,
            "index": index,
            "level": LEVEL,
            "converged": converged,
            "key_is_pubchem_cid": False,
        }
    value = {"pm3": None, "hf": None, "DFT_1st": steps, "DFT_2nd": None, "meta": meta}
    return index, value, None, time.perf_counter() - t0


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename (never half-written)."""
    text = json.dumps(data, indent=1, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(text))


def _key(index: int) -> str:
    return f"{index:09d}"


def _shard_complete(out: Path, shard: int, keys: list[str]) -> bool:
    """A shard is complete if its summary exists (written last) and covers ``keys``."""
    summary = out / f"shard_{shard:05d}.json"
    if not (summary.exists() and (out / f"shard_{shard:05d}.lmdb").exists()):
        return False
    try:
        return json.loads(summary.read_text()).get("requested") == keys
    except (OSError, ValueError):
        return False


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    num_molecules: int,
    first: int = 0,
    shard_size: int = 50,
    processes: int = 2,
    seed: int = 0,
    fmax: float = 0.05,
    max_steps: int = 200,
    displacement: float = 0.1,
    max_atoms: int = MAX_ATOMS,
    precision: str = "float64",
    smiles: list[str] | None = None,
    source: str = "nci",
    progress: bool = True,
) -> dict:
    """Generate GFN2-xTB relaxation trajectories in PubChemQCR LMDB shards (see module doc).

    Args:
        out_dir: output directory (created).
        num_molecules: number of accepted seeds to relax (fewer if the list runs out).
        first: index in the seed list where the scan starts.
        shard_size: molecules per shard (``shard_XXXXX.lmdb`` + ``.json``).
        processes: worker processes (each with one thread); 0 runs in this process
            (for tests and debugging; the thread count is then the caller's).
        seed: global seed; each molecule's seed derives from (seed, its index).
        fmax: BFGS convergence threshold, eV/Å.
        max_steps: maximum BFGS steps per molecule.
        displacement: Gaussian displacement of the start geometry, Å.
        max_atoms: largest accepted seed, atoms including hydrogens.
        precision: storage precision of coordinates and gradients (see
            :func:`relax_trajectory`).
        smiles: seed list (default :func:`nci_smiles`); keys are indices into it.
            Only with ``source="nci"``.
        source: ``"nci"`` (RDKit's NCI SMILES, ETKDG start geometries; keys are
            indices into the SMILES list) or ``"qm9"`` (QM9 molecules through
            :mod:`tdn_data.qm9`, needs qm9pack; the start geometry is the QM9
            equilibrium geometry plus the same seeded displacement; keys are **QM9
            indices**, not PubChem CIDs; ``first`` is a row position in QM9 order and
            each molecule's seed derives from (seed, QM9 index)). ``config.json``
            records it, so one ``out_dir`` never mixes sources.
        progress: show a tqdm progress bar over molecules.

    Returns:
        Summary dict: seeds accepted, skip counts by reason, shards written and reused,
        and for the shards computed in this call: molecules written and failed (with
        errors), snapshots, wall seconds. Also written to ``out_dir/summary.json``;
        per-shard counts are in ``shard_XXXXX.json``.

    Raises:
        ValueError: ``out_dir`` holds a run with different parameters (or another
            source), an unknown ``source``, or ``smiles`` with ``source="qm9"``.
        tdn_data.qm9.QM9Unavailable: ``source="qm9"`` without qm9pack installed.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source not in ("nci", "qm9"):
        raise ValueError(f"source: expected 'nci' or 'qm9', got {source!r}")
    if source == "qm9" and smiles is not None:
        raise ValueError("smiles: a custom SMILES list needs source='nci'")
    params = {
        "seed": seed,
        "fmax": fmax,
        "max_steps": max_steps,
        "displacement": displacement,
        "precision": precision,
    }
    # Shard i is always the same molecules for the same (seeds, first, shard_size), so a
    # restart with other settings would mix incompatible shards: refuse it.
    # The "source" entry is what tells the sources apart (the NCI value is unchanged).
    config_source = QM9_SOURCE if source == "qm9" else SOURCE if smiles is None else "custom"
    config = {
        **params,
        "first": first,
        "shard_size": shard_size,
        "max_atoms": max_atoms,
        "source": config_source,
        "level": LEVEL,
    }
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != config:
            raise ValueError(f"{out} holds a run with other parameters: {old} != {config}")
    else:
        _write_json_atomic(cfg_path, config)

    t0 = time.perf_counter()
    mols: dict[int, str | QM9Seed]
    if source == "qm9":
        qm9, skipped, seeds_total = qm9_seeds(first, num_molecules, max_atoms)
        chosen = [m.qm9_index for m in qm9]
        mols = {m.qm9_index: m for m in qm9}
    else:
        seeds = nci_smiles() if smiles is None else list(smiles)
        seeds_total = len(seeds)
        chosen, skipped = select_seeds(seeds, first, num_molecules, max_atoms)
        mols = {i: seeds[i] for i in chosen}
    shards = [chosen[i : i + shard_size] for i in range(0, len(chosen), shard_size)]
    pending = [
        s for s, idx in enumerate(shards) if not _shard_complete(out, s, [_key(i) for i in idx])
    ]
    tasks = [(i, mols[i], params) for s in pending for i in shards[s]]

    results: dict[int, tuple[dict | None, str | None, float]] = {}
    shard_of = {i: s for s in pending for i in shards[s]}
    remaining = {s: len(shards[s]) for s in pending}
    totals = {"written": 0, "failed": 0, "snapshots": 0}
    failures: dict[str, str] = {}

    def finish(s: int) -> None:
        entries = []
        shard_fail: dict[str, str] = {}
        snaps, seconds = 0, 0.0
        for i in shards[s]:
            value, err, sec = results.pop(i)
            seconds += sec
            if value is None:
                shard_fail[_key(i)] = err or "unknown"
            else:
                entries.append((_key(i).encode(), value))
                snaps += len(value["DFT_1st"])
        write_lmdb(out / f"shard_{s:05d}.lmdb", sorted(entries, key=lambda e: e[0]))
        summary = {
            "requested": [_key(i) for i in shards[s]],
            "written": len(entries),
            "failed": shard_fail,
            "snapshots": snaps,
            "worker_seconds": round(seconds, 3),  # timing lives here, not in the LMDB values
            "level": LEVEL,
        }
        _write_json_atomic(out / f"shard_{s:05d}.json", summary)
        totals["written"] += len(entries)
        totals["failed"] += len(shard_fail)
        totals["snapshots"] += snaps
        failures.update(shard_fail)

    bar = tqdm(total=len(tasks), desc="relaxing", unit="mol", disable=not progress)
    pool: ProcessPoolExecutor | None = None
    if processes <= 0:
        it = map(_process_molecule, tasks)
    else:
        # spawn, not fork: a forked child inherits the parent's OpenMP runtime, which is
        # not fork-safe once used. The executor raises BrokenProcessPool if a worker dies
        # (multiprocessing.Pool hangs). The caller's __main__ must be importable.
        pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"))
        with _single_thread_env():  # workers are started by the submissions in map
            it = pool.map(_process_molecule, tasks)
    try:
        # map is ordered, so shards finish in order and are written as soon as done.
        for index, value, err, sec in it:
            results[index] = (value, err, sec)
            bar.update(1)
            s = shard_of[index]
            remaining[s] -= 1
            if remaining[s] == 0:
                finish(s)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    summary = {
        "seeds_total": seeds_total,  # QM9: the rows read (a partial read stops early)
        "seeds_accepted": len(chosen),
        "seeds_skipped": skipped,
        "shards": len(shards),
        "shards_reused": len(shards) - len(pending),
        "shards_written": len(pending),
        "molecules_written": totals["written"],
        "molecules_failed": totals["failed"],
        "failures": failures,
        "snapshots_written": totals["snapshots"],
        "seconds": time.perf_counter() - t0,
        "level": LEVEL,
    }
    if progress and (skipped or failures):
        print(f"generate_dataset: seeds skipped by reason {skipped}; {len(failures)} failed")
    _write_json_atomic(out / "summary.json", summary)
    return summary
