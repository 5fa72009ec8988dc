"""PubChemQCR relaxation trajectories from LMDB shards, as a lazy map-style Dataset.

Format (DESIGN.md section 6): key = PubChem CID bytes (``b'000015111'``); value =
gzip pickle of ``{'pm3', 'hf', 'DFT_1st', 'DFT_2nd'}`` -> list of steps (or None);
each step has ``coordinates`` (``{atom, charge, x, y, z}``, Å), ``energy`` (Hartree)
and ``gradient`` (``{atom, charge, dx, dy, dz}``, Hartree/Bohr).

Opening scans the shards once to build an index (molecule keys, step counts, atomic
numbers, energies), cached beside the data as ``<path>.tdn-index.npz`` and keyed by
the shards' sizes and mtimes, so later opens read only that file. Items are decoded
on demand; the LMDB environment is opened per process (reopened after a fork), so
the dataset is safe with several DataLoader workers. It is map-style (``len`` and
``getitem``), so ``torch.utils.data.DistributedSampler`` shards it across ranks;
:meth:`PubChemQCRDataset.shard` gives a contiguous per-rank subset instead.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import lmdb
import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torch_geometric.data import Data

from tdn_data._io import atomic_write
from tdn_data._lmdb_io import UnsafePickleError, decode_value, write_lmdb
from tdn_data._pubchemqcr_schema import STAGES, BadRecordError, Molecule, parse_molecule
from tdn_data._sample import MAX_Z, make_sample

logger = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "BadRecordError",
    "Molecule",
    "PubChemQCRDataset",
    "parse_molecule",
    "write_pubchemqcr",
]

READER_VERSION = 1
DEFAULT_STAGE = "DFT_1st"
INDEX_SUFFIX = ".tdn-index.npz"
#: a dataset this large is taken for the full PubChemQCR release (3.5M molecules)
FULL_RELEASE_MOLECULES = 1_000_000
SPLITS = ("train", "val", "test")


def _shard_files(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"PubChemQCR path {str(path)!r} does not exist")
    if path.is_dir() and not (path / "data.mdb").exists():
        shards = sorted(path.glob("*.lmdb"))
        if not shards:
            raise FileNotFoundError(f"PubChemQCR folder {str(path)!r} holds no *.lmdb shards")
        return shards
    return [path]


def _fingerprint(shard: Path) -> list:
    st = (shard / "data.mdb" if shard.is_dir() else shard).stat()
    return [shard.name, st.st_size, st.st_mtime_ns]


# Open environments, shared by every dataset in this process: LMDB refuses to open one
# file twice in a process (train/val/test datasets on one shard would collide). Keyed
# by inode too, so a replaced shard gets a fresh environment; cleared after a fork
# because an environment must not cross one.
_ENVS: dict[tuple[str, int], lmdb.Environment] = {}
_ENVS_PID: int | None = None


def _open_env(shard: Path) -> lmdb.Environment:
    """The process's read-only environment for ``shard`` (opened on first use)."""
    global _ENVS_PID
    if _ENVS_PID != os.getpid():
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    data_file = shard / "data.mdb" if shard.is_dir() else shard
    key = (str(shard.resolve()), data_file.stat().st_ino)
    env = _ENVS.get(key)
    if env is None:
        # readonly + lock=False: no lock file is created and forked readers never contend
        try:
            env = lmdb.open(
                str(shard), readonly=True, lock=False, subdir=shard.is_dir(), readahead=False
            )
        except lmdb.Error as exc:
            raise ValueError(f"{shard}: not a readable LMDB file ({exc})") from None
        _ENVS[key] = env
    return env


