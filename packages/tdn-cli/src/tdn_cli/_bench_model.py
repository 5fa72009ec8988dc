"""Training-step and inference throughput of the full TDN network (``tdn bench --model``).

The batch: one snapshot of each of the smallest training molecules of the embedded
dataset (16 of them: 143 atoms; the paper's reference measurement used 16 small molecules
with 138 atoms). The model is
``TDN(lmax=L, backend=...)`` with its defaults (128 channels, 4 blocks, 4 heads, 4.5 Å
cutoff, 128 Gaussians, forces as -dE/dpos): the reference implementation's settings.
"""

from __future__ import annotations

import time

import torch
from torch_geometric.data import Batch

from tdn_data import load_dataset
from tdn_models import TDN, potential_loss

from ._timing import median_ms

MODEL_DESCRIPTION = "TDN(channels=128, layers=4, heads=4, cutoff=4.5, num_basis=128)"


def reference_batch(n_molecules: int = 16) -> tuple[object, Batch]:
    """(the embedded training split, one snapshot of each of its ``n_molecules``
    smallest molecules as one batch)."""
    ds = load_dataset("embedded", split="train")
    first: dict[str, tuple[int, str, int]] = {}
    for i in range(len(ds)):
        item = ds[i]
        first.setdefault(item.mol_id, (item.num_nodes, item.mol_id, i))
    chosen = sorted(first.values())[:n_molecules]
    return ds, Batch.from_data_list([ds[i] for _, _, i in chosen])


def bench_model(
    backend: str,
    L: int,
    batch: Batch,
    normalization_source,
    repeats: int,
    device: torch.device,
    compile: bool = False,
) -> dict:
    """Medians (ms) of an Adam training step (energy+force loss, forces by autograd with
    the graph kept) and of inference (energy and forces), with atoms per second.
    ``compile``: time ``model.compile()``'s graphs; ``compile_s`` is the time of the
    first training step and inference together, which compile them."""
    torch.manual_seed(0)
    model = TDN(lmax=L, backend=backend)
    model.fit_normalization(normalization_source)
    model.to(device)
    if compile:
        # dynamo keeps at most 8 compiled variants of one function per process (every
        # model and grad mode is one); past that it runs eager: start afresh per case
        torch._dynamo.reset()
        model.compile()
    batch = batch.to(device)
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

    start = time.perf_counter()
    train_step()
    inference()
    compile_s = time.perf_counter() - start if compile else None
    probe = median_ms(train_step, 1, warmup=0, device=device)
    # few repeats for slow backends: the run time is bounded by the slowest, not the count
    reps = max(1, min(repeats, int(30_000 / max(probe, 1e-3))))
    train_ms = median_ms(train_step, reps, warmup=1, device=device)
    infer_ms = median_ms(inference, reps, warmup=1, device=device)
    atoms = batch.num_nodes
    return {
        "backend": backend,
        "compiled": compile,
        "compile_s": compile_s,
        "L": L,
        "train_step_ms": train_ms,
        "inference_ms": infer_ms,
        "train_atoms_per_s": atoms / train_ms * 1e3,
        "inference_atoms_per_s": atoms / infer_ms * 1e3,
        "repeats": reps,
    }
