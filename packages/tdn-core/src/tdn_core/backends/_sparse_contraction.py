"""Sparse bilinear contractions over a tensor's nonzeros, differentiable to any order.

A :class:`SparseBilinear` holds the nonzeros of a 3-tensor T as triples
(o, a, b, val) and computes, per edge e and channel c,

    out[e, o, c] = s[e, c] sum_n val_n a[e, a_n, c] b[e, b_n, c]       (b with channels)
    out[e, o, c] = s[e, c] sum_n val_n a[e, a_n, c] b[e, b_n]          (b without)
    out[e, o]    = sum_c s[e, c] sum_n val_n a[e, a_n, c] b[e, b_n, c]  (out without)

with optional channel weights s [E, C] (the product's shared weight; 1 if omitted). The
gradient with respect to one operand is the same contraction with the roles of
(out, a, b) permuted, weighted by the same s: for ``out = T(a, b; s)``,

    grad a = T_(a; o, b)(g, b; s),   grad b = T_(b; a, o)(a, g; s),
    grad s = sum_i a[e, i, c] T_(a; o, b)(g, b)[e, i, c]

so one kernel with permuted index lists serves forward, backward and double backward
(:class:`_Contract` calls itself in its backward, so autograd sees every order).

Index lists are ordered by output row so each row accumulates in registers (layouts S and
R of ``_cpu_kernels.cpp``). Execution: the C++ kernel on the CPU in float32 (channels a
multiple of 16), Triton on CUDA, PyTorch ops otherwise; each call goes through the custom
op ``tdn::sparse_bilinear``, so torch.compile sees one opaque op.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _cpu_kernels

#: elements of the [n, nnz, C] temporary of the PyTorch fallback per chunk of edges
FALLBACK_CHUNK_ELEMENTS = 2**22


class SparseBilinear:
    """The nonzeros of T [d_out, d_a, d_b] as a contraction (module docstring).

    Args:
        index: [nnz, 3] int (o, a, b) of each nonzero.
        val: [nnz] float64 values.
        dims: (d_out, d_a, d_b).
        b_channels: whether b has channels ([E, d_b, C]) or not ([E, d_b]).
        out_channels: whether the output has channels (needs ``b_channels`` if not).
    """

    def __init__(
        self,
        index: np.ndarray,
        val: np.ndarray,
        dims: tuple[int, int, int],
        b_channels: bool,
        out_channels: bool = True,
    ) -> None:
        if not (b_channels or out_channels):
            raise ValueError("b_channels, out_channels: one operand must carry channels")
        index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        # output-major, then a, then b: rows and groups are contiguous runs
        order = np.lexsort((index[:, 2], index[:, 1], index[:, 0]))
        self.index, self.val = index[order], np.asarray(val, dtype=np.float64)[order]
        self.dims, self.b_channels, self.out_channels = tuple(dims), b_channels, out_channels
        self._layouts: dict = {}
        # every contraction derived from one original, keyed by (its columns as the
        # original's roles, b_channels, out_channels): derivatives of every order reuse
        # the few distinct ones (a plain dict, which torch.compile traces, not a lock)
        self._family: dict = {((0, 1, 2), b_channels, out_channels): self}
        self._roles = (0, 1, 2)

    @classmethod
    def from_dense(cls, T: Tensor, b_channels: bool) -> SparseBilinear:
        """The nonzeros of T [d_out, d_a, d_b]: ``out[o] = sum T[o, a, b] a[a] b[b]``."""
        nz = T.nonzero()
        return cls(nz.numpy(), T[tuple(nz.t())].double().numpy(), tuple(T.shape), b_channels)

    @property
    def nnz(self) -> int:
        return len(self.val)

    def dense(self) -> Tensor:
        """T [d_out, d_a, d_b] in float64 (for tests)."""
        T = torch.zeros(self.dims, dtype=torch.float64)
        T.index_put_(tuple(torch.from_numpy(self.index).t()), torch.from_numpy(self.val), True)
        return T

    @property
    def grad_a(self) -> tuple[SparseBilinear, bool]:
        """(contraction, swap) giving grad a from (g, b), or from (b, g) if swap (the
        first operand must carry channels)."""
        if self.out_channels:
            return self._permuted((1, 0, 2), self.b_channels, True), False
        return self._permuted((1, 2, 0), False, True), True

    @property
    def grad_b(self) -> SparseBilinear:
        """The contraction giving grad b from (a, g)."""
        return self._permuted((2, 1, 0), self.out_channels, self.b_channels)

    def _permuted(self, roles: tuple[int, int, int], b_channels: bool, out_channels: bool):
        """The contraction whose (out, a, b) are this one's roles ``roles`` (0 = out,
        1 = a, 2 = b), over the same nonzeros."""
        original = tuple(self._roles[r] for r in roles)
        key = (original, b_channels, out_channels)
        if key not in self._family:
            dims = tuple(self.dims[r] for r in roles)
            index = self.index[:, list(roles)]
            T = SparseBilinear(index, self.val, dims, b_channels, out_channels)
            T._family, T._roles = self._family, original
            self._family[key] = T
        return self._family[key]

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Build the index lists of this contraction and of every derivative it leads to,
        so that no forward or backward builds them (nor torch.compile traces numpy)."""
        todo, seen = [self], set()
        while todo:
            T = todo.pop()
            if id(T) not in seen:
                seen.add(id(T))
                T.layout(dtype, device)
                todo += [T.grad_a[0], T.grad_b]

    def layout(self, dtype: torch.dtype, device: torch.device) -> tuple[tuple[Tensor, ...], Tensor]:
        """(four int64 index tensors, val) of layout S (out with channels) or R."""
        key = (dtype, torch.device(device))
        if key not in self._layouts:
            idx = _layout_s(self) if self.out_channels else _layout_r(self)
            tensors = tuple(torch.from_numpy(t).to(device) for t in idx)
            self._layouts[key] = tensors, torch.from_numpy(self.val).to(device=device, dtype=dtype)
        return self._layouts[key]

    def __call__(self, a: Tensor, b: Tensor, scale: Tensor | None = None) -> Tensor:
        """a [E, d_a, C], b [E, d_b(, C)], scale [E, C] or None -> [E, d_out(, C)]."""
        return _Contract.apply(a, b, scale, self)


