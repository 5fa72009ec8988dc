"""Where the worst force errors sit: close contacts, by distance and element pair.

``census``: how much short-range data each split of the embedded dataset holds, per
atom by the distance to its nearest neighbour, and the pairs closer than 0.9 Å by
element pair, with the reference forces there. ``errors LABEL=TEST.npz [...]``: from
the test predictions of any model (score.py's, the one evaluator), the per-atom force
error by the element pair (atom, nearest neighbour) of the atoms closer than 1 Å to
one, and one figure of every model's per-atom error against that distance. JSON and
the figure go to ``docs/results/peers/tails/``.

    .venv/bin/python benchmarks/peers/tails.py census
    .venv/bin/python benchmarks/peers/tails.py errors \\
        "TDN=runs/peers/tdn-zbl-cp_eager-wall-s0/scores/test.npz" \\
        "MACE=runs/peers/mace-ell1-epochs-s0/scores/test.npz"
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "claims"))
from _repo import ROOT, repo_relative  # noqa: E402

from tdn_cli._util import write_json  # noqa: E402  (atomic)

OUT = ROOT / "docs" / "results" / "peers" / "tails"
DATA = ROOT / "runs" / "peers" / "data"  # export.py's
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
    from tdn_cli.evaluate import nearest_in_graph
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
            nn.append(nearest_in_graph(g, s.num_nodes))
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


def errors(predictions: Path, frames: list) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per-atom force error of one model's test predictions (score.py's ``test.npz``:
    ``z``, ``forces``, ``forces_pred``, ``frame``) by element pair (atom, its nearest neighbour)
    where that neighbour is closer than 1 Å. ``frames``: the exported test structures
    (ASE Atoms, in score.py's order). Also returns each atom's nearest-neighbour distance
    [N] (Å) and error [N] (eV/Å), for the figure."""
    p = np.load(predictions)
    err = np.linalg.norm(p["forces_pred"] - p["forces"], axis=1)
    nn = np.full(len(err), np.inf)
    pair = np.full(len(err), "", dtype=object)
    offset = 0
    for atoms in frames:
        n = len(atoms)
        d = atoms.get_all_distances()
        np.fill_diagonal(d, np.inf)
        j = d.argmin(axis=1)
        nn[offset : offset + n] = d[np.arange(n), j]
        for i in np.flatnonzero(d[np.arange(n), j] < 1.0):
            pair[offset + i] = _pair(int(atoms.numbers[i]), int(atoms.numbers[j[i]]))
        offset += n
    if offset != len(err) or not np.array_equal(
        np.concatenate([a.numbers for a in frames]), p["z"]
    ):
        raise SystemExit(f"{predictions}: its atoms are not the exported test split's")
    table = {}
    for name in sorted({q for q in pair if q}):
        e = err[pair == name]
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
    e = sub.add_parser("errors", help="test errors at close contacts, from score.py's npz")
    e.add_argument("predictions", nargs="+", metavar="LABEL=TEST.npz",
                   help="score.py's test predictions of a model, under a label")  # fmt: skip
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.cmd == "census":
        result = census()
        write_json(OUT / "census.json", result)
        for split, r in result.items():
            print(f"{split}: {r['snapshots']} snapshots, {r['atoms']} atoms")
            for row in r["by_nn_distance"]:
                hi = "" if row["nn_to_A"] is None else row["nn_to_A"]
                print(f"  nn {row['nn_from_A']}-{hi} Å: {row['atoms']} atoms")
            print(f"  pairs < {CLOSE_A} Å: {r[f'pairs_closer_than_{CLOSE_A}_A']}")
        return 0
    from ase.io import read

    from tdn_cli._plots import error_against_distance

    pairs = [x.partition("=") for x in args.predictions]
    bad = [x for x, (_, eq, path) in zip(args.predictions, pairs, strict=True)
           if not eq or not Path(path).is_file()]  # fmt: skip
    if bad:
        p.error(f"expected LABEL=TEST.npz with an existing file, got {bad}")
    frames = read(DATA / "test.extxyz", index=":", format="extxyz")
    result, curves = {}, {}
    for label, _, path in pairs:
        table, nn, err = errors(Path(path), frames)
        result[label] = {"predictions": repo_relative(path), "by_close_pair": table}
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
