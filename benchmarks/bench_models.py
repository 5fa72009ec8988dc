"""Training-step and inference throughput of TDN per backend, on embedded-dataset batches.

    python benchmarks/bench_models.py                          # L = 1 2 4, all backends
    python benchmarks/bench_models.py --lmax 1 --backends cp_eager path_shared --json out.json

The batch: the 16 smallest molecules of the embedded dataset's training split (one
snapshot each), the closest we have to the paper's reference measurement (16 small
molecules, 138 atoms). Model: 128 channels, 4 blocks, 4 heads, 4.5 Å cutoff, 128
Gaussians, conservative forces (-dE/dpos): the reference implementation's defaults.

* training step: forward with forces (graph kept), energy+force loss, backward, Adam step;
* inference: energy and forces (autograd, no graph kept).

Medians after warm-up, ms, and atoms per second. All backends run in one process on
one machine, so their ratios are comparable; absolute times on a shared machine are not.
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
from torch_geometric.data import Batch

from tdn_core import available_backends
from tdn_core._io import atomic_write
from tdn_data import load_dataset
from tdn_models import TDN, potential_loss

DEFAULT_BACKENDS = ("cg", "path_shared", "cp_eager", "e3nn", "cueq")


def reference_batch(n_molecules: int = 16):
    """One snapshot of each of the ``n_molecules`` smallest training molecules."""
    ds = load_dataset("embedded", split="train")
    first = {}
    for i in range(len(ds)):
        item = ds[i]
        first.setdefault(item.mol_id, (item.num_nodes, item.mol_id, i))
    chosen = sorted(first.values())[:n_molecules]
    return ds, Batch.from_data_list([ds[i] for _, _, i in chosen])


def bench_model(backend: str, L: int, batch, normalization_source, repeats: int) -> dict:
    torch.manual_seed(0)
    model = TDN(lmax=L, backend=backend)
    model.normalization.fit(normalization_source)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = potential_loss(model, model(batch), batch)
        loss.backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(batch)

    probe = median_ms(train_step, 1, warmup=1)
    reps = max(1, min(repeats, int(30_000 / max(probe, 1e-3))))
    train_ms = median_ms(train_step, reps, warmup=1)
    infer_ms = median_ms(inference, reps, warmup=1)
    atoms = batch.num_nodes
    return {
        "backend": backend,
        "L": L,
        "train_step_ms": train_ms,
        "inference_ms": infer_ms,
        "train_atoms_per_s": atoms / train_ms * 1e3,
        "inference_atoms_per_s": atoms / infer_ms * 1e3,
        "repeats": reps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lmax", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    usable = {n for n, why in available_backends().items() if why is None}
    # cp_triton on a CPU runs in Triton's interpreter: correct, but its time means nothing
    backends = [b for b in args.backends if b in usable and b != "cp_triton"]
    skipped = sorted(set(args.backends) - set(backends))
    ds, batch = reference_batch()
    source = [ds[i] for i in range(0, len(ds), 20)]
    print(
        f"batch: {batch.num_graphs} molecules, {batch.num_nodes} atoms; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f"; skipped: {', '.join(skipped)}" if skipped else ""),
        file=sys.stderr,
    )
    rows = []
    print(f"{'L':>2} {'backend':<12} {'train ms':>10} {'infer ms':>10} {'train atoms/s':>14}")
    for L in args.lmax:
        for backend in backends:
            row = bench_model(backend, L, batch, source, args.repeats)
            rows.append(row)
            print(
                f"{L:>2} {backend:<12} {row['train_step_ms']:>10.1f} "
                f"{row['inference_ms']:>10.1f} {row['train_atoms_per_s']:>14.0f}",
                flush=True,
            )
    if args.json:
        meta = {
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "atoms": batch.num_nodes,
            "molecules": batch.num_graphs,
            "model": "TDN(channels=128, layers=4, heads=4, cutoff=4.5, num_basis=128)",
        }
        text = json.dumps({"meta": meta, "results": rows}, indent=1)
        atomic_write(args.json, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
