"""Sparse bilinear Triton kernels (S and R layouts) against dense einsum references.

Without a GPU, the kernels run in Triton's CPU interpreter (slow): sizes stay small.
The layouts are built here from (o, ia, ib, val) triples, independently of the
backend that will build them in production; the dense reference is T[o, ia, ib].
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # must precede the first import of triton (conftest.py does the same)
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

import tdn_core
from tdn_core.backends import _sparse_triton_kernels as K

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
LAYOUTS = ["S-channeled", "S-channelless", "R"]


# --------------------------------------------------------------------------- helpers
def _ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def build_layouts(o, ia, ib, val, dims):
    """numpy triples -> {"S": (row_ptr, group_a, group_ptr, entry_b, val),
    "R": (row_ptr, entry_pair, pair_a, pair_b, val)} as numpy arrays."""
    d_out, _, db = dims
    o, ia, ib = (np.asarray(t, dtype=np.int64) for t in (o, ia, ib))
    val = np.asarray(val, dtype=np.float64)
    # S: entries sorted by (o, ia, ib); a group is a run of equal (o, ia)
    order = np.lexsort((ib, ia, o))
    so, sa, sb, sv = o[order], ia[order], ib[order], val[order]
    new = np.ones(len(so), dtype=bool)
    new[1:] = (so[1:] != so[:-1]) | (sa[1:] != sa[:-1])
    starts = np.flatnonzero(new)
    s_row_ptr = _ptr(np.bincount(so[starts], minlength=d_out))
    group_ptr = np.concatenate([starts, [len(so)]]).astype(np.int64)
    s = (s_row_ptr, sa[starts], group_ptr, sb, sv)
    # R: pairs = distinct (ia, ib); entries sorted by (o, pair)
    pairs, inv = np.unique(ia * db + ib, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.lexsort((inv, o))
    r_row_ptr = _ptr(np.bincount(o, minlength=d_out))
    r = (r_row_ptr, inv[order].astype(np.int64), pairs // db, pairs % db, val[order])
    return {"S": s, "R": r}


def dense(o, ia, ib, val, dims) -> np.ndarray:
    T = np.zeros(dims)
    np.add.at(T, (np.asarray(o), np.asarray(ia), np.asarray(ib)), np.asarray(val))
    return T


def random_triples(dims, nnz: int, seed: int, empty_rows=(0, 3)):
    """Random triples (duplicates included) that leave the rows empty_rows empty."""
    d_out, da, db = dims
    rng = np.random.default_rng(seed)
    rows = np.setdiff1d(np.arange(d_out), empty_rows)
    o = rng.choice(rows, nnz)
    ia, ib = rng.integers(0, da, nnz), rng.integers(0, db, nnz)
    dup = rng.integers(0, nnz, 3)  # repeated (o, ia, ib): both layouts must sum them
    o, ia, ib = (np.concatenate([t, t[dup]]) for t in (o, ia, ib))
    return o, ia, ib, rng.standard_normal(len(o))


def cg_triples(L: int):
    M = tdn_core.cg_tensor(L, L, L).numpy()
    i, j, k = np.nonzero(M)
    return k, i, j, M[i, j, k], (M.shape[2], M.shape[0], M.shape[1])


def features(E, d, C, dtype, contiguous: bool, channels: bool = True):
    """[E, d, C] (or [E, d]) random features; non-contiguous: every other row of a
    channels-major buffer (strides neither row- nor channel-contiguous)."""
    if contiguous:
        shape = (E, d, C) if channels else (E, d)
        return torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype)
    # cast first: .to() of a strided view may return a contiguous copy
    if channels:
        t = torch.randn(C, E, 2 * d, dtype=torch.float64).to(DEVICE, dtype)
        t = t.permute(1, 2, 0)[:, ::2]
    else:
        t = torch.randn(E, 2 * d, dtype=torch.float64).to(DEVICE, dtype)[:, ::2]
    assert not t.is_contiguous() or t.numel() == 0
    return t


def tensors(arrays, dtype):
    *idx, val = arrays
    ts = [torch.as_tensor(t, dtype=torch.int64, device=DEVICE) for t in idx]
    return (*ts, torch.as_tensor(val, dtype=dtype, device=DEVICE))


def run_and_reference(layout, triples, dims, E, C, dtype, contiguous):
    """(kernel output, float64 dense reference) for one layout."""
    o, ia, ib, val = triples
    d_out, da, db = dims
    lay = build_layouts(o, ia, ib, val, dims)
    T = torch.as_tensor(dense(o, ia, ib, val, dims), device=DEVICE)
    channelless = layout == "S-channelless"
    a = features(E, da, C, dtype, contiguous)
    b = features(E, db, C, dtype, contiguous, channels=not channelless)
    ad, bd = a.double(), b.double()
    if layout == "R":
        out = K.sparse_bilinear(a, b, *tensors(lay["R"], dtype), d_out, out_channels=False)
        return out, torch.einsum("oij,eic,ejc->eo", T, ad, bd)
    out = K.sparse_bilinear(a, b, *tensors(lay["S"], dtype), d_out, out_channels=True)
    eq = "oij,eic,ej->eoc" if channelless else "oij,eic,ejc->eoc"
    return out, torch.einsum(eq, T, ad, bd)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == dtype and out.device.type == DEVICE.type
    if out.numel():
        assert ref.abs().max() > 0  # a non-trivial comparison
        assert rel(out, ref) <= RTOL[dtype]


# ------------------------------------------------------------ the layouts themselves
def loop_reference(layout, lay, a, b, d_out):
    """The documented formulas, literally (python loops): pins the layout semantics."""
    t0, t1, t2, t3, val = (torch.as_tensor(t) for t in lay)
    B = b if b.dim() == 3 else b[:, :, None].expand(-1, -1, a.shape[2])
    if layout == "R":
        out = a.new_zeros(a.shape[0], d_out)
        for o in range(d_out):
            for n in range(t0[o], t0[o + 1]):
                p = t1[n]
                out[:, o] += val[n] * (a[:, t2[p]] * b[:, t3[p]]).sum(-1)
        return out
    out = a.new_zeros(a.shape[0], d_out, a.shape[2])
    for o in range(d_out):
        for g in range(t0[o], t0[o + 1]):
            inner = sum(val[n] * B[:, t3[n]] for n in range(t2[g], t2[g + 1]))
            out[:, o] += a[:, t1[g]] * inner
    return out


def test_layout_builder_matches_dense():
    dims = (6, 5, 4)
    o, ia, ib, val = random_triples(dims, 20, seed=0)
    lay = build_layouts(o, ia, ib, val, dims)
    T = torch.as_tensor(dense(o, ia, ib, val, dims))
    a, b = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    s_ref = torch.einsum("oij,eic,ejc->eoc", T, a, b)
    assert rel(loop_reference("S", lay["S"], a, b, 6), s_ref) <= 1e-12
    s_ref1 = torch.einsum("oij,eic,ej->eoc", T, a, b[:, :, 0])
    assert rel(loop_reference("S", lay["S"], a, b[:, :, 0], 6), s_ref1) <= 1e-12
    r_ref = torch.einsum("oij,eic,ejc->eo", T, a, b)
    assert rel(loop_reference("R", lay["R"], a, b, 6), r_ref) <= 1e-12
    row_ptr = lay["S"][0]
    assert row_ptr[1] == row_ptr[0] and row_ptr[4] == row_ptr[3]  # rows 0, 3 empty
    assert len(lay["R"][2]) < len(val)  # some pairs are shared by several entries


# ----------------------------------------------------------------- kernels vs dense
# (E, C, contiguous): every E in (0, 1, 7, 33), every C in (1, 3, 17); C = 40 spans two
# interpreter channel blocks (S: two programs along axis 1; R: two loop steps)
CASES = [
    (0, 3, True),
    (1, 1, True),
    (1, 3, False),
    (7, 3, False),
    (7, 17, True),
    (33, 1, False),
    (33, 17, True),
    (3, 40, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=["E{}-C{}-{}".format(*c) for c in CASES])
def test_random_triples_match_dense(case, layout, dtype):
    E, C, contiguous = case
    dims = (6, 5, 4)
    triples = random_triples(dims, 25, seed=E * 100 + C)
    out, ref = run_and_reference(layout, triples, dims, E, C, dtype, contiguous)
    check(out, ref, dtype)
    if E:
        empty = out[:, [0, 3]]
        assert not empty.abs().sum()  # empty rows: exact zeros (output starts as empty)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("L", [1, 2])
def test_cg_tensor_matches_dense(L, layout, dtype):
    o, ia, ib, val, dims = cg_triples(L)
    for E, C, contiguous in ((7, 3, False), (5, 17, True)):
        out, ref = run_and_reference(layout, (o, ia, ib, val), dims, E, C, dtype, contiguous)
        check(out, ref, dtype)


def test_cg_tensor_against_its_own_dense_form():
    """The CG triples reproduce cg_tensor exactly (o = k, ia = i, ib = j)."""
    o, ia, ib, val, dims = cg_triples(2)
    M = tdn_core.cg_tensor(2, 2, 2).numpy()
    np.testing.assert_array_equal(dense(o, ia, ib, val, dims), M.transpose(2, 0, 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_entries_gives_zeros(layout):
    dims = (3, 2, 2)
    empty = (np.zeros(0, np.int64),) * 3 + (np.zeros(0),)
    out, ref = run_and_reference(layout, empty, dims, 5, 3, torch.float64, True)
    assert out.shape == ref.shape and not out.abs().sum()


def test_gpu_blocks_in_the_interpreter(monkeypatch):
    """The GPU block heuristic (BC up to 64, num_warps) run through the interpreter."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU runs the GPU blocks in the other tests")
    monkeypatch.setattr(K, "_on_gpu", lambda t: True)
    assert K._blocks(5, 70, on_gpu=True) == (4, 64)
    dims = (6, 5, 4)
    triples = random_triples(dims, 25, seed=1)
    for layout in LAYOUTS:
        out, ref = run_and_reference(layout, triples, dims, 5, 70, torch.float64, False)
        check(out, ref, torch.float64)


