"""Triton kernels of the ``cp_triton`` backend (imported only when the backend is built).

Notation (uvu mode, shared weight; ``A [d1, R]``, ``C [d3, R]`` are CP factors):

    P(x, v, w; A, C)[e, k, c] = w[e, c] * sum_r C[k, r] * v[e, r] * sum_i A[i, r] x[e, i, c]

``v = y @ B`` [E, R] is computed *outside* these kernels by one small matmul (it is
O(E d2 R), independent of C, and autograd differentiates it for free), so every kernel
sees ``v`` directly.

Layout trick: a program owns BE edges x BC channels and views them as the N = BE * BC
columns of a 2-D tile (column j = edge j // BC, channel j % BC). x becomes a
[d1, N] tile, and the rank contraction is a plain 2-D ``tl.dot``:

    U = A^T X [BR, N],   out += C (V * U) [d3, N]     (V = v broadcast over channels)

looping over R in blocks of BR, so no [E, R, C] tensor ever exists in global memory.
Dimensions are padded to powers of two (>= 16, what ``tl.dot`` needs on a GPU) and
masked. fp64 inputs accumulate in fp64; every other dtype accumulates in fp32.

Two kernels cover everything:

- ``_cp_fwd_kernel``: out = P(x, v, w; A, C). With GATHER, x rows are read through
  ``src`` and results are atomically added into ``out[dst]`` (fused convolution).
- ``_cp_bwd_kernel``: with T = C^T G and U = A^T X per R block,
  gx = w * A (v T),  gw = sum_i x * A (v T),  gv = sum_c w U T.
  gv is reduced over channels per program and written as partial sums
  [n_channel_blocks, E, R] (summed by torch: deterministic, no atomics). With GATHER,
  G rows are read through ``dst``, X rows through ``src`` and gx is atomically added
  into ``grad_h[src]``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Triton's CPU interpreter: correct but slow, so one small fixed config, no autotuning
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot(a, b, IS_FP64: tl.constexpr):
    # fp32 must not silently drop to TF32 (1e-3 error): ask for IEEE products
    if IS_FP64:
        return tl.dot(a, b, out_dtype=tl.float64)
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _cp_fwd_kernel(
    x_ptr, v_ptr, w_ptr, a_ptr, c_ptr, out_ptr, src_ptr, dst_ptr,
    E, NC, D1, D3, R,
    GATHER: tl.constexpr, IS_FP64: tl.constexpr,
    D1P: tl.constexpr, D3P: tl.constexpr,
    BE: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr,
):  # fmt: skip
    ACC = tl.float64 if IS_FP64 else tl.float32
    N: tl.constexpr = BE * BC
    j = tl.arange(0, N)
    e = tl.program_id(0) * BE + j // BC  # [N] edge of each column
    c = tl.program_id(1) * BC + j % BC  # [N] channel of each column
    col = (e < E) & (c < NC)
    e64 = e.to(tl.int64)
    if GATHER:
        xrow = tl.load(src_ptr + e64, mask=e < E, other=0)
        orow = tl.load(dst_ptr + e64, mask=e < E, other=0)
    else:
        xrow = e64
        orow = e64
    i = tl.arange(0, D1P)
    k = tl.arange(0, D3P)
    x = tl.load(
        x_ptr + xrow[None, :] * (D1 * NC) + i[:, None] * NC + c[None, :],
        mask=(i[:, None] < D1) & col[None, :],
        other=0.0,
    ).to(ACC)  # [D1P, N]
    acc = tl.zeros((D3P, N), dtype=ACC)
    for r0 in range(0, R, BR):
        r = r0 + tl.arange(0, BR)
        rm = r < R
        at = tl.load(a_ptr + i[None, :] * R + r[:, None], mask=rm[:, None] & (i[None, :] < D1))
        u = _dot(at.to(ACC), x, IS_FP64)  # [BR, N]
        vv = tl.load(v_ptr + e64[None, :] * R + r[:, None], mask=rm[:, None] & col[None, :])
        cf = tl.load(c_ptr + k[:, None] * R + r[None, :], mask=(k[:, None] < D3) & rm[None, :])
        acc += _dot(cf.to(ACC), (vv.to(ACC) * u), IS_FP64)  # [D3P, N]
    w = tl.load(w_ptr + e64 * NC + c, mask=col, other=0.0).to(ACC)
    acc = acc * w[None, :]
    optr = out_ptr + orow[None, :] * (D3 * NC) + k[:, None] * NC + c[None, :]
    omask = (k[:, None] < D3) & col[None, :]
    if GATHER:
        tl.atomic_add(optr, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _cp_bwd_kernel(
    g_ptr, x_ptr, v_ptr, w_ptr, a_ptr, c_ptr, gx_ptr, gw_ptr, gvp_ptr, src_ptr, dst_ptr,
    E, NC, D1, D3, R,
    GATHER: tl.constexpr, IS_FP64: tl.constexpr,
    D1P: tl.constexpr, D3P: tl.constexpr,
    BE: tl.constexpr, BC: tl.constexpr, BR: tl.constexpr,
):  # fmt: skip
    ACC = tl.float64 if IS_FP64 else tl.float32
    N: tl.constexpr = BE * BC
    pid_c = tl.program_id(1)
    j = tl.arange(0, N)
    e = tl.program_id(0) * BE + j // BC
    c = pid_c * BC + j % BC
    col = (e < E) & (c < NC)
    e64 = e.to(tl.int64)
    if GATHER:
        xrow = tl.load(src_ptr + e64, mask=e < E, other=0)
        grow = tl.load(dst_ptr + e64, mask=e < E, other=0)
    else:
        xrow = e64
        grow = e64
    i = tl.arange(0, D1P)
    k = tl.arange(0, D3P)
    xmask = (i[:, None] < D1) & col[None, :]
    x = tl.load(
        x_ptr + xrow[None, :] * (D1 * NC) + i[:, None] * NC + c[None, :], mask=xmask, other=0.0
    ).to(ACC)  # [D1P, N]
    g = tl.load(
        g_ptr + grow[None, :] * (D3 * NC) + k[:, None] * NC + c[None, :],
        mask=(k[:, None] < D3) & col[None, :],
        other=0.0,
    ).to(ACC)  # [D3P, N]
    w = tl.load(w_ptr + e64 * NC + c, mask=col, other=0.0).to(ACC)  # [N]
    q = tl.zeros((D1P, N), dtype=ACC)  # A (v T), summed over R blocks
    eb = tl.program_id(0) * BE + tl.arange(0, BE)  # [BE] edges of this program
    for r0 in range(0, R, BR):
        r = r0 + tl.arange(0, BR)
        rm = r < R
        ct = tl.load(c_ptr + k[None, :] * R + r[:, None], mask=rm[:, None] & (k[None, :] < D3))
        t = _dot(ct.to(ACC), g, IS_FP64)  # [BR, N] = C^T G
        at = tl.load(a_ptr + i[None, :] * R + r[:, None], mask=rm[:, None] & (i[None, :] < D1))
        at = at.to(ACC)
        u = _dot(at, x, IS_FP64)  # [BR, N] = A^T X
        vv = tl.load(v_ptr + e64[None, :] * R + r[:, None], mask=rm[:, None] & col[None, :])
        q += _dot(tl.trans(at), vv.to(ACC) * t, IS_FP64)  # [D1P, N]
        # gv partial: sum over this program's channels (columns of one edge are adjacent)
        p = tl.sum(tl.reshape(w[None, :] * u * t, (BR, BE, BC)), axis=2)  # [BR, BE]
        tl.store(
            gvp_ptr + pid_c.to(tl.int64) * E * R + eb[None, :].to(tl.int64) * R + r[:, None],
            p.to(gvp_ptr.dtype.element_ty),
            mask=rm[:, None] & (eb[None, :] < E),
        )
    gw = tl.sum(x * q, axis=0)  # [N]
    tl.store(gw_ptr + e64 * NC + c, gw.to(gw_ptr.dtype.element_ty), mask=col)
    gx = q * w[None, :]
    gptr = gx_ptr + xrow[None, :] * (D1 * NC) + i[:, None] * NC + c[None, :]
    if GATHER:
        tl.atomic_add(gptr, gx.to(gx_ptr.dtype.element_ty), mask=xmask)
    else:
        tl.store(gptr, gx.to(gx_ptr.dtype.element_ty), mask=xmask)


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def _gpu_configs() -> list[triton.Config]:
    # BE * BC >= 16 columns (tl.dot minimum); larger tiles amortize the factor loads,
    # smaller ones keep the [d, BE * BC] accumulators in registers at large d
    tiles = ((1, 16), (1, 32), (2, 16), (1, 64), (2, 32), (4, 16), (4, 32), (8, 16))
    return [
        triton.Config({"BE": be, "BC": bc, "BR": br}, num_warps=nw)
        for be, bc in tiles
        for br in (16, 32)
        for nw in (4, 8)
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # channel tiles wider than the channel count only waste lanes; keep the rest
    nc = named_args.get("NC", kwargs.get("NC"))
    cap = max(16, triton.next_power_of_2(int(nc)))
    kept = [c for c in configs if c.kwargs["BC"] <= cap]
    return kept or configs[:1]


_KEY = ["D1", "D3", "R", "NC", "GATHER"]
_PRUNE = {"early_config_prune": _prune}
_fwd_tuned = triton.autotune(
    _gpu_configs(), key=_KEY, prune_configs_by=_PRUNE, reset_to_zero=["out_ptr"]
)(_cp_fwd_kernel)
_bwd_tuned = triton.autotune(
    _gpu_configs(), key=_KEY, prune_configs_by=_PRUNE, reset_to_zero=["gx_ptr", "gvp_ptr"]
)(_cp_bwd_kernel)


def _interp_blocks(E: int, NC: int, R: int) -> dict[str, int]:
    # few, large programs: the interpreter's cost is per program and per loop step
    bc = min(_pow2(NC, 1), 32)
    be = max(1, min(_pow2(E, 1), 256 // bc))
    return {"BE": be, "BC": bc, "BR": min(_pow2(R), 128)}


def _common(x: torch.Tensor, a: torch.Tensor, c: torch.Tensor, nc: int) -> dict:
    return {
        "IS_FP64": x.dtype == torch.float64,
        "D1P": _pow2(a.shape[0]),
        "D3P": _pow2(c.shape[0]),
        "NC": nc,
        "D1": a.shape[0],
        "D3": c.shape[0],
        "R": a.shape[1],
    }


def _use_tuned(t: torch.Tensor) -> bool:
    """Autotuned launch (GPU) or one fixed small config (interpreter)."""
    return t.is_cuda and not INTERPRET


def _launch(tuned, plain, E: int, nc: int, R: int, args: tuple, kw: dict) -> None:
    if _use_tuned(args[0]):
        tuned[lambda m: (triton.cdiv(E, m["BE"]), triton.cdiv(nc, m["BC"]))](*args, **kw)
    else:
        blocks = _interp_blocks(E, nc, R)
        grid = (triton.cdiv(E, blocks["BE"]), triton.cdiv(nc, blocks["BC"]))
        plain[grid](*args, **kw, **blocks)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the kernels: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cp_forward(
    x: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    src: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
    num_out: int | None = None,
) -> torch.Tensor:
    """P(x, v, w; A, C).

    Edge form (src is None): x [E, d1, C], v [E, R], w [E, C] -> out [E, d3, C].
    Convolution form: x = node features h [N, d1, C], src/dst [E] long -> out
    [num_out, d3, C], the sum over edges e of P(h[src[e]], ...) into row dst[e].
    """
    E, nc = w.shape
    d3 = C.shape[0]
    gather = src is not None
    rows = num_out if gather else E
    # atomics accumulate in the accumulation dtype; cast once at the end
    out_dtype = acc_dtype(x.dtype) if gather else x.dtype
    out = torch.zeros(rows, d3, nc, dtype=out_dtype, device=x.device)
    if E == 0 or nc == 0 or rows == 0:
        return out.to(x.dtype)
    x, v, w, A, C = (t.contiguous() for t in (x, v, w, A, C))
    src = src.contiguous() if gather else out
    dst = dst.contiguous() if gather else out
    args = (x, v, w, A, C, out, src, dst, E)
    kw = {"GATHER": gather, **_common(x, A, C, nc)}
    _launch(_fwd_tuned, _cp_fwd_kernel, E, nc, A.shape[1], args, kw)
    return out.to(x.dtype)


def cp_backward(
    g: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    src: torch.Tensor | None = None,
    dst: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (gx like x, gv [E, R], gw [E, C]) of sum(g * P(x, v, w; A, C)).

    Edge form: g [E, d3, C], x [E, d1, C]. Convolution form: g [N_out, d3, C] (read
    through dst), x = h [N, d1, C] (read through src), gx [N, d1, C] scattered to src.
    gv is in the accumulation dtype (float32 for half inputs), gx and gw in x's dtype.
    """
    E, nc = w.shape
    R = A.shape[1]
    gather = src is not None
    acc = acc_dtype(x.dtype)
    gx = torch.zeros(x.shape, dtype=acc if gather else x.dtype, device=x.device)
    gw = torch.zeros(E, nc, dtype=x.dtype, device=x.device)
    if E == 0 or nc == 0:
        return gx.to(x.dtype), torch.zeros(E, R, dtype=v.dtype, device=x.device), gw
    # one partial-sum slab per channel block; under autotuning the block is not known
    # yet, so size for the smallest BC of the GPU configs (extra slabs stay zero)
    min_bc = 16 if _use_tuned(x) else _interp_blocks(E, nc, R)["BC"]
    blocks_c = triton.cdiv(nc, min_bc)
    gvp = torch.zeros(blocks_c, E, R, dtype=acc, device=x.device)
    g, x, v, w, A, C = (t.contiguous() for t in (g, x, v, w, A, C))
    src = src.contiguous() if gather else gw
    dst = dst.contiguous() if gather else gw
    args = (g, x, v, w, A, C, gx, gw, gvp, src, dst, E)
    kw = {"GATHER": gather, **_common(x, A, C, nc)}
    _launch(_bwd_tuned, _cp_bwd_kernel, E, nc, R, args, kw)
    return gx.to(x.dtype), gvp.sum(0).to(v.dtype), gw
