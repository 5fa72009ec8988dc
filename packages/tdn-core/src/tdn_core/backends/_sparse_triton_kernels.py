"""Triton kernels of the sparse bilinear contraction (exact ``sparse`` backend).

A sparse third-order tensor T[o, i, j] (nnz stored entries, e.g. the nonzeros of a CG
tensor) is contracted with a per-edge pair of feature tensors. ``a`` is always
channeled, [E, da, C]; ``b`` is [E, db, C] (channeled) or [E, db] (channelless, then
B(e, j, c) = b[e, j] for every channel c), else B(e, j, c) = b[e, j, c].

S layout (``out_channels=True``), out [E, d_out, C]: entries grouped by (o, i) so that
each a row is read once per group,

    out[e, o, c] = sum_{g in [row_ptr[o], row_ptr[o+1]))} a[e, group_a[g], c]
                       * sum_{n in [group_ptr[g], group_ptr[g+1])} val[n] B(e, entry_b[n], c)

    t0 = row_ptr [d_out + 1], t1 = group_a [G], t2 = group_ptr [G + 1], t3 = entry_b [nnz]

R layout (``out_channels=False``, b channeled), out [E, d_out]: the channel sum,

    out[e, o] = sum_{n in [row_ptr[o], row_ptr[o+1])} val[n]
                    * sum_c a[e, pair_a[p_n], c] b[e, pair_b[p_n], c],   p_n = entry_pair[n]

    t0 = row_ptr [d_out + 1], t1 = entry_pair [nnz], t2 = pair_a [P], t3 = pair_b [P]

Both equal the dense ``einsum("oij,eic,ejc->eoc")`` (``"oij,eic,ej->eoc"`` for a
channelless b) and ``einsum("oij,eic,ejc->eo")`` of T. Empty rows give 0.

Kernels (both loop over the sparse structure with loop bounds loaded from the index
arrays, i.e. dynamic ``range(start, end)`` loops whose trip counts are uniform within
a program; every program writes its whole output tile, so no atomics and no zeroing):

- ``_sparse_s_kernel``: 2-D grid over (BE edges, BC channels). Per output row o, per
  group g, the inner entry loop accumulates ``val * B`` into a [BE, BC] tile (a [BE]
  vector for channelless b), which is multiplied by the a[:, group_a[g], :] tile and
  added into the row accumulator. Loads are contiguous over channels (coalesced).
- ``_sparse_r_kernel``: 1-D grid over BE edges. Per row o, per entry n, per channel
  block of BC (looped inside the program), ``val[n] * a * b`` is added into a [BE, BC]
  tile (loads coalesced over channels), which is reduced over channels once per row.
  The a, b rows of a pair shared by several rows are re-read and re-multiplied for each
  of its entries (nnz / P = 1.0, 1.7, 2.4, 3.3, 5.0 for the CG tensor at lmax 1, 2, 3,
  4, 6): the price of needing no [E, P] scratch buffer of pair dot products.

fp64 inputs accumulate in fp64, every other dtype in fp32; the output has a's dtype.

Tested only in Triton's CPU interpreter (``TRITON_INTERPRET=1``: small fixed blocks)
and lowered to an sm_90 binary without running it. Nothing was measured on a GPU: the
GPU block sizes below (tiles of ~256 elements, 4 warps) are an unmeasured heuristic,
not tuned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._cp_triton_kernels import INTERPRET  # the interpreter: small blocks, few programs


@triton.jit
def _sparse_s_kernel(
    a_ptr, b_ptr, row_ptr, group_a_ptr, group_ptr, entry_b_ptr, val_ptr, out_ptr,
    E, NC, DA, DB, D_OUT,
    B_CHANNELED: tl.constexpr, IS_FP64: tl.constexpr,
    BE: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    ACC = tl.float64 if IS_FP64 else tl.float32
    e = tl.program_id(0) * BE + tl.arange(0, BE)  # [BE]
    c = tl.program_id(1) * BC + tl.arange(0, BC)  # [BC]
    em = e < E
    mask = em[:, None] & (c < NC)[None, :]  # [BE, BC]
    e64 = e.to(tl.int64)
    a_base = a_ptr + e64[:, None] * DA * NC + c[None, :]  # row 0 of a, [BE, BC]
    if B_CHANNELED:
        b_base = b_ptr + e64[:, None] * DB * NC + c[None, :]
    else:
        b_base = b_ptr + e64 * DB  # [BE]
    o_base = out_ptr + e64[:, None] * D_OUT * NC + c[None, :]
    for o in range(0, D_OUT):
        g0 = tl.load(row_ptr + o)
        g1 = tl.load(row_ptr + o + 1)
        acc = tl.zeros((BE, BC), dtype=ACC)
        for g in range(g0, g1):
            ia = tl.load(group_a_ptr + g)
            n0 = tl.load(group_ptr + g)
            n1 = tl.load(group_ptr + g + 1)
            if B_CHANNELED:
                inner = tl.zeros((BE, BC), dtype=ACC)
                for n in range(n0, n1):
                    jb = tl.load(entry_b_ptr + n)
                    v = tl.load(val_ptr + n).to(ACC)
                    bt = tl.load(b_base + jb * NC, mask=mask, other=0.0)
                    inner += v * bt.to(ACC)
            else:
                inner_e = tl.zeros((BE,), dtype=ACC)
                for n in range(n0, n1):
                    jb = tl.load(entry_b_ptr + n)
                    v = tl.load(val_ptr + n).to(ACC)
                    bv = tl.load(b_base + jb, mask=em, other=0.0)
                    inner_e += v * bv.to(ACC)
                inner = inner_e[:, None]
            at = tl.load(a_base + ia * NC, mask=mask, other=0.0)
            acc += at.to(ACC) * inner
        tl.store(o_base + o * NC, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sparse_r_kernel(
    a_ptr, b_ptr, row_ptr, entry_pair_ptr, pair_a_ptr, pair_b_ptr, val_ptr, out_ptr,
    E, NC, DA, DB, D_OUT,
    IS_FP64: tl.constexpr,
    BE: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    ACC = tl.float64 if IS_FP64 else tl.float32
    e = tl.program_id(0) * BE + tl.arange(0, BE)  # [BE]
    cb = tl.arange(0, BC)  # [BC] channels of one block
    em = e < E
    e64 = e.to(tl.int64)
    a_base = a_ptr + e64[:, None] * DA * NC + cb[None, :]  # [BE, BC]
    b_base = b_ptr + e64[:, None] * DB * NC + cb[None, :]
    for o in range(0, D_OUT):
        n0 = tl.load(row_ptr + o)
        n1 = tl.load(row_ptr + o + 1)
        # sum_n val[n] a b stays a [BE, BC] tile over entries and channel blocks: one
        # cross-lane reduction per row, not one per entry and channel block
        acc = tl.zeros((BE, BC), dtype=ACC)
        for n in range(n0, n1):
            p = tl.load(entry_pair_ptr + n)
            ia = tl.load(pair_a_ptr + p)
            jb = tl.load(pair_b_ptr + p)
            v = tl.load(val_ptr + n).to(ACC)
            for c0 in range(0, NC, BC):
                mask = em[:, None] & ((c0 + cb) < NC)[None, :]
                at = tl.load(a_base + ia * NC + c0, mask=mask, other=0.0).to(ACC)
                bt = tl.load(b_base + jb * NC + c0, mask=mask, other=0.0).to(ACC)
                acc += v * (at * bt)
        row = tl.sum(acc, axis=1)  # [BE]
        tl.store(out_ptr + e64 * D_OUT + o, row.to(out_ptr.dtype.element_ty), mask=em)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _blocks(E: int, NC: int, on_gpu: bool) -> tuple[int, int]:
    """(BE, BC): a [BE, BC] tile of ~256 elements, channels first (coalesced loads).

    Interpreter: few, large programs (its cost is per program and per loop step), with
    channel blocks of at most 32 like the CP kernels. GPU: channel blocks of at most 64;
    an unmeasured heuristic.
    """
    bc = min(_pow2(NC), 64 if on_gpu else 32)
    be = max(1, min(_pow2(E), 256 // bc))
    return be, bc


def _on_gpu(t: torch.Tensor) -> bool:
    """GPU launch (GPU blocks, num_warps) or the interpreter's small blocks."""
    return t.is_cuda and not INTERPRET


