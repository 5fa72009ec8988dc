import shutil
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tdn_script() -> str:
    """The installed ``tdn`` console script: on PATH, or beside this interpreter (a venv
    whose bin/ is not on PATH, as when CI runs .venv/bin/python -m pytest)."""
    beside = Path(sys.executable).parent / "tdn"
    script = shutil.which("tdn") or (str(beside) if beside.exists() else None)
    if script is None:
        pytest.skip("the tdn script is not installed")
    return script


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny TDN trained for a few steps on embedded-tiny."""
    from torch_geometric.loader import DataLoader

    from tdn_data import load_dataset
    from tdn_models import TDN, save_checkpoint, train_steps

    torch.manual_seed(0)
    ds = load_dataset("embedded-tiny")
    model = TDN(lmax=1, channels=8, layers=1, heads=2, num_basis=8, radial_hidden=8,
                backend="path_shared")  # fmt: skip
    model.normalization.fit([ds[i] for i in range(0, len(ds), 5)])
    list(train_steps(model, DataLoader([ds[i] for i in range(8)], batch_size=4), steps=3))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model)


@pytest.fixture(scope="module")
def extxyz(tmp_path_factory) -> Path:
    """Six embedded-tiny frames written by ASE as extxyz."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from tdn_data import load_dataset

    ds = load_dataset("embedded-tiny")
    frames = []
    for i in range(0, len(ds), len(ds) // 6)[:6]:
        s = ds[i]
        atoms = Atoms(numbers=s.z.numpy(), positions=s.pos.numpy())
        atoms.calc = SinglePointCalculator(atoms, energy=float(s.energy), forces=s.forces.numpy())
        frames.append(atoms)
    path = tmp_path_factory.mktemp("xyz") / "frames.extxyz"
    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def molecule(tmp_path_factory) -> Path:
    from ase.build import molecule
    from ase.io import write

    path = tmp_path_factory.mktemp("mol") / "methanol.xyz"
    write(path, molecule("CH3OH"))
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many bad inputs the fuzzer (test_fuzz_cli.py) tried, and how many held."""
    stats = terminalreporter.stats
    reports = [
        r for key in ("passed", "failed") for r in stats.get(key, [])
        if "test_fuzz_cli.py::test_bad_input" in getattr(r, "nodeid", "") and r.when == "call"
    ]  # fmt: skip
    if reports:
        held = sum(r.passed for r in reports)
        terminalreporter.write_line(
            f"fuzzer: {len(reports)} bad inputs tried over every subcommand, {held} refused "
            "cleanly (exit 2, one line, no file touched)"
        )
