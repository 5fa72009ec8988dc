"""SchNet (PyTorch Geometric's implementation) wrapped as a :class:`Potential`.

The weights are those of :class:`torch_geometric.nn.models.SchNet`: this wrapper builds
one and runs its own submodules (``embedding``, ``distance_expansion``, ``interactions``,
``lin1``, ``act``, ``lin2``) on the graph that :class:`Potential` builds. PyG's
``SchNet.forward`` is never called: it builds its own radius graph (through torch_cluster,
not a dependency of ours) and has its own readout, whereas here the graph, the energy
normalization and the forces come from the base class like for every other model.

Smoothness: each of PyG's continuous-filter convolutions (``CFConv``) multiplies its filter
by the cosine cutoff ``C(r) = (cos(pi r / r_c) + 1) / 2``. C and its first derivative
vanish at ``r_c`` (C'(r) = -pi / (2 r_c) sin(pi r / r_c)), so energy and forces are
continuous when an atom crosses the cutoff (energy is conserved in MD); the second
derivative does not vanish, so force derivatives (Hessians) jump there.
"""

from __future__ import annotations

from torch import Tensor
from torch_geometric.nn.models import SchNet

from .._potential import GraphInputs, Potential

#: PyG's SchNet embeds atomic numbers 0..99 (``Embedding(100, hidden_channels)``)
SCHNET_Z_MAX = 99


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


class SchNetPotential(Potential):
    r"""SchNet (Schütt et al. 2017) with PyG's weights, on the shared potential interface.

    ``h_i = embedding(z_i)``; ``num_interactions`` times ``h <- h + interaction(h)``, where
    each interaction is PyG's ``InteractionBlock`` (a continuous-filter convolution whose
    filter is an MLP of a Gaussian expansion of the edge length times the cosine cutoff);
    the normalized atomic energy is ``u_i = lin2(ssp(lin1(h_i)))``.

    Args:
        hidden_channels: width of the atom features.
        num_filters: width of the continuous filters.
        num_interactions: number of interaction blocks.
        num_gaussians: Gaussians of the distance expansion on [0, cutoff] (>= 2).
        cutoff: radius graph cutoff and cosine-cutoff radius (Å).
        max_neighbors: cap on neighbours per atom (None: no cap; a cap makes the energy
            discontinuous, avoid it for MD).

    Defaults follow the SchNet paper's reference setup (128 / 128 / 4 interactions / 128
    Gaussians) with our 4.5 Å cutoff. Atomic numbers must be <= 99 (PyG's embedding size).

    Input/output: see :meth:`Potential.forward`; energy [B] (eV), forces [N, 3] (eV/Å).
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 4,
        num_gaussians: int = 128,
        cutoff: float = 4.5,
        max_neighbors: int | None = None,
    ) -> None:
        super().__init__(cutoff, max_neighbors, direct_forces=False)
        # lin1 maps to hidden_channels // 2 features, so at least 2 are needed
        _check_int("hidden_channels", hidden_channels, 2)
        _check_int("num_filters", num_filters, 1)
        _check_int("num_interactions", num_interactions, 1)
        # PyG's GaussianSmearing derives its width from the spacing of the first two centres
        _check_int("num_gaussians", num_gaussians, 2)
        if max_neighbors is not None:
            _check_int("max_neighbors", max_neighbors, 1)
        self.config = {
            "hidden_channels": hidden_channels,
            "num_filters": num_filters,
            "num_interactions": num_interactions,
            "num_gaussians": num_gaussians,
            "cutoff": cutoff,
            "max_neighbors": max_neighbors,
        }
        # readout is unused (the base class sums atomic energies per graph); "add" documents
        # that the model is extensive, like our energy
        self.schnet = SchNet(
            hidden_channels=hidden_channels,
            num_filters=num_filters,
            num_interactions=num_interactions,
            num_gaussians=num_gaussians,
            cutoff=float(cutoff),
            readout="add",
        )

    def atomic_outputs(self, inputs: GraphInputs) -> tuple[Tensor, None]:
        """Normalized per-atom energies ``u [N]`` from ``z [N]`` and edge lengths ``[E]`` (Å)."""
        net = self.schnet
        z = inputs.z
        if z.numel() and int(z.max()) > SCHNET_Z_MAX:
            raise ValueError(
                f"z: PyG's SchNet embeds atomic numbers up to {SCHNET_Z_MAX}, got {int(z.max())}"
            )
        dtype = inputs.edge_len.dtype
        h = net.embedding(z).to(dtype)
        edge_attr = net.distance_expansion(inputs.edge_len)
        # PyG's message passing reads x_j from edge_index[0] and sums at edge_index[1]: the
        # same src = neighbour, dst = centre convention as GraphInputs
        for interaction in net.interactions:
            h = h + interaction(h, inputs.edge_index, inputs.edge_len, edge_attr)
        u = net.lin2(net.act(net.lin1(h)))
        return u.squeeze(-1), None
