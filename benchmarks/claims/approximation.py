"""Claim 1 (docs/RESULTS.md): CP products approximate the CG product with a bounded
equivariance error.

For L = 1..6 (l_in = l_sh = l_out = L, SO3) and ranks from 7L up to the exact rank:
the CP relative error ||M - M_R|| / ||M||, the certified bound 2 ||E_(3)||_2, and the
measured equivariance error, the max over ``--samples`` random rotations and Gaussian
inputs of ||D m_R(x, y) - m_R(Dx, Dy)|| / (||x|| ||y||), in float64; and the smallest
rank whose fit reaches rel_error <= 1e-6 (``tdn_core.cp_factors(..., tol=1e-6)``) for
L <= ``--search-up-to`` (6: every degree; above it the rank grid brackets it).

    python benchmarks/claims/approximation.py            # about an hour on one core
    python benchmarks/claims/approximation.py --search-up-to 5   # ~35 min: L = 6 bracketed
    python benchmarks/claims/approximation.py --lmax 6   # one degree (merged into the JSON)

Writes docs/results/approximation/approximation.json and approximation.png. Fits go to
the user cache ($TDN_CACHE_DIR), so a second run only re-measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import tdn_core
from tdn_core import cp_factors, resolve_rank
from tdn_core.testing import random_rotation, wigner_D

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "results" / "approximation"
TOL = 1e-6


def measured_error(f: tdn_core.CPFactors, samples: int, seed: int) -> float:
    """max over samples of ||D m_R(x, y) - m_R(D x, D y)|| / (||x|| ||y||), float64."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(samples):
        R = random_rotation(generator=g)
        D = wigner_D(f.lmax_in, R)  # l_in = l_sh = l_out here: one D for all three
        x, y = torch.randn(2, f.dims[0], dtype=torch.float64, generator=g)

        def m(a, b):
            return f.C @ ((f.A.T @ a) * (f.B.T @ b))

        err = torch.linalg.norm(D @ m(x, y) - m(D @ x, D @ y)) / (x.norm() * y.norm())
        worst = max(worst, float(err))
    return worst


def rank_grid(L: int, exact: int, top: int, tol_rank: int | None) -> list[int]:
    """7L, 7L^2, the powers of two between 7L and ``top``, the exact rank, and where it
    was searched the tol rank and its neighbour below (else 2 x 7L^2 and ``top``)."""
    ranks = {7 * L, 7 * L * L, exact}
    if tol_rank is not None:
        ranks |= {tol_rank, tol_rank - 1}
    else:
        ranks |= {2 * 7 * L * L, top}
    p = 1
    while p <= top:
        if p >= 7 * L:
            ranks.add(p)
        p *= 2
    return sorted(r for r in ranks if 1 <= r <= exact)


def study(L: int, samples: int, search: bool) -> tuple[dict, list[dict]]:
    """One degree: the tol search (if ``search``) and the rows of the rank grid."""
    exact = resolve_rank("full", L, L, L)
    info = {"d": (L + 1) ** 2, "exact_rank": exact, "rank_at_1e-6": None, "search_s": None}
    if search:
        t0 = time.perf_counter()
        info["rank_at_1e-6"] = cp_factors(L, L, L, tol=TOL).rank
        info["search_s"] = time.perf_counter() - t0
        print(f"L={L}: smallest rank with rel_error <= {TOL:g}: {info['rank_at_1e-6']}")
        top = 2 * info["rank_at_1e-6"]
    else:
        # no search: the galloping points 2 and 4 x 7L^2 bracket the answer instead
        top = 4 * 7 * L * L
    rows = []
    for R in tqdm(rank_grid(L, exact, top, info["rank_at_1e-6"]), desc=f"L={L}", file=sys.stderr):
        f = cp_factors(L, L, L, rank=R)
        rows.append(
            {
                "lmax": L,
                "rank": R,
                "method": f.method,
                "rel_error": f.rel_error,
                "bound": f.bound,
                "measured": measured_error(f, samples, seed=1000 * L + R),
                "fit_s": f.fit_seconds,
            }
        )
    if not search:  # the bracket the grid gives: largest failing, smallest passing rank
        info["fails_at"] = max((r["rank"] for r in rows if r["rel_error"] > TOL), default=None)
        info["reaches_at"] = min(r["rank"] for r in rows if r["rel_error"] <= TOL)
    return info, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lmax", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument(
        "--search-up-to",
        type=int,
        default=6,
        help="search the 1e-6 rank for L up to this; above it only the grid brackets it "
        "(the L = 6 search fits ~10 ranks of 250-1000: 26 min on one Zen 5 core)",
    )
    p.add_argument("--samples", type=int, default=100, help="rotations and inputs per set")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from tdn_cli._util import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "approximation.json"
    # merge into what earlier runs stored, degree by degree, so a kill loses one L at most
    data = json.loads(path.read_text()) if path.exists() else {"per_lmax": {}, "rows": []}
    data["meta"] = {"samples": args.samples, "tol": TOL, "torch": torch.__version__}
    for L in args.lmax:
        info, rows = study(L, args.samples, search=L <= args.search_up_to)
        data["per_lmax"][str(L)] = info
        data["per_lmax"] = dict(sorted(data["per_lmax"].items(), key=lambda kv: int(kv[0])))
        data["rows"] = sorted(
            [r for r in data["rows"] if r["lmax"] != L] + rows, key=lambda r: (r["lmax"], r["rank"])
        )
        write_json(path, data)
    plot(data["rows"], data["per_lmax"], args.out / "approximation.png")
    print(f"wrote {path} and approximation.png")
    return 0


def plot(rows: list[dict], per_l: dict, path: Path) -> None:
    from tdn_cli._plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = 1e-17  # exact sets sit at round-off; keep them on the log axis
    for L in sorted(int(k) for k in per_l):
        pts = [r for r in rows if r["lmax"] == L]
        ranks = [r["rank"] for r in pts]
        (line,) = axes[0].plot(ranks, [max(r["bound"], floor) for r in pts], "o-", label=f"L={L}")
        axes[0].plot(ranks, [max(r["measured"], floor) for r in pts], "x--", color=line.get_color())
        axes[1].plot(ranks, [max(r["rel_error"], floor) for r in pts], "o-", label=f"L={L}")
        axes[1].axvline(7 * L * L, color=line.get_color(), lw=0.6, ls=":")
    axes[1].axhline(TOL, color="k", lw=0.8, ls="--")
    labels = (
        ("equivariance error", "bound 2||E_(3)||_2 (o) and measured max (x)"),
        ("||M - M_R|| / ||M||", "relative error (dotted: 7L^2; dashed: 1e-6)"),
    )
    for ax, (ylabel, title) in zip(axes, labels, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="rank R", ylabel=ylabel, title=title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


if __name__ == "__main__":
    sys.exit(main())
