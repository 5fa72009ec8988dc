"""tdn_data: dataset readers and graph construction for TDN.

Every reader yields ``torch_geometric.data.Data`` items with ``z`` (long [N]), ``pos``
([N, 3], Å), ``energy`` ([1], eV), ``forces`` ([N, 3], eV/Å), ``mol_id``, ``step``,
``source``, and ``cell`` ([1, 3, 3], Å) / ``pbc`` ([1, 3]) for periodic frames.

>>> from tdn_data import load_dataset                                # doctest: +SKIP
>>> train = load_dataset("shards/", split="train", reference_energies="fit")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from ._sample import make_sample
from ._units import BOHR_ANGSTROM, HARTREE_EV, KCAL_MOL_EV, energy_factor
from .ase_reader import ASEDataset
from .graphs import Graph, batch_radius_graph, radius_graph
from .pubchemqcr import PubChemQCRDataset, write_pubchemqcr

__version__ = "0.1.0"

__all__ = [
    "BOHR_ANGSTROM",
    "HARTREE_EV",
    "KCAL_MOL_EV",
    "ASEDataset",
    "Graph",
    "PubChemQCRDataset",
    "batch_radius_graph",
    "energy_factor",
    "load_dataset",
    "make_sample",
    "radius_graph",
    "write_pubchemqcr",
]


def _is_pubchemqcr(path: Path) -> bool:
    if path.is_dir():
        return any(path.glob("*.lmdb")) or (path / "data.mdb").is_file()
    return path.suffix in (".lmdb", ".mdb")


def load_dataset(source: str | os.PathLike, *, split: str | None = None, **options) -> Dataset:
    """Open a dataset by path: PubChemQCR LMDB shards (a ``.lmdb`` file or a folder of
    them) or anything ASE reads (extxyz, ASE db, ...).

    Args:
        source: the path.
        split: ``"train"``, ``"val"``, ``"test"`` or None (everything). Splits are by
            molecule (PubChemQCR readers); ASE files have no split.
        **options: passed to :class:`PubChemQCRDataset` (``stage``, ``fractions``,
            ``seed``, ``reference_energies``, ``dtype``, ...) or :class:`ASEDataset`
            (``energy_unit``, ``energy_key``, ``forces_key``, ``index``, ``dtype``, ...).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a split was asked of a file that has none.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source: {str(source)!r} does not exist")
    if _is_pubchemqcr(path):
        return PubChemQCRDataset(path, split=split or "all", **options)
    if split not in (None, "all"):
        raise ValueError(
            f"split: {str(source)!r} is read by ASE and has no splits (got split={split!r}); "
            "convert it to LMDB shards to split by molecule"
        )
    return ASEDataset(path, **options)
