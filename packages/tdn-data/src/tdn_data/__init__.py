"""tdn_data: dataset readers and graph construction for TDN.

Every reader yields ``torch_geometric.data.Data`` items with ``z`` (long [N]), ``pos``
([N, 3], Å), ``energy`` ([1], eV), ``forces`` ([N, 3], eV/Å; absent for QM9, which has
none), ``mol_id``, ``step``, ``source``, and ``cell`` ([1, 3, 3], Å) / ``pbc``
([1, 3]) for periodic frames.

>>> from tdn_data import load_dataset
>>> train = load_dataset("embedded", split="train")  # GFN2-xTB relaxations, by molecule
>>> train = load_dataset("shards/", split="train", reference_energies="fit")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from ._embedded import EMBEDDED, embedded_path
from ._sample import make_sample
from ._units import BOHR_ANGSTROM, HARTREE_EV, KCAL_MOL_EV, energy_factor
from .ase_reader import ASEDataset
from .graphs import Graph, batch_radius_graph, radius_graph
from .oc20 import OC20LmdbDataset
from .pubchemqcr import PubChemQCRDataset, _open_env, write_pubchemqcr
from .qm9 import QM9_TARGETS, QM9Dataset, QM9Unavailable

__version__ = "0.1.0"

__all__ = [
    "BOHR_ANGSTROM",
    "HARTREE_EV",
    "KCAL_MOL_EV",
    "QM9_TARGETS",
    "ASEDataset",
    "Graph",
    "OC20LmdbDataset",
    "PubChemQCRDataset",
    "QM9Dataset",
    "QM9Unavailable",
    "batch_radius_graph",
    "energy_factor",
    "load_dataset",
    "make_sample",
    "radius_graph",
    "write_pubchemqcr",
]


_GZIP_MAGIC = b"\x1f\x8b"


def _lmdb_family(path: Path) -> str | None:
    """``"pubchemqcr"``, ``"oc20"`` or None (not an LMDB dataset), from names and one probe.

    Both projects name their files ``*.lmdb``; PubChemQCR values are gzip streams,
    fairchem's are raw pickles or zlib JSON and carry ``length``/``nextid`` keys.
    """
    if path.is_dir():
        files = sorted([*path.glob("*.lmdb"), *path.glob("*.aselmdb")])
        if (path / "data.mdb").is_file():
            return "oc20"
        return _lmdb_family(files[0]) if files else None
    if path.suffix == ".aselmdb":
        return "oc20"
    if path.suffix not in (".lmdb", ".mdb"):
        return None
    try:
        env = _open_env(path)  # the process's shared handle: LMDB refuses a second open
    except ValueError:
        return "pubchemqcr"  # let the reader report the file as corrupt, with its name
    import lmdb

    try:
        with env.begin() as txn:
            if txn.get(b"length") is not None or txn.get(b"nextid") is not None:
                return "oc20"
            first = next(iter(txn.cursor()), None)
    except lmdb.Error:
        return "pubchemqcr"  # a corrupt page: the reader reports it, with the file's name
    return "oc20" if first is not None and not first[1].startswith(_GZIP_MAGIC) else "pubchemqcr"


def load_dataset(source: str | os.PathLike, *, split: str | None = None, **options) -> Dataset:
    """Open a dataset by name or by path.

    Names: ``"embedded"`` and ``"embedded-tiny"``, the shipped GFN2-xTB relaxation
    trajectories (``tdn_data/embedded/DATACARD.md``); ``"qm9"``, QM9's B3LYP energies
    at equilibrium geometries from the ``qm9pack`` package (``tdn-data[qm9]``; items
    have no ``forces``). Paths: PubChemQCR LMDB shards (a
    ``.lmdb`` file or a folder of them), OC20/OC22 LMDBs in fairchem's formats
    (pickled graphs or ``.aselmdb``), or anything ASE reads (extxyz, ASE db, ...).

    Args:
        source: ``"embedded"``, ``"embedded-tiny"``, ``"qm9"`` (names win over
            same-named paths), or a path.
        split: ``"train"``, ``"val"``, ``"test"`` or None (everything). Splits are by
            molecule and exist for PubChemQCR shards; other sources have none.
        **options: passed to :class:`PubChemQCRDataset` (``stage``, ``fractions``,
            ``seed``, ``reference_energies``, ``dtype``, ...), :class:`OC20LmdbDataset`
            (``form``, ``energy_key``, ``forces_key``, ``dtype``) or :class:`ASEDataset`
            (``energy_unit``, ``energy_key``, ``forces_key``, ``index``, ``dtype``, ...).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a split was asked of a file that has none.
    """
    if isinstance(source, str) and source.lower() == "qm9":
        return QM9Dataset(split=split, **options)
    if isinstance(source, str) and source in EMBEDDED:
        options.setdefault("cache_index", False)  # never write into the installed package
        return PubChemQCRDataset(embedded_path(source), split=split or "all", **options)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source: {str(source)!r} does not exist")
    family = _lmdb_family(path)
    if family == "pubchemqcr":
        return PubChemQCRDataset(path, split=split or "all", **options)
    if split not in (None, "all"):
        raise ValueError(
            f"split: {str(source)!r} has no splits (got split={split!r}); "
            "convert it to LMDB shards to split by molecule"
        )
    if family == "oc20":
        return OC20LmdbDataset(path, **options)
    return ASEDataset(path, **options)
