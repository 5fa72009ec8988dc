"""Train TDN, MACE and NequIP on the same exported data and budget, then score them all.

Each peer trains with its own command-line trainer in its own venv (``setup.sh``):
``mace_run_train`` and ``nequip-train``; TDN with ``tdn train`` in the project's
``.venv``. Every run has one thread pinned to one core (``--workers`` runs at a time, one
per core), so their wall times compare. Sizes, matched to TDN's RESULTS config (L = 1,
32 channels, 2 interactions, cutoff 4.5 Å, batch 16, float32):

- MACE: max_L 1, 32 channels, 2 interactions, correlation 3, its default loss, schedule
  and learning rate, EMA; per-element E0s = export.py's least-squares references.
  ``mace``: edge harmonics to its default max_ell 3; ``mace-ell1``: max_ell 1, TDN's L;
- NequIP: l_max 1, 32 features, 2 layers (its tutorial config otherwise: Adam 0.01,
  plateau schedule, EMA; per-type shifts = the same references, no ZBL);
- TDN: ``tdn train`` with RESULTS section 3's budget, at section 3's config
  (``tdn-<backend>``), at the best of ablate.py's (``tdn-best-<backend>``:
  ``experiment=tdn-best``, ZBL off as it was then) or at that with ZBL, the default of
  ``tdn train`` since issue 21 (``tdn-zbl-<backend>``). Its one-epoch run is section
  3's own (accuracy.py's), trained once for both sections.

Budgets: ``epochs``: one epoch over all 18,542 training snapshots (the RESULTS budget);
``wall``: as many whole epochs as fit ``--wall-minutes`` (default 15) at the model's
own measured epoch time from its ``epochs`` run, its schedule set for that many epochs.
Trainers that can stop inside an epoch get the budget to the step instead: NequIP stops
on the clock (Lightning's max_time), TDN at the steps that fit at its ``epochs`` run's
time per step (``trainer.max_steps``, its cosine ending there). MACE's trainer counts
whole epochs only.

Everything resumes: a finished stage (timing.json's train_s, a score JSON) is skipped,
and a killed training restarts from its last checkpoint (MACE ``--restart_latest``,
NequIP ``last.ckpt``, TDN ``resume=true``). Results: ``docs/results/peers/<model>-
<budget>-s<seed>/`` (the exact config or command, timing.json, scores/*.json); the full
run folders and every prediction (.npz) stay in ``runs/peers/``.

    python benchmarks/peers/export.py
    python benchmarks/peers/train.py --models mace nequip tdn --budget epochs --seeds 0
    python benchmarks/peers/train.py --models mace-ell1 tdn-cp_eager --budget wall --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "claims"))
import accuracy  # noqa: E402  (TDN's configs and one-epoch runs; pinned runners)
from _repo import copy_portable, portable, repo_relative  # noqa: E402
from accuracy import _run, report_failures, run_pinned  # noqa: E402
from score import cpu_name  # noqa: E402

from tdn_cli._util import write_json  # noqa: E402  (atomic)

DATA = ROOT / "runs" / "peers" / "data"
SCRATCH = ROOT / "runs" / "peers"
OUT = ROOT / "docs" / "results" / "peers"
VENV = {"mace": HERE / ".venv-mace", "nequip": HERE / ".venv-nequip", "tdn": ROOT / ".venv"}
KIND = {
    "mace": "mace",
    "mace-ell1": "mace",
    "nequip": "nequip",
    "tdn-cp_eager": "tdn",
    "tdn-path_shared": "tdn",
    "tdn-best-cp_eager": "tdn",
    "tdn-best-path_shared": "tdn",
    "tdn-zbl-cp_eager": "tdn",
    "tdn-zbl-path_shared": "tdn",
}
#: spherical harmonics of the edges: MACE's default (3), or TDN's and NequIP's L (1)
MACE_ELL = {"mace": 3, "mace-ell1": 1}
SETS = ["test", "ood_md17_ethanol", "ood_md17_aspirin", "ood_iso17"]
#: matched sizes (see the module docstring)
CUTOFF, CHANNELS, LAYERS, BATCH = 4.5, 32, 2, 16


def _meta() -> dict:
    path = DATA / "meta.json"
    if not path.exists():
        raise SystemExit(f"{path} missing: run `python benchmarks/peers/export.py` first")
    return json.loads(path.read_text())


def _venv_bin(model: str, name: str) -> str:
    path = VENV[model.split("-")[0]] / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path} missing: run `bash benchmarks/peers/setup.sh`")
    return str(path)


def mace_command(model: str, run_dir: Path, seed: int, epochs: int, meta: dict) -> list[str]:
    e0 = "{" + ", ".join(f"{z}: {e!r}" for z, e in meta["e0_eV"].items()) + "}"
    return [
        _venv_bin("mace", "mace_run_train"),
        "--name=mace",
        f"--seed={seed}",
        f"--work_dir={run_dir}",
        f"--train_file={DATA / 'train.extxyz'}",
        f"--valid_file={DATA / f'val-s{seed}.extxyz'}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        f"--E0s={e0}",
        "--model=MACE",
        f"--num_channels={CHANNELS}",
        "--max_L=1",
        f"--max_ell={MACE_ELL[model]}",
        f"--num_interactions={LAYERS}",
        "--correlation=3",
        f"--r_max={CUTOFF}",
        f"--batch_size={BATCH}",
        "--valid_batch_size=32",
        f"--max_num_epochs={epochs}",
        "--eval_interval=1",
        "--ema",
        "--ema_decay=0.99",
        "--default_dtype=float32",
        "--device=cpu",
        "--restart_latest",
        "--plot=False",  # its plots evaluate the whole training set once more
    ]


def nequip_config(run_dir: Path, seed: int, epochs: int | None, meta: dict, wall_s: float) -> dict:
    """nequip-train's config (its tutorial's, at the matched size, for molecules on a CPU).

    ``epochs=None``: train for ``wall_s`` seconds by Lightning's own ``max_time`` (its
    plateau schedule does not need the epoch count in advance)."""
    from ase.data import chemical_symbols

    types = [chemical_symbols[z] for z in meta["elements"]]
    shifts = {chemical_symbols[int(z)]: e for z, e in meta["e0_eV"].items()}
    monitored = "val0_epoch/weighted_sum"
    metrics = {
        "_target_": "nequip.train.EnergyForceMetrics",
        "coeffs": {"per_atom_energy_mae": 1.0, "forces_mae": 1.0},
    }
    transforms = [
        {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
         "model_type_names": types},
        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": CUTOFF},
    ]  # fmt: skip
    return {
        "run": ["train"],
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": seed,
            "train_file_path": str(DATA / "train.extxyz"),
            "val_file_path": str(DATA / f"val-s{seed}.extxyz"),
            "key_mapping": {"REF_energy": "total_energy", "REF_forces": "forces"},
            "transforms": transforms,
            "train_dataloader": {
                "_target_": "torch.utils.data.DataLoader",
                "batch_size": BATCH,
                "shuffle": True,
            },
            "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 32},
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": types,
                "dataloader_kwargs": {"batch_size": 32},
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            **(
                {"max_epochs": epochs}
                if epochs is not None
                else {"max_epochs": 10_000, "max_time": _dd_hh_mm_ss(wall_s)}
            ),
            "enable_progress_bar": False,
            "log_every_n_steps": 50,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(run_dir)},
            "callbacks": [
                # best.ckpt on the validation metric; last.ckpt every 100 steps, to resume
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": monitored,
                    "dirpath": str(run_dir),
                    "filename": "best",
                },
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "dirpath": str(run_dir),
                    "filename": "last",
                    "every_n_train_steps": 100,
                    "enable_version_counter": False,
                },
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": 0.99,
            "loss": {
                "_target_": "nequip.train.EnergyForceLoss",
                "per_atom_energy": True,
                "coeffs": {"total_energy": 1.0, "forces": 1.0},
            },
            "val_metrics": metrics,
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.01},
            "lr_scheduler": {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "factor": 0.6,
                    "patience": 5,
                    "threshold": 0.2,
                    "min_lr": 1e-6,
                },
                "monitor": monitored,
                "interval": "epoch",
                "frequency": 1,
            },
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": seed,
                "model_dtype": "float32",
                "type_names": types,
                "r_max": CUTOFF,
                "num_bessels": 8,
                "polynomial_cutoff_p": 6,
                "num_layers": LAYERS,
                "l_max": 1,
                "parity": True,
                "num_features": CHANNELS,
                "radial_mlp_depth": 2,
                "radial_mlp_width": 64,
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_scales": "${training_data_stats:per_type_forces_rms}",
                "per_type_energy_shifts": shifts,
                "per_type_energy_scales_trainable": False,
                "per_type_energy_shifts_trainable": False,
            },
        },
    }


def _dd_hh_mm_ss(seconds: float) -> str:
    """Lightning's string form of ``max_time`` (Hydra's dicts do not reach it as one)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def nequip_command(
    run_dir: Path, seed: int, epochs: int | None, meta: dict, wall_s: float
) -> list[str]:
    import yaml

    config = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(nequip_config(run_dir, seed, epochs, meta, wall_s), sort_keys=False)
    )
    cmd = [_venv_bin("nequip", "nequip-train"), "-cp", str(run_dir), "-cn", "config"]
    cmd.append(f"hydra.run.dir={run_dir}")
    if (run_dir / "last.ckpt").exists():
        cmd.append(f"++ckpt_path={run_dir / 'last.ckpt'}")
    return cmd


