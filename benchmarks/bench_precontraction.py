"""uvu precontraction K = M . y from M's nonzeros, against the dense GEMM path_shared runs.

    python benchmarks/bench_precontraction.py --json benchmarks/results/precontraction.json

path_shared builds K[e] [d1, d3] for every edge as one GEMM, y [E, d2] @ M [d2, d1 d3]:
d1 d2 d3 multiply-adds per edge, where nnz(M) would do (2,052 of 15,625 at L = 4). This
times, per L, that GEMM against the two ways to use the nonzeros in PyTorch ops: a
scatter (``index_add_``) of the nonzero products, and ``torch.sparse.mm`` with M as a
CSR matrix. path_shared keeps whichever is faster (the README reports it). The sparse
backend builds K from the nonzeros inside its fused C++ kernel instead. cp_eager's dense
order precontracts M_R, which is dense (d^3 nonzeros), so it has nothing to gain.
Medians of interleaved calls (ms); E = 4000 edges, fp32.
"""

from __future__ import annotations

import argparse
import warnings

import torch

import tdn_core
from tdn_cli._timing import interleaved_medians_ms
from tdn_cli._util import cpu_name, write_json
from tdn_core.backends.path_shared import unfold_for_precontraction


def time_precontraction(L: int, edges: int, repeats: int) -> dict:
    """Medians (ms) of the three ways to build K for one L, and nnz(M)."""
    mat = unfold_for_precontraction(tdn_core.cg_tensor(L, L, L)).float()  # [d2, d1 d3]
    y = torch.randn(edges, mat.shape[0])
    j, col = mat.nonzero().unbind(1)
    val = mat[j, col]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        csr = mat.t().contiguous().to_sparse_csr()
    dense, scatter, sparse_mm = interleaved_medians_ms(
        [
            lambda: y @ mat,
            lambda: y.new_zeros(edges, mat.shape[1]).index_add_(1, col, y[:, j] * val),
            lambda: torch.sparse.mm(csr, y.t()).t().contiguous(),
        ],
        repeats,
    )
    return {
        "lmax": L,
        "nnz": len(val),
        "dense_entries": mat.numel(),
        "dense_gemm_ms": dense,
        "index_add_ms": scatter,
        "sparse_mm_ms": sparse_mm,
        "fastest": min(
            ("dense_gemm", dense), ("index_add", scatter), ("sparse_mm", sparse_mm),
            key=lambda kv: kv[1],
        )[0],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/bench_precontraction.py --lmax 1 2 3 4",
    )
    parser.add_argument("--lmax", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--edges", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'L':>2} {'nnz':>6} {'dense GEMM':>11} {'index_add':>10} {'sparse.mm':>10}  fastest")
    for L in args.lmax:
        r = time_precontraction(L, args.edges, args.repeats)
        rows.append(r)
        print(
            f"{L:>2} {r['nnz']:>6} {r['dense_gemm_ms']:>11.2f} {r['index_add_ms']:>10.2f} "
            f"{r['sparse_mm_ms']:>10.2f}  {r['fastest']}"
        )
    if args.json:
        machine = {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        write_json(args.json, {"machine": machine, "edges": args.edges, "rows": rows})


if __name__ == "__main__":
    main()
