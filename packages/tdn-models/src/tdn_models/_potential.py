"""The contract every interatomic potential in tdn-models follows.

A subclass maps a radius graph to normalized per-atom outputs (:meth:`Potential.
atomic_outputs`); this base class builds the graph, turns the outputs into energies
with :class:`Normalization`, and derives forces (-dE/dpos) and stress (strain
derivative) by autograd, so every model gets them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tdn_core import TensorProduct
from tdn_data.graphs import batch_radius_graph, compute_edge_vectors

from ._normalization import Normalization
from ._repulsion import ZBLRepulsion

#: backends whose products are torch.library custom ops: no torch.func transforms
_CUSTOM_OP_BACKENDS = frozenset({"cp_triton"})


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
        zbl: add the screened nuclear repulsion of pairs closer than a bond
            (:class:`ZBLRepulsion`, in eV, outside the normalization): the prior that
            close contacts, rare in training data, need.
    """

    def __init__(
        self,
        cutoff: float,
        max_neighbors: int | None = None,
        direct_forces: bool = False,
        zbl: bool = False,
    ) -> None:
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff: expected a positive length in Å, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.direct_forces = bool(direct_forces)
        self.normalization = Normalization()
        self.repulsion = ZBLRepulsion() if zbl else None
        self.config: dict[str, Any] = {}
        self._compiled = None  # set by compile()

    # ------------------------------------------------------------------ subclass API
    def atomic_outputs(self, inputs: GraphInputs) -> tuple[Tensor, Tensor | None]:
        """Normalized per-atom energies u [N] and, with direct_forces, forces [N, 3]."""
        raise NotImplementedError

    def fit_normalization(self, samples: Iterable) -> dict:
        """Fit :attr:`normalization` on training ``samples`` (see
        :meth:`Normalization.fit`), on the energies less the ZBL term's where the model
        has one: the network learns the rest. Returns the fitted values."""
        prior = None if self.repulsion is None else self.repulsion.structure_energy
        return self.normalization.fit(samples, prior=prior)

    # ------------------------------------------------------------------ backends
    def tensor_products(self) -> list[TensorProduct]:
        """The tdn-core tensor products inside this model (empty for baselines)."""
        return [m for m in self.modules() if isinstance(m, TensorProduct)]

    def set_backend(self, name: str, policy: dict | None = None) -> Potential:
        """Run every tensor product on backend ``name`` (or ``"auto"`` under ``policy``,
        see :class:`tdn_core.AutoPolicy`); weights are untouched. Returns self."""
        tps = self.tensor_products()
        if not tps:
            raise ValueError(
                f"backend: {type(self).__name__} has no tdn-core tensor products, so "
                f"backend {name!r} cannot apply"
            )
        if self._compiled is not None:
            self._check_traceable({name})
        for tp in tps:
            tp.set_backend(name, policy)
        return self

    @staticmethod
    def _check_traceable(backends: set[str]) -> None:
        refused = sorted(backends & _CUSTOM_OP_BACKENDS)
        if refused:
            raise ValueError(
                f"backend: {refused[0]!r} runs on torch.library custom ops, which the compiled "
                "path (torch.func.grad) cannot differentiate; compile a model on cp_eager "
                "or path_shared, or run this one uncompiled"
            )

    def trained_elements(self) -> set[int] | None:
        """The atomic numbers the normalization was fitted on (their E0 is not 0);
        ``None`` if it was never fitted, so the elements are not known."""
        e0 = self.normalization.element_energies
        return {int(z) for z in torch.nonzero(e0).flatten()} or None

    @property
    def backend(self) -> str | None:
        """The backend of the tensor products (None for models without any)."""
        names = {tp.backend for tp in self.tensor_products()}
        return names.pop() if len(names) == 1 else (None if not names else "mixed")

    # ------------------------------------------------------------------ compile
    def compile(self, **options: Any) -> Potential:
        """Compile energy, forces and stress with ``torch.compile``, in place; returns self.

        ``nn.Module.compile`` would compile :meth:`forward`, whose force loss needs a
        second backward pass in training, which compiled graphs do not support. This
        compiles the function from positions to the energy *and* its gradients instead
        (forces and stress by ``torch.func.grad``): in training, the backward pass then
        differentiates the compiled force computation. Grad mode and no-grad mode
        (inference) compile one graph each, on their first call.

        The graph build (radius graph) stays eager: its size depends on the data. Shapes
        are dynamic by default (``dynamic=True``): batches of any size reuse the graph.
        The first call compiles (minutes on a small CPU); later calls run faster (see the
        README's speed tables). Needs a C++ compiler on CPU. Backends built on
        ``torch.library`` custom ops (``cp_triton``) cannot run inside ``torch.func``
        and are refused. The setting is not saved in checkpoints.

        Every compiled model and grad mode is one entry of dynamo's cache for the
        compiled function, shared by all models of a process; past
        ``torch._dynamo.config.recompile_limit`` entries (8) it runs eager. Comparing
        many models in one process, call ``torch._dynamo.reset()`` between them.

        Args:
            **options: passed to ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``...).
        """
        self._check_traceable({tp.backend for tp in self.tensor_products()})
        options.setdefault("dynamic", True)
        self._compiled = torch.compile(
            partial(_node_energies_and_gradients, functional=True), **options
        )
        return self

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
        dtype = self.dtype
        z = data.z.long()
        pos = data.pos.to(dtype).detach()
        n = z.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        num_graphs = int(getattr(data, "num_graphs", 0) or (int(batch.max()) + 1 if n else 0))
        cell = getattr(data, "cell", None)
        if stress and cell is None:
            raise ValueError("stress: needs a periodic cell (data.cell), but the batch has none")
        if cell is not None:
            cell = cell.to(dtype).reshape(num_graphs, 3, 3)
        eps = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device) if stress else None

        graph = batch_radius_graph(data, self.cutoff, self.max_neighbors)
        conservative = forces and not self.direct_forces
        node_energies_and_gradients = self._compiled or _node_energies_and_gradients
        node_energy, direct, dpos, deps = node_energies_and_gradients(
            self, pos, eps, z, batch, num_graphs, graph, cell, conservative
        )
        # summed outside the compiled function: inductor's CPU code for a scatter into a
        # [1] buffer (one graph, whose size dynamo specializes) fails to vectorize
        energy = torch.zeros(num_graphs, dtype=dtype, device=pos.device)
        out = {"energy": energy.index_add(0, batch, node_energy), "node_energy": node_energy}
        if conservative:
            out["forces"] = -dpos
        if stress:
            out["stress"] = deps / torch.linalg.det(cell).abs().view(-1, 1, 1)
        if forces and self.direct_forces:
            if direct is None:
                raise RuntimeError(f"{type(self).__name__}: direct_forces set but no force head")
            out["forces"] = direct * self.normalization.scale.to(dtype)
        return out

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (inputs are cast to it)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())


