"""The tables and the plot of RESULTS "TDN against MACE and NequIP", from the committed JSON.

Reads ``docs/results/peers/<model>-<budget>-s<seed>/`` (timing.json, scores/*.json, as
written by train.py), prints the markdown tables (mean ± std over the seeds present),
writes ``docs/results/peers/peers.json`` (the same numbers) and
``docs/results/peers/error_vs_time.png`` (test force MAE against training time, one
line per model through its budgets).

    python benchmarks/peers/report.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "results" / "peers"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import SETS  # noqa: E402

from tdn_cli._util import write_json  # noqa: E402

#: (label, metric key, scale to the printed unit)
COLUMNS = [
    ("E MAE meV/atom", "energy_mae_eV_per_atom", 1e3),
    ("E RMSE meV/atom", "energy_rmse_eV_per_atom", 1e3),
    # MACE's one-epoch energies are off by a constant (its loss weighs forces 100x)
    ("E MAE debiased meV/atom", "energy_mae_debiased_eV_per_atom", 1e3),
    ("F MAE meV/Å", "force_mae_eV_per_A", 1e3),
    ("F RMSE meV/Å", "force_rmse_eV_per_A", 1e3),
    ("F p99.9 atom eV/Å", "force_atom_p999_eV_per_A", 1.0),
    ("F worst atom eV/Å", "force_worst_atom_eV_per_A", 1.0),
]
OOD_COLUMNS = [
    ("E MAE debiased meV/atom", "energy_mae_debiased_eV_per_atom", 1e3),
    ("F MAE meV/Å", "force_mae_eV_per_A", 1e3),
    ("F worst atom eV/Å", "force_worst_atom_eV_per_A", 1.0),
]


def collect() -> dict[tuple[str, str], list[dict]]:
    """{(model, budget): [one dict per seed: timing + {set: metrics}]}."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for d in sorted(OUT.glob("*-s[0-9]*")):
        if not (d / "timing.json").exists() or not (d / "scores").is_dir():
            continue
        model_budget, seed = d.name.rsplit("-s", 1)
        model, budget = model_budget.rsplit("-", 1)
        run = json.loads((d / "timing.json").read_text())
        run["seed"] = int(seed)
        run["scores"] = {s: json.loads((d / "scores" / f"{s}.json").read_text()) for s in SETS
                         if (d / "scores" / f"{s}.json").exists()}  # fmt: skip
        runs[(model, budget)].append(run)
    return dict(runs)


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _digits(scale: float) -> int:
    return 1 if scale == 1e3 else 3


def summarize(runs: dict) -> dict:
    rows = []
    for (model, budget), seeds in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        test = [r["scores"]["test"] for r in seeds if "test" in r["scores"]]
        if not test:
            continue
        row = {
            "model": model,
            "budget": budget,
            "seeds": [r["seed"] for r in seeds],
            "package": test[0]["package"],
            "parameters": test[0]["parameters"],
            "epochs": seeds[0]["epochs"],
            "train_min": [r["train_s"] / 60 for r in seeds],
            # resumed after a kill: its time counts only the part after it
            "resumed": any(r.get("resumed") for r in seeds),
            "cpu": seeds[0].get("cpu"),
            "test": {key: [t[key] * s for t in test] for _, key, s in COLUMNS},
            # how hard the worst atom's label is: a close contact or a distorted start
            "worst_atom_ref_eV_per_A": [t["force_worst_atom"]["ref_norm_eV_per_A"] for t in test],
            "ood": {
                name: {
                    key: [r["scores"][name][key] * s for r in seeds] for _, key, s in OOD_COLUMNS
                }
                for name in SETS[1:]
                if all(name in r["scores"] for r in seeds)
            },
        }
        rows.append(row)
    return {"rows": rows}


def markdown(summary: dict) -> str:
    lines = [
        "| model | package | parameters | budget | epochs | train min | "
        + " | ".join(label for label, _, _ in COLUMNS)
        + " | its reference |F| eV/Å |",
        "|" + "---|" * (7 + len(COLUMNS)),
    ]
    for r in summary["rows"]:
        cells = [_cell(r["test"][key], _digits(s)) for _, key, s in COLUMNS]
        lines.append(
            f"| {r['model']} | {r['package']} | {r['parameters']:,} | {r['budget']} | "
            f"{r['epochs']} | {_cell(r['train_min'], 1)}{' †' if r['resumed'] else ''} | "
            + " | ".join(cells)
            + " | "
            f"{_cell(r['worst_atom_ref_eV_per_A'], 1)} |"
        )
    if any(r["resumed"] for r in summary["rows"]):
        lines += ["", "† resumed after a kill: the time counts only the part after it."]
    lines += ["", "Out of distribution (DFT fixtures; energies with their offset removed):", ""]
    lines.append(
        "| model | budget | set | " + " | ".join(label for label, _, _ in OOD_COLUMNS) + " |"
    )
    lines.append("|" + "---|" * (3 + len(OOD_COLUMNS)))
    for r in summary["rows"]:
        for name, values in r["ood"].items():
            cells = [_cell(values[key], _digits(s)) for _, key, s in OOD_COLUMNS]
            tag = name.removeprefix("ood_")
            lines.append(f"| {r['model']} | {r['budget']} | {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_model: dict[str, list] = defaultdict(list)
    for r in summary["rows"]:
        by_model[r["model"]].append(
            (np.mean(r["train_min"]), np.mean(r["test"]["force_mae_eV_per_A"]))
        )
    for model, points in sorted(by_model.items()):
        points.sort()
        ax.plot(*zip(*points, strict=True), marker="o", label=model)
    ax.set_xlabel("training time, one pinned core (min)")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def main() -> int:
    summary = summarize(collect())
    if not summary["rows"]:
        print(f"no scored runs under {OUT}: run benchmarks/peers/train.py", file=sys.stderr)
        return 1
    write_json(OUT / "peers.json", summary)
    plot(summary, OUT / "error_vs_time.png")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
