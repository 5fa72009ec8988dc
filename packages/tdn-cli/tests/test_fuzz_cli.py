"""A fuzzer for the ``tdn`` command: bad input of every kind, to every subcommand.

Every case is an argv, valid but for one bad value or file, run in-process in a folder
of inputs and existing outputs (``fuzzdir``). Each must: exit with status 2;
print one line on stderr, ``tdn <subcommand>: error: ...``, and no traceback; leave
every file as it was and create none; and take under 10 s. The numeric cases are drawn
by a seeded generator, a fixed number per option (:data:`DRAWS`), so CI's time stays
bounded; the file cases are listed. The summary at the end says how many ran.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import digest, run

from tdn_cli._schema import LMAX, POSITIVE, SECONDS, TRAIN, Rule, integer, number

#: bad values drawn per option; the generator's seed
DRAWS, SEED = 4, 19
#: the longest a refusal may take (s)
LIMIT_S = 10.0

#: per subcommand: an argv that would run, and its options' rules (the fuzzer breaks one)
OPTIONS: dict[str, tuple[list[str], dict[str, Rule]]] = {
    "bench": (
        ["bench", "--backend", "cp_eager", "--lmax", "1", "--edges", "8", "--channels", "4",
         "--repeats", "1", "--json", "out.json", "--plot", "out.png"],
        {"--lmax": LMAX, "--edges": POSITIVE, "--channels": POSITIVE, "--repeats": POSITIVE,
         "--max-seconds": SECONDS, "--molecules": POSITIVE},
    ),
    "eval": (
        ["eval", "model.pt", "frames.extxyz", "--plot", "out.png", "--json", "out.json"],
        {"--batch-size": POSITIVE, "--max-samples": POSITIVE},
    ),
    "md": (
        ["md", "model.pt", "mol.xyz", "--out", "out.traj", "--steps", "2"],
        {"--steps": POSITIVE, "--timestep": number(0, above=True), "--temperature": number(0),
         "--friction": number(0), "--seed": integer(0), "--interval": POSITIVE},
    ),
    "relax": (
        ["relax", "model.pt", "mol.xyz", "--out", "out.traj", "--steps", "2"],
        {"--fmax": number(0, above=True), "--steps": POSITIVE},
    ),
    "fit-cp": (
        ["fit-cp", "--lmax", "1", "--json", "out.json"],
        {"--lmax": LMAX, "--lmax-sh": LMAX, "--lmax-out": LMAX, "--tol": number(0, 1, above=True)},
    ),
    "data generate": (
        ["data", "generate", "generated"],
        {"--molecules": POSITIVE, "--first": integer(0), "--shard-size": POSITIVE,
         "--processes": integer(0), "--seed": integer(0), "--fmax": number(0, above=True),
         "--max-steps": POSITIVE, "--displacement": number(0), "--max-atoms": POSITIVE},
    ),
}  # fmt: skip


def bad_values(rule: Rule, rng: random.Random) -> list[str]:
    """``DRAWS`` texts ``rule`` refuses: out of range, non-finite, of the wrong type."""
    pool = ["x", "", "1e", "--", "nan", "inf", "-inf", "[1]"]
    if rule.kind == "int":
        pool += ["1.5", "2e3", "True"]
    if rule.kind == "choice":
        pool = ["nope", "CPU", "0"]
    if rule.kind == "bool":
        pool = ["maybe", "2", "'true'"]
    if rule.low is not None:
        pool.append(
            str(
                rule.low
                - (rng.randint(1, 10**6) if rule.kind == "int" else rng.random() * 1e3 + 1e-9)
            )
        )
        if rule.open_low:
            pool.append(str(rule.low))
    if rule.high is not None:
        pool.append(
            str(rule.high + (rng.randint(1, 10**6) if rule.kind == "int" else rng.random() + 1e-6))
        )
    picked = rng.sample(pool, min(DRAWS, len(pool)))
    assert not any(rule.ok(_parsed(rule, v)) for v in picked), picked  # the fuzzer's own check
    return picked


def _parsed(rule: Rule, text: str):
    try:
        return rule.arg(text)
    except Exception:
        return object()  # refused: never ok


def _numeric_cases() -> dict[str, list[str]]:
    rng = random.Random(SEED)
    cases = {}
    for sub, (base, rules) in OPTIONS.items():
        for option, rule in rules.items():
            for value in bad_values(rule, rng):
                argv = list(base)
                if option in argv:
                    argv[argv.index(option) + 1] = value
                else:
                    argv += [option, value]
                cases[f"{sub} {option}={value!r}"] = argv
    for key, rule in TRAIN.items():
        if rule.kind == "choice":
            values = ["nope"]
        elif rule.kind == "bool":
            values = ["maybe"]
        else:
            values = [v for v in bad_values(rule, rng) if v not in ("", "--", "[1]", "True")][:2]
        for value in values:  # Hydra parses the text: nan, inf, 1.5 and x stay what they are
            cases[f"train {key}={value}"] = ["train", f"{key}={value}", "output_dir=run"]
    return cases


#: (subcommand argv, the files it names), every one a bad file
FILE_CASES = {
    "missing checkpoint": ["eval", "missing.pt", "frames.extxyz", "--plot", "out.png"],
    "missing data": ["eval", "model.pt", "missing.extxyz", "--plot", "out.png"],
    "newer checkpoint": ["eval", "newer.pt", "frames.extxyz", "--plot", "out.png",
                         "--json", "out.json"],
    "empty dataset": ["eval", "model.pt", "empty.extxyz", "--plot", "out.png"],
    "no energies": ["eval", "model.pt", "no_energy.xyz", "--plot", "out.png"],
    "eval unknown backend": ["eval", "model.pt", "frames.extxyz", "--backend", "nope",
                             "--plot", "out.png"],
    "eval unit on embedded": ["eval", "model.pt", "embedded-tiny", "--energy-unit",
                              "kcal/mol", "--plot", "out.png", "--json", "out.json"],
    "eval unknown unit": ["eval", "model.pt", "frames.extxyz", "--energy-unit", "furlong",
                          "--plot", "out.png"],
    "bench unknown backend": ["bench", "--backend", "cp_eager", "nope", "--json", "out.json",
                              "--plot", "out.png"],
    "md newer checkpoint": ["md", "newer.pt", "mol.xyz", "--out", "out.traj"],
    "md unknown backend": ["md", "model.pt", "mol.xyz", "--backend", "nope", "--out", "out.traj"],
    "md missing structure": ["md", "model.pt", "missing.xyz", "--out", "out.traj"],
    "relax empty structure": ["relax", "model.pt", "empty.extxyz", "--out", "out.traj"],
    "relax missing checkpoint": ["relax", "missing.pt", "mol.xyz", "--out", "out.traj"],
    "convert onto existing": ["data", "convert", "frames.extxyz", "out.extxyz"],
    "convert empty": ["data", "convert", "empty.extxyz", "out.extxyz", "--overwrite"],
    "convert unknown format": ["data", "convert", "frames.extxyz", "out.png"],
    "inspect missing": ["data", "inspect", "missing.lmdb", "--json", "out.json"],
    "fit-cp bad rank": ["fit-cp", "--lmax", "1", "--rank", "0", "--json", "out.json"],
    "fit-cp bad tol": ["fit-cp", "--lmax", "1", "--tol", "1.5", "--json", "out.json"],
    "eval truncated checkpoint": ["eval", "truncated.pt", "frames.extxyz", "--plot", "out.png"],
    "eval random checkpoint": ["eval", "random.pt", "frames.extxyz", "--plot", "out.png"],
    "eval pickled object": ["eval", "pickle.pt", "frames.extxyz", "--plot", "out.png"],
    "eval directory as checkpoint": ["eval", "folder", "frames.extxyz", "--plot", "out.png"],
    "eval corrupt lmdb": ["eval", "model.pt", "corrupt.lmdb", "--plot", "out.png"],
    "eval NaN positions": ["eval", "model.pt", "nan_pos.extxyz", "--plot", "out.png"],
    "eval NaN forces": ["eval", "model.pt", "nan_forces.extxyz", "--plot", "out.png"],
    "eval close contact": ["eval", "model.pt", "close.extxyz", "--plot", "out.png"],
    "eval beyond the cutoff": ["eval", "model.pt", "far.extxyz", "--plot", "out.png"],
    "eval untrained element": ["eval", "model.pt", "alien.extxyz", "--plot", "out.png"],
    "eval no such device": ["eval", "model.pt", "frames.extxyz", "--device", "cuda:7",
                            "--plot", "out.png"],
    "md truncated checkpoint": ["md", "truncated.pt", "mol.xyz", "--out", "out.traj"],
    "md NaN positions": ["md", "model.pt", "nan_pos.extxyz", "--out", "out.traj"],
    "md close contact": ["md", "model.pt", "close.extxyz", "--out", "out.traj"],
    "md beyond the cutoff": ["md", "model.pt", "far.extxyz", "--out", "out.traj"],
    "md untrained element": ["md", "model.pt", "alien.extxyz", "--out", "out.traj"],
    "md empty periodic cell": ["md", "model.pt", "emptycell.traj", "--out", "out.traj"],
    "md directory as structure": ["md", "model.pt", "folder", "--out", "out.traj"],
    "relax pickled object": ["relax", "pickle.pt", "mol.xyz", "--out", "out.traj"],
    "relax NaN positions": ["relax", "model.pt", "nan_pos.extxyz", "--out", "out.traj"],
    "relax close contact": ["relax", "model.pt", "close.extxyz", "--out", "out.traj"],
    "relax beyond the cutoff": ["relax", "model.pt", "far.extxyz", "--out", "out.traj"],
    "relax untrained element": ["relax", "model.pt", "alien.extxyz", "--out", "out.traj"],
    "relax empty periodic cell": ["relax", "model.pt", "emptycell.traj", "--out", "out.traj"],
    "inspect corrupt lmdb": ["data", "inspect", "corrupt.lmdb", "--json", "out.json"],
    "inspect NaN positions": ["data", "inspect", "nan_pos.extxyz", "--json", "out.json"],
    "convert NaN forces": ["data", "convert", "nan_forces.extxyz", "converted.extxyz"],
    "convert corrupt lmdb": ["data", "convert", "corrupt.lmdb", "converted.extxyz"],
    "bench no such device": ["bench", "--backend", "cp_eager", "--device", "cuda:7"],
    "train no such device": ["train", "trainer.device=cuda", "output_dir=run"],
    "train missing data": ["train", "data=path", "data.source=missing.lmdb",
                           "output_dir=run"],
    "train unreadable data": ["train", "data=path", "data.source=locked.lmdb",
                              "output_dir=run"],
    "eval unreadable checkpoint": ["eval", "locked.pt", "frames.extxyz", "--plot", "out.png"],
    "eval unreadable data": ["eval", "model.pt", "locked.extxyz", "--plot", "out.png"],
    "md unreadable checkpoint": ["md", "locked.pt", "mol.xyz", "--out", "out.traj"],
    "md unreadable structure": ["md", "model.pt", "locked.extxyz", "--out", "out.traj"],
    "relax unreadable checkpoint": ["relax", "locked.pt", "mol.xyz", "--out", "out.traj"],
    "inspect unreadable": ["data", "inspect", "locked.extxyz", "--json", "out.json"],
    "convert unreadable": ["data", "convert", "locked.extxyz", "converted.extxyz"],
    "eval cell tiny for the cutoff": ["eval", "model.pt", "tinycell.extxyz", "--plot",
                                      "out.png"],
    "md cell tiny for the cutoff": ["md", "model.pt", "tinycell.extxyz", "--out", "out.traj"],
    "relax cell tiny for the cutoff": ["relax", "model.pt", "tinycell.extxyz", "--out",
                                       "out.traj"],
}  # fmt: skip

CASES = {**_numeric_cases(), **FILE_CASES}


def _frames(molecule: Path, change=None, forces_nan: bool = False):
    """Methanol (with energy and forces) and ``change(atoms)`` applied to a copy."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    atoms = read(molecule)
    if change is not None:
        change(atoms)
    forces = np.zeros((len(atoms), 3))
    if forces_nan:
        forces[0, 0] = np.nan
    atoms.calc = SinglePointCalculator(atoms, energy=-100.0, forces=forces)
    return atoms


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, checkpoint: Path, molecule: Path) -> Path:
    """A bad file of every kind (built once: the LMDB takes a conversion)."""
    import argparse

    from ase.io import write

    folder = tmp_path_factory.mktemp("bad")
    data = checkpoint.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(argparse.Namespace(weights=1), folder / "pickle.pt")

    def nan_position(a):
        a.positions[1, 2] = np.nan

    def close(a):
        a.positions[1] = a.positions[0] + [0.05, 0, 0]

    def far(a):
        a.positions *= 10.0  # nm or Bohr read as Å: nobody within 4.5 Å

    def alien(a):
        a.numbers[0] = 92  # uranium: not in the training data

    def tiny_cell(a):
        # periodic images 0.001 Å apart: billions of edges within the cutoff
        a.cell = np.eye(3) * 1e-3
        a.pbc = True
        a.positions = a.cell.cartesian_positions(np.random.default_rng(0).random((len(a), 3)))

    for name, change, nan_f in (
        ("nan_pos", nan_position, False), ("nan_forces", None, True), ("close", close, False),
        ("far", far, False), ("alien", alien, False), ("tinycell", tiny_cell, False),
    ):  # fmt: skip
        write(folder / f"{name}.extxyz", _frames(molecule, change, nan_f), format="extxyz")
    box = _frames(molecule)
    box.pbc = True  # and no cell
    write(folder / "emptycell.traj", box)
    lmdb = folder / "c.lmdb"
    assert run_ok(["data", "convert", "embedded-tiny", str(lmdb)])
    raw = bytearray(lmdb.read_bytes())
    for k in range(2 * 4096, len(raw), 7):  # every page past LMDB's two meta pages
        raw[k] = 0xA5
    (folder / "corrupt.lmdb").write_bytes(bytes(raw))
    lmdb.unlink()
    for extra in folder.glob("c.lmdb*"):  # its lock file
        extra.unlink()
    return folder