def tdn_steps_per_epoch(model: str, seed: int) -> int:
    """Optimizer steps in one epoch of ``model``: the train rows of its one-epoch run's
    committed metrics.csv (accuracy.py's run, which is this harness's ``epochs`` run)."""
    rows = (accuracy.OUT / f"{model}-s{seed}" / "metrics.csv").read_text().splitlines()
    return sum(",train," in r for r in rows)


def tdn_command(model: str, run_dir: Path, seed: int, epochs: float) -> list[str]:
    """``tdn train`` for ``model``: section 3's config (``tdn-<backend>``) or the best one
    (``tdn-best-<backend>``), at the RESULTS budget but ``epochs`` epochs; a fraction
    ends at its step (``trainer.max_steps``)."""
    overrides = [o for o in accuracy.MODELS[model][0] if not o.startswith("trainer.max_epochs=")]
    cmd = [_venv_bin("tdn", "tdn"), "train", *overrides]
    cmd.append(f"trainer.max_epochs={math.ceil(epochs)}")
    if epochs != int(epochs):
        steps = round(epochs * tdn_steps_per_epoch(model, seed))
        cmd.append(f"trainer.max_steps={steps}")
    cmd += [f"seed={seed}", f"output_dir={repo_relative(run_dir)}"]
    if (run_dir / "checkpoints" / "last.pt").exists():
        cmd.append("resume=true")
    return cmd


