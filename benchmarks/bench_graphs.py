"""Times tdn_data.graphs against ase.neighborlist.neighbor_list on two standard workloads.

    python benchmarks/bench_graphs.py                       # 1000-atom fcc cell + 64 molecules
    python benchmarks/bench_graphs.py --cutoff 6 --molecules 128 --repeats 20

Workloads (cutoff 5 Å by default):

* a periodic cell of ~1000 atoms: rattled fcc Cu (a = 3.61 Å), 5 x 5 x 10 cubic cells;
* a batch of 64 random molecules of ~20 atoms (18-22), atoms at least 1 Å apart at a
  molecular density, no cell.

Rows: ``ase`` (neighbor_list "ijSD", one call per system, the reference), ``tdn`` (the public
functions, which also sort the edges and build torch edge_vec/edge_len), and the raw back-ends
the module chooses between (``vesin`` alone, ``dense`` numpy all-pairs) to justify that choice.
Medians in ms after warm-up, and the speed-up over ase. Shared machines are noisy: rerun and
compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from torch_geometric.data import Batch, Data

from tdn_cli._timing import median_ms
from tdn_data import graphs
from tdn_data.graphs import batch_radius_graph, radius_graph


def periodic_cell(seed: int) -> Atoms:
    """Rattled fcc Cu, 1000 atoms (5 x 5 x 10 conventional cells)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (5, 5, 10)
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_molecule(n: int, rng: np.random.Generator, min_dist: float = 1.0) -> np.ndarray:
    """Random positions [n, 3] (Å) at ~0.05 atoms/Å^3 with all distances >= min_dist."""
    box = (n / 0.05) ** (1 / 3)
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(0, box, 3)
        if not out or np.min(np.linalg.norm(np.array(out) - p, axis=1)) >= min_dist:
            out.append(p)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/bench_graphs.py --cutoff 5 --repeats 15",
    )
    parser.add_argument("--cutoff", type=float, default=5.0, help="radius in Å (default 5)")
    parser.add_argument("--molecules", type=int, default=64, help="molecules in the batch")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rc, reps = args.cutoff, args.repeats
    torch.set_num_threads(1)  # the search is single-threaded numpy/vesin; keep torch comparable

    rows: list[tuple[str, str, float, int]] = []  # (workload, method, ms, edges)

    # --- periodic cell -------------------------------------------------------------------
    atoms = periodic_cell(args.seed)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.asarray(atoms.cell))
    pbc = np.ones(3, dtype=bool)
    wl = f"cell N={len(atoms)}"
    n_ase = len(neighbor_list("i", atoms, rc))
    rows.append(
        (wl, "ase", median_ms(lambda: neighbor_list("ijSD", atoms, rc), max(3, reps // 3)), n_ase)
    )
    g = radius_graph(pos, rc, cell=cell)
    assert g.edge_index.shape[1] == n_ase, "edge count differs from ase"
    rows.append(
        (wl, "tdn radius_graph", median_ms(lambda: radius_graph(pos, rc, cell=cell), reps), n_ase)
    )
    pnp, cnp = atoms.positions, np.asarray(atoms.cell)
    rows.append(
        (
            wl,
            "vesin search only",
            median_ms(lambda: graphs._vesin_search(pnp, rc, cnp, pbc), reps),
            n_ase,
        )
    )
    rows.append(
        (
            wl,
            "tdn max_neighbors=32",
            median_ms(lambda: radius_graph(pos, rc, cell=cell, max_neighbors=32), reps),
            len(atoms) * 32,
        )
    )

    # --- batch of molecules --------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    mols = [random_molecule(int(rng.integers(18, 23)), rng) for _ in range(args.molecules)]
    mol_atoms = [Atoms(numbers=np.full(len(m), 6), positions=m) for m in mols]
    data = [Data(z=torch.full((len(m),), 6), pos=torch.tensor(m)) for m in mols]
    batch = Batch.from_data_list(data)
    wl = f"{args.molecules} mols N={batch.num_nodes}"
    n_mol = sum(len(neighbor_list("i", a, rc)) for a in mol_atoms)

    def ase_mols() -> None:
        for a in mol_atoms:
            neighbor_list("ijSD", a, rc)

    gb = batch_radius_graph(batch, rc)
    assert gb.edge_index.shape[1] == n_mol, "edge count differs from ase"
    rows.append((wl, "ase (loop)", median_ms(ase_mols, reps), n_mol))
    rows.append(
        (
            wl,
            "tdn batch_radius_graph",
            median_ms(lambda: batch_radius_graph(batch, rc), reps),
            n_mol,
        )
    )
    tens = [d.pos for d in data]
    rows.append(
        (
            wl,
            "tdn radius_graph (loop)",
            median_ms(lambda: [radius_graph(p, rc) for p in tens], reps),
            n_mol,
        )
    )
    nop = np.zeros(3, dtype=bool)
    rows.append(
        (
            wl,
            "vesin search only (loop)",
            median_ms(lambda: [graphs._vesin_search(m, rc, None, nop) for m in mols], reps),
            n_mol,
        )
    )
    rows.append(
        (
            wl,
            "dense search only (loop)",
            median_ms(lambda: [graphs._dense_search(m, rc) for m in mols], reps),
            n_mol,
        )
    )

    # --- table ---------------------------------------------------------------------------
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"cutoff {rc} Å, {reps} repeats (CPU, shared machine: noisy)"
    )
    print(f"{'workload':<22} {'method':<26} {'median ms':>10} {'vs ase':>8} {'edges':>8}")
    ref: dict[str, float] = {}
    for wl, method, ms, ne in rows:
        if method.startswith("ase"):
            ref[wl] = ms
        ratio = ref[wl] / ms
        print(f"{wl:<22} {method:<26} {ms:>10.3f} {ratio:>7.1f}x {ne:>8d}")


if __name__ == "__main__":
    main()