@pytest.fixture
def fuzzdir(tmp_path, checkpoint, extxyz, molecule, bad_files: Path) -> Path:
    """A folder of good inputs, existing outputs that no failing command may touch, the
    bad files, and a folder where a file should be."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["version"] += 1
    torch.save(ckpt, tmp_path / "newer.pt")
    shutil.copy(checkpoint, tmp_path / "model.pt")
    shutil.copy(extxyz, tmp_path / "frames.extxyz")
    shutil.copy(molecule, tmp_path / "mol.xyz")
    (tmp_path / "empty.extxyz").write_text("")
    (tmp_path / "no_energy.xyz").write_text("1\n\nH 0 0 0\n")
    for name in ("out.png", "out.json", "out.traj", "out.extxyz"):
        (tmp_path / name).write_bytes(b"existing " + name.encode())
    for f in bad_files.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "folder").mkdir()
    for name in ("locked.pt", "locked.extxyz", "locked.lmdb"):
        _unreadable(tmp_path / name, source=tmp_path / "frames.extxyz")
    return tmp_path


def _unreadable(path: Path, source: Path) -> None:
    """A file nobody may read: mode 000, or for root, who reads any mode, a UNIX socket
    (open() fails with ENXIO for every user)."""
    if os.geteuid() != 0:
        shutil.copy(source, path)
        path.chmod(0)
        return
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # the socket file stays after close


def run_ok(argv: list[str]) -> bool:
    from tdn_cli.main import main

    return main(argv) == 0


def _tree(folder: Path) -> tuple[dict[str, str], list[str]]:
    return digest(folder), sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("argv", CASES.values(), ids=CASES.keys())
def test_bad_input_exits_2_in_one_line_and_touches_nothing(capsys, monkeypatch, fuzzdir, argv):
    monkeypatch.chdir(fuzzdir)
    monkeypatch.setenv("TDN_DEBUG", "0")
    before = _tree(fuzzdir)
    capsys.readouterr()
    t0 = time.perf_counter()
    code, _, err = run(capsys, *argv)
    seconds = time.perf_counter() - t0
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = "tdn " + " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    assert "weights_only" not in err
    assert _tree(fuzzdir) == before, "a refused command changed or created files"
    assert seconds < LIMIT_S, f"{seconds:.1f} s to refuse"


def test_the_fuzzer_covers_every_subcommand():
    from tdn_cli.main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "==SUPPRESS==" or a.choices)
    covered = {argv[0] for argv in CASES.values()}
    assert set(subs.choices) <= covered, set(subs.choices) - covered
    assert len(CASES) >= 150, len(CASES)
