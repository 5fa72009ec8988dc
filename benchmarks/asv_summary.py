"""Markdown tables of stored asv results (.asv/results) for docs/ASV.md.

    python benchmarks/asv_summary.py --machine tdn-dev-cpu > table.md

The newest fully benchmarked commit's numbers, then a few headline numbers for every commit with
results. Reads asv's own results files through asv's API; runs nothing.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
from pathlib import Path

from asv.config import Config
from asv.results import iter_results_for_machine

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["cg", "path_shared", "cp_eager", "cp_triton", "e3nn", "cueq"]
LS = [1, 2, 3, 4, 5, 6]


def values(result, key: str) -> dict:
    """{param tuple: value} of one benchmark (params as the strings asv stores)."""
    if key not in result.get_all_result_keys():
        return {}
    params = result.get_result_params(key)
    vals = result.get_result_value(key, params)
    return dict(zip(itertools.product(*params), vals, strict=True))


def get(table: dict, *params):
    """One value; None when missing, skipped (asv stores NaN) or failed."""
    v = table.get(tuple(repr(p) for p in params))
    return None if v is None or math.isnan(v) else v


def ms(v) -> str:
    if v is None:
        return "-"
    v *= 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def sci(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()


def subject(commit: str) -> str:
    line = git("log", "-1", "--format=%h %cs %s", commit) or commit[:8]
    return line if len(line) <= 70 else line[:67] + "..."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", required=True)
    args = ap.parse_args()
    conf = Config.load(str(ROOT / "asv.conf.json"))
    # history order, oldest first: commits that land together share one commit date
    position = {
        h: i for i, h in enumerate(git("rev-list", "--topo-order", "--reverse", "HEAD").split())
    }
    results = sorted(
        iter_results_for_machine(conf.results_dir, args.machine),
        key=lambda r: (position.get(r.commit_hash, -1), r.date),
    )
    if not results:
        raise SystemExit(f"no results for machine {args.machine!r} in {conf.results_dir}")
    # the newest commit that ran the whole suite (a history run may select a subset)
    full = [
        r for r in results if "model.TDNAccuracy.track_val_force_mae" in r.get_all_result_keys()
    ]
    latest = (full or results)[-1]
    pre = "edge_product.EdgeProduct"
    t = {
        k: values(latest, f"{pre}Time.time_{k}")
        for k in ("forward", "forward_backward", "double_backward")
    }
    mem = values(latest, f"{pre}PeakMem.peakmem_double_backward")
    shown = [b for b in BACKENDS if any(get(t["forward"], b, L) is not None for L in LS)]
    print(f"Full suite, newest commit that ran it: `{subject(latest.commit_hash)}`\n")
    print("Edge product, ms (median): forward / forward+backward / double backward\n")
    print("| L | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for L in LS:
        cells = [" / ".join(ms(get(t[k], b, L)) for k in t) for b in shown]
        print(f"| {L} | " + " | ".join(cells) + " |")
    print("\nPeak RSS of the double-backward benchmark process, MB\n")
    print("| L | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for L in LS:
        cells = []
        for b in shown:
            v = get(mem, b, L)
            cells.append("-" if v is None else f"{v / 2**20:.0f}")
        print(f"| {L} | " + " | ".join(cells) + " |")

    rank = values(latest, "accuracy.CPFactors.track_rank")
    rel = values(latest, "accuracy.CPFactors.track_rel_error")
    bound = values(latest, "accuracy.CPFactors.track_bound")
    equi = values(latest, "accuracy.Equivariance.track_equivariance_error")
    print("\nCP factor sets and measured equivariance error (float64)\n")
    print("| L | rank | rel. error | bound | " + " | ".join(f"equiv. {b}" for b in shown) + " |")
    print("|---|---|---|---|" + "---|" * len(shown))
    for L in LS:
        r = get(rank, L)
        row = [str(L), "-" if r is None else f"{r:.0f}", sci(get(rel, L)), sci(get(bound, L))]
        row += [sci(get(equi, b, L)) for b in shown]
        print("| " + " | ".join(row) + " |")

    step = values(latest, "model.TDNStep.time_train_step")
    infer = values(latest, "model.TDNStep.time_inference")
    emae = values(latest, "model.TDNAccuracy.track_val_energy_mae")
    fmae = values(latest, "model.TDNAccuracy.track_val_force_mae")
    print("\nSmall TDN on the embedded dataset\n")
    print(
        "| backend | train step, ms | inference, ms | val energy MAE, meV/atom"
        " | val force MAE, meV/Å |"
    )
    print("|---|---|---|---|---|")
    for b in ("cp_eager", "path_shared"):
        e, f = get(emae, b), get(fmae, b)
        print(
            f"| {b} | {ms(get(step, b))} | {ms(get(infer, b))} | "
            f"{'-' if e is None else f'{e * 1e3:.1f}'} | {'-' if f is None else f'{f * 1e3:.1f}'} |"
        )

    print("\nHistory: headline numbers of every commit with results (oldest first)\n")
    print(
        "| commit | L=4 fwd+bwd ms: cp_eager / path_shared / e3nn | L=4 double bwd ms: cp_eager"
        " | TDN step ms: cp_eager / path_shared | val force MAE meV/Å: cp_eager / path_shared |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        fb = values(r, f"{pre}Time.time_forward_backward")
        db = values(r, f"{pre}Time.time_double_backward")
        st = values(r, "model.TDNStep.time_train_step")
        fm = values(r, "model.TDNAccuracy.track_val_force_mae")

        def mev(v):
            return "-" if v is None else f"{v * 1e3:.1f}"

        print(
            f"| `{subject(r.commit_hash)}` | "
            + " / ".join(ms(get(fb, b, 4)) for b in ("cp_eager", "path_shared", "e3nn"))
            + f" | {ms(get(db, 'cp_eager', 4))} | "
            + " / ".join(ms(get(st, b)) for b in ("cp_eager", "path_shared"))
            + " | "
            + " / ".join(mev(get(fm, b)) for b in ("cp_eager", "path_shared"))
            + " |"
        )


if __name__ == "__main__":
    main()
