"""Generator of the embedded relaxation dataset: GFN2-xTB relaxations of RDKit seeds.

Seeds are the SMILES strings that RDKit ships in ``Data/NCI/first_5K.smi``. Each seed
that passes the filter (neutral, elements in {H, C, N, O, F, S, Cl}, at most
:data:`MAX_ATOMS` atoms with hydrogens, one fragment, no radicals) is embedded in 3D
with ETKDG (fixed random seed per molecule), displaced by a seeded Gaussian, and
relaxed with ASE's BFGS on tblite's GFN2-xTB. Every optimizer step is kept.

The labels are **semi-empirical GFN2-xTB, not DFT**. They are written in the
PubChemQCR LMDB schema so the embedded data goes through the same reader as the real
dataset:

- key: the seed's 0-based index in :func:`nci_smiles`, zero-padded to 9 digits
  (``b'000000042'``). **It is not a PubChem CID.**
- value: ``{'pm3': None, 'hf': None, 'DFT_1st': [step, ...], 'DFT_2nd': None,
  'meta': {...}}``; the trajectory sits in ``DFT_1st`` only because that is the stage
  the reader trains on. Each step is ``{'coordinates': [{'atom', 'charge', 'x', 'y',
  'z'}] (Å), 'energy': Hartree, 'gradient': [{'atom', 'charge', 'dx', 'dy', 'dz'}]
  (Hartree/Bohr)}``; ``charge`` is the RDKit formal charge of the atom.

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
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tdn_data._lmdb_io import write_lmdb

#: Elements a seed may contain (what the NCI set has that GFN2-xTB handles well).
ALLOWED_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "S", "Cl"})
#: Maximum atom count of a seed, hydrogens included.
MAX_ATOMS = 40
SOURCE = "rdkit NCI first_5K"
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


def nci_smiles() -> list[str]:
    """SMILES of RDKit's bundled ``Data/NCI/first_5K.smi`` in file order (no filtering)."""
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(line.split()[0])
    return out


def check_seed(smiles: str, max_atoms: int = MAX_ATOMS) -> str | None:
    """Why ``smiles`` is rejected as a seed (a short reason), or None if it is accepted.

    Accepted: parses, total formal charge 0, no radical electrons (GFN2-xTB is run
    closed-shell), elements in :data:`ALLOWED_ELEMENTS`, at most ``max_atoms``
    atoms including hydrogens, a single fragment (salts and mixtures are rejected).
    """
    from rdkit import Chem, rdBase

    # Rejects are counted by reason; RDKit's own parse errors would only be noise.
    blocker = rdBase.BlockLogs()  # noqa: F841 (logging is restored when it is freed)
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return "unparsable"
    if Chem.GetFormalCharge(mol) != 0:
        return "charged"
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return "radical"
    if any(a.GetSymbol() not in ALLOWED_ELEMENTS for a in mol.GetAtoms()):
        return "elements"
    if len(Chem.GetMolFrags(mol)) != 1:
        return "fragments"
    if mol.GetNumAtoms() + sum(a.GetTotalNumHs() for a in mol.GetAtoms()) > max_atoms:
        return "too_many_atoms"
    return None


def _molecule_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Per-molecule seed sequence: independent of shard layout and process count."""
    return np.random.SeedSequence([seed, index])


def embed(
    smiles: str, seed: int, displacement: float = 0.1
) -> tuple[list[str], list[int], np.ndarray]:
    """ETKDG conformer of ``smiles`` plus a seeded Gaussian displacement.

    Args:
        smiles: the molecule.
        seed: integer seed for ETKDG and for the displacement.
        displacement: standard deviation of the Gaussian displacement per Cartesian
            component, Å (moves the start off ETKDG's idealised geometry so the
            relaxation visits strained configurations).

    Returns:
        (element symbols, formal charges, positions of shape (n, 3) in Å).

    Raises:
        ValueError: the SMILES does not parse or ETKDG fails to embed it.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    # RDKit wants a non-negative 31-bit seed.
    ss = np.random.SeedSequence(seed)
    params.randomSeed = int(ss.generate_state(1)[0] & 0x7FFFFFFF)
    params.numThreads = 1
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"ETKDG failed to embed {smiles!r}")
    pos = np.array(mol.GetConformer().GetPositions(), dtype=np.float64)
    rng = np.random.default_rng(ss)
    pos = pos + rng.normal(scale=displacement, size=pos.shape)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    return symbols, charges, pos


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
    """Relax one molecule with BFGS on GFN2-xTB and return every step (PubChemQCR steps).

    Args:
        smiles: the molecule (hydrogens are added).
        seed: integer seed for the embedding and the displacement.
        fmax: convergence threshold on the largest atomic force, eV/Å.
        max_steps: maximum number of BFGS steps; the trajectory has at most
            ``max_steps + 1`` snapshots (the start included). An unconverged
            trajectory is still returned.
        displacement: Gaussian displacement of the start geometry, Å.
        maxstep: BFGS step cap (largest atomic move per step), Å.
        precision: ``"float64"`` or ``"float32"``: the precision coordinates and
            gradients are stored at (see :func:`_step`); the energy is always float64.

    Returns:
        A list of step dicts (Å, Hartree, Hartree/Bohr), the start geometry first.
        The labels are GFN2-xTB (semi-empirical), not DFT.

    Raises:
        ValueError: embedding failed. Exceptions from tblite (e.g. SCF not
        converged) propagate.
    """
    from ase import Atoms
    from ase.optimize import BFGS
    from tblite.ase import TBLite

    if precision not in ("float64", "float32"):
        raise ValueError(f"precision: expected 'float64' or 'float32', got {precision!r}")
    symbols, charges, pos = embed(smiles, seed, displacement)
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


