"""The training loop of ``tdn train``: DDP, EMA, LR schedules, resumable checkpoints.

Reproducibility is by construction. Epoch ``e`` visits the training set in the order
``randperm(n, seed + e)``, cut into global batches of ``batch_size`` (the last partial
one is dropped); rank ``r`` of ``W`` takes items ``r::W`` of each global batch. The loss
of a step is normalized by the global batch's counts, so W ranks (whose DDP gradients
are averaged) take exactly the step one process takes on the whole batch. Checkpoints
(every ``checkpoint_every`` steps and after each epoch) hold everything that changes:
weights, EMA, optimizer, scheduler, RNG states, the position in the epoch and the
number of metrics.csv rows, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import csv
import math
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch_geometric.loader import DataLoader

from tdn_core._io import atomic_write
from tdn_models import Potential, build_model, model_name, potential_loss, save_checkpoint

from ._errors import UserError
from ._plots import _pyplot, _save

__all__ = ["EMA", "Distributed", "Trainer", "epoch_batches", "plateau", "warmup_cosine"]

#: metrics.csv columns; energies in eV, energy per atom in eV/atom, forces in eV/Å
CSV_COLUMNS = (
    "epoch",
    "step",
    "split",
    "lr",
    "loss",
    "energy_mae",
    "energy_mae_per_atom",
    "force_mae",
)


# --------------------------------------------------------------------------- schedules


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 20,
    min_factor: float = 0.05,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor rising linearly over ``warmup_steps``, then cosine down to ``min_factor``.

    Stepped once per optimizer step; ``total_steps`` is the run's number of steps.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plateau(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    factor: float = 0.5,
    patience: int = 2,
    min_lr: float = 1e-6,
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Reduce the LR by ``factor`` when the validation loss stalls (stepped per epoch).

    ``total_steps`` is accepted so every schedule is built the same way; it is unused.
    """
    del total_steps
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=factor, patience=patience, min_lr=min_lr
    )


# --------------------------------------------------------------------------- distribution


class Distributed:
    """This process's place in a ``torchrun`` job (or a single process: world 1)."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process (collectives are needed)."""
        return self.world > 1

    def all_sum(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over ranks (``x`` itself for a single process)."""
        if self.active:
            x = x.clone()
            torch_dist.all_reduce(x)
        return x

    def share_error(self, message: str | None) -> str | None:
        """Rank 0's ``message`` on every rank, so all stop on an error rank 0 found."""
        if not self.active:
            return message
        box = [message]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int
) -> list[list[int]]:
    """Index lists of this rank's share of each global batch of ``epoch`` (see module doc)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    steps = n // batch_size
    return [perm[s * batch_size : (s + 1) * batch_size][rank::world].tolist() for s in range(steps)]


# --------------------------------------------------------------------------- metrics


def error_sums(out: dict, batch) -> Tensor:
    """float64 [7]: sum|dE| (eV), sum|dE/N| (eV/atom), sum (dE/N)^2, graphs, sum|dF|
    (eV/Å), sum dF^2, force components. Summed over ranks they give global means."""
    e = out["energy"].detach().double()
    n_atoms = torch.bincount(batch.batch, minlength=e.shape[0]).double()
    de = e - batch.energy.double().reshape(-1)
    row = [de.abs().sum(), (de / n_atoms).abs().sum(), (de / n_atoms).pow(2).sum()]
    row.append(torch.tensor(float(e.shape[0]), dtype=torch.float64, device=e.device))
    if "forces" in out and getattr(batch, "forces", None) is not None:
        df = out["forces"].detach().double() - batch.forces.double()
        row += [df.abs().sum(), df.pow(2).sum(), torch.tensor(float(df.numel()), device=e.device)]
    else:
        row += [torch.zeros((), device=e.device)] * 3
    return torch.stack([r.to(torch.float64) for r in row])


def summarize(sums: Tensor, scale: float, energy_weight: float, force_weight: float) -> dict:
    """Global MAEs and the loss (as :func:`potential_loss` defines it) from summed sums."""
    s = sums.tolist()
    graphs, comps = max(s[3], 1.0), s[6]
    loss = energy_weight * s[2] / graphs / scale**2
    row = {"energy_mae": s[0] / graphs, "energy_mae_per_atom": s[1] / graphs}
    row["force_mae"] = s[4] / comps if comps else float("nan")
    if comps and force_weight:
        loss += force_weight * s[5] / comps / scale**2
    return {"loss": loss, **row}


# --------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a model's weights, kept in a second model.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` after t updates, so early averages are
    not dominated by the random initial weights. Buffers are copied.
    """

    def __init__(self, model: Potential, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.model = build_model(model_name(model), **model.config)
        self.model.to(dtype=model.dtype, device=next(model.parameters()).device)
        self.model.load_state_dict(model.state_dict())
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Potential) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for ema, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema.lerp_(p.detach(), 1 - decay)
        for ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema.copy_(b)


# --------------------------------------------------------------------------- trainer