def _scan(shards: list[Path], stages: Sequence[str], on_error: str) -> tuple[dict, dict]:
    """One pass over every value: the index arrays plus skip counts and examples."""
    mol_shard, keys, nsteps, natoms, zs, energies = [], [], [], [], [], []
    skipped: dict[str, int] = {}
    examples: list[str] = []
    for i, shard in enumerate(shards):
        env = _open_env(shard)
        try:
            with env.begin() as txn:
                for key, raw in txn.cursor():
                    where = f"{shard}: key {key.decode(errors='replace')!r}"
                    try:
                        mol = parse_molecule(
                            decode_value(raw, key=key, source=shard), stages, where
                        )
                    except UnsafePickleError:
                        raise  # tampering is never skipped quietly
                    except ValueError as exc:
                        reason = getattr(exc, "reason", "corrupt_value")
                        if reason not in ("stage_absent", "stage_empty") and on_error == "raise":
                            raise
                        skipped[reason] = skipped.get(reason, 0) + 1
                        if len(examples) < 20:
                            examples.append(str(exc))
                        continue
                    mol_shard.append(i)
                    keys.append(bytes(key))
                    nsteps.append(len(mol.energy))
                    natoms.append(len(mol.z))
                    zs.append(mol.z.astype(np.uint8))
                    energies.append(mol.energy)
        except lmdb.Error as exc:
            raise ValueError(f"{shard}: not a readable LMDB file ({exc})") from None
    arrays = {
        "mol_shard": np.asarray(mol_shard, dtype=np.int32),
        "keys": np.asarray(keys, dtype="S") if keys else np.zeros(0, dtype="S1"),
        "nsteps": np.asarray(nsteps, dtype=np.int64),
        "natoms": np.asarray(natoms, dtype=np.int64),
        "z": np.concatenate(zs) if zs else np.zeros(0, dtype=np.uint8),
        "energy": np.concatenate(energies) if energies else np.zeros(0),
    }
    return arrays, {"skipped": skipped, "skipped_examples": examples}


def _save_index(index_path: Path, arrays: dict, meta: dict) -> bool:
    """Write the index atomically (temp file + os.replace); False where that is impossible."""
    try:
        meta_json = np.array(json.dumps(meta))
        atomic_write(index_path, lambda f: np.savez(f, meta=meta_json, **arrays))
        return True
    except OSError as exc:
        warnings.warn(
            f"could not cache the PubChemQCR index at {index_path} ({exc}); "
            "keeping it in memory (the next open scans the shards again)",
            stacklevel=3,
        )
        return False


