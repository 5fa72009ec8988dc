"""``cp_triton``: fused Triton kernels for the CP product (uvu mode, shared weight).

    out[e, k, c] = w[e, c] * sum_r C[k, r] * v[e, r] * sum_i A[i, r] x[e, i, c],  v = y @ B

``v = y @ B`` [E, R] is one small plain-torch matmul (O(E d2 R), no channel dimension;
autograd handles its gradient ``gy = gv @ B^T``). Everything with a channel dimension
runs in the fused kernels of ``_cp_triton_kernels`` (no [E, R, C] tensor in global
memory), exposed as ``torch.library`` custom ops so that autograd, ``torch.compile``
and ``torch.export`` each see one opaque op:

- ``tdn::cp_edge_product(Tensor x, Tensor v, Tensor w, Tensor A, Tensor C) -> Tensor``
- ``tdn::cp_edge_product_backward(Tensor grad_out, Tensor x, Tensor v, Tensor w,
  Tensor A, Tensor C) -> (Tensor, Tensor, Tensor)``  (grad x, grad v, grad w)
- ``tdn::cp_conv(Tensor h, Tensor edge_src, Tensor edge_dst, Tensor v, Tensor w,
  Tensor A, Tensor C, SymInt num_nodes) -> Tensor``
- ``tdn::cp_conv_backward(Tensor grad_out, Tensor h, Tensor edge_src, Tensor edge_dst,
  Tensor v, Tensor w, Tensor A, Tensor C) -> (Tensor, Tensor, Tensor)``  (grad h, v, w)

The factors A and C are constants (no gradient). Double backward (force training): the
product is bilinear in (x, v) and linear in w, so the derivative of the backward op is
again a sum of forward and backward ops (:func:`_double_backward`), all custom ops
with their own autograd: no eager fallback, and higher orders work by recursion.

Needs triton and either a CUDA device or Triton's CPU interpreter (``TRITON_INTERPRET=1``
set before triton is first imported).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._factors import cp_factors
from ..descriptors import TPDescriptor
from ._base import Backend

__all__ = ["CPTritonBackend", "CPTritonProduct", "cp_conv", "cp_edge_product"]

_NO_DEVICE = "needs a CUDA device or TRITON_INTERPRET=1"


def _kernels():
    # triton is imported here, never at module import (the registry loads this module
    # on machines without triton to report why the backend is unavailable)
    from . import _cp_triton_kernels

    return _cp_triton_kernels


# ----------------------------------------------------------------------- edge product
@torch.library.custom_op("tdn::cp_edge_product", mutates_args=())
def _edge_op(x: Tensor, v: Tensor, w: Tensor, A: Tensor, C: Tensor) -> Tensor:
    """x [E, d1, C], v [E, R], w [E, C], A [d1, R], C [d3, R] -> out [E, d3, C]."""
    return _kernels().cp_forward(x, v, w, A, C)


@_edge_op.register_fake
def _(x: Tensor, v: Tensor, w: Tensor, A: Tensor, C: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], C.shape[0], x.shape[2])


@torch.library.custom_op("tdn::cp_edge_product_backward", mutates_args=())
def _edge_bwd_op(
    grad_out: Tensor, x: Tensor, v: Tensor, w: Tensor, A: Tensor, C: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_out [E, d3, C] -> (grad x [E, d1, C], grad v [E, R], grad w [E, C])."""
    return _kernels().cp_backward(grad_out, x, v, w, A, C)


@_edge_bwd_op.register_fake
def _(grad_out, x, v, w, A, C):
    return x.new_empty(x.shape), v.new_empty(v.shape), x.new_empty(w.shape)


def _edge_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _edge_backward(ctx, g: Tensor):
    x, v, w, A, C = ctx.saved_tensors
    gx, gv, gw = _edge_bwd_op(g.contiguous(), x, v, w, A, C)
    return gx, gv, gw, None, None


def _edge_bwd_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _edge_bwd_backward(ctx, ggx, ggv, ggw):
    g, x, v, w, A, C = ctx.saved_tensors
    grads = _double_backward(
        lambda x_, v_, w_: _edge_op(x_, v_, w_, A, C),
        lambda x_, v_, w_: _edge_bwd_op(g, x_, v_, w_, A, C),
        x, v, w, ggx, ggv, ggw,
    )  # fmt: skip
    return *grads, None, None


