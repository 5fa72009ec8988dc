"""The tables of docs/RESULTS.md, as Markdown, from the JSON the three claim scripts
wrote (docs/results/): nothing here measures anything.

    python benchmarks/claims/report.py > /tmp/tables.md     # also accuracy/accuracy.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def approximation() -> list[str]:
    data = _load(RESULTS / "approximation" / "approximation.json")
    if data is None:
        return ["(approximation.json missing: run benchmarks/claims/approximation.py)"]
    out = [
        "| L | d | 7L^2 | smallest rank with rel. error <= 1e-6 | / (L+1)^4 | exact rank |",
        "|---|---|---|---|---|---|",
    ]
    for L, r in data["per_lmax"].items():
        L = int(L)
        rank = r["rank_at_1e-6"]
        found = f"{rank}" if rank is not None else f"in ({r['fails_at']}, {r['reaches_at']}] (grid)"
        share = f"{rank / (L + 1) ** 4:.2f}" if rank is not None else "-"
        out.append(f"| {L} | {r['d']} | {7 * L * L} | {found} | {share} | {r['exact_rank']} |")
    out += [
        "",
        "| L | rank R | method | rel. error | bound | measured (max of "
        f"{data['meta']['samples']}) | measured / bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        # exact sets: the measurement is the Wigner matrices' round-off, not CP's error
        ratio = f"{r['measured'] / r['bound']:.2f}" if r["method"] == "als" else "(round-off)"
        out.append(
            f"| {r['lmax']} | {r['rank']} | {r['method']} | {r['rel_error']:.2e} | "
            f"{r['bound']:.2e} | {r['measured']:.2e} | {ratio} |"
        )
    return out


def cost() -> list[str]:
    data = _load(RESULTS / "cost" / "cost.json")
    if data is None:
        return ["(cost.json missing: run benchmarks/claims/cost.py)"]
    out = []
    for mode, r in data.items():
        s = r["settings"]
        names = list(r["backends"])
        Ls = r["backends"][names[0]]["L"]
        out += [
            f"**{mode}** (E = {s['edges']}, C = {s['channels']}, {s['dtype']}, "
            f"{r['machine']['threads']} thread(s)): forward+backward, median ms",
            "",
            "| backend | " + " | ".join(f"L={L}" for L in Ls) + " | slope fwd | slope fwd+bwd "
            "| FLOP model | its slope |",
            "|---|" + "---|" * (len(Ls) + 4),
        ]
        for name in names:
            b = r["backends"][name]
            cells = " | ".join(f"{t:.1f}" for t in b["forward_backward_ms"])
            out.append(
                f"| {name} | {cells} | {b['slope_forward']:.2f} | "
                f"{b['slope_forward_backward']:.2f} | {b['flop_model']} | "
                f"{b['slope_flop_model']:.2f} |"
            )
        out.append("")
    return out


def _run_dirs() -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """({model: its seed folders} on the embedded dataset, the same for QM9)."""
    runs: dict[str, list[Path]] = {}
    qm9: dict[str, list[Path]] = {}
    for d in sorted(p for p in (RESULTS / "accuracy").iterdir() if p.is_dir()):
        name = d.name.rsplit("-s", 1)[0]
        (qm9 if name.startswith("qm9-") else runs).setdefault(name, []).append(d)
    return runs, qm9


def _mae_cells(tests: list[dict]) -> str:
    """ "energy MAE (meV/atom) | force MAE | force RMSE (meV/Å) | worst atom (eV/Å)" over
    seeds, as table cells; "-" for the worst atom of runs made before it was recorded."""
    energy = _mean_sd([t["energy_mae_eV_per_atom"] for t in tests], 1e3)
    force = _mean_sd([t["force_mae_eV_per_A"] for t in tests], 1e3)
    rmse = _mean_sd([t["force_rmse_eV_per_A"] for t in tests], 1e3, 0)
    worst = [t.get("force_worst_atom_eV_per_A") for t in tests]
    worst_cell = "-" if None in worst else _mean_sd(worst, 1.0, 1)
    return f"{energy} | {force} | {rmse} | {worst_cell}"


def accuracy() -> list[str]:
    root = RESULTS / "accuracy"
    runs, qm9 = _run_dirs()
    speed = _load(root / "throughput.json") or {"models": {}}
    out = [
        "| model | seeds | parameters | test E MAE (meV/atom) | test F MAE (meV/Å) | "
        "test F RMSE (meV/Å) | test F worst atom (eV/Å) | train (min, 1 core) | "
        "inference (atoms/s, 1 core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ood_rows = []
    for model, dirs in runs.items():
        tests = [_load(d / "test.json")["splits"]["test"] for d in dirs]
        train_min = [_load(d / "timing.json")["train_s"] / 60 for d in dirs]
        sp = speed["models"].get(model, {})
        out.append(
            f"| {model} | {len(dirs)} | {sp.get('parameters', '-')} | {_mae_cells(tests)} | "
            f"{_mean_sd(train_min)} | " + (f"{sp['atoms_per_s']:.0f}" if sp else "-") + " |"
        )
        twins = [_load(d / "test_on_path_shared.json") for d in dirs]
        if all(twins):
            twin_cells = _mae_cells([t["splits"]["test"] for t in twins])
            twin = f"{model} weights run on path_shared"
            out.append(f"| {twin} | {len(dirs)} | (same) | {twin_cells} | - | - |")
        cells = []
        for tag in ("md17_ethanol", "md17_aspirin", "iso17"):
            ood = [_load(d / f"ood_{tag}.json")["splits"]["all"] for d in dirs]
            cells.append(_mean_sd([o["force_mae_eV_per_A"] for o in ood], 1e3, 0))
            cells.append(_mean_sd([o["energy_mae_debiased_eV_per_atom"] for o in ood], 1e3))
        ood_rows.append(f"| {model} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| model | ethanol F MAE (meV/Å) | ethanol E MAE, offset removed (meV/atom) | "
        "aspirin F | aspirin E | ISO17 F | ISO17 E |",
        "|---|---|---|---|---|---|---|",
        *ood_rows,
    ]
    if qm9:
        out += [
            "",
            "| model (QM9, energies only) | seeds | test E MAE (meV/atom) | test E MAE (meV) "
            "| train (min, 1 core) |",
            "|---|---|---|---|---|",
        ]
        for model, dirs in qm9.items():
            tests = [_load(d / "test.json")["splits"]["test"] for d in dirs]
            train_min = [_load(d / "timing.json")["train_s"] / 60 for d in dirs]
            out.append(
                f"| {model} | {len(dirs)} | "
                f"{_mean_sd([t['energy_mae_eV_per_atom'] for t in tests], 1e3)} | "
                f"{_mean_sd([t['energy_mae_eV'] for t in tests], 1e3, 0)} | "
                f"{_mean_sd(train_min)} |"
            )
    return out


def accuracy_plot(path: Path) -> None:
    """Test energy and force MAE per model: one dot per seed, a bar at the mean."""
    from tdn_cli._plots import _pyplot, _save

    runs = {
        model: [_load(d / "test.json")["splits"]["test"] for d in dirs]
        for model, dirs in _run_dirs()[0].items()
    }
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    keys = (("energy_mae_eV_per_atom", "energy MAE (meV/atom)"),
            ("force_mae_eV_per_A", "force MAE (meV/Å)"))  # fmt: skip
    for ax, (key, label) in zip(axes, keys, strict=True):
        for i, tests in enumerate(runs.values()):
            v = [1e3 * t[key] for t in tests]
            ax.bar(i, statistics.mean(v), color="0.85", edgecolor="0.4")
            ax.plot([i] * len(v), v, "o", color="C0")
        ax.set_xticks(range(len(runs)), list(runs), rotation=15)
        ax.set(ylabel=label, title=f"test molecules: {label.split(' (')[0]}")
    fig.tight_layout()
    _save(fig, path)


def main() -> int:
    for title, part in (
        ("Approximation", approximation),
        ("Cost", cost),
        ("Accuracy", accuracy),
    ):
        print(f"## {title}\n")
        print("\n".join(part()))
        print()
    accuracy_plot(RESULTS / "accuracy" / "accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
