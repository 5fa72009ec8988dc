"""Claim 3 (docs/RESULTS.md): TDN keeps the accuracy of exact equivariant networks.

Trains TDN with ``cp_eager`` and with its exact twin ``path_shared`` (identical config
and seeds), SchNet and the e3nn-based NequIP-style baseline, several seeds each, with
``tdn train`` on the embedded dataset (split by molecule), then ``tdn eval`` on the test
molecules and, as an out-of-distribution sanity check, on the MD17/ISO17 fixtures
(DFT labels, another level of theory: reported, never tuned on).

Every job runs as its own ``tdn train`` / ``tdn eval`` process with one thread, pinned
to one core, ``--workers`` at a time, so training times are comparable across models.
Each stage is skipped when its output exists and a killed training run is resumed
(``resume=true``), so rerunning the same command after an interruption loses nothing.

    python benchmarks/claims/accuracy.py                    # everything, 2 workers
    python benchmarks/claims/accuracy.py --models schnet --seeds 0
    python benchmarks/claims/accuracy.py --models qm9-tdn-cp_eager qm9-tdn-path_shared \
        --seeds 0 --workers 1                               # QM9, energies only

Writes ``docs/results/accuracy/<model>-s<seed>/``: config.yaml, metrics.csv,
loss_curve.png, test.json, ood_*.json, timing.json, and best.pt for the TDN runs; the
full run folders (TensorBoard, last.pt) stay in ``runs/claims/``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _repo import ROOT, repo_relative

from tdn_cli._util import write_json  # atomic: a kill never leaves half a file

OUT = ROOT / "docs" / "results" / "accuracy"
SCRATCH = ROOT / "runs" / "claims"
TDN = str(Path(sys.executable).with_name("tdn"))

#: the budget, the same for every model: one epoch over all 18,542 training snapshots
#: (1,158 steps of 16), validation on 1,000 snapshots of the validation molecules
BUDGET = [
    "trainer.max_epochs=1",
    "data.max_train_samples=null",
    "data.max_val_samples=1000",
    "trainer.checkpoint_every=100",
    "trainer.progress=false",
]
#: QM9 (energies only, no forces): one epoch over a seeded 20,000-molecule subset of
#: the training split (1,250 steps of 16)
QM9_BUDGET = [
    "data=path",
    "data.source=qm9",
    "trainer.force_weight=0",
    "trainer.max_epochs=1",
    "data.max_train_samples=20000",
    "data.max_val_samples=1000",
    "trainer.checkpoint_every=100",
    "trainer.progress=false",
]
SHARED = ROOT.parent / "shared" / "data"
#: out-of-distribution fixtures: (tag, file, tdn eval options)
OOD = [
    ("ood_md17_ethanol", "md17_ethanol_20.db", ["--energy-unit", "kcal/mol"]),
    ("ood_md17_aspirin", "md17_aspirin_15.extxyz", ["--energy-unit", "kcal/mol"]),
    ("ood_iso17", "iso17_40.db", ["--energy-key", "total_energy", "--forces-key", "atomic_forces"]),
]
EMBEDDED_EVALS = [("test", "embedded", ["--split", "test"])] + [
    (tag, str(SHARED / f), opts) for tag, f, opts in OOD
]
#: CP-trained weights run unchanged on the exact twin: how much of the error is CP's
TWIN_EVALS = [
    *EMBEDDED_EVALS,
    ("test_on_path_shared", "embedded", ["--split", "test", "--backend", "path_shared"]),
]
QM9_EVALS = [("test", "qm9", ["--split", "test", "--max-samples", "5000"])]
#: model name -> (its `tdn train` overrides, its evaluations); the TDN pairs differ
#: only in the backend
#: the training config of this section's runs, pinned: `tdn train`'s defaults have since
#: become RESULTS section 5's best config (``experiment=tdn-best``)
RESULTS_TRAINER = [
    "trainer.batch_size=16",
    "trainer.optimizer.lr=2e-3",
    "trainer.energy_weight=100",
    "trainer.force_weight=10",
]
#: ZBL became TDN's default after these runs (issue 21): pinned off for them
RESULTS_TDN = ["model=tdn", "model.channels=32", "model.zbl=false", *RESULTS_TRAINER]
BEST_TDN = ["model=tdn", "experiment=tdn-best", "model.zbl=false"]
#: the default of `tdn train` since issue 21: section 5.1's best config with ZBL
ZBL_TDN = ["model=tdn", "experiment=tdn-best"]
MODELS = {
    "tdn-cp_eager": ([*RESULTS_TDN, "backend=cp_eager", *BUDGET], TWIN_EVALS),
    "tdn-path_shared": ([*RESULTS_TDN, "backend=path_shared", *BUDGET], EMBEDDED_EVALS),
    "schnet": (["model=schnet", *RESULTS_TRAINER, *BUDGET], EMBEDDED_EVALS),
    "nequip": (["model=nequip", "model.channels=32", *RESULTS_TRAINER, *BUDGET], EMBEDDED_EVALS),
    "qm9-tdn-cp_eager": ([*RESULTS_TDN, "backend=cp_eager", *QM9_BUDGET], QM9_EVALS),
    "qm9-tdn-path_shared": ([*RESULTS_TDN, "backend=path_shared", *QM9_BUDGET], QM9_EVALS),
    "tdn-best-cp_eager": ([*BEST_TDN, "backend=cp_eager", *BUDGET], TWIN_EVALS),
    "tdn-best-path_shared": ([*BEST_TDN, "backend=path_shared", *BUDGET], EMBEDDED_EVALS),
    "tdn-zbl-cp_eager": ([*ZBL_TDN, "backend=cp_eager", *BUDGET], TWIN_EVALS),
    "tdn-zbl-path_shared": ([*ZBL_TDN, "backend=path_shared", *BUDGET], EMBEDDED_EVALS),
}
DEFAULT_MODELS = ["tdn-cp_eager", "tdn-path_shared", "schnet", "nequip"]
#: files of a finished run that are committed (checkpoints only for TDN)
KEEP = ("config.yaml", "metrics.csv", "loss_curve.png")


def _run(cmd: list[str], cpu: int, log: Path) -> float:
    """Run ``cmd`` with one thread pinned to ``cpu``; its output goes to ``log``.
    Returns the wall time (s); raises CalledProcessError on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(
            cmd,
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
    return time.perf_counter() - t0


def job(model: str, seed: int, cpu: int) -> None:
    """Train (or resume), then evaluate one (model, seed) on core ``cpu``."""
    name = f"{model}-s{seed}"
    run_dir, out = SCRATCH / name, OUT / name
    out.mkdir(parents=True, exist_ok=True)
    log = SCRATCH / f"{name}.log"
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    best = run_dir / "checkpoints" / "best.pt"
    if "train_s" not in timing:
        overrides = [*MODELS[model][0], f"seed={seed}", f"output_dir={repo_relative(run_dir)}"]
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start over
        print(f"[cpu {cpu}] train {name}{' (resume)' if resume else ''}", flush=True)
        seconds = _run([TDN, "train", *overrides, *(["resume=true"] if resume else [])], cpu, log)
        # a resumed run's time counts only the part after the interruption
        timing = {"train_s": seconds, "resumed": resume}
        write_json(timing_path, timing)
    for fname in KEEP:
        shutil.copy2(run_dir / fname, out / fname)
    if "tdn" in model:
        shutil.copy2(best, out / "best.pt")
    for tag, data, opts in MODELS[model][1]:
        target = out / f"{tag}.json"
        if target.exists():
            continue
        print(f"[cpu {cpu}] eval {name} on {tag}", flush=True)
        cmd = [TDN, "eval", str(best), data, *opts, "--json", str(target)]
        cmd += ["--plot", str(out / f"{tag}_parity.png")] if tag == "test" else ["--no-plot"]
        seconds = _run(cmd, cpu, log)
        timing[f"eval_{tag}_s"] = seconds
        write_json(timing_path, timing)


def throughput(models: list[str], seed: int, batches: int, cpu: int) -> dict:
    """Inference (energy + forces) speed of each model's ``seed`` checkpoint, in this
    process on core ``cpu`` with one thread, on the same ``batches`` batches of 16 test
    snapshots: median ms per batch and atoms/s. Models run one after the other, so their
    ratios are comparable."""
    import torch
    from torch_geometric.loader import DataLoader

    from tdn_cli._timing import median_ms
    from tdn_data import load_dataset
    from tdn_models import load_checkpoint
    from tdn_models._malloc import retain_freed_memory

    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    retain_freed_memory()  # as tdn train/bench do
    test = load_dataset("embedded", split="test")
    picks = np.linspace(0, len(test) - 1, 16 * batches).astype(int).tolist()
    loader = list(DataLoader([test[i] for i in picks], batch_size=16))
    atoms = sum(b.num_nodes for b in loader)
    rows = {}
    for model in models:
        path = SCRATCH / f"{model}-s{seed}" / "checkpoints" / "best.pt"
        net, _ = load_checkpoint(path)

        def infer(net=net):
            for b in loader:
                net(b, forces=True)

        ms = median_ms(infer, repeats=3, warmup=1)
        rows[model] = {
            "parameters": sum(p.numel() for p in net.parameters()),
            "ms_per_batch": ms / len(loader),
            "atoms_per_s": atoms / (ms * 1e-3),
        }
        print(f"{model}: {rows[model]['atoms_per_s']:.0f} atoms/s", flush=True)
    return {"batches": len(loader), "batch_size": 16, "atoms": atoms, "threads": 1, "models": rows}


def run_pinned(
    tasks: list[tuple],
    run: Callable[..., None],
    name: Callable[..., str],
    workers: int,
    cpus: list[int],
    logs: Path,
    errors: tuple[type[Exception], ...] = (subprocess.CalledProcessError,),
) -> list[str]:
    """Run ``run(*task, cpu)`` for every task, ``workers`` at a time, worker i on core
    ``cpus[i % len(cpus)]``; returns one line per failed task (``name(*task)``: why, and
    the folder ``logs`` of its log)."""
    jobs: queue.Queue = queue.Queue()
    for task in tasks:
        jobs.put(task)
    failures: list[str] = []

    def worker(cpu: int) -> None:
        while True:
            try:
                task = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                run(*task, cpu)
            except errors as e:
                failures.append(f"{name(*task)}: {e} (log in {logs})")

    threads = [threading.Thread(target=worker, args=(cpus[i % len(cpus)],)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def report_failures(failures: list[str]) -> int:
    """Print ``run_pinned``'s failures to stderr; the exit status: 1 if any, else 0."""
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument(
        "--throughput-batches",
        type=int,
        default=20,
        help="test batches (of 16) for the inference timing; 0: skip it",
    )
    args = p.parse_args(argv)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    # slow models first, so the workers finish together
    tasks = [(model, seed) for model in args.models for seed in args.seeds]
    cpus = sorted(os.sched_getaffinity(0))
    failures = run_pinned(
        tasks, job, lambda model, seed: f"{model}-s{seed}", args.workers, cpus, SCRATCH
    )
    if report_failures(failures):
        return 1
    if args.throughput_batches:
        seed = args.seeds[0]
        models = [m for m in args.models if MODELS[m][1] is not QM9_EVALS]
        if models:
            result = throughput(models, seed, args.throughput_batches, cpus[0])
            write_json(OUT / "throughput.json", {"seed": seed, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