def _node_energies_and_gradients(
    model: Potential,
    pos: Tensor,
    eps: Tensor | None,
    z: Tensor,
    batch: Tensor,
    num_graphs: int,
    graph: Any,
    cell: Tensor | None,
    conservative: bool,
    functional: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Node energies [N] (eV), direct forces [N, 3] (or None), dE/dpos [N, 3] (or
    None unless ``conservative``) and dE/deps [B, 3, 3] (or None unless a strain ``eps``
    is given). Outputs keep their graph for a later backward pass exactly when grad mode
    is on.

    ``functional`` takes the gradients with ``torch.func.grad``, which ``torch.compile``
    traces (it does not trace ``autograd.grad``); the default ``autograd.grad`` also
    serves backends built on ``torch.library`` custom ops, which ``torch.func`` refuses.
    """

    def energy(pos: Tensor, eps: Tensor | None):
        strained_cell = cell
        if eps is not None:
            # E(strained) with pos -> pos (1 + eps), cell -> cell (1 + eps): dE/deps = V stress
            sym = 0.5 * (eps + eps.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym.index_select(0, batch))
            strained_cell = cell + cell @ sym
        edge_vec, edge_len = compute_edge_vectors(
            pos, graph.edge_index, graph.cell_shifts, strained_cell, graph.edge_graph
        )
        inputs = GraphInputs(z, pos, batch, num_graphs, graph.edge_index, edge_vec, edge_len)
        u, direct = model.atomic_outputs(inputs)
        node_energy = model.normalization(z, u)
        if model.repulsion is not None:
            node_energy = node_energy + model.repulsion(z, graph.edge_index, edge_len)
        # torch.func's auxiliary outputs must be tensors: no None for a missing head
        return node_energy.sum(), (node_energy, *([] if direct is None else [direct]))

    inputs = {0: pos, 1: eps}
    argnums = ((0,) if conservative else ()) + ((1,) if eps is not None else ())
    if not argnums:
        (_, aux), grads = energy(pos, eps), {}
    elif functional:
        grads, (_, aux) = torch.func.grad_and_value(energy, argnums, has_aux=True)(pos, eps)
        grads = dict(zip(argnums, grads, strict=True))
    else:
        create_graph = torch.is_grad_enabled()
        for i in argnums:
            inputs[i] = inputs[i].detach().requires_grad_(True)
        with torch.enable_grad():
            e, aux = energy(inputs[0], inputs[1])
            found = torch.autograd.grad(
                e, [inputs[i] for i in argnums], create_graph=create_graph, allow_unused=True
            )
        grads = {
            i: torch.zeros_like(inputs[i]) if g is None else g
            for i, g in zip(argnums, found, strict=True)
        }
        if not create_graph:
            aux = [t.detach() for t in aux]
    node_energy, direct = (*aux, None)[:2]
    return node_energy, direct, grads.get(0), grads.get(1)
