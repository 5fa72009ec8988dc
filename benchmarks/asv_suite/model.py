"""TDN on the embedded dataset: speed of a training step and of inference on a fixed
batch, and the validation MAE of a small TDN trained for a fixed, short budget with a
fixed seed (cp_eager and its exact twin path_shared side by side)."""

from __future__ import annotations

from typing import ClassVar

import torch

from ._common import SMOKE, need, threads, usable_backend

MODEL_BACKENDS = ["cp_eager", "path_shared"]
# A small TDN: the CPU is slow, and the suite runs once per commit of the history.
SMALL = dict(lmax=2, channels=32, layers=2, num_basis=16, radial_hidden=32)
BATCH = 8  # molecules (snapshots) per batch


def _subset(split: str, count: int) -> list:
    """``count`` snapshots spread evenly over a split (neighbouring frames of one
    relaxation are near-duplicates), in a fixed order."""
    load_dataset = need("tdn_data", "load_dataset")
    try:
        data = load_dataset("embedded", split=split)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise NotImplementedError(f"embedded dataset: {e}") from None
    stride = max(1, len(data) // count)
    return [data[i] for i in range(0, stride * count, stride)][:count]


def _loader(samples: list, shuffle: bool = False):
    DataLoader = need("torch_geometric.loader", "DataLoader")
    return list(DataLoader(samples, batch_size=BATCH, shuffle=shuffle))


def _model(backend: str, **size):
    TDN = need("tdn_models", "TDN")
    usable_backend(backend)
    torch.manual_seed(0)
    return TDN(backend=backend, **size)


class TDNStep:
    """One Adam step (energy + autograd forces loss) and one inference (energy and
    forces) on a fixed batch of 8 embedded-dataset snapshots."""

    params: ClassVar = [MODEL_BACKENDS]
    param_names: ClassVar = ["backend"]
    timeout = 600
    version = "1"
    repeat = (1, 5, 10.0)
    rounds = 1
    number = 1
    warmup_time = 0.0
    min_run_count = 1

    def setup(self, backend):
        threads()
        potential_loss = need("tdn_models", "potential_loss")
        samples = _subset("train", 64)
        self.model = _model(backend, **SMALL)
        self.model.normalization.fit(samples)
        self.batch = _loader(samples)[0]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = potential_loss
        self.train_step()  # warm-up: first-call allocations and lazy tables

    def train_step(self):
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(self.batch, forces=True)
        loss, _ = self.loss(self.model, out, self.batch, 1.0, 10.0)
        loss.backward()
        self.optimizer.step()

    def time_train_step(self, backend):
        self.train_step()

    def time_inference(self, backend):
        self.model.eval()
        self.model(self.batch, forces=True)


class TDNAccuracy:
    """Validation energy (eV/atom) and force (eV/Å) MAE of a small TDN trained for
    TRAIN_STEPS Adam steps (seed 0) on 256 training snapshots, evaluated on 128
    validation snapshots (the embedded dataset's split is by molecule)."""

    TRAIN_STEPS = 2 if SMOKE else 200
    params: ClassVar = [MODEL_BACKENDS]
    param_names: ClassVar = ["backend"]
    timeout = 900
    version = "1"

    def setup_cache(self):
        need("tdn_models", "TDN", "train_steps", "potential_loss")
        return {"train": _subset("train", 256), "val": _subset("val", 128)}

    def setup(self, data, backend):
        threads()
        train_steps, potential_loss = need("tdn_models", "train_steps", "potential_loss")
        model = _model(backend, lmax=2, channels=16, layers=2, num_basis=16, radial_hidden=16)
        model.normalization.fit(data["train"])
        torch.manual_seed(0)
        batches = _loader(data["train"])
        for _ in train_steps(model, batches, steps=self.TRAIN_STEPS, lr=3e-3):
            pass
        model.eval()
        e_abs, f_abs, n_mol, n_comp = 0.0, 0.0, 0, 0
        for batch in _loader(data["val"]):
            out = model(batch, forces=True)
            _, parts = potential_loss(model, out, batch, 1.0, 1.0)
            b = int(batch.num_graphs)
            e_abs += parts["energy_mae_per_atom"] * b
            f_abs += parts["force_mae"] * batch.forces.numel()
            n_mol += b
            n_comp += batch.forces.numel()
        self.mae = {"energy": e_abs / n_mol, "forces": f_abs / n_comp}

    def track_val_energy_mae(self, data, backend):
        return self.mae["energy"]

    track_val_energy_mae.unit = "eV/atom"

    def track_val_force_mae(self, data, backend):
        return self.mae["forces"]

    track_val_force_mae.unit = "eV/Å"