def mace_train_seconds(run_dir: Path, seed: int) -> float:
    """Seconds from mace_run_train's first log line to its saved model: after that it
    evaluates the whole training and validation sets for its error table (10 min here),
    which is not training (tdn train and nequip-train only validate)."""
    from datetime import datetime

    stamps = []
    log = run_dir / "logs" / f"mace_run-{seed}.log"  # its run tag ends in the seed
    for line in log.read_text().splitlines():
        if line[:4].isdigit() and (not stamps or "Saving model to" in line):
            stamps.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f"))
            if len(stamps) == 2:
                return (stamps[1] - stamps[0]).total_seconds()
    raise RuntimeError(f"{log}: no 'Saving model to' line")


def trained_epochs(run_dir: Path) -> float:
    """Epochs nequip-train ran before its clock stopped it, from Lightning's CSV log: the
    step of its last validation (Lightning validates once more when it stops) over the
    steps of one epoch (the step of the first)."""
    import csv

    with open(run_dir / "lightning_logs" / "version_0" / "metrics.csv") as f:
        steps = [int(r["step"]) + 1 for r in csv.DictReader(f) if r["val0_epoch/weighted_sum"]]
    return round(steps[-1] / steps[0], 2)


def trained_model(model: str, run_dir: Path) -> Path:
    if model.startswith("mace"):
        return run_dir / "mace.model"
    if model == "nequip":
        return run_dir / "best.ckpt"
    return run_dir / "checkpoints" / "best.pt"


def epochs_for(model: str, budget: str, seed: int, wall_minutes: float) -> float | None:
    """Epochs to train; ``None``: the trainer stops itself at the wall budget (NequIP).

    MACE gets the whole epochs that fit at its ``epochs`` run's time, TDN the steps that
    fit (a fraction of an epoch: steps over steps per epoch). That time includes the
    trainer's start (NequIP: 75 s of 183 s), so for a trainer that can stop on the
    clock, its own stop is the fairer rule."""
    if budget == "epochs":
        return 1
    if model == "nequip":
        return None
    # TDN's one-epoch run is accuracy.py's (committed for every seed); the others' are ours
    tdn = KIND[model] == "tdn"
    ref = accuracy.OUT / f"{model}-s{seed}" if tdn else OUT / f"{model}-epochs-s{seed}"
    ref /= "timing.json"
    if not ref.exists():
        raise RuntimeError(f"budget wall needs the epoch time of {ref.parent.name}: train it first")
    epoch_s = json.loads(ref.read_text())["train_s"]
    if tdn:
        per_epoch = tdn_steps_per_epoch(model, seed)
        return max(1, math.floor(wall_minutes * 60 / epoch_s * per_epoch)) / per_epoch
    return max(1, math.floor(wall_minutes * 60 / epoch_s))


