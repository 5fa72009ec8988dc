"""The Tensor Decomposition Network: Equiformer-style graph attention on CP products.

Every edge tensor product is a :class:`tdn_core.TensorProduct` (mode ``uvu``: node
features x edge spherical harmonics), so the backend is a run-time choice
(:meth:`TDN.set_backend`) and the weights are the same under every backend. Each
product's per-edge, per-channel weight comes from a radial MLP over a Gaussian basis of
the edge length and is shared across all CG paths (the paper's path-weight sharing).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from tdn_core import SphericalHarmonics, TensorProduct

from ._layers import EquivariantLayerNorm, EquivariantLinear, Gate, ScalarMLP
from ._normalization import Z_MAX
from ._potential import GraphInputs, Potential
from ._radial import PolynomialEnvelope, build_radial_basis


def _smooth_leaky_relu(x: Tensor, slope: float = 0.2) -> Tensor:
    return 0.5 * (1 + slope) * x + 0.5 * (1 - slope) * x * (2 * torch.sigmoid(x) - 1)


def envelope_softmax(logits: Tensor, envelope: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    r"""Softmax of edge logits over the edges of each centre atom, weighted by the envelope.

    ``alpha_e = u_e exp(a_e) / sum_{e' -> dst(e)} u_e' exp(a_e')``: an edge entering at the
    cutoff (u = 0) takes no attention, so attention stays continuous in the positions.

    Shapes: logits [E, H], envelope [E], dst [E] -> alpha [E, H].
    """
    index = dst.unsqueeze(-1).expand_as(logits)
    # the max only stabilizes exp() and cancels in the ratio: no gradient through it
    amax = torch.full((num_nodes, logits.shape[1]), -torch.inf, dtype=logits.dtype)
    amax = amax.to(logits.device).scatter_reduce(0, index, logits.detach(), "amax")
    ex = torch.exp(logits - amax.index_select(0, dst)) * envelope.unsqueeze(-1)
    denom = torch.zeros_like(amax).index_add(0, dst, ex)
    return ex / (denom.index_select(0, dst) + 1e-12)


class GraphAttention(nn.Module):
    r"""Equivariant graph attention with nonlinear messages (Equiformer's design).

    message = TP(W_s x_src + W_d x_dst, Y, w1(r)); attention logits from the message's
    scalars, per head; value = TP(Gate(W_v message), Y, w2(r)); the output at each atom
    is the attention-weighted sum of values, projected.

    Shapes: x [N, d, C], sh [E, d], radial [E, K] -> [N, d, C].
    """

    def __init__(
        self,
        lmax: int,
        channels: int,
        heads: int,
        radial_sizes: list[int],
        backend: str,
        rank,
        policy: dict | None = None,
    ):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads: {heads} must divide channels ({channels})")
        self.heads = heads
        self.lin_src = EquivariantLinear(lmax, channels, channels)
        self.lin_dst = EquivariantLinear(lmax, channels, channels, bias=False)
        self.radial = ScalarMLP([*radial_sizes, 2 * channels])
        tp = dict(backend=backend, rank=rank, policy=policy)
        self.tp_message = TensorProduct(lmax, lmax, lmax, channels, **tp)
        self.lin_alpha = nn.Linear(channels, channels)
        self.alpha_dot = nn.Parameter(torch.randn(heads, channels // heads) / math.sqrt(channels))
        # no bias: the message already carries lin_src's, and on [E, d, C] edge tensors a
        # bias is one more memory pass in each of the three passes of force training
        self.lin_value = EquivariantLinear(lmax, channels, channels, bias=False)
        self.lin_gate = nn.Linear(channels, channels)
        self.gate = Gate()
        self.tp_value = TensorProduct(lmax, lmax, lmax, channels, **tp)
        self.proj = EquivariantLinear(lmax, channels, channels)

    def forward(
        self, x: Tensor, edge_index: Tensor, sh: Tensor, radial: Tensor, envelope: Tensor
    ) -> Tensor:
        src, dst = edge_index[0], edge_index[1]
        n, E = x.shape[0], src.shape[0]
        w_message, w_value = (self.radial(radial) * envelope.unsqueeze(-1)).chunk(2, dim=-1)
        message = self.lin_src(x).index_select(0, src) + self.lin_dst(x).index_select(0, dst)
        message = self.tp_message(message, sh, w_message.contiguous())

        scalars = message[:, 0, :]
        a = _smooth_leaky_relu(self.lin_alpha(scalars)).view(E, self.heads, self.alpha_dot.shape[1])
        alpha = envelope_softmax((a * self.alpha_dot).sum(-1), envelope, dst, n)

        # attention scales channels per head, and the product is linear in its per-channel
        # weight: fold alpha into the weight ([E, C]) instead of scaling [E, d, C] values
        w_value = w_value * alpha.repeat_interleave(w_value.shape[1] // self.heads, dim=1)
        value = self.gate(self.lin_value(message), self.lin_gate(scalars))
        value = self.tp_value(value, sh, w_value)
        out = torch.zeros(n, *value.shape[1:], dtype=value.dtype, device=value.device)
        out = out.index_add(0, dst, value)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + gated FFN(norm(x))."""

    def __init__(
        self, lmax: int, channels: int, heads: int, radial_sizes, backend, rank, policy=None
    ):
        super().__init__()
        self.norm_attention = EquivariantLayerNorm(lmax, channels)
        self.attention = GraphAttention(lmax, channels, heads, radial_sizes, backend, rank, policy)
        self.norm_ffn = EquivariantLayerNorm(lmax, channels)
        self.ffn_in = EquivariantLinear(lmax, channels, 2 * channels)
        self.ffn_gate = nn.Linear(channels, 2 * channels)
        self.gate = Gate()
        self.ffn_out = EquivariantLinear(lmax, 2 * channels, channels)

    def forward(self, x, edge_index, sh, radial, envelope) -> Tensor:
        x = x + self.attention(self.norm_attention(x), edge_index, sh, radial, envelope)
        h = self.norm_ffn(x)
        h = self.gate(self.ffn_in(h), self.ffn_gate(h[:, 0, :]))
        return x + self.ffn_out(h)


class TDN(Potential):
    r"""Tensor Decomposition Network (Equiformer-style; CP or exact edge products).

    Args:
        lmax: largest degree L of node features and edge harmonics.
        channels: C, channels per component.
        layers: number of attention blocks.
        heads: attention heads (must divide C).
        cutoff: radius graph cutoff (Å).
        num_basis: radial basis functions.
        radial_basis: ``"gaussian"`` (centres spread evenly on [0, cutoff]) or
            ``"bessel"`` (:class:`BesselBasis`, smooth over the whole range).
        radial_hidden: width of the radial MLP's two hidden layers.
        avg_neighbors: typical neighbour count; scales the degree embedding's sum.
        backend: tdn-core backend of every edge product (``cp_eager``, ``path_shared``,
            ``sparse``, ``cg``, ``cp_triton``, ...), or ``"auto"`` (the fastest one here
            under ``backend_policy``); switch later with :meth:`set_backend`.
        backend_policy: with ``backend="auto"``, which backends it may pick
            (:class:`tdn_core.AutoPolicy` fields; default: exact ones only).
        rank: CP rank schedule or int (see :class:`tdn_core.TensorProduct`).
        max_neighbors: cap on neighbours per atom (None: none).
        direct_forces: predict forces with an attention head instead of -dE/dpos.
        zbl: add ZBL's screened nuclear repulsion below bond lengths
            (:class:`tdn_models.ZBLRepulsion`; on by default: it fixes the force errors at
            close contacts, docs/RESULTS.md section 6). Fit the normalization with
            :meth:`Potential.fit_normalization`, which leaves its energy out.

    Checkpoints written before ``zbl`` and ``radial_basis`` existed load with the values
    they were trained with (:attr:`LEGACY_CONFIG`: no ZBL, Gaussians).

    Input/output: see :meth:`Potential.forward`.
    """

    #: config values of checkpoints written before these options existed
    LEGACY_CONFIG: ClassVar[dict] = {"zbl": False, "radial_basis": "gaussian"}

    def __init__(
        self,
        lmax: int = 1,
        channels: int = 128,
        layers: int = 4,
        heads: int = 4,
        cutoff: float = 4.5,
        num_basis: int = 128,
        radial_hidden: int = 64,
        avg_neighbors: float = 10.0,
        backend: str = "cp_eager",
        rank: str | int = "quadratic",
        max_neighbors: int | None = None,
        direct_forces: bool = False,
        backend_policy: dict | None = None,
        radial_basis: str = "gaussian",
        zbl: bool = True,
    ) -> None:
        super().__init__(cutoff, max_neighbors, direct_forces, zbl)
        if direct_forces and lmax < 1:
            raise ValueError("direct_forces: needs lmax >= 1 (forces are l = 1 features)")
        self.config = {
            "lmax": lmax,
            "channels": channels,
            "layers": layers,
            "heads": heads,
            "cutoff": cutoff,
            "num_basis": num_basis,
            "radial_hidden": radial_hidden,
            "avg_neighbors": avg_neighbors,
            "backend": backend,
            "backend_policy": None if backend_policy is None else {**backend_policy},
            "rank": rank,
            "max_neighbors": max_neighbors,
            "direct_forces": direct_forces,
            "radial_basis": radial_basis,
            "zbl": bool(zbl),
        }
        self.lmax = lmax
        self.avg_neighbors = float(avg_neighbors)
        radial_sizes = [num_basis, radial_hidden, radial_hidden]
        self.spherical_harmonics = SphericalHarmonics(lmax)
        self.basis = build_radial_basis(radial_basis, num_basis, cutoff)
        self.envelope = PolynomialEnvelope(cutoff)
        self.embedding = nn.Embedding(Z_MAX + 1, channels)
        self.degree_radial = ScalarMLP([*radial_sizes, channels])
        self.degree_proj = EquivariantLinear(lmax, channels, channels)
        self.blocks = nn.ModuleList(
            TransformerBlock(lmax, channels, heads, radial_sizes, backend, rank, backend_policy)
            for _ in range(layers)
        )
        self.norm = EquivariantLayerNorm(lmax, channels)
        self.energy_head = ScalarMLP([channels, channels, 1], layer_norm=False)
        if direct_forces:
            self.force_attention = GraphAttention(
                lmax, channels, heads, radial_sizes, backend, rank, backend_policy
            )
            self.force_proj = EquivariantLinear(lmax, channels, 1, bias=False)

    def atomic_outputs(self, inputs: GraphInputs) -> tuple[Tensor, Tensor | None]:
        src, dst = inputs.edge_index
        n = inputs.z.shape[0]
        sh = self.spherical_harmonics(inputs.edge_vec)
        radial = self.basis(inputs.edge_len)
        envelope = self.envelope(inputs.edge_len)

        scalars = self.embedding(inputs.z).to(sh.dtype)
        # Degree embedding: sum over neighbours of (w(r) * h_src) Y(r_hat). This is the
        # edge product with an l=0 input, whose CG blocks are I / sqrt(2l+1): exact here.
        w = self.degree_radial(radial) * envelope.unsqueeze(-1) * scalars.index_select(0, src)
        inv_sqrt = torch.cat(
            [sh.new_full((2 * l + 1,), 1 / math.sqrt(2 * l + 1)) for l in range(self.lmax + 1)]
        )
        edge_feat = (sh * inv_sqrt).unsqueeze(-1) * w.unsqueeze(1)
        x = torch.zeros(n, sh.shape[1], w.shape[1], dtype=sh.dtype, device=sh.device)
        x = x.index_add(0, dst, edge_feat) / math.sqrt(self.avg_neighbors)
        x = self.degree_proj(x)
        x = torch.cat([x[:, :1, :] + scalars.unsqueeze(1), x[:, 1:, :]], dim=1)

        for block in self.blocks:
            x = block(x, inputs.edge_index, sh, radial, envelope)
        x = self.norm(x)
        u = self.energy_head(x[:, 0, :]).squeeze(-1)
        forces = None
        if self.direct_forces:
            h = self.force_attention(x, inputs.edge_index, sh, radial, envelope)
            # e3nn's l = 1 components are (x, y, z) scaled: the vector itself
            forces = self.force_proj(h)[:, 1:4, 0]
        return u, forces
