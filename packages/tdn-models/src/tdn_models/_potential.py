"""The contract every interatomic potential in tdn-models follows.

A subclass maps a radius graph to normalized per-atom outputs (:meth:`Potential.
atomic_outputs`); this base class builds the graph, turns the outputs into energies
with :class:`Normalization`, and derives forces (-dE/dpos) and stress (strain
derivative) by autograd, so every model gets them the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tdn_core import TensorProduct
from tdn_data.graphs import batch_radius_graph, compute_edge_vectors

from ._normalization import Normalization


class GraphInputs(NamedTuple):
    """What a model sees. N atoms, E edges, B graphs.

    Attributes:
        z: ``[N]`` long atomic numbers.
        pos: ``[N, 3]`` positions (Å), in the model's dtype.
        batch: ``[N]`` long graph index of each atom.
        num_graphs: B.
        edge_index: ``[2, E]`` long (src = neighbour, dst = centre).
        edge_vec: ``[E, 3]`` Å, ``pos[dst] - pos[src] + shift @ cell``; differentiable.
        edge_len: ``[E]`` Å.
    """

    z: Tensor
    pos: Tensor
    batch: Tensor
    num_graphs: int
    edge_index: Tensor
    edge_vec: Tensor
    edge_len: Tensor


class Potential(nn.Module):
    """Base class: energy [B] (eV), forces [N, 3] (eV/Å), stress [B, 3, 3] (eV/Å^3).

    Subclasses set ``self.config`` (the constructor's keyword arguments, JSON-able) and
    implement :meth:`atomic_outputs`. ``direct_forces=True`` means the subclass also
    returns normalized per-atom forces (a force head): faster, but not conservative.

    Args:
        cutoff: radius graph cutoff (Å).
        max_neighbors: cap on neighbours per atom (None: no cap; a cap makes the
            energy discontinuous, avoid it for MD).
        direct_forces: forces from a head instead of -dE/dpos.
    """

    def __init__(
        self, cutoff: float, max_neighbors: int | None = None, direct_forces: bool = False
    ) -> None:
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff: expected a positive length in Å, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.direct_forces = bool(direct_forces)
        self.normalization = Normalization()
        self.config: dict[str, Any] = {}

    # ------------------------------------------------------------------ subclass API
    def atomic_outputs(self, inputs: GraphInputs) -> tuple[Tensor, Tensor | None]:
        """Normalized per-atom energies u [N] and, with direct_forces, forces [N, 3]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ backends
    def tensor_products(self) -> list[TensorProduct]:
        """The tdn-core tensor products inside this model (empty for baselines)."""
        return [m for m in self.modules() if isinstance(m, TensorProduct)]

    def set_backend(self, name: str) -> Potential:
        """Run every tensor product on backend ``name``; weights are untouched. Returns self."""
        tps = self.tensor_products()
        if not tps:
            raise ValueError(
                f"backend: {type(self).__name__} has no tdn-core tensor products, so "
                f"backend {name!r} cannot apply"
            )
        for tp in tps:
            tp.set_backend(name)
        return self

    @property
    def backend(self) -> str | None:
        """The backend of the tensor products (None for models without any)."""
        names = {tp.backend for tp in self.tensor_products()}
        return names.pop() if len(names) == 1 else (None if not names else "mixed")

    # ------------------------------------------------------------------ forward
    def forward(self, data: Any, *, forces: bool = True, stress: bool = False) -> dict:
        """Energy, forces and stress of a batch.

        Args:
            data: a torch_geometric ``Data``/``Batch`` (or any object) with ``z [N]``,
                ``pos [N, 3]`` (Å), optional ``batch [N]``, ``cell [B, 3, 3]`` (Å) and
                ``pbc [B, 3]``.
            forces: compute forces.
            stress: compute stress (periodic cells only; by the strain derivative).

        Returns:
            dict with ``energy [B]`` (eV), ``node_energy [N]`` (eV), and ``forces
            [N, 3]`` (eV/Å) / ``stress [B, 3, 3]`` (eV/Å^3, ASE's sign) when asked.
            Outputs keep their autograd graph only when grad is enabled by the caller
            (training); under ``torch.no_grad()`` forces are still computed.
        """
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            return self._forward(data, forces, stress, create_graph, self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (inputs are cast to it)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def _forward(self, data, want_forces, want_stress, create_graph, dtype) -> dict:
        z = data.z.long()
        pos = data.pos.to(dtype)
        n = z.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        num_graphs = int(getattr(data, "num_graphs", 0) or (int(batch.max()) + 1 if n else 0))
        cell = getattr(data, "cell", None)
        if want_stress and cell is None:
            raise ValueError("stress: needs a periodic cell (data.cell), but the batch has none")

        graph = batch_radius_graph(data, self.cutoff, self.max_neighbors)
        inputs_needing_grad = []
        if want_forces and not self.direct_forces:
            pos = pos.detach().requires_grad_(True)
            inputs_needing_grad.append(pos)
        if cell is not None:
            cell = cell.to(dtype).reshape(num_graphs, 3, 3)
        if want_stress:
            # E(strained) with pos -> pos (1 + eps), cell -> cell (1 + eps): dE/deps = V stress
            eps = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device)
            eps.requires_grad_(True)
            sym = 0.5 * (eps + eps.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym.index_select(0, batch))
            cell = cell + cell @ sym
            inputs_needing_grad.append(eps)
        edge_vec, edge_len = compute_edge_vectors(
            pos, graph.edge_index, graph.cell_shifts, cell, graph.edge_graph
        )
        inputs = GraphInputs(z, pos, batch, num_graphs, graph.edge_index, edge_vec, edge_len)
        u, direct = self.atomic_outputs(inputs)
        node_energy = self.normalization(z, u)
        energy = torch.zeros(num_graphs, dtype=dtype, device=pos.device)
        energy = energy.index_add(0, batch, node_energy)
        out = {"energy": energy, "node_energy": node_energy}

        if inputs_needing_grad:
            grads = torch.autograd.grad(
                energy.sum(), inputs_needing_grad, create_graph=create_graph, allow_unused=True
            )
            grads = [
                torch.zeros_like(t) if g is None else g
                for g, t in zip(grads, inputs_needing_grad, strict=True)
            ]
            if want_forces and not self.direct_forces:
                out["forces"] = -grads[0]
            if want_stress:
                volume = torch.linalg.det(cell).abs()
                out["stress"] = grads[-1] / volume.view(-1, 1, 1)
        if want_forces and self.direct_forces:
            if direct is None:
                raise RuntimeError(f"{type(self).__name__}: direct_forces set but no force head")
            out["forces"] = direct * self.normalization.scale.to(dtype)
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out
