"""``cp_eager``: the CP-decomposed product in plain PyTorch, shaped as matrix products.

With ``M_ijk ~ sum_r A_ir B_jr C_kr`` (rank R):

    out[e, :, c] = w[e, c] * C ((A^T x[e, :, c]) * (B^T y[e(, :, c)]))

uvu (y single-channel, TDN's edge product) works in the native [E, d, C] layout, one
chunk of edges at a time so that intermediates stay in cache:

    u_e = A^T x_e                  [R, C]    (one GEMM over the chunk)
    o_e = (C diag(v_e)) u_e        [d3, C]   (v_e = B^T y_e folded into C: no pass
                                              over [R, C] for the product with v)
    out_e = o_e * w_e              (w scales channels)

Its backward is a custom autograd function that keeps only x, y and w (no [E, R, C]
tensor lives between forward and backward) and is written in differentiable
operations, so double backward (force training) works through it. With
T0_e = C^T g_e [R, C], K_e = A diag(v_e) C^T:

    Q_e = (A diag(v_e)) T0_e = K_e g_e        [d1, C]
    dx_e = Q_e * w_e,   dw_ec = sum_i x_eic Q_eic
    dv_e = sum_i A_i: * ((x_e * w_e) T0_e^T)_i:,  dy_e = B dv_e

The ``uuu`` mode (y has channels, so v cannot be folded) is plain autograd code.

Fused CPU forward. On the CPU in float32 (channels a multiple of 16, outside
torch.compile) the factored uvu forward runs a fused C++ kernel (``_cpu_kernels``),
built on first use with the system compiler: per edge, u_e and o_e stay in registers
and cache, and edges split over threads. As PyTorch ops it is a loop of small per-edge
GEMMs that MKL runs one call at a time; on the 2-core AMD EPYC (Zen 5) dev VM the
fused forward reached 74%, 156%, 177%, 153% of MKL's square-matmul rate at L = 3..6
against 40-74% for the ops (``benchmarks/results/cp_cpu_kernel_2026-12-02.json``).
Its backward is the one above. Without a compiler, with ``TDN_CPU_KERNEL=0`` or with
``cpu_kernel = False`` the forward stays in PyTorch ops; both give the same result up
to float32 rounding.

Contraction order (uvu). The same rank-R function can be evaluated in two orders:
``"factored"`` above, 2E(d2 R + C R (d1 + d3 + 1)) FLOPs, or ``"dense"``: rebuild
M_R = sum_r A_:r (x) B_:r (x) C_:r once ([d1, d2, d3], cached) and precontract it with y
per edge as ``path_shared`` does with M, 2E(d1 d2 d3 + C d1 d3) FLOPs. The result and
its error against M are the same up to rounding. ``order="auto"`` (the default) takes
the one with fewer FLOPs, as opt_einsum does for the paper's reference code: "dense"
for TDN's edge product at R = 7L^2 with 64 channels (5-7x fewer FLOPs for L = 1..6),
"factored" with a few channels at large L (C <= 4 at L = 6). ``uuu`` has no
precontraction and is always factored.
"""

from __future__ import annotations

import torch
from torch import nn

from .._factors import cp_factors
from ..descriptors import TPDescriptor
from . import _cpu_kernels
from ._base import Backend
from .path_shared import precontracted_edge_product, unfold_for_precontraction

#: contraction orders of the uvu product (module docstring)
ORDERS = ("auto", "factored", "dense")

#: elements of the [n, R, C] intermediate per chunk of n edges: 1 MB in fp32, so that it
#: stays in a core's L2 cache between the two products. A fixed number of edges instead
#: let it grow with R to 4 MB at L = 6; the forward ran 9-13% slower at L = 4..6.
CHUNK_ELEMENTS = 2**18


