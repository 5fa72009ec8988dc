"""Where does CP win? Every backend against the strongest exact one, L = 1..8.

Runs ``tdn bench --backend auto`` (every usable backend, then what backend='auto' picks)
for both modes and each channel count, one thread pinned to one core (two runs at a
time, one per core) and with both cores, then, per L, sets the fastest exact backend's
forward+backward next to CP's:

- CP at the paper's rank 7L^2 (measured: cp_eager);
- CP at the smallest rank reaching 1e-6 relative error (section 1 of RESULTS: 8, 31, 94,
  224, 462, 851 for L = 1..6; beyond, 0.36 (L+1)^4, the fit of those). Its time is the
  7L^2 time scaled by the rank ratio in uuu, where cp_eager's cost is linear in R, and
  the 7L^2 time itself in uvu, where cp_eager runs the dense order whose cost does not
  depend on R (M_R precontracted like M).

and the FLOP-model crossover beyond L = 8: multiply-adds per edge and channel of the
sparse product (nnz(M) + the d1 d3 (k, i) groups, from the CG tensor itself) against
CP's (d1 + d2 + d3) R + R, for L up to ``--model-lmax``.

    python benchmarks/claims/crossover.py                   # runs, then the report
    python benchmarks/claims/crossover.py --analyze-only    # report from the stored JSON

Writes docs/results/crossover/<mode>_c<C>_t<threads>.json (tdn bench's own output) and
crossover.json (the comparison). Runs whose JSON exists are skipped: a killed run
resumes by running the command again.
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

import tdn_core
from tdn_cli._util import write_json

OUT = ROOT / "docs" / "results" / "crossover"
TDN = str(Path(sys.executable).with_name("tdn"))
#: smallest ranks reaching 1e-6 (docs/RESULTS.md section 1, measured)
TOL_RANK = {1: 8, 2: 31, 3: 94, 4: 224, 5: 462, 6: 851}
CP = ("cp_eager",)


def tol_rank(L: int) -> tuple[int, bool]:
    """(rank reaching 1e-6, measured?) — beyond the search, 0.36 (L+1)^4."""
    if L in TOL_RANK:
        return TOL_RANK[L], True
    return round(0.36 * (L + 1) ** 4), False


def run_name(mode: str, channels: int, threads: int) -> str:
    return f"{mode}_c{channels}_t{threads}"


def bench_command(args, mode: str, channels: int, threads: int, path: Path) -> list[str]:
    edges = args.edges if threads == 1 else args.edges_two_cores
    cmd = [TDN, "bench", "--backend", "auto", "--mode", mode, "--channels", str(channels)]
    cmd += ["--edges", str(edges), "--repeats", str(args.repeats)]
    cmd += ["--max-seconds", str(args.max_seconds), "--json", repo_relative(path), "--lmax"]
    return cmd + [str(L) for L in args.lmax]


def run_all(args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for threads in args.threads:
        runs = [
            (mode, c)
            for mode in args.modes
            for c in (args.channels if threads == 1 else args.channels_two_cores)
        ]
        todo = [r for r in runs if not (OUT / f"{run_name(*r, threads)}.json").exists()]
        # one thread: one run per core, side by side; two threads: one run at a time
        cores = [[0], [1]] if threads == 1 else [[0, 1]]
        while todo:
            batch, todo = todo[: len(cores)], todo[len(cores) :]
            procs = []
            for (mode, c), core in zip(batch, cores, strict=False):
                name = run_name(mode, c, threads)
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                cmd = ["taskset", "-c", ",".join(map(str, core))]
                cmd += bench_command(args, mode, c, threads, OUT / f"{name}.json")
                log = open(OUT / f"{name}.log", "w")
                print("running", " ".join(cmd[3:]), flush=True)
                procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
            for proc, log in procs:
                proc.wait()
                log.close()
                if proc.returncode not in (0, 1):  # 1: an equivariance warning, reported
                    raise SystemExit(f"tdn bench failed ({proc.returncode}); see {log.name}")


def compare(bench: dict) -> list[dict]:
    """Per L: the fastest exact backend, CP at 7L^2 and at the 1e-6 rank (ms, fwd+bwd)."""
    mode = bench["settings"]["mode"]
    rows = []
    for L in sorted({r["L"] for r in bench["results"]}):
        at = {r["backend"]: r for r in bench["results"] if r["L"] == L and "forward_ms" in r}
        exact = {n: r for n, r in at.items() if r["rank"] is None}
        best = min(exact, key=lambda n: exact[n]["forward_backward_ms"]) if exact else None
        cp = next((at[n] for n in CP if n in at), None)
        row = {"L": L, "fastest_exact": best, "timed": sorted(at)}
        if best is not None:
            row["fastest_exact_ms"] = exact[best]["forward_backward_ms"]
            row["fastest_exact_double_backward_ms"] = exact[best].get("double_backward_ms")
        if cp is not None:
            R, measured = tol_rank(L)
            scale = R / cp["rank"] if mode == "uuu" else 1.0
            row.update(
                cp_rank=cp["rank"],
                cp_ms=cp["forward_backward_ms"],
                cp_tol_rank=R,
                cp_tol_rank_measured=measured,
                cp_tol_ms=cp["forward_backward_ms"] * scale,
            )
            if best is not None:
                row["cp_speedup"] = row["fastest_exact_ms"] / row["cp_ms"]
                row["cp_tol_speedup"] = row["fastest_exact_ms"] / row["cp_tol_ms"]
        for r in bench.get("auto", []):
            if r["L"] == L:
                row["auto"] = r["chose"]
                row["auto_within_10_percent"] = r["within_10_percent"]
        rows.append(row)
    return rows


def flop_model(lmax: int) -> list[dict]:
    """Multiply-adds per edge and channel: sparse uuu (nnz + groups) against CP."""
    out = []
    for L in range(1, lmax + 1):
        nnz = int((tdn_core.cg_tensor(L, L, L) != 0).sum())
        d = (L + 1) ** 2
        R, measured = tol_rank(L)
        sparse = nnz + d * d
        out.append(
            {
                "L": L,
                "nnz": nnz,
                "sparse": sparse,
                "cp_7L2": 3 * d * 7 * L * L + 7 * L * L,
                "cp_tol": 3 * d * R + R,
                "cp_tol_rank_measured": measured,
            }
        )
    return out


def crossover(model: list[dict], key: str) -> float | None:
    """First L where CP (``key``) needs fewer multiply-adds than sparse; beyond the
    table, from power laws fitted to its last four rows."""
    for m in model:
        if m[key] < m["sparse"]:
            return float(m["L"])
    tail = model[-4:]
    L = np.log([m["L"] for m in tail])
    a = np.polyfit(L, np.log([m["sparse"] for m in tail]), 1)
    b = np.polyfit(L, np.log([m[key] for m in tail]), 1)
    if a[0] <= b[0]:
        return None  # sparse grows no faster: never
    return float(np.exp((b[1] - a[1]) / (a[0] - b[0])))


def analyze(args) -> dict:
    result: dict = {"runs": {}, "flop_model": flop_model(args.model_lmax)}
    for path in sorted(OUT.glob("*_c*_t*.json")):
        bench = json.loads(path.read_text())
        result["runs"][path.stem] = {
            "machine": bench["machine"],
            "settings": {k: bench["settings"][k] for k in ("mode", "edges", "channels")},
            "rows": compare(bench),
        }
    result["flop_crossover"] = {
        key: crossover(result["flop_model"], key) for key in ("cp_7L2", "cp_tol")
    }
    write_json(OUT / "crossover.json", result)
    return result


def report(result: dict) -> str:
    lines = []
    for run in result["runs"].values():
        s, m = run["settings"], run["machine"]
        lines.append(
            f"\n**{s['mode']}, C = {s['channels']}, {m['threads']} thread(s)** "
            f"(E = {s['edges']}, fp32, {m['processor']}): forward+backward ms\n"
        )
        lines.append(
            "| L | fastest exact | ms | CP 7L^2 ms | CP speed-up | CP 1e-6 rank | ms | "
            "CP speed-up | auto picks |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in run["rows"]:
            star = "" if r.get("cp_tol_rank_measured", True) else "*"
            lines.append(
                f"| {r['L']} | {r['fastest_exact']} | {_f(r.get('fastest_exact_ms'))} | "
                f"{_f(r.get('cp_ms'))} | {_x(r.get('cp_speedup'))} | "
                f"{r.get('cp_tol_rank', '-')}{star} | {_f(r.get('cp_tol_ms'))} | "
                f"{_x(r.get('cp_tol_speedup'))} | {r.get('auto', '-')} |"
            )
    lines.append("\nFLOP model, multiply-adds per edge and channel (uuu):\n")
    lines.append("| L | nnz(M) | sparse | CP 7L^2 | CP 1e-6 rank |")
    lines.append("|---|---|---|---|---|")
    for m in result["flop_model"]:
        star = "" if m["cp_tol_rank_measured"] else "*"
        lines.append(
            f"| {m['L']} | {m['nnz']:,} | {m['sparse']:,} | {m['cp_7L2']:,} | "
            f"{m['cp_tol']:,}{star} |"
        )
    lines.append(f"\nFLOP crossover (L): {result['flop_crossover']}")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python benchmarks/claims/crossover.py --modes uuu --channels 64",
    )
    parser.add_argument("--modes", nargs="+", default=["uvu", "uuu"])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument(
        "--channels-two-cores", type=int, nargs="+", default=[64], help="C of the 2-core runs"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lmax", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--edges", type=int, default=1000, help="E of the 1-thread runs")
    parser.add_argument("--edges-two-cores", type=int, default=4000, help="E of the 2-core runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--model-lmax", type=int, default=12, help="FLOP model up to this L")
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args()
    if not args.analyze_only:
        run_all(args)
    print(report(analyze(args)))


if __name__ == "__main__":
    main()
