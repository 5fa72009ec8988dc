"""A small NequIP-style potential: exact Clebsch-Gordan products from e3nn's own layers.

This is the exact-CG equivariant baseline that TDN's CP products are compared against.
Everything equivariant is an e3nn layer (``o3.Linear``, ``o3.TensorProduct`` with ``uvu``
paths and per-edge weights, ``nn.Gate``, ``o3.spherical_harmonics``), so the reference is
e3nn's, not ours. e3nn is an optional dependency (``pip install 'tdn-models[e3nn]'``) and
is imported only by this module.

Features are O(3) irreps with natural parity, ``C x 0e + C x 1o + C x 2e + ...`` up to
``lmax``, in e3nn's ``mul_ir`` layout ``[N, irreps.dim]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

try:
    from e3nn import nn as e3nn_nn
    from e3nn import o3
except ImportError as error:  # say which extra installs it, not only what is missing
    raise ModuleNotFoundError(
        "NequIPPotential needs e3nn: pip install 'tdn-models[e3nn]'", name="e3nn"
    ) from error

from .._normalization import Z_MAX
from .._potential import GraphInputs, Potential
from .._radial import GaussianBasis, PolynomialEnvelope


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def hidden_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``channels x l p`` for l = 0..lmax with natural parity p = (-1)^l: ``8x0e+8x1o+8x2e``."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def _refresh_after_load(module: NequIPPotential, incompatible_keys) -> None:
    # a module-level function (not a lambda) keeps the model picklable
    module._refresh_wigner_3j()


class InteractionBlock(nn.Module):
    r"""One NequIP-style convolution with a gated nonlinearity and a residual.

    ``m_i = 1/sqrt(avg_neighbors) sum_{j -> i} TP_uvu(W_in x_j, Y(r_ij); w(r_ij))``, with
    per-edge, per-path, per-channel weights ``w(r) = MLP(basis(r)) * envelope(r)``;
    ``x_i <- Gate(W_out m_i + W_self x_i)`` (+ ``x_i`` when the irreps match).

    Shapes: x [N, irreps_in.dim], sh [E, irreps_sh.dim], radial [E, K], envelope [E]
    -> [N, irreps_out.dim].
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        radial_sizes: list[int],
        avg_neighbors: float,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.inv_sqrt_neighbors = 1.0 / math.sqrt(avg_neighbors)

        # the gate: scalars pass through silu, every l > 0 block is scaled by the sigmoid of
        # its own gate scalar (a scalar nonlinearity cannot act on l > 0 components)
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
        self.gate = e3nn_nn.Gate(
            scalars, [torch.nn.functional.silu] * len(scalars), gates,
            [torch.sigmoid] * len(gates), gated,
        )  # fmt: skip
        irreps_gate_in = self.gate.irreps_in

        # uvu: channel u of the node feature times the single-channel harmonic, every path
        # whose output irrep the gate consumes (other parities would be dropped anyway)
        wanted = {ir for _, ir in irreps_gate_in}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        # o3.Linear wants sorted irreps; permute the instructions' output indices to match
        irreps_mid, perm, _ = mid.sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]

        self.linear_in = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(
            self.irreps_in,
            irreps_sh,
            irreps_mid,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.radial = e3nn_nn.FullyConnectedNet(
            [*radial_sizes, self.tp.weight_numel], torch.nn.functional.silu
        )
        self.linear_out = o3.Linear(irreps_mid, irreps_gate_in)
        # self-connection: the atom's own features reach the gate without going through an
        # edge, so an isolated atom still has a (learned) state
        self.self_connection = o3.Linear(self.irreps_in, irreps_gate_in)
        self.residual = self.irreps_in == self.irreps_out

    def forward(
        self, x: Tensor, edge_index: Tensor, sh: Tensor, radial: Tensor, envelope: Tensor
    ) -> Tensor:
        src, dst = edge_index[0], edge_index[1]
        # the envelope makes every message (and its derivative) vanish at the cutoff
        weights = self.radial(radial) * envelope.unsqueeze(-1)
        messages = self.tp(self.linear_in(x).index_select(0, src), sh, weights)
        agg = torch.zeros(x.shape[0], messages.shape[1], dtype=x.dtype, device=x.device)
        agg = agg.index_add(0, dst, messages) * self.inv_sqrt_neighbors
        out = self.gate(self.linear_out(agg) + self.self_connection(x))
        return x + out if self.residual else out


class NequIPPotential(Potential):
    r"""A small NequIP-style O(3)-equivariant potential with exact CG tensor products.

    Atoms start as ``channels x 0e`` embeddings of their atomic number; ``layers``
    :class:`InteractionBlock` s mix them with the edge spherical harmonics
    ``Y(r_hat) (0e + 1o + ... up to lmax; component normalization)`` through ``uvu``
    tensor products whose per-edge weights come from an MLP of a Gaussian basis of the
    edge length times a polynomial cutoff envelope; a final ``o3.Linear`` to ``1x0e``
    gives the normalized per-atom energy u [N]. Energy is O(3)-invariant (rotations and
    reflections) and smooth in the positions (the envelope's first derivatives vanish at
    the cutoff); forces are -dE/dpos from the base class.

    Args:
        channels: C, multiplicity of every irrep of the hidden features.
        lmax: largest degree of hidden features and edge harmonics.
        layers: interaction blocks.
        cutoff: radius graph cutoff (Å).
        num_basis: Gaussian radial basis functions on [0, cutoff].
        radial_hidden: width of the radial MLP's two hidden layers.
        avg_neighbors: typical neighbour count; message sums are divided by its sqrt.
        max_neighbors: cap on neighbours per atom (None: no cap; a cap makes the energy
            discontinuous, avoid it for MD).

    Input/output: see :meth:`Potential.forward`; energy [B] (eV), forces [N, 3] (eV/Å).
    """

    def __init__(
        self,
        channels: int = 32,
        lmax: int = 2,
        layers: int = 3,
        cutoff: float = 4.5,
        num_basis: int = 8,
        radial_hidden: int = 64,
        avg_neighbors: float = 10.0,
        max_neighbors: int | None = None,
    ) -> None:
        super().__init__(cutoff, max_neighbors, direct_forces=False)
        _check_int("channels", channels, 1)
        _check_int("lmax", lmax, 0)
        _check_int("layers", layers, 1)
        _check_int("num_basis", num_basis, 1)
        _check_int("radial_hidden", radial_hidden, 1)
        if max_neighbors is not None:
            _check_int("max_neighbors", max_neighbors, 1)
        if not (isinstance(avg_neighbors, (int, float)) and avg_neighbors > 0):
            raise ValueError(f"avg_neighbors: expected a positive number, got {avg_neighbors!r}")
        self.config = {
            "channels": channels,
            "lmax": lmax,
            "layers": layers,
            "cutoff": cutoff,
            "num_basis": num_basis,
            "radial_hidden": radial_hidden,
            "avg_neighbors": avg_neighbors,
            "max_neighbors": max_neighbors,
        }
        self.lmax = lmax
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_hidden = hidden_irreps(channels, lmax)
        self.embedding = nn.Embedding(Z_MAX + 1, channels)
        self.basis = GaussianBasis(num_basis, cutoff)
        self.envelope = PolynomialEnvelope(cutoff)
        radial_sizes = [num_basis, radial_hidden, radial_hidden]
        irreps = o3.Irreps(f"{channels}x0e")
        blocks = []
        for _ in range(layers):
            blocks.append(
                InteractionBlock(
                    irreps, self.irreps_sh, self.irreps_hidden, radial_sizes, avg_neighbors
                )
            )
            irreps = blocks[-1].irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.readout = o3.Linear(irreps, "1x0e")
        # e3nn keeps its CG coefficients as buffers ``_w3j_<l1>_<l2>_<l3>`` of the dtype they
        # were built in (or loaded from); a float32 copy cast to float64 limits equivariance
        # to ~1e-9. Recompute them exactly whenever the dtype changes or a state is loaded.
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @torch.no_grad()
    def _refresh_wigner_3j(self) -> None:
        """Set every e3nn CG buffer to ``o3.wigner_3j`` computed in float64, then cast."""
        for name, buffer in self.named_buffers():
            key = name.rsplit(".", 1)[-1]
            if key.startswith("_w3j_"):
                l1, l2, l3 = (int(l) for l in key[len("_w3j_") :].split("_"))
                exact = o3.wigner_3j(l1, l2, l3, dtype=torch.float64, device=buffer.device)
                buffer.copy_(exact.to(buffer.dtype))

    def _apply(self, fn, recurse: bool = True):
        # every .to() / .double() / .float() / .cuda() goes through here
        out = super()._apply(fn, recurse)
        self._refresh_wigner_3j()
        return out

    def atomic_outputs(self, inputs: GraphInputs) -> tuple[Tensor, None]:
        """Normalized per-atom energies ``u [N]`` from ``z [N]`` and ``edge_vec [E, 3]`` (Å)."""
        sh = o3.spherical_harmonics(
            self.irreps_sh, inputs.edge_vec, normalize=True, normalization="component"
        )
        radial = self.basis(inputs.edge_len)
        envelope = self.envelope(inputs.edge_len)
        x = self.embedding(inputs.z).to(sh.dtype)
        for block in self.blocks:
            x = block(x, inputs.edge_index, sh, radial, envelope)
        return self.readout(x).squeeze(-1), None