def _layout_s(T: SparseBilinear) -> tuple[np.ndarray, ...]:
    """row_ptr [d_out+1] (over groups), group_a [G], group_ptr [G+1] (over entries),
    entry_b [nnz]; groups are the runs of equal (o, a)."""
    o, a, b = T.index.T
    starts = np.flatnonzero(np.r_[True, (o[1:] != o[:-1]) | (a[1:] != a[:-1])])
    group_o = o[starts]
    row_ptr = np.searchsorted(group_o, np.arange(T.dims[0] + 1))
    group_ptr = np.r_[starts, len(o)]
    return row_ptr, a[starts], group_ptr, b


def _layout_r(T: SparseBilinear) -> tuple[np.ndarray, ...]:
    """row_ptr [d_out+1] (over entries), entry_pair [nnz], pair_a [P], pair_b [P]."""
    o, a, b = T.index.T
    pairs, entry_pair = np.unique(np.stack([a, b], 1), axis=0, return_inverse=True)
    row_ptr = np.searchsorted(o, np.arange(T.dims[0] + 1))
    return row_ptr, entry_pair.reshape(-1), pairs[:, 0].copy(), pairs[:, 1].copy()


class _Contract(torch.autograd.Function):
    """``T(a, b) * scale`` with the backward of the module docstring."""

    @staticmethod
    def forward(a: Tensor, b: Tensor, scale: Tensor | None, T: SparseBilinear) -> Tensor:
        layout, val = T.layout(a.dtype, a.device)
        return torch.ops.tdn.sparse_bilinear(a, b, scale, *layout, val, T.dims[0], T.out_channels)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, b, scale, T = inputs
        ctx.save_for_backward(a, b, scale)
        ctx.T = T

    @staticmethod
    def backward(ctx, g: Tensor):
        a, b, scale = ctx.saved_tensors
        T = ctx.T
        need_a, need_b, need_scale = ctx.needs_input_grad[:3]
        grad_a = grad_b = grad_scale = None
        Ta, swap = T.grad_a

        def contract_a(s: Tensor | None) -> Tensor:
            return Ta(b, g, s) if swap else Ta(g, b, s)

        if need_scale and not torch.is_grad_enabled():
            # first order only (no create_graph): grad a and grad s from one fused call
            first, second = (b, g) if swap else (g, b)
            layout, val = Ta.layout(a.dtype, a.device)
            grad_a, grad_scale = torch.ops.tdn.sparse_bilinear_dot(
                first, second, scale, *layout, val, Ta.dims[0], a
            )
        elif need_scale:
            G = contract_a(None)
            grad_scale = torch.linalg.vecdot(a, G, dim=1)
            grad_a = G * scale.unsqueeze(1) if need_a else None
        elif need_a:
            grad_a = contract_a(scale)
        if need_b:
            grad_b = T.grad_b(a, g, scale)
        return grad_a, grad_b, grad_scale, None


# --------------------------------------------------------------------- the custom op
@torch.library.custom_op("tdn::sparse_bilinear", mutates_args=())
def _sparse_op(
    a: Tensor,
    b: Tensor,
    scale: Tensor | None,
    t0: Tensor,
    t1: Tensor,
    t2: Tensor,
    t3: Tensor,
    val: Tensor,
    d_out: int,
    out_channels: bool,
) -> Tensor:
    """a [E, da, C], b [E, db(, C)], scale [E, C] or None, layout (t0..t3, val) of
    :func:`_layout_s` / :func:`_layout_r` -> [E, d_out, C] or [E, d_out]."""
    layout = (t0, t1, t2, t3)
    if a.shape[0] == 0:
        return a.new_zeros(_out_shape(a, d_out, out_channels))
    if a.device.type == "cuda":
        return triton_sparse_bilinear(a, b, scale, layout, val, d_out, out_channels)
    if _cpu_kernels.supports(a):
        return _cpu_kernels.sparse_bilinear(a, b, scale, layout, val, d_out, out_channels)
    return torch_sparse_bilinear(a, b, scale, layout, val, d_out, out_channels)


