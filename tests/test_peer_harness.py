"""The peer harness's exporter and its one evaluator (benchmarks/peers/).

The peers themselves (MACE, NequIP) live in their own venvs and stay out of CI; what is
checked here is what every number of the comparison goes through: the exported files
carry the data ``tdn train``/``tdn eval`` read, and score.py's metrics on a TDN
checkpoint equal ``tdn eval``'s.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
CHECKPOINT = ROOT / "docs" / "results" / "accuracy" / "tdn-cp_eager-s0" / "best.pt"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"peers_{name}", PEERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


export = _module("export")
score = _module("score")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peers-data")
    export.export(out, [0], source="embedded-tiny", shared=None)
    return out


def test_export_round_trips_the_splits(exported):
    from tdn_data import load_dataset

    meta = json.loads((exported / "meta.json").read_text())
    for split in ("train", "test"):
        items = load_dataset("embedded-tiny", split=split)
        frames = read(exported / f"{split}.extxyz", index=":")
        assert len(frames) == len(items) > 0
        for atoms, item in zip(frames, items, strict=True):
            assert atoms.numbers.tolist() == item.z.tolist()
            # extxyz stores 8 decimals: 5e-9 Å, eV/Å
            np.testing.assert_allclose(atoms.positions, item.pos.numpy(), atol=6e-9)
            np.testing.assert_allclose(atoms.arrays["REF_forces"], item.forces.numpy(), atol=6e-9)
            assert atoms.info["REF_energy"] == pytest.approx(float(item.energy), abs=1e-9)
            assert not atoms.pbc.any() and atoms.calc is None
    # the validation file is tdn train's seed-0 subset (all 19 of embedded-tiny's)
    assert len(read(exported / "val-s0.extxyz", index=":")) == len(
        load_dataset("embedded-tiny", split="val")
    )
    train = read(exported / "train.extxyz", index=":")
    assert meta["elements"] == sorted({int(z) for a in train for z in a.numbers})
    assert [int(z) for z in meta["e0_eV"]] == meta["elements"]


def test_energy_references_are_the_least_squares_fit():
    from ase import Atoms

    e0 = {1: -13.6, 8: -430.0}
    frames = [Atoms("H2O"), Atoms("H2O2"), Atoms("H4O")]
    for a in frames:
        a.info["REF_energy"] = sum(e0[z] for z in a.numbers)
    fit = export.energy_references(frames)
    assert fit.keys() == e0.keys()
    for z in e0:
        assert fit[z] == pytest.approx(e0[z], abs=1e-9)


def test_export_keeps_finished_files_and_writes_atomically(exported, monkeypatch):
    before = (exported / "test.extxyz").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    export.export(exported, [0], source="embedded-tiny", shared=None)  # nothing to redo
    assert (exported / "test.extxyz").stat().st_mtime_ns == before
    monkeypatch.setattr(export, "write", fail)
    with pytest.raises(RuntimeError):
        export.write_frames(exported / "new.extxyz", [])
    assert not list(exported.glob("new.extxyz")) and not list(exported.glob(".new*"))


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="committed TDN checkpoint missing")
def test_score_equals_tdn_eval_on_a_tdn_checkpoint(exported, tmp_path):
    """One evaluator: score.py (ASE calculator, one structure at a time) against
    ``tdn eval`` (batched) on the same file and checkpoint, both in float64, as the
    harness scores (in float32 the two orders of summation differ by ~1e-5 on some
    CPUs: measured 1.3e-5 relative on an Intel Xeon, model 167)."""
    from tdn_cli.main import main as tdn

    data = exported / "test.extxyz"
    target = tmp_path / "eval.json"
    argv = ["eval", str(CHECKPOINT), str(data), "--energy-key", "REF_energy"]
    argv += ["--forces-key", "REF_forces", "--json", str(target), "--no-plot", "--dtype", "float64"]
    assert tdn(argv) == 0
    want = json.loads(target.read_text())["splits"]["all"]
    got = score.score("tdn", CHECKPOINT, exported, tmp_path / "scores", ["test"], "float64")
    got = got["test"]
    assert got["package"].startswith("tdn-models ") and got["parameters"] > 0
    shared = [k for k in want if k in got]
    assert {"energy_mae_eV_per_atom", "force_mae_eV_per_A", "force_rmse_eV_per_A"} <= set(shared)
    for key in shared:
        assert got[key] == pytest.approx(want[key], abs=1e-6, rel=1e-6), key
    # the tail metrics are consistent with the predictions saved beside them
    p = dict(np.load(tmp_path / "scores" / "test.npz"))
    per_atom = np.linalg.norm(p["forces_pred"] - p["forces"], axis=1)
    worst = got["force_worst_atom"]
    assert got["force_worst_atom_eV_per_A"] == pytest.approx(per_atom.max())
    assert got["force_atom_p99_eV_per_A"] <= got["force_worst_atom_eV_per_A"]
    row = np.flatnonzero(p["frame"] == worst["frame"])[worst["atom"]]
    assert per_atom[row] == per_atom.max() and p["z"][row] == worst["z"]


def test_score_errors_name_the_argument(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="model"):
        score.score("tdn", tmp_path / "missing.pt", exported, tmp_path, ["test"], "float32")
    with pytest.raises(FileNotFoundError, match="--sets"):
        score.score("tdn", CHECKPOINT, exported, tmp_path, ["nope"], "float32")
    with pytest.raises(ValueError, match="kind"):
        score.calculator("schnet", CHECKPOINT, "float32")


def test_speed_box_keeps_its_copies_apart_across_the_cell():
    from ase import Atoms
    from ase.geometry import get_distances

    speed = _module("speed")
    rng = np.random.default_rng(0)
    mol = Atoms(numbers=rng.integers(1, 9, 20), positions=rng.uniform(-3, 3, (20, 3)))
    box = speed.periodic_box(mol, copies=10, grid=(3, 2, 2), gap=3.0)
    assert len(box) == 200 and box.pbc.all()
    _, d = get_distances(box.positions, cell=box.cell, pbc=True)  # minimum image
    copy = np.repeat(np.arange(10), 20)
    between = d[copy[:, None] != copy[None, :]]
    assert between.min() >= 3.0 - 1e-9
    # each copy is the molecule itself, translated
    first = box.positions[:20] - box.positions[:20].mean(axis=0)
    np.testing.assert_allclose(first, mol.positions - mol.positions.mean(axis=0), atol=1e-12)
    with pytest.raises(ValueError, match="copies: expected 1 to 12"):
        speed.periodic_box(mol, copies=13, grid=(3, 2, 2), gap=3.0)


def test_speed_training_step_trains_the_calculators_model():
    # the timed step is a real Adam step on the whole batch: every parameter that feeds
    # the energy moves, and the loss it minimizes (E^2 + |F|^2) goes down
    import torch
    from ase import Atoms

    speed = _module("speed")
    assert speed.trained_model("tdn-best-cp_eager") == speed.TDN_BEST  # committed
    calc = score.calculator("tdn", speed.TDN_BEST, "float32")
    rng = np.random.default_rng(0)
    mols = [Atoms(numbers=[6, 1, 1, 8], positions=rng.uniform(-1.2, 1.2, (4, 3))) for _ in range(3)]
    before = [p.detach().clone() for p in calc.model.parameters()]
    step = speed.training_step("tdn", calc, mols)
    step()
    moved = [not torch.equal(a, b) for a, b in zip(before, calc.model.parameters(), strict=True)]
    assert sum(moved) > 0.9 * len(moved)

    def loss() -> float:
        calc.model.eval()
        e, f = [], []
        for a in mols:
            calc.reset()  # no cached results: the weights changed
            e.append(calc.get_potential_energy(a))
            f.append(calc.get_forces(a))
        return np.mean(np.square(e)) + (np.concatenate(f) ** 2).sum(-1).mean()

    first = loss()
    for _ in range(5):
        step()
    assert loss() < first


def test_wall_budget_is_whole_epochs_for_mace_and_steps_for_tdn():
    # the committed one-epoch runs: MACE-ell1 276 s, tdn-best 472 s per epoch
    train = _module("train")
    epochs_run = train.accuracy.OUT / "tdn-best-cp_eager-s0" / "timing.json"
    epoch_s = json.loads(epochs_run.read_text())["train_s"]
    assert (
        epoch_s
        == json.loads((train.OUT / "tdn-best-cp_eager-epochs-s0" / "timing.json").read_text())[
            "train_s"
        ]
    )  # the peers' row is that run
    per_epoch = train.tdn_steps_per_epoch("tdn-best-cp_eager", 0)
    assert per_epoch == 18542 // 8  # every snapshot of the training split, batch 8
    assert train.epochs_for("mace-ell1", "wall", 0, 15.0) == 3
    epochs = train.epochs_for("tdn-best-cp_eager", "wall", 0, 15.0)
    steps = round(epochs * per_epoch)
    assert steps == int(900 / epoch_s * per_epoch) and 1 < epochs < 2
    cmd = train.tdn_command("tdn-best-cp_eager", Path("run"), 0, epochs)
    assert "trainer.max_epochs=2" in cmd and f"trainer.max_steps={steps}" in cmd
    whole = train.tdn_command("tdn-best-cp_eager", Path("run"), 0, 1.0)
    assert not any(c.startswith("trainer.max_steps=") for c in whole)
    assert train.epochs_for("nequip", "wall", 0, 15.0) is None


def test_results_show_the_speed_table_of_the_committed_rounds():
    """RESULTS 5.2's table is speed.py's, from the committed per-round JSON."""
    speed = _module("speed")
    rows = speed.summary()
    assert rows, "no committed speed rounds"
    assert all(r["rounds"] >= 3 for r in rows.values())
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    for line in speed.table(rows).splitlines():
        if line.startswith("| "):
            assert line in text, f"not in docs/RESULTS.md: {line}"
    saved = json.loads((ROOT / "docs" / "results" / "peers" / "speed.json").read_text())
    assert saved == json.loads(json.dumps(rows))
