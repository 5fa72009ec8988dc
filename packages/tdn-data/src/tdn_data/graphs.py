"""Radius graphs (neighbour lists) for interatomic potentials, with periodic boundaries.

Edge convention
---------------
An edge ``e`` goes from ``src = edge_index[0, e]`` (the neighbour that sends the message) to
``dst = edge_index[1, e]`` (the centre atom that receives it)::

    edge_vec[e] = pos[dst] - pos[src] + cell_shifts[e] @ cell        # Å, shape [3]

``cell`` rows are the lattice vectors (Å) and ``cell_shifts`` are integers. This is exactly
ase.neighborlist's ``(i, j, S)`` convention ``D = pos[j] - pos[i] + S @ cell`` with
``(i, j, S) = (src, dst, cell_shifts)``; the tests check it triple by triple.

The lists are *full*: every pair appears in both directions, ``(a, b, S)`` and ``(b, a, -S)``
(until ``max_neighbors`` drops some). An edge exists when ``0 < |edge_vec| < cutoff``; an atom is
never its own neighbour at zero shift, but with a cutoff longer than a cell length it sees its own
periodic images and several images of each neighbour. Edges are sorted by ``dst``, then ``src``,
then ``cell_shifts`` (lexicographic), so the output is deterministic.

How the search is done
----------------------
The search runs on detached float64 numpy copies; only the final
``edge_vec``/``edge_len`` are computed in torch, so they are differentiable with respect to
``pos`` (forces) and ``cell`` (stress). Search back-ends, picked per system from measurements on a
2-core CPU (see ``benchmarks/bench_graphs.py``):

* non-periodic with at most ``_DENSE_MAX_ATOMS`` atoms: a dense all-pairs distance matrix in numpy
  (about 13 µs for 20 atoms against 25 µs for vesin, whose fixed call overhead dominates there;
  vesin wins from roughly 30-50 atoms up). In a batch, all small non-periodic graphs go through one
  padded dense computation, which amortises the Python overhead too;
* everything else (periodic, mixed pbc, larger molecules): ``vesin`` (cell-list, O(N)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import vesin
from torch import Tensor

__all__ = [
    "Graph",
    "batch_radius_graph",
    "compute_edge_vectors",
    "periodic_edge_estimate",
    "radius_graph",
]

# Non-periodic systems up to this many atoms use the dense numpy path (crossover measured ~40).
_DENSE_MAX_ATOMS = 32
# Upper bound on padded pair entries per chunk of the batched dense path (memory guard).
_DENSE_CHUNK_PAIRS = 1 << 21
# Distances equal to this many decimals (Å) count as ties for ``max_neighbors``; without
# rounding, symmetry-equivalent images differ in the last bit and the tie-break would be noise.
_TIE_DECIMALS = 8
# Smallest singular value (Å) the periodic lattice vectors may have.
_DEGENERATE_TOL = 1e-4


class Graph(NamedTuple):
    """A radius graph. ``E`` is the number of edges.

    Attributes:
        edge_index: ``[2, E]`` long; row 0 = src (neighbour), row 1 = dst (centre).
        cell_shifts: ``[E, 3]`` long; integer lattice translations of the edge.
        edge_vec: ``[E, 3]`` in pos dtype (Å); ``pos[dst] - pos[src] + cell_shifts @ cell``.
        edge_len: ``[E]`` (Å); ``edge_vec.norm(dim=-1)``.
        edge_graph: ``[E]`` long, index of the graph each edge belongs to (batched graphs only,
            else ``None``); ``cell[edge_graph]`` gives each edge's cell.
    """

    edge_index: Tensor
    cell_shifts: Tensor
    edge_vec: Tensor
    edge_len: Tensor
    edge_graph: Tensor | None = None


# ----------------------------------------------------------------------------- validation


#: below this separation (Å) two atoms count as overlapping
_MIN_DISTANCE = 1e-6


def _check_cutoff(cutoff: float) -> float:
    try:
        rc = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}") from None
    if not np.isfinite(rc) or rc <= 0.0:
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff!r}")
    return rc


def _check_max_neighbors(max_neighbors: int | None) -> int | None:
    if max_neighbors is None:
        return None
    if isinstance(max_neighbors, bool) or int(max_neighbors) != max_neighbors or max_neighbors < 1:
        raise ValueError(f"max_neighbors must be a positive integer or None, got {max_neighbors!r}")
    return int(max_neighbors)


def _check_pos(pos: Tensor | np.ndarray) -> Tensor:
    if not isinstance(pos, Tensor):
        pos = torch.as_tensor(np.asarray(pos, dtype=np.float64))
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape [N, 3], got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise ValueError(f"pos must be a floating-point tensor, got {pos.dtype}")
    if not bool(torch.isfinite(pos.detach()).all()):
        raise ValueError("pos contains non-finite values (nan or inf)")
    return pos


def _check_pbc(pbc: Any, name: str = "pbc") -> np.ndarray:
    """``pbc`` as a bool array [3]; accepts a bool, a sequence of 3 bools, an array or tensor."""
    if isinstance(pbc, Tensor):
        pbc = pbc.detach().cpu().numpy()
    arr = np.asarray(pbc)
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    arr = arr.reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"{name} must be a bool or 3 bools, got shape {np.asarray(pbc).shape}")
    return arr.astype(bool)


def _check_cell(cell: Tensor | np.ndarray, pbc: np.ndarray, name: str = "cell") -> Tensor:
    """Validate a [3, 3] cell (a [1, 3, 3] one is squeezed) against the periodic directions."""
    if not isinstance(cell, Tensor):
        cell = torch.as_tensor(np.asarray(cell, dtype=np.float64))
    if cell.dim() == 3 and cell.shape[0] == 1:
        cell = cell[0]
    if cell.shape != (3, 3):
        raise ValueError(
            f"{name} must have shape [3, 3] (rows = lattice vectors), got {tuple(cell.shape)}"
        )
    c = cell.detach().cpu().double().numpy()
    if not np.isfinite(c).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    if pbc.any():
        # Periodic lattice vectors must be linearly independent and of non-trivial length,
        # otherwise the number of images is unbounded.
        sv = np.linalg.svd(c[pbc], compute_uv=False)
        if sv.min() < _DEGENERATE_TOL:
            short = pbc & (np.linalg.norm(c, axis=1) < _DEGENERATE_TOL)
            # Name the (near-)zero vectors if any, else the linearly dependent periodic set.
            bad = short if short.any() else pbc
            dirs = [d for d, b in zip("abc", bad, strict=True) if b]
            raise ValueError(
                f"{name} is degenerate along the periodic direction(s) {dirs} "
                f"(smallest singular value {sv.min():.3g} Å)"
            )
    return cell


def periodic_edge_estimate(n_atoms: int, cutoff: float, cell: Any, pbc: Any) -> float:
    """The edge count :func:`radius_graph` will find in a periodic structure of uniform
    density, before the search runs.

    ``N^2 B / M``: with ``k`` periodic directions, ``M`` is the measure of the periodic
    lattice (length, area or volume, Å^k) and ``B`` that of a ``k``-ball of radius
    ``cutoff`` (``2 r``, ``pi r^2``, ``4/3 pi r^3``), so every pair has ``B / M`` images
    within reach. A cutoff far beyond a tiny cell means billions of images: this sizes
    the search before it allocates. The non-periodic directions add nothing (their pairs
    are real atoms, at most ``N^2``).

    Args:
        n_atoms: N.
        cutoff: radius (Å), > 0.
        cell: ``[3, 3]`` rows = lattice vectors (Å).
        pbc: a bool or 3 bools, at least one True.
    Returns:
        the estimated number of edges (``inf`` for a periodic lattice without extent).
    """
    rc = _check_cutoff(cutoff)
    pbc_np = _check_pbc(pbc)
    if not pbc_np.any():
        raise ValueError("pbc: expected at least one periodic direction, got none")
    lattice = np.asarray(cell, dtype=np.float64).reshape(3, 3)[pbc_np]
    measure = float(np.sqrt(max(np.linalg.det(lattice @ lattice.T), 0.0)))  # Gram determinant
    ball = {1: 2 * rc, 2: np.pi * rc**2, 3: 4 / 3 * np.pi * rc**3}[len(lattice)]
    return float(n_atoms) ** 2 * ball / measure if measure > 0 else np.inf


# ----------------------------------------------------------------------------- search (numpy)


def _dense_search(pos: np.ndarray, rc: float) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs search for a small non-periodic system; returns (src, dst), sorted by dst."""
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    mask = d2 < rc * rc
    np.fill_diagonal(mask, False)
    dst, src = np.nonzero(mask)  # row = dst because d2[dst, src]; nonzero is row-major
    return src.astype(np.int64), dst.astype(np.int64)