class _CPEdgeProduct(torch.autograd.Function):
    """out [E, d3, C] from x [E, d1, C], y [E, d2], w [E, C]; A [d1, R], B [d2, R], C [d3, R].
    ``fused``: the forward runs the CPU kernel (which must support the inputs)."""

    @staticmethod
    def forward(x, y, w, A, B, C, chunk, fused):
        v = y @ B  # [E, R]
        if fused:  # CPEagerProduct.uses_cpu_kernel decided
            return _cpu_kernels.cp_uvu_forward(x, v, w, A, C)
        E, _, channels = x.shape
        out = x.new_empty(E, C.shape[0], channels)
        At = A.t()
        for s in range(0, E, chunk):
            sl = slice(s, s + chunk)
            u = torch.matmul(At, x[sl])  # [n, R, C]
            o = torch.bmm(C * v[sl].unsqueeze(1), u)  # [n, d3, C]
            torch.mul(o, w[sl].unsqueeze(1), out=out[sl])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, w, A, B, C, chunk, _ = inputs
        ctx.save_for_backward(x, y, w, A, B, C)
        ctx.chunk = chunk

    @staticmethod
    def backward(ctx, grad_out):
        x, y, w, A, B, C = ctx.saved_tensors
        need_x, need_y, need_w = ctx.needs_input_grad[:3]
        if x.shape[0] == 0:
            return torch.zeros_like(x), torch.zeros_like(y), torch.zeros_like(w), *[None] * 5
        Ct = C.t()
        v = y @ B
        gx, gv, gw = [], [], []
        # Under create_graph (force training) these ops are recorded: slicing would make
        # every chunk's SliceBackward allocate a zero tensor of the full size, which is
        # quadratic in the number of chunks. One chunk then.
        chunk = max(1, x.shape[0]) if torch.is_grad_enabled() else ctx.chunk
        for s in range(0, x.shape[0], chunk):
            sl = slice(s, s + chunk)
            xs, ws = x[sl], w[sl].unsqueeze(1)  # [n, d1, C], [n, 1, C]
            T0 = torch.matmul(Ct, grad_out[sl])  # [n, R, C]
            if need_x or need_w:
                Q = torch.bmm(A * v[sl].unsqueeze(1), T0)  # [n, d1, C]
                if need_x:
                    gx.append(Q * ws)
                if need_w:
                    gw.append((xs * Q).sum(1))
            if need_y:
                S = torch.bmm(xs * ws, T0.transpose(1, 2))  # [n, d1, R]
                gv.append((S * A).sum(1))
        gy = torch.cat(gv) @ B.t() if need_y else None
        return _cat(gx), gy, _cat(gw), None, None, None, None, None


def _cat(parts: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.cat(parts) if parts else None


def _cp_channelwise(x, y, w, A, B, C):
    """uuu: x [E, d1, C], y [E, d2, C], w [E, C] -> [E, d3, C] (autograd does the rest)."""
    h = torch.matmul(A.t(), x) * torch.matmul(B.t(), y)  # [E, R, C]
    return torch.matmul(C, h) * w.unsqueeze(1)


class CPEagerProduct(nn.Module):
    """x [E, d1, C], y [E, d2] or [E, d2, C], weight [E, C] -> out [E, d3, C].

    ``order``: ``"auto"``, ``"factored"`` or ``"dense"`` (module docstring); settable.
    ``cpu_kernel``: whether the factored uvu forward may run the fused CPU kernel (module
    docstring); False keeps it in PyTorch ops.
    """

    def __init__(self, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.desc = desc
        f = cp_factors(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.rank, desc.group)
        for name in ("A", "B", "C"):
            factor = getattr(f, name).to(dtype=dtype, device=device)
            self.register_buffer(name, factor, persistent=False)
        self.chunk = max(1, CHUNK_ELEMENTS // (self.A.shape[1] * desc.channels))
        if desc.mode == "uvu":
            # built in float64 from the float64 factors, then cast once
            M_R = torch.einsum("ir,jr,kr->ijk", f.A, f.B, f.C)
            dense = unfold_for_precontraction(M_R).to(dtype=dtype, device=device)
            self.register_buffer("dense", dense, persistent=False)
        self.order = "auto"
        self.cpu_kernel = True

    @property
    def order(self) -> str:
        return self._order

    @order.setter
    def order(self, value: str) -> None:
        if value not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, got {value!r}")
        self._order = value
        # resolved here, once, not on every forward
        if self.desc.mode == "uuu":
            self._runs = "factored"
        elif value == "auto":
            dense_cheaper = self.desc.flops("path_shared") < self.desc.flops("cp")
            self._runs = "dense" if dense_cheaper else "factored"
        else:
            self._runs = value

    def resolved_order(self) -> str:
        """The order :meth:`forward` runs: ``"factored"`` or ``"dense"``."""
        return self._runs

    def uses_cpu_kernel(self, x: torch.Tensor) -> bool:
        """Whether the factored order's forward on ``x`` runs the fused CPU kernel (module
        docstring); the dense order never does."""
        return self.cpu_kernel and self.desc.mode == "uvu" and _cpu_kernels.supports(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self._runs == "dense":
            return precontracted_edge_product(x, y, weight, self.dense)
        if self.desc.mode == "uuu":
            return _cp_channelwise(x, y, weight, self.A, self.B, self.C)
        fused = self.uses_cpu_kernel(x)
        return _CPEdgeProduct.apply(x, y, weight, self.A, self.B, self.C, self.chunk, fused)

    def extra_repr(self) -> str:
        return f"order={self._order!r} (runs {self._runs!r}), cpu_kernel={self.cpu_kernel}"


class CPEagerBackend(Backend):
    name = "cp_eager"
    exact = False
    modes = ("uvu", "uuu")
    path_weights = ("shared",)

    @classmethod
    def build(cls, desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> nn.Module:
        return CPEagerProduct(desc, dtype, device)
