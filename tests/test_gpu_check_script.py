"""scripts/gpu_check.sh, the one prepared check for a GPU machine, in its --dry-run:
the same steps at tiny sizes on this CPU (Triton's interpreter standing in for CUDA)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_result_and_checks_them(tmp_path):
    out = tmp_path / "check"
    run = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gpu_check: passed" in run.stdout
    for name in ("machine.json", "tests.xml", "bench_tp.json", "bench_model.json"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "bench_tp.json").read_text())["results"]
    assert {"cp_triton", "cp_eager", "path_shared"} <= {r["backend"] for r in rows}
    assert json.loads((out / "machine.json").read_text())["commit"]


def test_gpu_check_refuses_unknown_arguments_and_a_machine_without_cuda():
    run = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "unknown argument --bogus" in run.stderr
    import torch

    if torch.cuda.is_available():
        return  # a GPU machine: the real check would run
    run = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 1 and "torch sees no CUDA device here" in run.stderr