def _vesin_search(
    pos: np.ndarray, rc: float, cell: np.ndarray | None, pbc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vesin full list; vesin's (i, j, S) is ase's convention, i.e. (src, dst, shift)."""
    box = cell if (cell is not None and pbc.any()) else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=rc, full_list=True)
    i, j, s = nl.compute(pos, box, [bool(p) for p in pbc], quantities="ijS")
    return i.astype(np.int64), j.astype(np.int64), np.asarray(s, dtype=np.int64).reshape(-1, 3)


def _search(
    pos: np.ndarray, rc: float, cell: np.ndarray | None, pbc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered full neighbour list of one system: (src [E], dst [E], shifts [E, 3])."""
    if not pbc.any() and len(pos) <= _DENSE_MAX_ATOMS:
        src, dst = _dense_search(pos, rc)
        return src, dst, np.zeros((len(src), 3), dtype=np.int64)
    return _vesin_search(pos, rc, cell, pbc)


def _dense_batch_search(
    pos: np.ndarray, ptr: np.ndarray, graphs: np.ndarray, rc: float
) -> tuple[np.ndarray, np.ndarray]:
    """Padded all-pairs search over several small non-periodic graphs at once.

    Args:
        pos: ``[N, 3]`` float64 positions of the whole batch (Å).
        ptr: ``[B + 1]`` node offsets of each graph.
        graphs: ``[G]`` indices of the graphs to search.
    Returns:
        (src, dst) global node indices, sorted by dst within each chunk.
    """
    sizes = ptr[graphs + 1] - ptr[graphs]
    nmax = int(sizes.max())
    per_chunk = max(1, _DENSE_CHUNK_PAIRS // (nmax * nmax))
    srcs, dsts = [], []
    for c0 in range(0, len(graphs), per_chunk):
        g, n = graphs[c0 : c0 + per_chunk], sizes[c0 : c0 + per_chunk]
        local = np.arange(nmax)
        valid = local[None, :] < n[:, None]  # [G, nmax]
        gidx = np.where(valid, ptr[g][:, None] + local[None, :], 0)
        p = pos[gidx]  # padding slots hold node 0's position; masked out below
        d2 = ((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1)
        mask = (d2 < rc * rc) & valid[:, :, None] & valid[:, None, :]
        mask[:, local, local] = False
        k, a, b = np.nonzero(mask)
        dsts.append(ptr[g][k] + a)
        srcs.append(ptr[g][k] + b)
    return np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64)


def _order_and_cap(
    src: np.ndarray,
    dst: np.ndarray,
    shifts: np.ndarray,
    n_nodes: int,
    max_neighbors: int | None,
    dist: np.ndarray | None,
) -> np.ndarray:
    """Permutation (and selection) of edges: sorted by (dst, src, shift), capped per dst.

    ``max_neighbors`` keeps, per centre ``dst``, the ``k`` shortest edges; ties (distances equal to
    ``_TIE_DECIMALS`` decimals, Å) are broken by smaller ``src`` then smaller shift code.
    """
    m = int(np.abs(shifts).max()) if len(shifts) else 0
    r = 2 * m + 1
    code = ((shifts[:, 0] + m) * r + (shifts[:, 1] + m)) * r + (shifts[:, 2] + m)
    if n_nodes * n_nodes * r**3 < 2**62:
        # One int64 key: a single argsort is several times faster than a 5-key lexsort.
        order = np.argsort((dst * n_nodes + src) * r**3 + code)  # unique keys: no stability
    else:
        order = np.lexsort((code, src, dst))
    if max_neighbors is None:
        return order
    assert dist is not None
    # Within each dst, a *stable* sort by quantised distance keeps the (src, shift) order of
    # ``order`` among ties, which is the documented tie-break.
    dq = np.rint(dist[order] * 10.0**_TIE_DECIMALS).astype(np.int64)
    dst_o = dst[order]
    span = int(dq.max()) + 1 if len(dq) else 1
    if n_nodes * span < 2**62:
        by_dist = np.argsort(dst_o * span + dq, kind="stable")
    else:
        by_dist = np.lexsort((dq, dst_o))  # lexsort is stable
    counts = np.bincount(dst_o, minlength=n_nodes)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    keep = by_dist[np.arange(len(by_dist)) - starts < max_neighbors]
    return order[np.sort(keep)]  # back to (dst, src, shift) order


def _check_no_overlap(edge_index: Tensor, edge_len: Tensor) -> None:
    # Two atoms (or an atom and another's image) at one position give a zero-length edge:
    # its direction is undefined and every gradient through it is NaN. Say so now.
    if edge_len.numel() and float(edge_len.detach().min()) < _MIN_DISTANCE:
        e = int(edge_len.detach().argmin())
        src, dst = (int(i) for i in edge_index[:, e])
        raise ValueError(
            f"pos: atoms {src} and {dst} are {float(edge_len[e]):.2e} Å apart "
            f"(closer than {_MIN_DISTANCE} Å): overlapping atoms have no edge direction"
        )


# ----------------------------------------------------------------------------- public API


def compute_edge_vectors(
    pos: Tensor,
    edge_index: Tensor,
    cell_shifts: Tensor,
    cell: Tensor | None = None,
    edge_graph: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Differentiable edge vectors and lengths for a fixed edge set.

    Useful to recompute vectors after attaching ``requires_grad`` or a strain to ``pos``/``cell``.

    Args:
        pos: ``[N, 3]`` positions (Å).
        edge_index: ``[2, E]`` (src, dst).
        cell_shifts: ``[E, 3]`` integer shifts.
        cell: ``[3, 3]`` (one system) or ``[B, 3, 3]`` (batch, then ``edge_graph`` is needed),
            rows = lattice vectors (Å); ``None`` for molecules.
        edge_graph: ``[E]`` graph index of each edge, for a ``[B, 3, 3]`` cell.
    Returns:
        ``edge_vec [E, 3] = pos[dst] - pos[src] + cell_shifts @ cell`` and ``edge_len [E]`` (Å).
    """
    src, dst = edge_index[0], edge_index[1]
    # index_select is ~6x faster than advanced indexing (pos[dst]) on CPU, same autograd.
    vec = pos.index_select(0, dst) - pos.index_select(0, src)
    if cell is not None:
        shifts = cell_shifts.to(pos.dtype)
        cell = cell.to(pos.dtype)
        if cell.dim() == 2:
            vec = vec + shifts @ cell
        else:
            if edge_graph is None:
                raise ValueError("edge_graph is required with a batched cell [B, 3, 3]")
            vec = vec + torch.einsum("ei,eij->ej", shifts, cell.index_select(0, edge_graph))
    return vec, vec.norm(dim=-1)


def radius_graph(
    pos: Tensor,
    cutoff: float,
    *,
    cell: Tensor | None = None,
    pbc: bool | Sequence[bool] | Tensor | None = None,
    max_neighbors: int | None = None,
) -> Graph:
    """Full radius graph of one system, with optional periodic boundary conditions.

    Args:
        pos: ``[N, 3]`` floating positions (Å); may require grad.
        cutoff: radius (Å), > 0; an edge exists when ``0 < |edge_vec| < cutoff``.
        cell: ``[3, 3]`` (or ``[1, 3, 3]``), rows = lattice vectors (Å); may require grad. A
            non-periodic direction may have a zero vector (e.g. a slab's vacuum direction).
        pbc: periodicity per lattice direction, a bool or 3 bools. Default: all ``True`` when a
            cell is given, else all ``False``. A periodic direction requires a cell.
        max_neighbors: keep at most this many nearest neighbours per centre atom (``dst``); ties
            broken by smaller ``src``, then smaller cell shift.
    Returns:
        :class:`Graph` (``edge_graph`` is ``None``); tensors on ``pos.device``.
    Raises:
        ValueError: on a bad cutoff, pos, cell, pbc or max_neighbors (the message names it).
    """
    rc = _check_cutoff(cutoff)
    k = _check_max_neighbors(max_neighbors)
    pos = _check_pos(pos)
    if pbc is None:
        pbc_np = np.full(3, cell is not None)
    else:
        pbc_np = _check_pbc(pbc)
    if cell is None:
        if pbc_np.any():
            raise ValueError("pbc has a periodic direction but no cell was given")
    else:
        cell = _check_cell(cell, pbc_np)

    pos_np = pos.detach().cpu().double().numpy()
    cell_np = None if cell is None else cell.detach().cpu().double().numpy()
    src, dst, shifts = _search(pos_np, rc, cell_np, pbc_np)
    dist = None
    if k is not None:
        vec = pos_np[dst] - pos_np[src]
        if cell_np is not None:
            vec = vec + shifts @ cell_np
        dist = np.linalg.norm(vec, axis=-1)
    order = _order_and_cap(src, dst, shifts, len(pos_np), k, dist)

    device = pos.device
    edge_index = torch.from_numpy(np.stack([src[order], dst[order]])).to(device)
    cell_shifts = torch.from_numpy(np.ascontiguousarray(shifts[order])).to(device)
    cell_t = None if cell is None else cell.to(device)
    edge_vec, edge_len = compute_edge_vectors(pos, edge_index, cell_shifts, cell_t)
    _check_no_overlap(edge_index, edge_len)
    return Graph(edge_index, cell_shifts, edge_vec, edge_len)


def batch_radius_graph(batch: Any, cutoff: float, max_neighbors: int | None = None) -> Graph:
    """Radius graph of a torch_geometric ``Batch``, searched per sample and concatenated.

    Args:
        batch: a ``Batch`` (or anything with these attributes): ``pos [N, 3]`` (Å), ``batch [N]``
            (graph index per node, nodes of a graph contiguous; optional for one graph), optional
            ``cell [B, 3, 3]`` (``[3B, 3]`` is reshaped) and ``pbc [B, 3]`` (``[3B]`` reshaped).
            Same defaults as :func:`radius_graph`: with a cell and no pbc, all periodic.
        cutoff: radius (Å), > 0.
        max_neighbors: per-centre cap, as in :func:`radius_graph`.
    Returns:
        :class:`Graph` over global node indices (the per-graph node offsets are applied), with
        ``edge_graph [E]``; the edges of graph ``b`` equal ``radius_graph`` of sample ``b``
        shifted by its node offset. Use ``cell[edge_graph]`` for per-edge cells.
    """
    rc = _check_cutoff(cutoff)
    k = _check_max_neighbors(max_neighbors)
    pos = _check_pos(batch.pos)
    n_nodes = pos.shape[0]
    device = pos.device

    bvec = getattr(batch, "batch", None)
    if bvec is None:
        bvec_np = np.zeros(n_nodes, dtype=np.int64)
    else:
        bvec_np = bvec.detach().cpu().numpy().astype(np.int64)
        if bvec_np.shape != (n_nodes,):
            raise ValueError(f"batch must have shape [N] = [{n_nodes}], got {bvec_np.shape}")
        if n_nodes and (np.any(np.diff(bvec_np) < 0) or bvec_np[0] < 0):
            raise ValueError("batch must be sorted (nodes of each graph contiguous)")
    num_graphs = int(getattr(batch, "num_graphs", 0) or 0)
    num_graphs = max(num_graphs, int(bvec_np.max()) + 1 if n_nodes else 0)
    ptr = np.zeros(num_graphs + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(bvec_np, minlength=num_graphs))

    cell = getattr(batch, "cell", None)
    pbc = getattr(batch, "pbc", None)
    if cell is not None:
        if not isinstance(cell, Tensor):
            cell = torch.as_tensor(np.asarray(cell, dtype=np.float64))
        if cell.numel() != 9 * num_graphs:
            raise ValueError(
                f"cell must have shape [B, 3, 3] = [{num_graphs}, 3, 3], got {tuple(cell.shape)}"
            )
        cell = cell.reshape(num_graphs, 3, 3)
    if pbc is None:
        pbc_np = np.full((num_graphs, 3), cell is not None)
    else:
        p = pbc.detach().cpu().numpy() if isinstance(pbc, Tensor) else np.asarray(pbc)
        if p.size == 1:
            p = np.repeat(p.reshape(1), 3 * num_graphs)
        if p.size != 3 * num_graphs:
            raise ValueError(f"pbc must have shape [B, 3] = [{num_graphs}, 3], got {p.shape}")
        pbc_np = p.reshape(num_graphs, 3).astype(bool)
    if cell is None and pbc_np.any():
        raise ValueError("pbc has a periodic direction but the batch has no cell")

    pos_np = pos.detach().cpu().double().numpy()
    cell_np = None if cell is None else cell.detach().cpu().double().numpy()
    sizes = ptr[1:] - ptr[:-1]
    periodic = pbc_np.any(axis=1)
    small = np.nonzero(~periodic & (sizes <= _DENSE_MAX_ATOMS) & (sizes > 1))[0]
    srcs, dsts, shifts_l = [], [], []
    if len(small):
        s, d = _dense_batch_search(pos_np, ptr, small, rc)
        srcs.append(s)
        dsts.append(d)
        shifts_l.append(np.zeros((len(s), 3), dtype=np.int64))
    for g in np.nonzero(periodic | (sizes > _DENSE_MAX_ATOMS))[0]:
        a, b = ptr[g], ptr[g + 1]
        cg = None
        if cell_np is not None and periodic[g]:
            _check_cell(cell[g], pbc_np[g], name=f"cell[{g}]")
            cg = cell_np[g]
        s, d, sh = _vesin_search(pos_np[a:b], rc, cg, pbc_np[g])
        srcs.append(s + a)
        dsts.append(d + a)
        shifts_l.append(sh)
    if srcs:
        src, dst, shifts = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(shifts_l)
    else:
        src = dst = np.zeros(0, dtype=np.int64)
        shifts = np.zeros((0, 3), dtype=np.int64)
    egraph = bvec_np[dst]

    dist = None
    if k is not None:
        vec = pos_np[dst] - pos_np[src]
        if cell_np is not None:
            vec = vec + np.einsum("ei,eij->ej", shifts, cell_np[egraph])
        dist = np.linalg.norm(vec, axis=-1)
    order = _order_and_cap(src, dst, shifts, n_nodes, k, dist)

    edge_index = torch.from_numpy(np.stack([src[order], dst[order]])).to(device)
    cell_shifts = torch.from_numpy(np.ascontiguousarray(shifts[order])).to(device)
    edge_graph = torch.from_numpy(np.ascontiguousarray(egraph[order])).to(device)
    cell_t = None if cell is None else cell.to(device)
    edge_vec, edge_len = compute_edge_vectors(pos, edge_index, cell_shifts, cell_t, edge_graph)
    _check_no_overlap(edge_index, edge_len)
    return Graph(edge_index, cell_shifts, edge_vec, edge_len, edge_graph)