def _load_index(index_path: Path, key: dict) -> tuple[dict, dict] | None:
    try:
        with np.load(index_path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("key") != key:
                return None
            return {k: f[k] for k in f.files if k != "meta"}, meta
    except (OSError, ValueError, KeyError) as exc:
        logger.info("ignoring unreadable index %s (%s); rebuilding", index_path, exc)
        return None


class PubChemQCRDataset(Dataset):
    """Snapshots of PubChemQCR relaxation trajectories: one item per (molecule, step).

    Args:
        path: one LMDB file or a folder of ``*.lmdb`` shards.
        stage: stage name or sequence of names (concatenated); default ``'DFT_1st'``.
            Molecules whose stage is None are skipped and counted in :attr:`skipped`.
        split: ``'train'``, ``'val'``, ``'test'`` or ``'all'``/None (every molecule).
        fractions: train/val/test fractions of molecules (sum <= 1). Default (None):
            80/10/10 for the full release (at least ``FULL_RELEASE_MOLECULES``
            molecules), 60/20/20 for a subset, as in the paper's training.
        seed: seed of the molecule shuffle that defines the splits.
        reference_energies: None (total energies), ``'fit'`` (least squares of the
            training split's energies on element counts) or a mapping Z -> eV; the
            per-element sum is subtracted from every energy. See :attr:`reference_energies`.
        on_error: ``'raise'`` (default) or ``'skip'`` (count in :attr:`skipped`) for
            malformed, non-finite, mismatched or undecodable records. Values that try
            to load a pickle global always raise.
        dtype: floating dtype of the items.
        cache_index: write the index beside the data (``<path>.tdn-index.npz``).

    Items are ``torch_geometric.data.Data`` (see :func:`tdn_data._sample.make_sample`)
    with ``mol_id`` = CID string and ``step`` = index within the trajectory.

    Raises:
        FileNotFoundError: missing path or a folder without shards.
        ValueError: unreadable LMDB, bad records (``on_error='raise'``), no molecules
            left, an empty split or elements without a reference energy; the message
            names the file (and the key where one is at fault).
        UnsafePickleError: a value tried to import or call something (never executed).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        stage: str | Sequence[str] = DEFAULT_STAGE,
        split: str | None = "all",
        fractions: Sequence[float] | None = None,
        seed: int = 0,
        reference_energies: str | Mapping[int, float] | None = None,
        on_error: str = "raise",
        dtype: torch.dtype = torch.float64,
        cache_index: bool = True,
    ):
        self.path = Path(path)
        self.stages = (stage,) if isinstance(stage, str) else tuple(stage)
        for s in self.stages:
            if s not in STAGES:
                raise ValueError(f"stage={s!r} is not one of {STAGES}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: use 'raise' or 'skip'")
        split = "all" if split is None else split
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split={split!r}: use one of {(*SPLITS, 'all')}")
        self.split, self.seed, self.dtype = split, int(seed), dtype
        if fractions is not None:  # checked before the (possibly long) scan
            self.fractions = self._check_fractions(fractions)

        self.shards = _shard_files(self.path)
        self.index_path = self.path.with_name(self.path.name + INDEX_SUFFIX)
        key = {
            "version": READER_VERSION,
            "stages": list(self.stages),
            "on_error": on_error,
            "shards": [_fingerprint(s) for s in self.shards],
        }
        loaded = _load_index(self.index_path, key) if cache_index else None
        if loaded is None:
            arrays, info = _scan(self.shards, self.stages, on_error)
            meta = {"key": key, **info}
            if cache_index:
                _save_index(self.index_path, arrays, meta)
        else:
            arrays, meta = loaded
        self.skipped: dict[str, int] = dict(meta["skipped"])
        """Skipped molecules by reason (e.g. ``{'stage_absent': 3}``), over all shards."""
        self.skipped_examples: list[str] = list(meta["skipped_examples"])
        if self.skipped:
            logger.warning(
                "%s: skipped %d molecules %s (stage %s); e.g. %s",
                self.path, sum(self.skipped.values()), self.skipped,
                "+".join(self.stages), self.skipped_examples[:3],
            )  # fmt: skip
        self._set_arrays(arrays)
        if self._n_mol_total == 0:
            raise ValueError(
                f"{self.path}: no usable molecules with stage {'+'.join(self.stages)} "
                f"(skipped: {self.skipped or 'none; the file is empty'})"
            )
        if fractions is None:
            # the paper: 80/10/10 on the full release (3.5M molecules), 60/20/20 on subsets
            full = self._n_mol_total >= FULL_RELEASE_MOLECULES
            self.fractions = (0.8, 0.1, 0.1) if full else (0.6, 0.2, 0.2)
        self._setup_split()
        self._setup_references(reference_energies)
        self._pid: int | None = None
        self._cache: tuple[int, Molecule] | None = None

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
        f = tuple(float(x) for x in fractions)
        if len(f) != 3 or min(f) < 0 or sum(f) > 1 + 1e-9 or sum(f) <= 0:
            raise ValueError(
                f"fractions={fractions!r}: need three non-negative train/val/test "
                "fractions summing to at most 1"
            )
        return f  # type: ignore[return-value]

    def _set_arrays(self, a: dict) -> None:
        self._mol_shard = a["mol_shard"]
        self._keys = a["keys"]
        self._nsteps = a["nsteps"]
        self._natoms = a["natoms"]
        self._z = a["z"]  # uint8: one byte per atom of the whole index
        self._energy = a["energy"]
        self._n_mol_total = len(self._keys)
        self._atom_off = np.concatenate([[0], np.cumsum(self._natoms)])
        self._step_off = np.concatenate([[0], np.cumsum(self._nsteps)])

    def split_molecules(self, split: str) -> np.ndarray:
        """Indices (into the index, sorted) of the molecules in ``split`` (or 'all')."""
        n = self._n_mol_total
        if split == "all":
            return np.arange(n)
        perm = np.random.default_rng(self.seed).permutation(n)
        bounds = np.floor(np.cumsum(self.fractions) * n + 1e-9).astype(np.int64)
        if abs(sum(self.fractions) - 1) < 1e-9:
            bounds[-1] = n  # rounding leftovers go to test, never dropped
        start = [0, bounds[0], bounds[1]][SPLITS.index(split)]
        return np.sort(perm[start : bounds[SPLITS.index(split)]])

    def _setup_split(self) -> None:
        self._mols = self.split_molecules(self.split)
        if len(self._mols) == 0:
            raise ValueError(
                f"{self.path}: split {self.split!r} is empty ({self._n_mol_total} molecules, "
                f"fractions {self.fractions})"
            )
        self._cum = np.cumsum(self._nsteps[self._mols])

    def _atoms_of(self, mols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, z) for every atom of ``mols``: row = position of its molecule in ``mols``."""
        row_of_mol = np.full(self._n_mol_total, -1)
        row_of_mol[mols] = np.arange(len(mols))
        rows = np.repeat(row_of_mol, self._natoms)
        keep = rows >= 0
        return rows[keep], self._z[keep]

    def _counts(self, mols: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """[len(mols), len(elements)] element counts per molecule."""
        col = np.full(MAX_Z + 1, -1)
        col[elements] = np.arange(len(elements))
        rows, zs = self._atoms_of(mols)
        flat = np.bincount(rows * len(elements) + col[zs], minlength=len(mols) * len(elements))
        return flat.reshape(len(mols), len(elements)).astype(np.float64)

    def _setup_references(self, refs: str | Mapping[int, float] | None) -> None:
        self.reference_energies: dict[int, float] | None = None
        """Per-element energies Z -> eV subtracted from every energy (None: total energies)."""
        self._ref_by_z = np.zeros(MAX_Z + 1)
        if refs is None:
            return
        if isinstance(refs, str):
            if refs != "fit":
                raise ValueError(f"reference_energies={refs!r}: use None, 'fit' or a dict Z -> eV")
            refs = self.fit_reference_energies()
        self.reference_energies = {int(k): float(v) for k, v in refs.items()}
        self._ref_by_z = np.full(MAX_Z + 1, np.nan)
        for zz, v in self.reference_energies.items():
            self._ref_by_z[zz] = v
        used = np.unique(self._atoms_of(self._mols)[1])
        missing = [int(v) for v in used if np.isnan(self._ref_by_z[v])]
        if missing:
            raise ValueError(
                f"{self.path}: no reference energy for elements {missing} "
                f"(split {self.split!r}; reference_energies has {sorted(self.reference_energies)})"
            )

    def fit_reference_energies(self) -> dict[int, float]:
        """Least-squares per-element energies (eV) from the training split's snapshots.

        Minimises sum over training snapshots of (E - sum_Z n_Z e_Z)^2; every snapshot
        of a molecule shares its counts, so this is a per-molecule fit weighted by
        step count (uses only the index, no extra scan).
        """
        train = self.split_molecules("train")
        if len(train) == 0:
            raise ValueError(f"{self.path}: cannot fit reference energies: empty training split")
        elements = np.unique(self._atoms_of(train)[1])
        counts = self._counts(train, elements)
        n = self._nsteps[train].astype(np.float64)
        # every molecule has >= 1 step, so reduceat over all offsets sums each trajectory
        mean_e = np.add.reduceat(self._energy, self._step_off[:-1])[train] / n
        w = np.sqrt(n)[:, None]
        sol, _, rank, _ = np.linalg.lstsq(counts * w, mean_e * w[:, 0], rcond=None)
        if rank < len(elements):  # e.g. one formula only: values are not unique
            logger.warning(
                "%s: reference energies for %s are underdetermined by the training split "
                "(rank %d); using the minimum-norm least-squares solution",
                self.path, elements.tolist(), rank,
            )  # fmt: skip
        return {int(zz): float(v) for zz, v in zip(elements, sol, strict=True)}

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return int(self._cum[-1])

    @property
    def num_molecules(self) -> int:
        """Molecules in this split."""
        return len(self._mols)

    @property
    def mol_ids(self) -> list[str]:
        """CIDs of the molecules in this split, in item order."""
        return [self._keys[m].decode() for m in self._mols]

    def _env(self, shard: int) -> lmdb.Environment:
        # a new process (DataLoader worker) drops the parent's decoded cache; the
        # environment itself is reopened per process by _open_env
        if self._pid != os.getpid():
            self._cache, self._pid = None, os.getpid()
        return _open_env(self.shards[shard])

    def molecule(self, m: int) -> Molecule:
        """The parsed trajectory of index molecule ``m`` (cached: steps are read in order)."""
        if self._cache is not None and self._cache[0] == m and self._pid == os.getpid():
            return self._cache[1]
        shard, key = int(self._mol_shard[m]), bytes(self._keys[m])
        where = f"{self.shards[shard]}: key {key.decode(errors='replace')!r}"
        with self._env(shard).begin() as txn:
            raw = txn.get(key)
        if raw is None:
            raise KeyError(f"{where}: missing; the shard changed since its index was built")
        mol = parse_molecule(
            decode_value(raw, key=key, source=self.shards[shard]), self.stages, where
        )
        self._cache = (m, mol)
        return mol

    def __getitem__(self, idx: int) -> Data:
        n = len(self)
        idx = int(idx)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} snapshots")
        j = int(np.searchsorted(self._cum, idx, side="right"))
        step = idx - (int(self._cum[j - 1]) if j else 0)
        m = int(self._mols[j])
        mol = self.molecule(m)
        key = bytes(self._keys[m]).decode(errors="replace")
        energy = mol.energy[step] - self._ref_by_z[mol.z].sum()
        return make_sample(
            mol.z, mol.pos[step], energy, mol.forces[step],
            mol_id=key, step=step, source=f"{self.shards[int(self._mol_shard[m])]}: key {key!r}",
            dtype=self.dtype,
        )  # fmt: skip

    def shard(self, rank: int, world_size: int) -> Subset:
        """A contiguous 1/world_size block of the items for ``rank`` (whole molecules stay
        mostly on one rank, so reads stay sequential). ``DistributedSampler`` works too."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        return Subset(self, np.array_split(np.arange(len(self)), world_size)[rank].tolist())

    def summary(self) -> str:
        """One line: path, split, molecules, snapshots, skipped."""
        return (
            f"PubChemQCR {self.path} stage={'+'.join(self.stages)} split={self.split}: "
            f"{self.num_molecules} molecules, {len(self)} snapshots; skipped {self.skipped or 0}"
        )

    def __getstate__(self) -> dict:
        # the decoded cache never travels to spawned workers (environments are per process)
        state = self.__dict__.copy()
        state.update(_pid=None, _cache=None)
        return state

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def _plain(obj):
    """numpy scalars and arrays -> Python numbers and lists: the safe reader refuses
    every pickle global, and numpy objects pickle as globals."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return obj


def write_pubchemqcr(
    path: str | os.PathLike, molecules: Iterable[tuple[str | bytes, Mapping[str, list | None]]]
) -> int:
    """Write molecules in the PubChemQCR schema to one LMDB file (atomically).

    Args:
        path: the LMDB file to create (replaced if it exists).
        molecules: ``(cid, {stage: [steps] or None})`` pairs already in schema form
            (steps with ``coordinates``, ``energy`` in Hartree, ``gradient`` in
            Hartree/Bohr); stages left out are stored as None. numpy numbers and
            arrays are stored as plain Python numbers and lists.
    Returns:
        The number of molecules written.
    """

    def entries():
        for cid, stages in molecules:
            unknown = set(stages) - set(STAGES)
            if unknown:
                raise ValueError(f"molecule {cid!r}: unknown stages {sorted(unknown)}")
            key = cid if isinstance(cid, bytes) else str(cid).encode()
            yield key, {s: _plain(stages.get(s)) for s in STAGES}

    return write_lmdb(path, entries())