def job(model: str, budget: str, seed: int, cpu: int, wall_minutes: float) -> None:
    """Train (or resume) one (model, budget, seed) on core ``cpu``, then score it."""
    name = f"{model}-{budget}-s{seed}"
    run_dir, out = SCRATCH / name, OUT / name
    out.mkdir(parents=True, exist_ok=True)
    log = SCRATCH / f"{name}.log"
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    if budget == "epochs" and KIND[model] == "tdn" and model in accuracy.MODELS:
        # TDN's one-epoch run is RESULTS section 3's (accuracy.py): trained once, for both
        run_dir = accuracy.SCRATCH / f"{model}-s{seed}"
        if "train_s" not in timing:
            accuracy.job(model, seed, cpu)
            same = json.loads((accuracy.OUT / f"{model}-s{seed}" / "timing.json").read_text())
            timing = {"wall_s": same["train_s"], "epochs": 1, "cpu": cpu_name(), "threads": 1}
            timing.update(train_s=same["train_s"], same_run_as=f"accuracy/{model}-s{seed}")
            if same.get("resumed"):
                timing["resumed"] = True
            write_json(timing_path, timing)
    if "train_s" not in timing:
        epochs = epochs_for(model, budget, seed, wall_minutes)
        if budget == "wall" and epochs == 1:
            # one epoch is the smallest unit: this is the `epochs` run, trained once
            same = OUT / f"{model}-epochs-s{seed}"
            shutil.copytree(same, out, dirs_exist_ok=True)
            timing = json.loads((same / "timing.json").read_text())
            write_json(timing_path, {**timing, "same_run_as": same.name})
            print(f"[cpu {cpu}] {name}: one epoch fits at most, the run of {same.name}")
            return
        meta = _meta()
        resumed = run_dir.exists()  # before nequip_command writes its config there
        if model.startswith("mace"):
            cmd = mace_command(model, run_dir, seed, epochs, meta)
        elif model == "nequip":
            cmd = nequip_command(run_dir, seed, epochs, meta, wall_minutes * 60)
        else:
            cmd = tdn_command(model, run_dir, seed, epochs)
        length = f"{epochs:.3g} epoch(s)" if epochs else f"{wall_minutes:g} min"
        print(f"[cpu {cpu}] train {name} ({length}{', resume' if resumed else ''})", flush=True)
        (out / "command.txt").write_text(portable(shlex.join(cmd)) + "\n")
        if model == "nequip":
            copy_portable(run_dir / "config.yaml", out / "config.yaml")
        seconds = _run(cmd, cpu, log)
        if epochs is None:
            epochs = trained_epochs(run_dir)
        timing = {"wall_s": seconds, "epochs": round(epochs, 3), "cpu": cpu_name(), "threads": 1}
        if resumed:  # its times count only the part after the interruption
            timing["resumed"] = True
        if model.startswith("mace"):
            seconds = mace_train_seconds(run_dir, seed)
        timing["train_s"] = seconds
        write_json(timing_path, timing)
    if model.startswith("tdn"):
        copy_portable(run_dir / "config.yaml", out / "config.yaml")
        if budget == "wall":  # committed (356 KB); the epochs run's is accuracy.py's
            shutil.copy2(trained_model(model, run_dir), out / "best.pt")
    scores = run_dir / "scores"
    cmd = [_venv_bin(model, "python"), str(HERE / "score.py"), f"--kind={KIND[model]}"]
    model_file = repo_relative(trained_model(model, run_dir))
    cmd += [f"--model={model_file}", f"--data={repo_relative(DATA)}", f"--out={scores}"]
    if any(not (scores / f"{s}.json").exists() for s in SETS):
        print(f"[cpu {cpu}] score {name}", flush=True)
        t0 = time.perf_counter()
        _run([*cmd, "--sets", *SETS], cpu, log)
        timing["score_s"] = timing.get("score_s", 0.0) + time.perf_counter() - t0
        write_json(timing_path, timing)
    (out / "scores").mkdir(exist_ok=True)
    for s in SETS:
        shutil.copy2(scores / f"{s}.json", out / "scores" / f"{s}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/peers/train.py --models mace tdn-cp_eager "
        "--budget epochs --seeds 0",
    )
    p.add_argument("--models", nargs="+", default=list(KIND), choices=list(KIND))
    p.add_argument("--budget", choices=("epochs", "wall"), default="epochs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--wall-minutes", type=float, default=15.0)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--cpus", nargs="+", type=int, help="cores to pin to (default: all)")
    args = p.parse_args(argv)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    tasks = [(model, seed) for model in args.models for seed in args.seeds]
    failures = run_pinned(
        tasks,
        lambda model, seed, cpu: job(model, args.budget, seed, cpu, args.wall_minutes),
        lambda model, seed: f"{model}-{args.budget}-s{seed}",
        args.workers,
        args.cpus or sorted(os.sched_getaffinity(0)),
        SCRATCH,
        errors=(subprocess.CalledProcessError, RuntimeError),
    )
    return report_failures(failures)


if __name__ == "__main__":
    sys.exit(main())