# numpy's legacy global generator is saved because third-party code may draw from it
def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains ``model`` on ``train_set``, validating its EMA on ``val_set`` each epoch.

    Args:
        cfg: the ``trainer`` config group (see ``conf/trainer/default.yaml``).
        model: the potential, already on its device and dtype, normalization fitted.
        train_set, val_set: datasets of samples with energy (eV) and forces (eV/Å).
        out_dir: the run directory (written by rank 0 only).
        dist: this process's rank and world.
        seed: seeds the per-epoch shuffles (``seed + epoch``).
        make_optimizer, make_scheduler: instantiated ``_partial_`` config leaves.
    """

    def __init__(
        self,
        cfg,
        model: Potential,
        train_set,
        val_set,
        out_dir: Path,
        dist: Distributed,
        seed: int,
        make_optimizer: Callable,
        make_scheduler: Callable,
    ) -> None:
        self.cfg, self.model, self.dist, self.seed = cfg, model, dist, seed
        self.train_set, self.val_set, self.out_dir = train_set, val_set, Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.batch_size = int(cfg.batch_size)
        self.steps_per_epoch = len(train_set) // self.batch_size
        self.total_steps = self.steps_per_epoch * int(cfg.max_epochs)
        if cfg.get("max_steps") is not None:
            if int(cfg.max_steps) < 1:
                raise UserError(f"trainer.max_steps={cfg.max_steps}: expected null or >= 1")
            # a budget finer than an epoch: the schedule ends at the step budget, and the
            # epoch it falls in is cut short there (then validated like any other)
            self.total_steps = min(self.total_steps, int(cfg.max_steps))
        self.optimizer = make_optimizer(model.parameters())
        self.scheduler = make_scheduler(self.optimizer, total_steps=self.total_steps)
        self.per_epoch_schedule = isinstance(
            self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
        )
        self.ema = EMA(model, cfg.ema_decay)
        self.net = model
        if dist.active:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.state = {
            "epoch": 0,
            "batch_in_epoch": 0,
            "step": 0,
            "best": None,
            "csv_rows": 0,
            "finished": False,
        }
        self.csv_file = self.csv = self.writer = None  # opened by fit() on rank 0

    # ------------------------------------------------------------------ state
    def load(self, ckpt: dict) -> None:
        """Continue from a ``last.pt`` dict (:func:`tdn_models.read_checkpoint`)."""
        ts = ckpt["extra"]["train_state"]
        self.model.load_state_dict(ts["model"])
        self.ema.model.load_state_dict(ckpt["state_dict"])
        self.ema.updates = int(ts["ema_updates"])
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.state = dict(ts["position"])
        _set_rng_state(ts["rng"])

    def _train_state(self) -> dict:
        return {
            "position": dict(self.state),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "world_size": self.dist.world,
        }

    def _checkpoint(self) -> None:
        """Make metrics durable, then write last.pt atomically (rank 0)."""
        if not self.dist.is_main:
            return
        os.fsync(self.csv_file.fileno())
        self.writer.flush()
        extra = {"train_state": self._train_state(), "kind": "last"}
        save_checkpoint(self.ckpt_dir / "last.pt", self.ema.model, extra=extra)

    # ------------------------------------------------------------------ outputs
    def _open_outputs(self) -> None:
        """metrics.csv cut back to the checkpoint's rows; TensorBoard purged past its step."""
        if not self.dist.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.csv"
        rows = self.state["csv_rows"]
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if len(lines) < rows + 1 and rows:
            raise UserError(
                f"{path}: has {max(len(lines) - 1, 0)} rows but the checkpoint recorded "
                f"{rows}; the file was edited or truncated"
            )
        text = "".join(lines[: rows + 1]) if rows else ",".join(CSV_COLUMNS) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))
        self.csv_file = path.open("a", newline="")
        self.csv = csv.writer(self.csv_file, lineterminator="\n")
        purge = self.state["step"] + 1 if self.state["step"] else None
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)

    def _log_row(self, split: str, lr: float, metrics: dict) -> None:
        if not self.dist.is_main:
            return
        row = [self.state["epoch"], self.state["step"], split, repr(lr)]
        self.csv.writerow(row + [repr(metrics[k]) for k in CSV_COLUMNS[4:]])
        self.csv_file.flush()  # readable live; made durable (fsync) only at checkpoints
        self.state["csv_rows"] += 1
        for k, v in metrics.items():
            self.writer.add_scalar(f"{split}/{k}", v, self.state["step"])
        if split == "train":
            self.writer.add_scalar("train/lr", lr, self.state["step"])

    def _plot(self) -> None:
        """loss_curve.png: training loss per step and validation MAEs per epoch."""
        self.csv_file.flush()
        with (self.out_dir / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        plt = _pyplot()
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
            if pts:
                ax1.plot(*zip(*pts, strict=True), style, label=split)
        val = [r for r in rows if r["split"] == "val"]
        epochs = [int(r["epoch"]) + 1 for r in val]
        for key, label in (("energy_mae_per_atom", "E MAE (eV/atom)"), ("force_mae", "F (eV/Å)")):
            ax2.plot(epochs, [float(r[key]) for r in val], "o-", label=label)
        ax1.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
        ax2.set(xlabel="epoch", yscale="log", title="validation (EMA weights)")
        ax1.legend()
        ax2.legend()
        fig.tight_layout()
        _save(fig, self.out_dir / "loss_curve.png")

    # ------------------------------------------------------------------ loop
    def _loader(self, dataset, index_lists: list[list[int]]) -> DataLoader:
        workers = int(self.cfg.num_workers)
        return DataLoader(dataset, batch_sampler=index_lists, num_workers=workers)

    def _train_step(self, batch, weights: tuple[float, float]) -> dict:
        w_energy, w_force = weights
        batch = batch.to(self.dist.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.net(batch, forces=w_force > 0)
        sums = error_sums(out, batch)
        counts = self.dist.all_sum(sums[[3, 6]])  # global graphs and force components
        # each rank's share of the global-batch loss; DDP averages gradients, hence * world
        e_loss, _ = potential_loss(self.model, out, batch, 1.0, 0.0)
        loss = w_energy * e_loss * (sums[3] / counts[0])
        if w_force and counts[1] > 0:
            f_loss, _ = potential_loss(self.model, out, batch, 0.0, 1.0)
            loss = loss + w_force * f_loss * (sums[6] / counts[1])
        (loss * self.dist.world).backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.grad_clip))
        self.optimizer.step()
        if not self.per_epoch_schedule:
            self.scheduler.step()
        self.ema.update(self.model)
        scale = float(self.model.normalization.scale)
        return summarize(self.dist.all_sum(sums), scale, w_energy, w_force)

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss and MAEs of the EMA weights over the whole val set (all ranks)."""
        n = len(self.val_set)
        chunks = [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
        mine = [c[self.dist.rank :: self.dist.world] for c in chunks]
        sums = torch.zeros(7, dtype=torch.float64, device=self.dist.device)
        for batch in self._loader(self.val_set, [c for c in mine if c]):
            batch = batch.to(self.dist.device)
            sums += error_sums(self.ema.model(batch), batch)
        scale = float(self.ema.model.normalization.scale)
        weights = float(self.cfg.energy_weight), float(self.cfg.force_weight)
        return summarize(self.dist.all_sum(sums), scale, *weights)

    def fit(self) -> dict:
        """Train to ``max_epochs`` or ``max_steps``, whichever comes first; returns the
        last validation metrics."""
        from tqdm import tqdm

        self._open_outputs()
        weights = float(self.cfg.energy_weight), float(self.cfg.force_weight)
        bar = tqdm(
            total=self.total_steps,
            initial=self.state["step"],
            file=sys.stderr,
            disable=not (self.dist.is_main and self.cfg.progress),
            dynamic_ncols=True,
        )
        every = int(self.cfg.checkpoint_every)
        metrics: dict = {}
        self.model.train()
        # an epoch cut short by max_steps is still validated, after a resume too
        while self.state["epoch"] < int(self.cfg.max_epochs) and (
            self.state["step"] < self.total_steps or self.state["batch_in_epoch"] > 0
        ):
            epoch = self.state["epoch"]
            bar.set_description(f"epoch {epoch + 1}/{self.cfg.max_epochs}")
            n, rank, world = len(self.train_set), self.dist.rank, self.dist.world
            plan = epoch_batches(n, self.batch_size, self.seed, epoch, rank, world)
            for batch in self._loader(self.train_set, plan[self.state["batch_in_epoch"] :]):
                if self.state["step"] >= self.total_steps:
                    break
                lr = self.optimizer.param_groups[0]["lr"]
                row = self._train_step(batch, weights)
                self.state["step"] += 1
                self.state["batch_in_epoch"] += 1
                self._log_row("train", lr, row)
                bar.update()
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}")
                if self.state["step"] % every == 0:
                    self._checkpoint()
            metrics = self.validate()
            lr = self.optimizer.param_groups[0]["lr"]
            self._log_row("val", lr, metrics)
            if self.per_epoch_schedule:
                self.scheduler.step(metrics["loss"])
            self.state["epoch"] += 1
            self.state["batch_in_epoch"] = 0
            self._end_epoch(metrics, bar)
        bar.close()
        self.state["finished"] = True
        self._checkpoint()
        self._close()
        return metrics

    def _end_epoch(self, metrics: dict, bar) -> None:
        """Best checkpoint, plot and last checkpoint after an epoch (rank 0 writes)."""
        best = self.state["best"]
        improved = best is None or metrics["loss"] < best
        if improved:
            self.state["best"] = metrics["loss"]
        if self.dist.is_main:
            if improved:
                extra = {"kind": "best", "epoch": self.state["epoch"], "step": self.state["step"]}
                extra["val"] = {k: float(v) for k, v in metrics.items()}
                save_checkpoint(self.ckpt_dir / "best.pt", self.ema.model, extra=extra)
            self._plot()
            text = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            bar.write(f"epoch {self.state['epoch']}: val {text}", file=sys.stderr)
        self._checkpoint()

    def _close(self) -> None:
        if self.dist.is_main:
            self.csv_file.close()
            self.writer.close()