def _process_molecule(task: tuple[int, str, dict]) -> tuple[int, dict | None, str | None, float]:
    """Worker: (index, smiles, params) -> (index, value or None, error or None, seconds)."""
    index, smiles, params = task
    t0 = time.perf_counter()
    seed = int(_molecule_seed(params["seed"], index).generate_state(1)[0])
    try:
        steps = relax_trajectory(
            smiles,
            seed,
            fmax=params["fmax"],
            max_steps=params["max_steps"],
            displacement=params["displacement"],
            precision=params["precision"],
        )
        if not steps:
            raise RuntimeError("empty trajectory")
    except Exception as exc:  # any failure is recorded in the shard summary, never silent
        return index, None, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - t0
    value = {
        "pm3": None,
        "hf": None,
        "DFT_1st": steps,
        "DFT_2nd": None,
        "meta": {
            "smiles": smiles,
            "source": SOURCE,
            "index": index,
            "level": LEVEL,
            "converged": _max_force(steps[-1]) <= params["fmax"],
            "key_is_pubchem_cid": False,
        },
    }
    return index, value, None, time.perf_counter() - t0


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename (never half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these are plain reports
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key(index: int) -> str:
    return f"{index:09d}"


def select_seeds(
    smiles: list[str], first: int, num_molecules: int, max_atoms: int = MAX_ATOMS
) -> tuple[list[int], dict[str, int]]:
    """Indices of the first ``num_molecules`` accepted seeds from ``first`` on, and skip counts.

    Seeds are scanned only as far as needed; the counts are of the scanned rejects by
    reason (see :func:`check_seed`).
    """
    chosen: list[int] = []
    skipped: dict[str, int] = {}
    for i in range(first, len(smiles)):
        if len(chosen) >= num_molecules:
            break
        reason = check_seed(smiles[i], max_atoms)
        if reason is None:
            chosen.append(i)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return chosen, skipped


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
        progress: show a tqdm progress bar over molecules.

    Returns:
        Summary dict: seeds accepted, skip counts by reason, shards written and reused,
        and for the shards computed in this call: molecules written and failed (with
        errors), snapshots, wall seconds. Also written to ``out_dir/summary.json``;
        per-shard counts are in ``shard_XXXXX.json``.

    Raises:
        ValueError: ``out_dir`` holds a run with different parameters.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = nci_smiles() if smiles is None else list(smiles)
    params = {
        "seed": seed,
        "fmax": fmax,
        "max_steps": max_steps,
        "displacement": displacement,
        "precision": precision,
    }
    # Shard i is always the same molecules for the same (seeds, first, shard_size), so a
    # restart with other settings would mix incompatible shards: refuse it.
    source = SOURCE if smiles is None else "custom"
    config = {
        **params,
        "first": first,
        "shard_size": shard_size,
        "max_atoms": max_atoms,
        "source": source,
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
    chosen, skipped = select_seeds(seeds, first, num_molecules, max_atoms)
    shards = [chosen[i : i + shard_size] for i in range(0, len(chosen), shard_size)]
    pending = [
        s for s, idx in enumerate(shards) if not _shard_complete(out, s, [_key(i) for i in idx])
    ]
    tasks = [(i, seeds[i], params) for s in pending for i in shards[s]]

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
        "seeds_total": len(seeds),
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
