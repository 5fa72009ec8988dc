"""Times TDN's edge tensor product for every usable backend, side by side, in one run.

    python benchmarks/bench_tp.py                       # L = 1..6, E = 4000, C = 64, fp32
    python benchmarks/bench_tp.py --lmax 1 2 --edges 1000 --json out.json

Per backend and L: forward and forward+backward medians (ms, after warm-up; gradients
with respect to x, y and the weight), the speed-up over e3nn, and for CP backends the
fraction of this machine's fp32 matmul rate their forward reaches on the CP FLOP count
2E(d2 R + C(d1 R + d3 R + R)). The matmul rate is measured in the same run (a square
fp32 matmul), because these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from _timing import median_ms

import tdn_core
from tdn_core import TensorProduct
from tdn_core._io import atomic_write


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    ms = median_ms(lambda: a @ b, repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e9


def bench_one(name: str, L: int, edges: int, channels: int, dtype, repeats: int) -> dict:
    tp = TensorProduct(L, L, L, channels, backend=name).to(dtype)
    d = tdn_core.dim(L)
    x = torch.randn(edges, d, channels, dtype=dtype)
    y = torch.randn(edges, d, dtype=dtype)
    w = torch.randn(edges, channels, dtype=dtype)
    xg, yg, wg = (t.clone().requires_grad_(True) for t in (x, y, w))
    grad_out = torch.randn(edges, d, channels, dtype=dtype)

    def forward():
        with torch.no_grad():
            tp(x, y, w)

    def forward_backward():
        out = tp(xg, yg, wg)
        torch.autograd.grad(out, (xg, yg, wg), grad_out)

    # few repeats for slow backends: time is bounded by the slowest, not the count
    probe = median_ms(forward_backward, 1, warmup=1)
    reps = max(1, min(repeats, int(20_000 / max(probe, 1e-3))))
    row = {
        "backend": name,
        "L": L,
        "forward_ms": median_ms(forward, reps),
        "forward_backward_ms": median_ms(forward_backward, reps),
        "repeats": reps,
    }
    if tp.factors is not None:
        row["rank"] = tp.descriptor.rank
        row["rel_error"] = tp.factors.rel_error
        row["cp_gflop"] = tp.descriptor.flops("cp", edges) / 1e9
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lmax", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--edges", type=int, default=4000)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every usable one")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    available = tdn_core.available_backends()
    names = args.backends or [n for n, reason in available.items() if reason is None]
    for name, reason in available.items():
        if reason is not None and (args.backends is None or name in args.backends):
            print(f"skipped {reason}")
    gflops = matmul_gflops()
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"fp32 matmul {gflops:.0f} GFLOP/s"
    )
    print(f"E={args.edges} edges, C={args.channels} channels, {args.dtype}, medians in ms\n")

    rows = []
    header = (
        f"{'L':>2} {'backend':<12} {'fwd':>9} {'fwd+bwd':>9} {'x e3nn (fb)':>12} {'GEMM rate':>10}"
    )
    print(header)
    print("-" * len(header))
    for L in args.lmax:
        group = [bench_one(n, L, args.edges, args.channels, dtype, args.repeats) for n in names]
        base = next((r for r in group if r["backend"] == "e3nn"), None)
        for r in group:
            if base is not None:
                r["speedup_vs_e3nn_fb"] = base["forward_backward_ms"] / r["forward_backward_ms"]
                r["speedup_vs_e3nn_fwd"] = base["forward_ms"] / r["forward_ms"]
            if "cp_gflop" in r:
                r["fraction_of_matmul_rate"] = r["cp_gflop"] / (r["forward_ms"] * 1e-3) / gflops
            ratio = f"{r['speedup_vs_e3nn_fb']:.1f}x" if base is not None else "-"
            frac = f"{100 * r['fraction_of_matmul_rate']:.0f}%" if "cp_gflop" in r else "-"
            print(
                f"{L:>2} {r['backend']:<12} {r['forward_ms']:>9.2f} "
                f"{r['forward_backward_ms']:>9.2f} {ratio:>12} {frac:>10}"
            )
            rows.append(r)
        sys.stdout.flush()

    if args.json:
        payload = {
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "matmul_gflops": gflops,
            },
            "settings": vars(args),
            "results": rows,
        }
        text = json.dumps(payload, indent=1).encode()
        atomic_write(Path(args.json), lambda f: f.write(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
