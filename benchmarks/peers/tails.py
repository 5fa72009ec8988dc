"""Where the worst force errors sit: close contacts, by distance and element pair.

``census``: how much short-range data each split of the embedded dataset holds, per
atom by the distance to its nearest neighbour, and the pairs closer than 0.9 Å by
element pair, with the reference forces there. ``errors CHECKPOINT [...]``: for each
TDN checkpoint, the per-atom force error on the test split by nearest-neighbour
distance and by the element pair (atom, nearest neighbour) of the atoms closer than
1 Å to one, and one figure of every checkpoint's per-atom error against the distance.
JSON and the figure go to ``docs/results/peers/tails/``.

    .venv/bin/python benchmarks/peers/tails.py census
    .venv/bin/python benchmarks/peers/tails.py errors \\
        docs/results/peers/tdn-best-cp_eager-wall-s0/best.pt --labels "no ZBL"
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "claims"))
from _repo import ROOT, repo_relative  # noqa: E402

from tdn_cli._util import write_json  # noqa: E402  (atomic)

OUT = ROOT / "docs" / "results" / "peers" / "tails"
#: Å: the nearest-neighbour bins of the census (tdn eval's bins)
BINS = (0.0, 0.7, 0.8, 0.9, 1.0, 1.1, np.inf)
CLOSE_A = 0.9


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]


def _pair(a: int, b: int) -> str:
    return "-".join(sorted((_symbol(a), _symbol(b))))


def census(splits: tuple[str, ...] = ("train", "val", "test")) -> dict:
    """Per split: atoms per nearest-neighbour bin (with the median and max reference
    |F| there) and the pairs closer than CLOSE_A by element pair."""
    from tdn_data import load_dataset
    from tdn_data.graphs import radius_graph

    out = {}
    for split in splits:
        ds = load_dataset("embedded", split=split)
        nn, force, pairs = [], [], collections.Counter()
        for k in range(len(ds)):
            s = ds[k]
            g = radius_graph(s.pos.double(), 1.5)
            src, dst = g.edge_index
            d = torch.full((s.num_nodes,), torch.inf, dtype=torch.float64)
            nn.append(d.scatter_reduce(0, dst, g.edge_len, "amin").numpy())
            force.append(s.forces.double().norm(dim=1).numpy())
            close = (g.edge_len < CLOSE_A) & (src < dst)
            for a, b in zip(src[close].tolist(), dst[close].tolist(), strict=True):
                pairs[_pair(int(s.z[a]), int(s.z[b]))] += 1
        nn, force = np.concatenate(nn), np.concatenate(force)
        rows = []
        for lo, hi in itertools.pairwise(BINS):
            f = force[(nn >= lo) & (nn < hi)]
            rows.append({
                "nn_from_A": lo, "nn_to_A": None if np.isinf(hi) else hi, "atoms": len(f),
                "ref_force_median_eV_per_A": float(np.median(f)) if len(f) else None,
                "ref_force_max_eV_per_A": float(f.max()) if len(f) else None,
            })  # fmt: skip
        out[split] = {
            "snapshots": len(ds), "atoms": len(nn), "by_nn_distance": rows,
            f"pairs_closer_than_{CLOSE_A}_A": dict(pairs.most_common()),
        }  # fmt: skip
    return out


def errors(checkpoint: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test-split per-atom force error of ``checkpoint`` by element pair (atom, its
    nearest neighbour) where that neighbour is closer than 1 Å; also returns the
    nearest-neighbour distances [N] (Å) and errors [N] (eV/Å) for the figure."""
    from torch_geometric.loader import DataLoader

    from tdn_cli.evaluate import nearest_neighbour
    from tdn_data import load_dataset
    from tdn_data.graphs import batch_radius_graph
    from tdn_models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    test = load_dataset("embedded", split="test")
    nn, err, pair = [], [], []
    for batch in DataLoader(test, batch_size=32):
        out = model(batch)
        nn.append(nearest_neighbour(batch, model.cutoff))
        err.append((out["forces"].detach() - batch.forces).double().norm(dim=1).numpy())
        g = batch_radius_graph(batch, 1.0)
        src, dst = g.edge_index
        nearest = torch.full((batch.num_nodes,), torch.inf, dtype=g.edge_len.dtype)
        nearest = nearest.scatter_reduce(0, dst, g.edge_len, "amin")
        first = g.edge_len == nearest[dst]  # each atom's nearest neighbour within 1 Å
        closest = torch.full((batch.num_nodes,), -1, dtype=torch.long)
        closest[dst[first]] = src[first]
        z = batch.z
        pair += [_pair(int(z[i]), int(z[j])) if j >= 0 else "" for i, j in enumerate(closest)]
    nn, err = np.concatenate(nn), np.concatenate(err)
    table = {}
    for name in sorted({p for p in pair if p}):
        e = err[np.array([p == name for p in pair])]
        table[name] = {"atoms": len(e), "force_atom_mean_eV_per_A": float(e.mean()),
                       "force_worst_atom_eV_per_A": float(e.max())}  # fmt: skip
    return table, nn, err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  .venv/bin/python benchmarks/peers/tails.py census",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("census", help="short-range data per split")
    e = sub.add_parser("errors", help="test errors at close contacts of checkpoints")
    e.add_argument("checkpoints", nargs="+", type=Path)
    e.add_argument("--labels", nargs="+", help="one per checkpoint (default: the paths)")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cmd == "census":
        result = census()
        write_json(OUT / "census.json", result)
        for split, r in result.items():
            print(f"{split}: {r['snapshots']} snapshots, {r['atoms']} atoms")
            for row in r["by_nn_distance"]:
                print(f"  nn {row['nn_from_A']}-{row['nn_to_A']} Å: {row['atoms']} atoms")
            print(f"  pairs < {CLOSE_A} Å: {r[f'pairs_closer_than_{CLOSE_A}_A']}")
        return 0
    labels = args.labels or [repo_relative(c) for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        p.error(f"--labels: expected {len(args.checkpoints)}, got {len(labels)}")
    missing = [str(c) for c in args.checkpoints if not c.is_file()]
    if missing:
        p.error(f"no checkpoint at {', '.join(missing)}")
    from tdn_cli._plots import error_against_distance

    result, curves = {}, {}
    for label, checkpoint in zip(labels, args.checkpoints, strict=True):
        table, nn, err = errors(checkpoint)
        result[label] = {"checkpoint": repo_relative(checkpoint), "by_close_pair": table}
        curves[label] = (nn, err)
        print(f"{label}: " + ", ".join(
            f"{k} {v['atoms']} atoms mean {v['force_atom_mean_eV_per_A']:.2f} worst "
            f"{v['force_worst_atom_eV_per_A']:.1f} eV/Å" for k, v in table.items()))  # fmt: skip
    write_json(OUT / "errors.json", result)
    error_against_distance(OUT / "error_vs_nn.png", curves, "test split, per-atom force error")
    print(f"wrote {repo_relative(OUT / 'errors.json')} and error_vs_nn.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