def sparse_bilinear(
    a: torch.Tensor,
    b: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    t3: torch.Tensor,
    val: torch.Tensor,
    d_out: int,
    out_channels: bool,
) -> torch.Tensor:
    """Sparse bilinear contraction of a [E, da, C] with b (see the module docstring).

    out_channels=True (S layout): t0..t3 = row_ptr, group_a, group_ptr, entry_b;
    b [E, db, C] or [E, db]; returns [E, d_out, C].
    out_channels=False (R layout): t0..t3 = row_ptr, entry_pair, pair_a, pair_b;
    b [E, db, C]; returns [E, d_out].
    Index tensors are int64 on a's device; val has a's dtype. The output has a's dtype.
    """
    if a.dim() != 3:
        raise ValueError(f"a: expected [E, da, C], got shape {tuple(a.shape)}")
    E, da, nc = a.shape
    if b.dim() not in (2, 3) or b.shape[0] != E or (b.dim() == 3 and b.shape[2] != nc):
        raise ValueError(f"b: expected [{E}, db, {nc}] or [{E}, db], got shape {tuple(b.shape)}")
    if not out_channels and b.dim() != 3:
        raise ValueError("b: the R layout (out_channels=False) needs a channeled b")
    d_out = int(d_out)
    if t0.shape != (d_out + 1,):
        raise ValueError(f"row_ptr: expected shape ({d_out + 1},), got {tuple(t0.shape)}")
    shape = (E, d_out, nc) if out_channels else (E, d_out)
    if E == 0 or d_out == 0 or nc == 0:
        return torch.zeros(shape, dtype=a.dtype, device=a.device)
    a, b, t0, t1, t2, t3, val = (t.contiguous() for t in (a, b, t0, t1, t2, t3, val))
    out = torch.empty(shape, dtype=a.dtype, device=a.device)
    on_gpu = _on_gpu(a)
    be, bc = _blocks(E, nc, on_gpu)
    launch = {"num_warps": 4} if on_gpu else {}
    is_fp64 = a.dtype == torch.float64
    args = (a, b, t0, t1, t2, t3, val, out, E, nc, da, b.shape[1], d_out)
    if out_channels:
        grid = (triton.cdiv(E, be), triton.cdiv(nc, bc))
        _sparse_s_kernel[grid](
            *args, B_CHANNELED=b.dim() == 3, IS_FP64=is_fp64, BE=be, BC=bc, **launch
        )
    else:
        grid = (triton.cdiv(E, be),)
        _sparse_r_kernel[grid](*args, IS_FP64=is_fp64, BE=be, BC=bc, **launch)
    return out
