"""``tdn train``: compose the Hydra config from ``key=value`` overrides and train.

The config lives in ``tdn_cli/conf`` (``train.yaml`` and the groups ``model``,
``backend``, ``data``, ``trainer``, ``experiment``). It is composed with Hydra's Compose
API rather than a ``@hydra.main`` app, so the working directory never changes, outputs
go where ``output_dir`` says, and every mistake becomes one :class:`UserError` line.
Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process trains its shard with
DDP (gloo on CPU, NCCL on CUDA); only rank 0 writes files.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import Subset

from tdn_models import CheckpointError, read_checkpoint

from ._errors import UserError
from ._schema import check_config
from ._schema import device as check_device
from .trainer import Distributed, Trainer

__all__ = ["compose_config", "main"]

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "backend", "data", "trainer", "trainer/scheduler", "experiment")
#: keys that may differ when resuming: they do not change the numbers
_RESUME_FREE = {"resume", "trainer.progress", "trainer.num_workers"}


# --------------------------------------------------------------------------- config


def _group_options() -> str:
    lines = []
    for group in GROUPS:
        names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group.replace('/', '.')}: {', '.join(names)}")
    return "\n".join(lines)


def _help() -> str:
    header = []
    for line in (CONF_DIR / "train.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line[2:])
    return (
        "usage: tdn train [key=value ...]\n\n" + "\n".join(header) + "\n\nconfig groups "
        "(group=option):\n" + _group_options() + "\n\nPrint the composed config: "
        "tdn train print_config=true"
    )


def _keys_under(cfg, dotted: str) -> tuple[str, list[str]]:
    """The deepest existing prefix of ``dotted`` in ``cfg`` and the keys found there."""
    from omegaconf import DictConfig

    node, prefix = cfg, []
    for part in dotted.split(".")[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, prefix = node[part], [*prefix, part]
    keys = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
    return ".".join(prefix) or "<top level>", keys


def compose_config(overrides: list[str]):
    """The composed (unresolved) config for ``overrides``; UserError for bad ones."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not key or key[0] in "+~-":
            raise UserError(
                f"override {o!r}: expected key=value of an existing key (e.g. "
                "model.channels=64 or model=schnet); see tdn train --help"
            )
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="tdn_train"):
        try:
            return compose("train", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            bad = next((o for o in overrides if f"'{o.split('=', 1)[0]}'" in first), None)
            if bad is None or "Could not override" not in first:
                text = str(e).split("Config search path")[0]  # Hydra internals after this
                raise UserError(f"config: {' '.join(text.split())}") from None
            key = bad.split("=", 1)[0]
            groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
            where, keys = _keys_under(compose("train", overrides=groups), key)
            raise UserError(
                f"override {bad!r}: unknown key {key!r}; keys under {where}: {keys}"
            ) from None


def _resolved(cfg) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "a value"
        raise UserError(f"{key}: required but not set; pass {key}=...") from None
    except OmegaConfBaseException as e:
        raise UserError(f"config: {' '.join(str(e).split())}") from None


def _diff(saved, now, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            key = f"{prefix}{k}"
            if key in _RESUME_FREE:
                continue
            if k not in saved or k not in now:
                out.append(f"{key} (only in {'the run' if k in saved else 'this command'})")
            else:
                out += _diff(saved[k], now[k], f"{key}.")
        return out
    return [] if saved == now else [f"{prefix[:-1]}: run {saved!r}, now {now!r}"]


# --------------------------------------------------------------------------- preflight


def _lock(out_dir: Path) -> int:
    """An exclusive flock on the run directory; the OS drops it when the process dies,
    so a killed run never leaves a stale lock. Returns the descriptor to keep open."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{str(out_dir)!r} is in use by another tdn train process; wait for it or stop it first"
        ) from None
    return fd


def _check_fresh(out_dir: Path) -> None:
    found = [n for n in ("config.yaml", "metrics.csv", "checkpoints") if (out_dir / n).exists()]
    if found:
        raise UserError(
            f"{str(out_dir)!r} already holds a run ({', '.join(found)}); pass "
            "resume=true to continue it, or choose another name=/output_dir="
        )


def _check_resume(resolved: dict, out_dir: Path) -> dict:
    """Rank 0, holding the lock: the ``last.pt`` dict of a run that can be resumed."""
    from omegaconf import OmegaConf

    last = out_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise UserError(
            f"resume=true: no checkpoint at {str(last)!r}; the run stopped before its first "
            f"checkpoint: delete {str(out_dir)!r} to start over"
        )
    saved_path = out_dir / "config.yaml"
    if saved_path.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True)
        differ = _diff(saved, resolved)
        if differ:
            raise UserError(
                f"resume=true: this command's config differs from the run's "
                f"{str(saved_path)!r} in {'; '.join(differ)}; repeat the run's overrides"
            )
    try:
        ckpt = read_checkpoint(last)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    position = ckpt["extra"].get("train_state", {}).get("position")
    if position is None:
        raise UserError(f"resume=true: {str(last)!r} holds no training state")
    if position["finished"]:
        raise UserError(
            f"resume=true: the run in {str(out_dir)!r} already finished "
            f"({position['epoch']} epochs, {position['step']} steps); nothing to resume. "
            "Train longer in a new run (name=...)"
        )
    return ckpt


def _on_main(dist: Distributed, action):
    """``action()`` on rank 0; its UserError is raised on every rank (all stop together)."""
    error, result = None, None
    if dist.is_main:
        try:
            result = action()
        except UserError as e:
            error = str(e)
    error = dist.share_error(error)
    if error is not None:
        raise UserError(error)
    return result


# --------------------------------------------------------------------------- building


def _instantiate(node, where: str):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise UserError(f"{where}: {' '.join(str(cause).split())}") from None
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None


def _subset(dataset, limit, seed: int):
    """A seeded random subset of ``limit`` items (sorted: reading stays sequential)."""
    if limit is None or limit >= len(dataset):
        return dataset
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(perm[: int(limit)].tolist()))


def _datasets(data, seed: int):
    train = _instantiate(data.train, "data.train")
    if data.val is None:
        # no validation source: hold out a seeded fraction of the training snapshots
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        n_val = round(float(data.get("val_fraction", 0.1)) * len(train))
        val = Subset(train, sorted(perm[:n_val].tolist()))
        train = Subset(train, sorted(perm[n_val:].tolist()))
    else:
        val = _instantiate(data.val, "data.val")
    train = _subset(train, data.max_train_samples, seed)
    val = _subset(val, data.max_val_samples, seed + 1)
    for where, ds in (("data.train", train), ("data.val", val)):
        if len(ds) == 0:
            raise UserError(
                f"{where}: the dataset has no usable snapshots (0 items); check data.source "
                "and the split"
            )
    return train, val


def _init_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), device)


def _log(dist: Distributed, message: str) -> None:
    if dist.is_main:
        print(f"tdn train: {message}", file=sys.stderr, flush=True)


def _run(cfg, resolved: dict, dist: Distributed, overrides: list[str]) -> Trainer:
    """Check the run directory, build data and model, and train; returns the Trainer."""
    from omegaconf import OmegaConf

    from tdn_core._io import atomic_write

    out_dir = Path(resolved["output_dir"]).expanduser()
    tcfg = cfg.trainer
    if int(tcfg.batch_size) % dist.world:
        raise UserError(
            f"trainer.batch_size: the global batch {tcfg.batch_size} must divide evenly "
            f"over {dist.world} processes"
        )
    resume = bool(resolved["resume"])
    locks: list[int] = []

    def preflight() -> dict | None:
        # reads only: a refusal leaves every existing file intact
        if not resume:
            if out_dir.is_dir():
                _check_fresh(out_dir)
            return None
        if not out_dir.is_dir():
            raise UserError(f"resume=true: no run in {str(out_dir)!r} (no such directory)")
        locks.append(_lock(out_dir))
        return _check_resume(resolved, out_dir)

    def claim() -> None:
        # a fresh run creates its directory only once the setup has succeeded
        out_dir.mkdir(parents=True, exist_ok=True)
        locks.append(_lock(out_dir))
        _check_fresh(out_dir)  # another run may have started meanwhile
        text = OmegaConf.to_yaml(OmegaConf.create(resolved)).encode()
        atomic_write(out_dir / "config.yaml", lambda f: f.write(text))

    try:
        return _setup_and_fit(cfg, dist, overrides, out_dir, _on_main(dist, preflight), claim)
    finally:
        for fd in locks:
            os.close(fd)


def _setup_and_fit(cfg, dist: Distributed, overrides, out_dir: Path, ckpt, claim) -> Trainer:
    """Seed, load data, build and fit the model; ``claim()`` the directory, then train."""
    from hydra.utils import instantiate

    tcfg = cfg.trainer
    seed = int(cfg.seed)
    # the global generators too: data code and user callbacks may draw from them
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    train_set, val_set = _datasets(cfg.data, seed)
    if len(train_set) < int(tcfg.batch_size):
        raise UserError(
            f"trainer.batch_size: {tcfg.batch_size} is more than the {len(train_set)} "
            "training snapshots; lower it"
        )
    model = _instantiate(cfg.model, "model")
    if not model.tensor_products() and any(o.startswith("backend=") for o in overrides):
        raise UserError(
            f"backend: model {cfg.model.name!r} has no tdn-core tensor products, so a "
            "backend cannot apply; drop the backend= override"
        )
    model.to(device=dist.device, dtype=getattr(torch, tcfg.dtype))
    if bool(tcfg.compile):
        model.compile()
    if bool(cfg.resume):
        if ckpt is None:  # the other ranks read what rank 0 checked
            ckpt = read_checkpoint(out_dir / "checkpoints" / "last.pt")
    else:
        try:
            model.fit_normalization(train_set[i] for i in range(len(train_set)))
        except ValueError as e:
            raise UserError(f"data.train: {e} (no snapshot has an energy)") from None
    trainer = Trainer(
        tcfg,
        model,
        train_set,
        val_set,
        out_dir,
        dist,
        seed,
        make_optimizer=instantiate(tcfg.optimizer),
        make_scheduler=instantiate(tcfg.scheduler),
    )
    n_params = sum(p.numel() for p in model.parameters())
    _log(
        dist,
        f"{out_dir}: {cfg.model.name} ({n_params} parameters, backend {model.backend}"
        f"{'; compiled: the first step compiles' if tcfg.compile else ''}), "
        f"{len(train_set)} train / {len(val_set)} val snapshots, {trainer.steps_per_epoch} "
        f"steps x {tcfg.max_epochs} epochs"
        f"{f' (stops at step {trainer.total_steps})' if tcfg.get('max_steps') else ''}, "
        f"{dist.device}, {dist.world} process(es)",
    )
    if ckpt is not None:
        trainer.load(ckpt)
        pos = trainer.state
        _log(dist, f"resuming at epoch {pos['epoch'] + 1}, step {pos['step']}")
    else:
        _on_main(dist, claim)
    metrics = trainer.fit()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    _log(dist, f"done: val {summary}; checkpoints in {out_dir / 'checkpoints'}")
    return trainer


def main(argv: list[str]) -> int:
    """Entry point of ``tdn train``: ``argv`` are Hydra overrides (``key=value``).

    Returns 0 on success; raises :class:`UserError` for bad input (``tdn`` prints it
    and exits with status 2).
    """
    from omegaconf import OmegaConf

    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    show = "print_config=true" in argv
    overrides = [a for a in argv if a != "print_config=true"]
    cfg = compose_config(overrides)
    resolved = _resolved(cfg)
    if show:
        print(OmegaConf.to_yaml(OmegaConf.create(resolved)), end="")
        return 0
    check_config(resolved)  # before any file is read or written
    dist = _init_distributed(check_device(str(cfg.trainer.device), "trainer.device"))
    try:
        _run(cfg, resolved, dist, overrides)
    finally:
        if dist.active:
            torch_dist.destroy_process_group()
    return 0


def _cli() -> int:
    try:
        return main(sys.argv[1:])
    except UserError as e:
        print(f"tdn train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
