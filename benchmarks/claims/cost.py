"""Claim 2 (docs/RESULTS.md): CP cuts the cost of the product from O(L^6) to O(L^4).

Times every usable backend with ``tdn bench`` for L = 1..6 in both modes: ``uvu``
(TDN's edge product: C-channel x single-channel harmonics, where the exact product can
be precontracted) and ``uuu`` (both inputs C channels: no precontraction), then fits
the slope of log(time) against log(L) over L = 2..6 for each backend and sets it next
to the slope of the FLOP model (``TPDescriptor.flops``: per-path, path_shared, CP).

    python benchmarks/claims/cost.py                       # runs tdn bench twice, then fits
    python benchmarks/claims/cost.py --analyze-only        # refit the stored JSON

Writes docs/results/cost/{uvu,uuu}.json (tdn bench's own output), cost.json (slopes)
and cost.png. Pass --threads to pin torch's thread count (default 1: one core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from _repo import ROOT, repo_relative

from tdn_core import TensorProduct

OUT = ROOT / "docs" / "results" / "cost"
TDN = str(Path(sys.executable).with_name("tdn"))
LMAX = [1, 2, 3, 4, 5, 6]
FIT_FROM = 2  # L = 1 is call-overhead bound on a CPU: slopes from L = 2 up
#: which FLOP model each backend executes
MODEL_OF = {
    "cg": "per_path",
    "e3nn": "per_path",
    "cueq": "per_path",
    "path_shared": "path_shared",
    "cp_eager": "cp",
    "cp_triton": "cp",
}


def slope(L: list[int], t: list[float]) -> float:
    """Least-squares slope of log t against log L over L >= FIT_FROM."""
    keep = [(a, b) for a, b in zip(L, t, strict=True) if a >= FIT_FROM and b > 0]
    x, y = np.log([a for a, _ in keep]), np.log([b for _, b in keep])
    return float(np.polyfit(x, y, 1)[0])


def flop_model(mode: str, edges: int, channels: int) -> dict[str, list[float]]:
    """GFLOP of one forward pass per FLOP model, for L in LMAX."""
    out: dict[str, list[float]] = {"per_path": [], "path_shared": [], "cp": []}
    for L in LMAX:
        desc = TensorProduct(L, L, L, channels, backend="cg", mode=mode).descriptor
        cp = TensorProduct(L, L, L, channels, backend="cp_eager", mode=mode).descriptor
        out["per_path"].append(desc.flops("per_path", edges) / 1e9)
        out["path_shared"].append(desc.flops("path_shared", edges) / 1e9)
        out["cp"].append(cp.flops("cp", edges) / 1e9)
    return out


def analyze(out: Path) -> dict:
    result = {}
    for mode in ("uvu", "uuu"):
        bench = json.loads((out / f"{mode}.json").read_text())
        s = bench["settings"]
        model = flop_model(mode, s["edges"], s["channels"])
        backends = {}
        for name in dict.fromkeys(r["backend"] for r in bench["results"]):
            rows = sorted(
                (r for r in bench["results"] if r["backend"] == name), key=lambda r: r["L"]
            )
            L = [r["L"] for r in rows]
            fwd = [r["forward_ms"] for r in rows]
            fb = [r["forward_backward_ms"] for r in rows]
            # cp_eager's dense order (rows since 2026-12-02) runs path_shared's cost model
            dense = any(r.get("order") == "dense" for r in rows)
            executed = "path_shared" if dense else MODEL_OF[name]
            flops = model[executed]
            backends[name] = {
                "L": L,
                "forward_ms": fwd,
                "forward_backward_ms": fb,
                "slope_forward": slope(L, fwd),
                "slope_forward_backward": slope(L, fb),
                "flop_model": executed,
                "slope_flop_model": slope(LMAX, flops),
                "gflop_forward": flops,
            }
        result[mode] = {"machine": bench["machine"], "settings": s, "backends": backends}
    return result


def plot(result: dict, path: Path) -> None:
    from tdn_cli._plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, mode in zip(axes, ("uvu", "uuu"), strict=True):
        for name, b in result[mode]["backends"].items():
            ax.plot(
                b["L"],
                b["forward_backward_ms"],
                "o-",
                label=f"{name} (slope {b['slope_forward_backward']:.1f})",
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="L",
            ylabel="forward+backward (ms)",
            title=f"{mode}: E={result[mode]['settings']['edges']}, "
            f"C={result[mode]['settings']['channels']}",
        )
        ax.set_xticks(LMAX, [str(L) for L in LMAX])
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edges", type=int, default=1000)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--analyze-only", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from tdn_cli._util import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    if not args.analyze_only:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        for mode in ("uvu", "uuu"):
            cmd = [
                TDN,
                "bench",
                "--backend",
                "all",
                "--mode",
                mode,
                "--lmax",
                *map(str, LMAX),
                "--edges",
                str(args.edges),
                "--channels",
                str(args.channels),
                "--repeats",
                str(args.repeats),
                "--json",
                repo_relative(args.out / f"{mode}.json"),
            ]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    result = analyze(args.out)
    write_json(args.out / "cost.json", result)
    plot(result, args.out / "cost.png")
    for mode, r in result.items():
        print(f"\n{mode}: slope of log time vs log L (L = {FIT_FROM}..6)")
        print(f"{'backend':<12} {'fwd':>6} {'fwd+bwd':>8} {'FLOP model':>16}")
        for name, b in r["backends"].items():
            print(
                f"{name:<12} {b['slope_forward']:>6.2f} {b['slope_forward_backward']:>8.2f} "
                f"{b['flop_model'] + ' ' + format(b['slope_flop_model'], '.2f'):>16}"
            )
    print(f"\nwrote {args.out}/cost.json and cost.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