@_sparse_op.register_fake
def _(a, b, scale, t0, t1, t2, t3, val, d_out, out_channels):
    return a.new_empty(_out_shape(a, d_out, out_channels))


@torch.library.custom_op("tdn::sparse_bilinear_dot", mutates_args=())
def _sparse_dot_op(
    a: Tensor,
    b: Tensor,
    scale: Tensor | None,
    t0: Tensor,
    t1: Tensor,
    t2: Tensor,
    t3: Tensor,
    val: Tensor,
    d_out: int,
    dot_with: Tensor,
) -> tuple[Tensor, Tensor]:
    """S layout only: (out as :func:`_sparse_op`, ``sum_o out_unscaled * dot_with`` [E, C])
    for dot_with [E, d_out, C]; not differentiable (first-order backward only)."""
    layout = (t0, t1, t2, t3)
    if _cpu_kernels.supports(a) and a.shape[0] > 0:
        return _cpu_kernels.sparse_bilinear(a, b, scale, layout, val, d_out, True, dot_with)
    out = _sparse_op(a, b, None, *layout, val, d_out, True)
    dot = torch.linalg.vecdot(out, dot_with, dim=1)
    return (out if scale is None else out * scale.unsqueeze(1)), dot


@_sparse_dot_op.register_fake
def _(a, b, scale, t0, t1, t2, t3, val, d_out, dot_with):
    return a.new_empty(_out_shape(a, d_out, True)), a.new_empty(a.shape[0], a.shape[2])


def _out_shape(a: Tensor, d_out: int, out_channels: bool) -> tuple[int, ...]:
    return (a.shape[0], d_out, a.shape[2]) if out_channels else (a.shape[0], d_out)


def triton_sparse_bilinear(
    a: Tensor,
    b: Tensor,
    scale: Tensor | None,
    layout: tuple[Tensor, ...],
    val: Tensor,
    d_out: int,
    out_channels: bool,
) -> Tensor:
    """The contraction in the Triton kernels (CUDA, or Triton's interpreter); the
    channel weights are applied around them. Shapes as in :func:`_sparse_op`."""
    from . import _sparse_triton_kernels  # imports triton

    if scale is not None and not out_channels:
        b, scale = b * scale.unsqueeze(1), None  # R: s weighs the channel terms
    out = _sparse_triton_kernels.sparse_bilinear(a, b, *layout, val, d_out, out_channels)
    return out if scale is None else out * scale.unsqueeze(1)


# ------------------------------------------------------------------- PyTorch fallback
def torch_sparse_bilinear(
    a: Tensor,
    b: Tensor,
    scale: Tensor | None,
    layout: tuple[Tensor, ...],
    val: Tensor,
    d_out: int,
    out_channels: bool,
) -> Tensor:
    """The contraction in PyTorch ops (any dtype and device; not differentiated itself).

    Shapes as in :func:`_sparse_op`. Without channels in b, the per-edge matrix
    K[o, i] = sum_j T[o, i, j] b[e, j] is built densely and applied with one bmm (the
    precontraction of ``path_shared``, from the nonzeros); otherwise the products of the
    nonzeros are scattered into their rows, a chunk of edges at a time.
    """
    E, da, channels = a.shape
    o, ia, ib = _entries(layout, out_channels)
    if out_channels and b.dim() == 2:
        K = a.new_zeros(E, d_out * da).index_add_(1, o * da + ia, b[:, ib] * val)
        out = torch.bmm(K.view(E, d_out, da), a)
    elif out_channels:
        out = a.new_zeros(E, d_out, channels)
        for sl in _chunks(E, len(val) * channels):
            terms = a[sl][:, ia] * b[sl][:, ib] * val[:, None]
            out[sl].index_add_(1, o, terms)
    else:
        if scale is not None:
            b, scale = b * scale.unsqueeze(1), None  # s weighs the channel terms
        out = a.new_zeros(E, d_out)
        for sl in _chunks(E, len(val) * channels):
            terms = (a[sl][:, ia] * b[sl][:, ib]).sum(-1) * val
            out[sl].index_add_(1, o, terms)
    return out if scale is None else out * scale.unsqueeze(1)


def _entries(layout: tuple[Tensor, ...], out_channels: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(o, a, b) of every entry, from either layout."""
    t0, t1, t2, t3 = layout
    rows = torch.arange(len(t0) - 1, device=t0.device)
    if out_channels:  # S: rows -> groups -> entries
        group_o = rows.repeat_interleave(t0.diff())
        sizes = t2.diff()
        return group_o.repeat_interleave(sizes), t1.repeat_interleave(sizes), t3
    return rows.repeat_interleave(t0.diff()), t2[t1], t3[t1]


def _chunks(E: int, per_edge: int):
    n = max(1, FALLBACK_CHUNK_ELEMENTS // max(1, per_edge))
    for s in range(0, E, n):
        yield slice(s, s + n)
