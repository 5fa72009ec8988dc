"""What to compute, independent of how: the frozen tensor-product descriptor.

Backends consume a :class:`TPDescriptor`; nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json

from ._cg import check_group, check_lmax
from .conventions import MODES, PATH_WEIGHTS, dim, paths


@dataclasses.dataclass(frozen=True)
class TPDescriptor:
    """An edge tensor product ``out = w * M(x, y)`` (shared weight) or its per-path form.

    Index notation (``d_a = (lmax_a + 1)^2``, ``P`` paths, ``C`` channels):

    - ``uvu``:  x[e, i, c], y[e, j], w[e, c] or w[e, p, c] -> out[e, k, c]
    - ``uuu``:  x[e, i, c], y[e, j, c], w[e, c] or w[e, p, c] -> out[e, k, c]

    shared:   ``out[e,k,c] = w[e,c] sum_ij M_ijk x[e,i,c] y[e,j(,c)]``
    per_path: ``out[e,k,c] = sum_p w[e,p,c] sum_ij C^p_ijk x[e,i,c] y[e,j(,c)]``

    ``rank`` is the CP rank a decomposed backend uses (None: exact backends only).
    """

    lmax_in: int
    lmax_sh: int
    lmax_out: int
    channels: int
    mode: str = "uvu"
    group: str = "SO3"
    path_weights: str = "shared"
    rank: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        check_lmax(lmax_in=self.lmax_in, lmax_sh=self.lmax_sh, lmax_out=self.lmax_out)
        check_group(self.group)
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ValueError(f"channels: expected a positive int, got {self.channels!r}")
        if self.channels < 1:
            raise ValueError(f"channels: expected a positive int, got {self.channels!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.path_weights not in PATH_WEIGHTS:
            raise ValueError(
                f"path_weights: expected one of {PATH_WEIGHTS}, got {self.path_weights!r}"
            )
        if self.rank is not None and (
            isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1
        ):
            raise ValueError(f"rank: expected a positive int or None, got {self.rank!r}")

    @property
    def paths(self) -> tuple:
        """Allowed (l1, l2, l3), in the canonical per-path weight order."""
        return paths(self.lmax_in, self.lmax_sh, self.lmax_out, self.group)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(d1, d2, d3) = component counts of x, y and out."""
        return dim(self.lmax_in), dim(self.lmax_sh), dim(self.lmax_out)

    @property
    def lmax(self) -> int:
        """The L of the rank schedules: the largest degree involved."""
        return max(self.lmax_in, self.lmax_sh, self.lmax_out)

    def weight_shape(self, num_edges: int) -> tuple[int, ...]:
        """Shape of the weight tensor forward() takes: [E, C] or [E, P, C]."""
        if self.path_weights == "shared":
            return (num_edges, self.channels)
        return (num_edges, len(self.paths), self.channels)

    def y_shape(self, num_edges: int) -> tuple[int, ...]:
        """Shape of the second input: [E, d2] (uvu) or [E, d2, C] (uuu)."""
        d2 = self.dims[1]
        return (num_edges, d2) if self.mode == "uvu" else (num_edges, d2, self.channels)

    def replace(self, **changes) -> TPDescriptor:
        """A new descriptor with some fields changed (descriptors are immutable)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TPDescriptor:
        return cls(**json.loads(text))

    def flops(self, method: str, num_edges: int = 1) -> int:
        """Multiply-adds x 2 of one forward pass over ``num_edges`` edges.

        ``method``: ``"per_path"`` (dense block per path), ``"path_shared"``
        (precontract M with y per edge, then d1 x d3 per channel; uvu only) or
        ``"cp"`` (the CP form at ``self.rank``).
        """
        d1, d2, d3 = self.dims
        C, E = self.channels, num_edges
        if method == "per_path":
            per_edge = sum((2 * a + 1) * (2 * b + 1) * (2 * c + 1) for a, b, c in self.paths)
            return 2 * E * C * per_edge
        if method == "path_shared":
            if self.mode == "uvu":
                return 2 * E * (d1 * d2 * d3 + C * d1 * d3)
            return 2 * E * C * (d1 * d2 + d1 * d2 * d3)
        if method == "cp":
            if self.rank is None:
                raise ValueError("flops('cp'): the descriptor has no rank")
            R = self.rank
            if self.mode == "uvu":
                return 2 * E * (d2 * R + C * (d1 * R + d3 * R + R))
            return 2 * E * C * (d1 * R + d2 * R + d3 * R + R)
        raise ValueError(f"method: expected 'per_path', 'path_shared' or 'cp', got {method!r}")
