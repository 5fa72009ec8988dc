"""Seed molecules of the relaxation generator (:mod:`tdn_data.generate`).

Two sources:

- ``"nci"``: the SMILES of RDKit's bundled ``Data/NCI/first_5K.smi`` (:func:`nci_smiles`),
  filtered by :func:`check_seed` and chosen by :func:`select_seeds`; a seed's key is
  its 0-based position in that list.
- ``"qm9"``: QM9 equilibrium geometries read through :mod:`tdn_data.qm9` (the optional
  ``qm9pack`` package), chosen by :func:`qm9_seeds`; a seed's key is its **QM9 index**
  (1..133885, with gaps), not a PubChem CID and not its row position.

Start geometries: :func:`embed` (ETKDG + :func:`displace`) for SMILES; QM9 seeds
start from their equilibrium geometry plus :func:`displace` (done by
:func:`tdn_data.generate.relax_atoms`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

#: Elements a seed may contain (what the NCI set has that GFN2-xTB handles well).
ALLOWED_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "S", "Cl"})
#: Maximum atom count of a seed, hydrogens included.
MAX_ATOMS = 40
#: ``source`` of NCI seeds (in ``config.json`` and each value's ``meta``).
SOURCE = "rdkit NCI first_5K"
#: ``source`` of QM9 seeds (in ``config.json`` and each value's ``meta``).
QM9_SOURCE = "qm9pack QM9"

_Z_SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


class QM9Seed(NamedTuple):
    """One QM9 molecule at its equilibrium geometry (all QM9 molecules are neutral)."""

    qm9_index: int  # the QM9 number (the generator's key), not a PubChem CID
    symbols: list[str]
    positions: np.ndarray  # [n, 3] float64, Å


def etkdg_conformer(smiles: str, seed: int) -> tuple[list[str], list[int], np.ndarray]:
    """ETKDG conformer of ``smiles`` (hydrogens added): (symbols, formal charges, Å)."""
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
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    return symbols, charges, pos


def displace(positions: np.ndarray, seed: int, displacement: float = 0.1) -> np.ndarray:
    """``positions`` (Å) plus a Gaussian displacement seeded by ``seed`` (std ``displacement``).

    The generator is ``default_rng(SeedSequence(seed))``; SeedSequence is stateless, so
    this is the stream the NCI embedding has always used after its ETKDG seed draw.
    """
    pos = np.asarray(positions, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return pos + rng.normal(scale=displacement, size=pos.shape)


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
    symbols, charges, pos = etkdg_conformer(smiles, seed)
    return symbols, charges, displace(pos, seed, displacement)


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


def qm9_seeds(
    first: int,
    num_molecules: int,
    max_atoms: int = MAX_ATOMS,
    data_dir: str | os.PathLike | None = None,
) -> tuple[list[QM9Seed], dict[str, int], int]:
    """The first ``num_molecules`` accepted QM9 molecules from row ``first`` on.

    ``first`` is a row position in QM9 order (0 = QM9 index 1), not a QM9 index. A
    molecule is rejected as ``"too_many_atoms"`` above ``max_atoms`` atoms (hydrogens
    included) or ``"elements"`` outside :data:`ALLOWED_ELEMENTS` (never, for QM9's H, C,
    N, O, F); QM9 molecules are neutral closed-shell. The table is read only as far as
    needed (a growing ``limit`` of :func:`tdn_data.qm9.load_qm9_table`).

    Args:
        first: row position where the scan starts.
        num_molecules: number of accepted molecules wanted (fewer if QM9 runs out).
        max_atoms: largest accepted molecule, atoms including hydrogens.
        data_dir: folder with qm9pack's CSV files; default: qm9pack's own.

    Returns:
        (accepted seeds, skip counts by reason of the scanned rejects, rows read).

    Raises:
        tdn_data.qm9.QM9Unavailable: qm9pack is not installed.
    """
    from tdn_data.qm9 import load_qm9_table, qm9pack_data_dir

    path = qm9pack_data_dir() if data_dir is None else Path(data_dir)
    limit = max(first + num_molecules, 1)
    while True:
        table = load_qm9_table(path, limit)
        rows = int(table.index.size)  # a cached table may hold more than ``limit`` rows
        chosen: list[QM9Seed] = []
        skipped: dict[str, int] = {}
        for m in range(first, rows):
            if len(chosen) >= num_molecules:
                break
            a, b = int(table.offsets[m]), int(table.offsets[m + 1])
            symbols = [_Z_SYMBOL.get(int(z), f"Z{int(z)}") for z in table.z[a:b]]
            if any(s not in ALLOWED_ELEMENTS for s in symbols):
                reason = "elements"
            elif b - a > max_atoms:
                reason = "too_many_atoms"
            else:
                reason = None
            if reason is None:
                chosen.append(QM9Seed(int(table.index[m]), symbols, table.pos[a:b].copy()))
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
        if len(chosen) >= num_molecules or rows < limit:  # enough, or the table is exhausted
            return chosen, skipped, rows
        limit = max(2 * limit, rows + 1)
