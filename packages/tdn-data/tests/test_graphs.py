"""Tests for tdn_data.graphs: agreement with ase.neighborlist, pbc, caps, gradients, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.neighborlist import neighbor_list
from torch_geometric.data import Batch, Data

from tdn_data.graphs import Graph, batch_radius_graph, compute_edge_vectors, radius_graph


def _random_molecule(n: int, seed: int, min_dist: float = 0.9) -> np.ndarray:
    """Random positions [n, 3] (Å) with all pairwise distances >= min_dist."""
    rng = np.random.default_rng(seed)
    box = (n / 0.05) ** (1 / 3)
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(0, box, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in out):
            out.append(p)
    return np.array(out)


def _triples(g: Graph) -> set[tuple[int, int, int, int, int]]:
    ei, s = g.edge_index.numpy(), g.cell_shifts.numpy()
    return {(int(a), int(b), *map(int, sh)) for a, b, sh in zip(ei[0], ei[1], s, strict=True)}


def _assert_matches_ase(atoms: Atoms, cutoff: float, **kw) -> Graph:
    """radius_graph(src, dst, shift) == ase (i, j, S) as sets, with the same D vectors."""
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.asarray(atoms.cell)) if atoms.pbc.any() else None
    pbc = atoms.pbc.tolist() if atoms.pbc.any() else None
    g = radius_graph(pos, cutoff, cell=cell, pbc=pbc, **kw)
    i, j, S, D, d = neighbor_list("ijSDd", atoms, cutoff)
    ref = {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, S, strict=True)}
    assert _triples(g) == ref
    assert len(ref) == g.edge_index.shape[1]  # no duplicates
    # Same vectors per triple: proves edge_vec = pos[dst] - pos[src] + S @ cell == ase's D.
    ref_d = {(int(a), int(b), *map(int, s)): v for a, b, s, v in zip(i, j, S, D, strict=True)}
    for t, v, ln in zip(sorted(_triples(g)), *_sorted_vecs(g), strict=True):
        np.testing.assert_allclose(v, ref_d[t], atol=1e-10)
        np.testing.assert_allclose(ln, np.linalg.norm(ref_d[t]), atol=1e-10)
    np.testing.assert_allclose(np.sort(g.edge_len.numpy()), np.sort(d), atol=1e-10)
    return g


def _sorted_vecs(g: Graph) -> tuple[np.ndarray, np.ndarray]:
    ei, s = g.edge_index.numpy(), g.cell_shifts.numpy()
    keys = [(int(a), int(b), *map(int, sh)) for a, b, sh in zip(ei[0], ei[1], s, strict=True)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return g.edge_vec.detach().numpy()[order], g.edge_len.detach().numpy()[order]


def test_molecule_small_dense_path_matches_ase():
    atoms = Atoms("C20", positions=_random_molecule(20, 0))
    g = _assert_matches_ase(atoms, 3.0)
    assert g.edge_index.dtype == torch.long and g.cell_shifts.dtype == torch.long
    assert (g.cell_shifts == 0).all()
    assert g.edge_graph is None


def test_molecule_large_vesin_path_matches_ase():
    atoms = Atoms("C80", positions=_random_molecule(80, 1))
    _assert_matches_ase(atoms, 4.0)


def test_small_cell_cutoff_exceeds_cell_length():
    # 2-atom cell, lattice constant ~2.5 Å and cutoff 6 Å: many images, self images included.
    atoms = bulk("Cu", "fcc", a=3.6) * (1, 1, 1)
    atoms.rattle(0.05, seed=3)
    g = _assert_matches_ase(atoms, 6.0)
    ei, s = g.edge_index, g.cell_shifts
    self_edges = ei[0] == ei[1]
    assert self_edges.any()  # sees itself in other images
    assert (s[self_edges].abs().sum(1) > 0).all()  # but never at zero shift
    pair = (ei[0] == 0) & (ei[1] == 0)
    assert pair.sum() > 1  # several images of the same "neighbour"


def test_triclinic_cell_matches_ase():
    rng = np.random.default_rng(4)
    cell = np.array([[4.0, 0.0, 0.0], [1.7, 3.6, 0.0], [-1.1, 0.9, 3.3]])
    frac = rng.uniform(0, 1, (7, 3))
    atoms = Atoms("H7", scaled_positions=frac, cell=cell, pbc=True)
    _assert_matches_ase(atoms, 4.5)


def test_slab_mixed_pbc_matches_ase():
    slab = fcc111("Al", size=(2, 2, 3), vacuum=5.0)
    slab.rattle(0.05, seed=5)
    assert slab.pbc.tolist() == [True, True, False]
    g = _assert_matches_ase(slab, 5.0)
    assert (g.cell_shifts[:, 2] == 0).all()


def test_slab_with_zero_vacuum_vector():
    slab = fcc111("Al", size=(2, 2, 2), vacuum=None)  # non-periodic c vector may be zero
    cell = np.asarray(slab.cell).copy()
    cell[2] = 0.0
    atoms = Atoms(slab.symbols, positions=slab.positions, cell=cell, pbc=[True, True, False])
    _assert_matches_ase(atoms, 4.0)


def test_edge_sign_convention_explicit():
    # Two atoms in a 1-D periodic chain: check the sign of the shift term by hand.
    cell = torch.diag(torch.tensor([3.0, 20.0, 20.0], dtype=torch.float64))
    pos = torch.tensor([[0.5, 0.0, 0.0], [2.5, 0.0, 0.0]], dtype=torch.float64)
    g = radius_graph(pos, 1.5, cell=cell, pbc=[True, False, False])
    # Only 0 <-> 1 across the boundary: pos[1] - pos[0] + S @ cell must have length 1.
    for (src, dst), s, v in zip(g.edge_index.T, g.cell_shifts, g.edge_vec, strict=True):
        expect = pos[dst] - pos[src] + s.double() @ cell
        torch.testing.assert_close(v, expect)
        assert abs(float(v.norm()) - 1.0) < 1e-12
    assert _triples(g) == {(0, 1, -1, 0, 0), (1, 0, 1, 0, 0)}


def test_sorted_and_deterministic():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(np.asarray(atoms.cell))
    g1 = radius_graph(pos, 5.0, cell=cell)
    g2 = radius_graph(pos, 5.0, cell=cell)
    assert torch.equal(g1.edge_index, g2.edge_index) and torch.equal(g1.cell_shifts, g2.cell_shifts)
    keys = [tuple(r) for r in torch.cat([g1.edge_index.T.flip(1), g1.cell_shifts], 1).tolist()]
    assert keys == sorted(keys)  # sorted by (dst, src, shift)


@pytest.mark.parametrize("periodic", [False, True])
def test_max_neighbors_keeps_k_nearest(periodic):
    k = 5
    if periodic:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        atoms.rattle(0.1, seed=6)
        kw = {"cell": torch.tensor(np.asarray(atoms.cell))}
    else:
        atoms = Atoms("C40", positions=_random_molecule(40, 7))
        kw = {}
    pos = torch.tensor(atoms.positions)
    full = radius_graph(pos, 5.0, **kw)
    cap = radius_graph(pos, 5.0, max_neighbors=k, **kw)
    assert _triples(cap) <= _triples(full)
    for c in range(len(pos)):
        d_full = full.edge_len[full.edge_index[1] == c]
        d_cap = cap.edge_len[cap.edge_index[1] == c]
        assert len(d_cap) == min(k, len(d_full))
        torch.testing.assert_close(torch.sort(d_cap).values, torch.sort(d_full).values[:k])


def test_max_neighbors_tie_break_deterministic():
    # Perfect fcc: 12 equidistant nearest neighbours; k=4 must pick by (src, shift).
    atoms = bulk("Cu", "fcc", a=3.6)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(np.asarray(atoms.cell))
    g = radius_graph(pos, 2.6, cell=cell, max_neighbors=4)
    full = radius_graph(pos, 2.6, cell=cell)
    assert g.edge_index.shape[1] == 4
    assert g.cell_shifts.tolist() == sorted(full.cell_shifts.tolist())[:4]


def test_gradcheck_edge_len_wrt_pos_and_cell():
    rng = np.random.default_rng(8)
    cell0 = np.array([[3.0, 0.0, 0.0], [0.4, 3.2, 0.0], [0.3, -0.2, 2.9]])
    pos = torch.tensor(rng.uniform(0, 3, (3, 3)), requires_grad=True)
    cell = torch.tensor(cell0, requires_grad=True)
    g = radius_graph(pos, 3.5, cell=cell)
    ei, sh = g.edge_index, g.cell_shifts
    assert g.edge_len.requires_grad

    def f(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return compute_edge_vectors(p, ei, sh, c)[1]

    assert torch.autograd.gradcheck(f, (pos, cell))
    # The graph's own tensors carry the same gradients as the recomputation.
    (gp, gc) = torch.autograd.grad(g.edge_len.sum(), (pos, cell))
    (rp, rc) = torch.autograd.grad(f(pos, cell).sum(), (pos, cell))
    torch.testing.assert_close(gp, rp)
    torch.testing.assert_close(gc, rc)
    assert gc.abs().sum() > 0


def test_gradcheck_molecule():
    pos = torch.tensor(_random_molecule(5, 9), requires_grad=True)
    g = radius_graph(pos, 6.0)
    ei, sh = g.edge_index, g.cell_shifts
    assert torch.autograd.gradcheck(lambda p: compute_edge_vectors(p, ei, sh)[1], (pos,))


def test_translation_invariance():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=10)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(np.asarray(atoms.cell))
    g0 = radius_graph(pos, 4.0, cell=cell)
    # Positions are not wrapped, so D = pos[j] - pos[i] + S @ cell is unchanged by any rigid
    # translation (even across the cell boundary): the (src, dst, shift) set must not change.
    g1 = radius_graph(pos + torch.tensor([0.37, -1.3, 2.1], dtype=pos.dtype), 4.0, cell=cell)
    assert _triples(g0) == _triples(g1)
    assert torch.equal(g0.edge_index, g1.edge_index)
    torch.testing.assert_close(g0.edge_vec, g1.edge_vec)
    mol = torch.tensor(_random_molecule(12, 11))
    m0, m1 = radius_graph(mol, 4.0), radius_graph(mol + 100.0, 4.0)
    assert torch.equal(m0.edge_index, m1.edge_index)
    torch.testing.assert_close(m0.edge_vec, m1.edge_vec)


def test_float32_positions():
    pos = torch.tensor(_random_molecule(10, 12), dtype=torch.float32)
    g = radius_graph(pos, 4.0)
    assert g.edge_vec.dtype == torch.float32


def _make_batch() -> tuple[Batch, list[Data]]:
    samples = []
    for s in range(3):  # small molecules (dense batched path)
        p = _random_molecule(6 + 3 * s, 20 + s)
        samples.append(Data(z=torch.full((len(p),), 6), pos=torch.tensor(p)))
    p = _random_molecule(40, 30)  # larger molecule (vesin path)
    samples.append(Data(z=torch.full((40,), 6), pos=torch.tensor(p)))
    bulk_cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    bulk_cu.rattle(0.05, seed=31)
    slab = fcc111("Al", size=(2, 2, 2), vacuum=4.0)
    for at in (bulk_cu, slab):
        samples.append(Data(z=torch.tensor(at.numbers), pos=torch.tensor(at.positions)))
    # Give every sample a cell/pbc so the Batch collates them ([1, 3, 3] -> [B, 3, 3]).
    for d in samples[:4]:
        d.cell = torch.zeros(1, 3, 3, dtype=torch.float64)
        d.pbc = torch.zeros(1, 3, dtype=torch.bool)
    for d, at in zip(samples[4:], (bulk_cu, slab), strict=True):
        d.cell = torch.tensor(np.asarray(at.cell))[None]
        d.pbc = torch.tensor(at.pbc)[None]
    return Batch.from_data_list(samples), samples


@pytest.mark.parametrize("max_neighbors", [None, 6])
def test_batch_equals_per_sample(max_neighbors):
    batch, samples = _make_batch()
    batch.pos.requires_grad_(True)
    g = batch_radius_graph(batch, 4.5, max_neighbors=max_neighbors)
    assert g.edge_graph is not None
    offset = 0
    for b, d in enumerate(samples):
        ref = radius_graph(
            d.pos, 4.5, cell=d.cell[0], pbc=d.pbc[0].tolist(), max_neighbors=max_neighbors
        )
        m = g.edge_graph == b
        assert torch.equal(g.edge_index[:, m] - offset, ref.edge_index)
        assert torch.equal(g.cell_shifts[m], ref.cell_shifts)
        torch.testing.assert_close(g.edge_vec[m].detach(), ref.edge_vec)
        # Offsets are right: both ends of each edge lie in graph b.
        assert (batch.batch[g.edge_index[:, m]] == b).all()
        offset += d.num_nodes
    # Gradients flow to the batch positions.
    (grad,) = torch.autograd.grad(g.edge_len.sum(), batch.pos)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_batch_without_cell_and_cell_gradient():
    mols = [Data(pos=torch.tensor(_random_molecule(n, 40 + n))) for n in (3, 8, 5)]
    batch = Batch.from_data_list(mols)
    g = batch_radius_graph(batch, 3.0)
    assert (g.cell_shifts == 0).all()
    assert torch.equal(g.edge_graph, batch.batch[g.edge_index[1]])
    # Cell gradient through batched cells.
    b2, _ = _make_batch()
    b2.cell.requires_grad_(True)
    g2 = batch_radius_graph(b2, 4.5)
    (gc,) = torch.autograd.grad(g2.edge_len.sum(), b2.cell)
    assert gc.shape == b2.cell.shape and gc[4:].abs().sum() > 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan"), float("inf")])
def test_error_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        radius_graph(torch.zeros(2, 3), cutoff)


def test_error_pos_shape_and_finite():
    with pytest.raises(ValueError, match=r"pos must have shape \[N, 3\]"):
        radius_graph(torch.zeros(4, 2), 1.0)
    bad = torch.zeros(3, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="pos contains non-finite"):
        radius_graph(bad, 1.0)


def test_error_cell_and_pbc():
    pos = torch.rand(3, 3)
    with pytest.raises(ValueError, match=r"cell must have shape \[3, 3\]"):
        radius_graph(pos, 1.0, cell=torch.eye(2))
    with pytest.raises(ValueError, match="pbc has a periodic direction but no cell"):
        radius_graph(pos, 1.0, pbc=True)
    with pytest.raises(ValueError, match="pbc must be"):
        radius_graph(pos, 1.0, cell=torch.eye(3), pbc=[True, False])
    flat = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"cell is degenerate .*\['c'\]"):
        radius_graph(pos, 1.0, cell=flat, pbc=True)
    radius_graph(pos, 1.0, cell=flat, pbc=[True, True, False])  # fine: c is not periodic
    with pytest.raises(ValueError, match="max_neighbors"):
        radius_graph(pos, 1.0, max_neighbors=0)


def test_error_batch_degenerate_cell_names_graph():
    batch, _ = _make_batch()
    batch.cell = batch.cell.clone()
    batch.cell[4, 1] = 0.0
    with pytest.raises(ValueError, match=r"cell\[4\] is degenerate"):
        batch_radius_graph(batch, 4.0)


def test_overlapping_atoms_are_an_error_not_a_nan_gradient():
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pos: atoms [12] and [12] are 0\.00e\+00 Å apart"):
        radius_graph(pos, 2.0)


@pytest.mark.parametrize(
    "cell, pbc",
    [
        (np.diag([7.0, 8.0, 9.0]), True),
        (np.array([[6.0, 0, 0], [2.0, 5.5, 0], [1.0, 1.0, 7.0]]), True),  # triclinic
        (np.array([[9.0, 0, 0], [3.0, 8.0, 0], [0, 0, 0]]), [True, True, False]),  # slab
        (np.diag([6.0, 0, 0]), [True, False, False]),  # wire
    ],
)
def test_periodic_edge_estimate_is_the_count_at_uniform_density(cell, pbc):
    """Uniform random atoms in the cell (and in a 1 Å thick layer or line across the
    non-periodic directions): the estimate is within 20% of the edges found, the
    wider spread of the low-dimensional cases staying below 2x."""
    from tdn_data.graphs import periodic_edge_estimate

    rng = np.random.default_rng(0)
    pbc_np = np.broadcast_to(np.asarray(pbc), 3)
    n, rc = 60, 4.5
    frac = rng.random((n, 3))
    pos = frac @ cell + rng.random((n, 3)) * ~pbc_np  # 1 Å across the open directions
    g = radius_graph(torch.tensor(pos), rc, cell=torch.tensor(cell), pbc=pbc)
    found, estimate = g.edge_index.shape[1], periodic_edge_estimate(n, rc, cell, pbc)
    tol = 0.2 if pbc_np.all() else 1.0
    assert abs(estimate / found - 1) < tol, (estimate, found)


def test_periodic_edge_estimate_sees_a_cell_tiny_for_the_cutoff():
    from tdn_data.graphs import periodic_edge_estimate

    # every pair has (4/3 pi 5^3) / 1e-9 ~ 5e11 images within 5 Å
    assert periodic_edge_estimate(2, 5.0, np.eye(3) * 1e-3, True) > 1e12
    assert periodic_edge_estimate(2, 5.0, np.zeros((3, 3)), True) == float("inf")
    with pytest.raises(ValueError, match="pbc: expected at least one periodic"):
        periodic_edge_estimate(2, 5.0, np.eye(3), False)