def test_rejects_bad_shapes():
    a = torch.randn(2, 3, 4, dtype=torch.float64)
    idx = torch.zeros(1, dtype=torch.int64)
    ptr = torch.zeros(3, dtype=torch.int64)
    val = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="channeled b"):
        K.sparse_bilinear(a, torch.randn(2, 3, dtype=torch.float64), ptr, idx, idx, idx, val,
                          2, out_channels=False)  # fmt: skip
    with pytest.raises(ValueError, match="b: expected"):
        K.sparse_bilinear(a, torch.randn(2, 3, 5), ptr, idx, idx, idx, val, 2, True)
    with pytest.raises(ValueError, match="row_ptr"):
        K.sparse_bilinear(a, torch.randn(2, 3, 4), ptr, idx, idx, idx, val, 5, True)


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tdn_core.backends import _sparse_triton_kernels as K

floats = ("a_ptr", "b_ptr", "val_ptr", "out_ptr")
for kern, variants in ((K._sparse_s_kernel, (True, False)), (K._sparse_r_kernel, (None,))):
    names = [p.name for p in kern.params if not p.is_constexpr]
    for channeled in variants:
        for acc in ("fp32", "fp64"):
            sig = {n: ("*" + acc if n in floats else "*i64") if n.endswith("_ptr") else "i32"
                   for n in names}
            const = dict(IS_FP64=acc == "fp64", BE=4, BC=64)
            if channeled is not None:
                const["B_CHANNELED"] = channeled
            sig.update(dict.fromkeys(const, "constexpr"))
            triton.compile(ASTSource(fn=kern, signature=sig, constexprs=const),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Without a GPU, at least lower both kernels to a Hopper binary (fp32 and fp64,
    channeled and channelless b, dynamic loop bounds): the interpreter alone would not
    catch a compile-only error."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("mode", ["uvu", "uuu"])
def test_the_sparse_backends_layouts_and_weights_run_in_triton(mode):
    """The sparse backend's own index lists (every derivative's, S and R layouts) and
    channel weights through the Triton path equal the PyTorch fallback."""
    from tdn_core.backends._sparse_contraction import (
        torch_sparse_bilinear,
        triton_sparse_bilinear,
    )

    tp = tdn_core.TensorProduct(2, 2, 2, 5, backend="sparse", mode=mode).double()
    g = torch.Generator().manual_seed(3)
    for T in tp.executor.contraction._family.values():
        d_out, da, db = T.dims
        a = torch.randn(6, da, 5, dtype=torch.float64, generator=g)
        b_shape = (6, db, 5) if T.b_channels else (6, db)
        b = torch.randn(*b_shape, dtype=torch.float64, generator=g)
        scale = torch.randn(6, 5, dtype=torch.float64, generator=g)
        layout, val = T.layout(torch.float64, torch.device("cpu"))
        args = (a, b, scale, layout, val, d_out, T.out_channels)
        ours, ref = triton_sparse_bilinear(*args), torch_sparse_bilinear(*args)
        assert float((ours - ref).norm() / ref.norm()) < 1e-12