_edge_op.register_autograd(_edge_backward, setup_context=_edge_setup)
_edge_bwd_op.register_autograd(_edge_bwd_backward, setup_context=_edge_bwd_setup)


# ------------------------------------------------------------------ fused convolution
@torch.library.custom_op("tdn::cp_conv", mutates_args=())
def _conv_op(
    h: Tensor,
    edge_src: Tensor,
    edge_dst: Tensor,
    v: Tensor,
    w: Tensor,
    A: Tensor,
    C: Tensor,
    num_nodes: int,
) -> Tensor:
    """h [N, d1, C], edge_src/edge_dst [E], v [E, R], w [E, C] -> out [num_nodes, d3, C]."""
    return _kernels().cp_forward(h, v, w, A, C, edge_src, edge_dst, num_nodes)


@_conv_op.register_fake
def _(h, edge_src, edge_dst, v, w, A, C, num_nodes):
    return h.new_empty(num_nodes, C.shape[0], h.shape[2])


@torch.library.custom_op("tdn::cp_conv_backward", mutates_args=())
def _conv_bwd_op(
    grad_out: Tensor,
    h: Tensor,
    edge_src: Tensor,
    edge_dst: Tensor,
    v: Tensor,
    w: Tensor,
    A: Tensor,
    C: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_out [N_out, d3, C] -> (grad h [N, d1, C], grad v [E, R], grad w [E, C])."""
    return _kernels().cp_backward(grad_out, h, v, w, A, C, edge_src, edge_dst)


@_conv_bwd_op.register_fake
def _(grad_out, h, edge_src, edge_dst, v, w, A, C):
    return h.new_empty(h.shape), v.new_empty(v.shape), h.new_empty(w.shape)


def _conv_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:7])


def _conv_backward(ctx, g: Tensor):
    h, src, dst, v, w, A, C = ctx.saved_tensors
    gh, gv, gw = _conv_bwd_op(g.contiguous(), h, src, dst, v, w, A, C)
    return gh, None, None, gv, gw, None, None, None


def _conv_bwd_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _conv_bwd_backward(ctx, ggh, ggv, ggw):
    g, h, src, dst, v, w, A, C = ctx.saved_tensors
    grads = _double_backward(
        lambda h_, v_, w_: _conv_op(h_, src, dst, v_, w_, A, C, g.shape[0]),
        lambda h_, v_, w_: _conv_bwd_op(g, h_, src, dst, v_, w_, A, C),
        h, v, w, ggh, ggv, ggw,
    )  # fmt: skip
    gg, gh, gv, gw = grads
    return gg, gh, None, None, gv, gw, None, None


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)
_conv_bwd_op.register_autograd(_conv_bwd_backward, setup_context=_conv_bwd_setup)


# -------------------------------------------------------------------- double backward
def _double_backward(
    fwd: Callable[[Tensor, Tensor, Tensor], Tensor],
    bwd: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
    x: Tensor,
    v: Tensor,
    w: Tensor,
    ggx: Tensor | None,
    ggv: Tensor | None,
    ggw: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """Gradients (g, x, v, w) of L2 = <ggx, gx> + <ggv, gv> + <ggw, gw>.

    ``fwd(x, v, w) = P(x, v, w)`` and ``bwd(x, v, w) = (gx, gv, gw)`` of ``<g, P>``,
    with g fixed. With T = C^T g and U = A^T x, L2 = sum_erc T * S where
    S = w v (A^T ggx) + (w ggv + ggw v) U, so (each product is bilinear/linear):

        d/dg = P(ggx, v, w) + P(x, ggv, w) + P(x, v, ggw)
        d/dx = bwd(x, ggv, w).gx + bwd(x, v, ggw).gx
        d/dw = bwd(x, ggv, w).gw + bwd(ggx, v, w).gw
        d/dv = bwd(x, v, ggw).gv + bwd(ggx, v, w).gv

    Terms whose upstream gradient is None are skipped.
    """
    gg, gx, gv, gw = [], [], [], []
    if ggx is not None:
        gg.append(fwd(ggx, v, w))
        _, v_, w_ = bwd(ggx, v, w)
        gv.append(v_)
        gw.append(w_)
    if ggv is not None:
        gg.append(fwd(x, ggv, w))
        x_, _, w_ = bwd(x, ggv, w)
        gx.append(x_)
        gw.append(w_)
    if ggw is not None:
        gg.append(fwd(x, v, ggw))
        x_, v_, _ = bwd(x, v, ggw)
        gx.append(x_)
        gv.append(v_)
    return tuple(sum(p[1:], p[0]) if p else None for p in (gg, gx, gv, gw))


# ------------------------------------------------------------------------ public API
def _v(y: Tensor, B: Tensor) -> Tensor:
    # v in the factors' dtype (fp32 for half inputs): the kernels accumulate in it anyway
    return y.to(B.dtype) @ B


def cp_edge_product(x: Tensor, y: Tensor, w: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """x [E, d1, C], y [E, d2], w [E, C]; A [d1, R], B [d2, R], C [d3, R] -> [E, d3, C]."""
    return _edge_op(x, _v(y, B), w, A, C)


def cp_conv(
    h: Tensor,
    edge_src: Tensor,
    edge_dst: Tensor,
    y: Tensor,
    w: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    num_nodes: int,
) -> Tensor:
    """Fused gather -> CP product -> scatter-add message passing.

    h [N, d1, C] node features, edge_src / edge_dst [E] (long), y [E, d2] edge
    harmonics, w [E, C] edge weights, factors A [d1, R], B [d2, R], C [d3, R] ->
    out [num_nodes, d3, C] with ``out[n] = sum_{e: dst[e] = n} P(h[src[e]], y[e], w[e])``.
    Differentiable to second order in h, y and w; edge order does not matter (atomic
    adds, so float32 sums are not bitwise reproducible across runs on a GPU). Indices
    are not bounds-checked (that would synchronize with the GPU): they must lie in
    [0, N) for edge_src and [0, num_nodes) for edge_dst.
    """
    if edge_src.shape != edge_dst.shape or edge_src.dim() != 1:
        raise ValueError(
            f"edge_src, edge_dst: expected two [E] tensors, got {list(edge_src.shape)} "
            f"and {list(edge_dst.shape)}"
        )
    if edge_src.dtype != torch.long or edge_dst.dtype != torch.long:
        raise ValueError("edge_src, edge_dst: expected dtype torch.long")
    E = edge_src.shape[0]
    if h.dim() != 3 or h.shape[1] != A.shape[0]:
        raise ValueError(f"h: expected shape [N, {A.shape[0]}, C], got {list(h.shape)}")
    if tuple(y.shape) != (E, B.shape[0]):
        raise ValueError(f"y: expected shape [{E}, {B.shape[0]}], got {list(y.shape)}")
    if tuple(w.shape) != (E, h.shape[2]):
        raise ValueError(f"w: expected shape [{E}, {h.shape[2]}], got {list(w.shape)}")
    return _conv_op(h, edge_src, edge_dst, _v(y, B), w, A, C, num_nodes)


def _factor_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision inputs keep fp32 factors: the kernels accumulate in fp32 anyway
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class CPTritonProduct(nn.Module):
    """x [E, d1, C], y [E, d2], weight [E, C] -> out [E, d3, C] (one fused custom op)."""

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.desc = desc
        f = cp_factors(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.rank, desc.group)
        for name in ("A", "B", "C"):
            factor = getattr(f, name).to(dtype=_factor_dtype(dtype), device=device)
            self.register_buffer(name, factor, persistent=False)

    def forward(self, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        return cp_edge_product(x, y, weight, self.A, self.B, self.C)


class CPTritonBackend(Backend):
    name = "cp_triton"
    exact = False
    modes = ("uvu",)
    path_weights = ("shared",)
    requires = ("triton",)
    devices = ("cuda", "cpu")
    fast_devices = ("cuda",)  # on a CPU: Triton's interpreter
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

    @classmethod
    def environment_problem(cls) -> str | None:
        if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return _NO_DEVICE

    @classmethod
    def check_placement(cls, dtype: torch.dtype, device: torch.device) -> str | None:
        reason = super().check_placement(dtype, device)
        if reason is None and torch.device(device).type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                reason = (
                    "cp_triton runs on CPU tensors only through Triton's interpreter "
                    "(set TRITON_INTERPRET=1 before triton is imported); use a CUDA device"
                )
        return reason

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        _kernels()  # fail here, not at the first forward, if triton cannot load
        return CPTritonProduct(desc, dtype, device)
