"""The user-facing layer: one tensor product, any registered backend."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ._autotune import AutoPolicy, select_backend
from ._errors import UnsupportedDescriptor
from ._factors import CPFactors, cp_factors, resolve_rank
from .backends._registry import get_backend
from .descriptors import TPDescriptor

log = logging.getLogger("tdn_core")


class TensorProduct(nn.Module):
    r"""Edge tensor product with a run-time choice of backend.

    ``out[e,k,c] = w[e,c] * sum_ij M_ijk x[e,i,c] y[e,j]`` (``mode="uvu"``, TDN's edge
    product) where M is the path-summed CG tensor (see :class:`TPDescriptor` for the
    ``uuu`` mode and per-path weights). Exact backends compute it with M; CP backends
    with the rank-R factors of M.

    Args:
        lmax_in, lmax_sh, lmax_out: largest degree of x, y and out.
        channels: C, channels of x and out.
        backend: a registered backend name (see :func:`available_backends`), or
            ``"auto"``: the fastest one the ``policy`` allows, timed here on first use
            and cached per machine (``tdn_core._autotune``); ``backend`` then names it.
        mode: ``"uvu"`` (y is single-channel [E, d2]) or ``"uuu"`` (y is [E, d2, C]).
        rank: CP rank: ``"linear"`` (7L), ``"quadratic"`` (7L^2), ``"full"`` or an int.
        tol: instead of ``rank``, the smallest rank whose relative error is <= tol.
        group: ``"SO3"`` (every triangle path) or ``"O3"`` (parity rule).
        path_weights: ``"shared"`` (one weight for all paths) or ``"per_path"``.
        internal_weights: own the weight as a Parameter ([C] or [P, C]) instead of
            taking it as a forward argument.
        policy: with ``backend="auto"``, an :class:`AutoPolicy` or a dict of its fields:
            ``{"exact": True}`` (default: exact backends only) or
            ``{"exact": False, "max_bound": 0.05}`` (also CP with bound <= 0.05).

    Shapes: x [E, d1, C], y [E, d2] or [E, d2, C], weight [E, C] or [E, P, C]
    -> out [E, d3, C], with d = (lmax + 1)^2.

    The state_dict holds only the weight (if internal): it is identical under every
    backend, so ``set_backend`` and loading across backends keep learned state.
    """

    def __init__(
        self,
        lmax_in: int,
        lmax_sh: int,
        lmax_out: int,
        channels: int,
        *,
        backend: str = "cp_eager",
        mode: str = "uvu",
        rank: str | int = "quadratic",
        tol: float | None = None,
        group: str = "SO3",
        path_weights: str = "shared",
        internal_weights: bool = False,
        policy: AutoPolicy | dict | None = None,
    ) -> None:
        super().__init__()
        desc = TPDescriptor(lmax_in, lmax_sh, lmax_out, channels, mode, group, path_weights)
        if tol is not None:
            self._factors = cp_factors(lmax_in, lmax_sh, lmax_out, group=group, tol=tol)
            r = self._factors.rank
        else:
            self._factors = None
            r = resolve_rank(rank, lmax_in, lmax_sh, lmax_out)
        self.descriptor = desc.replace(rank=r)
        # zero-size buffer that follows .to(): the dtype/device executors are built for
        self.register_buffer("_placement", torch.empty(0), persistent=False)
        if internal_weights:
            shape = self.descriptor.weight_shape(1)[1:]
            self.weight = nn.Parameter(torch.randn(shape))
        else:
            self.register_parameter("weight", None)
        self.backend = ""
        self.requested_backend = ""
        self.executor: nn.Module = nn.Identity()
        self.set_backend(backend, policy)

    @property
    def factors(self) -> CPFactors | None:
        """The CP factor set in use (None under an exact backend)."""
        if get_backend(self.backend).exact:
            return None
        d = self.descriptor
        return self._factors or cp_factors(d.lmax_in, d.lmax_sh, d.lmax_out, d.rank, d.group)

    def set_backend(self, name: str, policy: AutoPolicy | dict | None = None) -> TensorProduct:
        """Switch to backend ``name`` (or ``"auto"`` under ``policy``), keeping weights,
        dtype and device. Returns self."""
        if name == "auto":
            self.policy = AutoPolicy.coerce(policy)
            chosen = select_backend(
                self.descriptor, self._placement.dtype, self._placement.device, self.policy
            )
            self._build(chosen)
            self.requested_backend = "auto"
            return self
        if policy is not None:
            raise ValueError(f"policy: only applies with backend='auto', not {name!r}")
        self._build(name)
        self.requested_backend = self.backend
        return self

    def _build(self, name: str) -> None:
        cls = get_backend(name)
        reason = cls.check(self.descriptor) or cls.check_placement(
            self._placement.dtype, self._placement.device
        )
        if reason is not None:
            raise UnsupportedDescriptor(f"backend {name!r} cannot run this product: {reason}")
        self.executor = cls.build(self.descriptor, self._placement.dtype, self._placement.device)
        self.backend = cls.name

    def _apply(self, fn, recurse=True):
        # .to()/.double()/.cuda() would only cast the executor's constants, leaving
        # float64 tables rounded through float32: rebuild them at the new placement.
        before = (self._placement.dtype, self._placement.device)
        result = super()._apply(fn, recurse)
        if self.backend and before != (self._placement.dtype, self._placement.device):
            if self.requested_backend == "auto":  # the fastest may differ there
                self.set_backend("auto", self.policy)
            else:
                self.set_backend(self.backend)
        return result

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
        d = self.descriptor
        E = x.shape[0] if x.dim() > 0 else -1
        expected = {
            "x": (E, d.dims[0], d.channels),
            "y": d.y_shape(E),
            "weight": d.weight_shape(E),
        }
        for name, t in (("x", x), ("y", y), ("weight", weight)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != expected[name]:
                want = (
                    "["
                    + ", ".join("E" if i == 0 else str(s) for i, s in enumerate(expected[name]))
                    + "]"
                )
                raise ValueError(
                    f"{name}: expected shape {want} for lmax=({d.lmax_in}, {d.lmax_sh}, "
                    f"{d.lmax_out}), channels={d.channels}, mode={d.mode!r}, "
                    f"path_weights={d.path_weights!r}; got {list(t.shape)}"
                )
            if t.dtype != self._placement.dtype:
                raise TypeError(
                    f"{name}: dtype {t.dtype} does not match the module's "
                    f"{self._placement.dtype}; convert the input or call .to({t.dtype})"
                )
            if t.device != self._placement.device:
                raise ValueError(
                    f"{name}: on {t.device}, but the module is on {self._placement.device}"
                )

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [E, d1, C], y [E, d2] or [E, d2, C], weight [E, C] or [E, P, C] -> [E, d3, C]."""
        if weight is None:
            if self.weight is None:
                raise ValueError(
                    "weight: required (the module was built with internal_weights=False)"
                )
            weight = self.weight.expand(x.shape[0], *self.weight.shape)
        elif self.weight is not None:
            raise ValueError(
                "weight: the module owns its weight (internal_weights=True); pass none"
            )
        self._check_inputs(x, y, weight)
        return self.executor(x, y, weight)

    def extra_repr(self) -> str:
        d = self.descriptor
        return (
            f"lmax=({d.lmax_in}, {d.lmax_sh}, {d.lmax_out}), channels={d.channels}, "
            f"mode={d.mode!r}, group={d.group!r}, path_weights={d.path_weights!r}, "
            f"rank={d.rank}, backend={self.backend!r}"
        )
