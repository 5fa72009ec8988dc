"""The ``tdn`` command, run in-process through ``tdn_cli.main.main`` (and once as a real
subprocess): help texts, one-line errors that leave files alone, eval, md and relax."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from cli_helpers import run

from tdn_cli._errors import UserError
from tdn_cli.main import main

SUBCOMMANDS = [
    ["bench"],
    ["eval"],
    ["fit-cp"],
    ["data"],
    ["data", "generate"],
    ["data", "inspect"],
    ["data", "convert"],
    ["md"],
    ["relax"],
]


# -------------------------------------------------------------------------------- help


def test_top_level_help_lists_subcommands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("train", "bench", "eval", "fit-cp", "data", "md", "relax"):
        assert name in out
    assert "Example" in out


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_has_an_example(capsys, sub):
    code, out, _ = run(capsys, *sub, "--help")
    assert code == 0
    assert "Example" in out and "tdn " + sub[0] in out


def test_usage_errors_are_one_line(capsys):
    code, out, err = run(capsys, "bench", "--edges", "many")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith("tdn bench: error: argument --edges")


def test_no_subcommand_prints_help(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "SUBCOMMAND" in err


def test_data_without_action(capsys):
    code, _, err = run(capsys, "data")
    assert code == 2
    assert (
        err == "tdn data: error: choose an action: generate, inspect or convert "
        "(see tdn data --help)\n"
    )


# ------------------------------------------------------------------------------- train


def test_train_forwards_every_argument(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("tdn_cli.train")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "tdn_cli.train", fake)
    assert main(["train", "experiment=tiny", "--help", "trainer.epochs=1"]) == 0
    assert seen == [["experiment=tiny", "--help", "trainer.epochs=1"]]


def test_train_user_error_is_one_line(capsys, monkeypatch):
    fake = types.ModuleType("tdn_cli.train")

    def fail(argv):
        raise UserError("could not override 'nope': key not in the config")

    fake.main = fail
    monkeypatch.setitem(sys.modules, "tdn_cli.train", fake)
    code, _, err = run(capsys, "train", "nope=1")
    assert code == 2
    assert err == "tdn train: error: could not override 'nope': key not in the config\n"


def test_train_module_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tdn_cli.train", None)  # import fails as if absent
    code, _, err = run(capsys, "train")
    assert code == 2
    assert (
        err == "tdn train: error: the train subcommand is not installed (no module tdn_cli.train)\n"
    )


# -------------------------------------------------------------------------- subprocess


def test_tdn_script_runs_as_a_process(tmp_path, tdn_script):
    keep = tmp_path / "keep.json"
    keep.write_text("{}")
    proc = subprocess.run(
        [tdn_script, "bench", "--backend", "nope", "--json", str(keep)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("tdn bench: error: --backend: unknown backend 'nope'")
    assert "cp_eager" in lines[0] and "path_shared" in lines[0]
    assert keep.read_text() == "{}"


# -------------------------------------------------------------------------------- eval


def test_eval_on_embedded_tiny(capsys, checkpoint, tmp_path):
    png, js = tmp_path / "parity.png", tmp_path / "errors.json"
    code, out, _ = run(capsys, "eval", checkpoint, "embedded-tiny", "--plot", png,
                       "--json", js, "--max-samples", "12")  # fmt: skip
    assert code == 0
    for split in ("train", "val", "test"):
        assert f"\n{split} " in out
    assert "meV/atom" in out and "forces per element" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # and beside it the per-atom error against the nearest neighbour's distance
    assert (tmp_path / "parity_nn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "by nearest-neighbour distance" in out
    import json

    metrics = json.loads(js.read_text())
    assert set(metrics["splits"]) == {"train", "val", "test"}
    assert metrics["splits"]["test"]["structures"] == 12
    assert {"H", "C"} <= set(metrics["per_element"])
    for m in metrics["splits"].values():
        assert m["force_rmse_eV_per_A"] >= m["force_mae_eV_per_A"] > 0
        # every atom of the split lies in one bin; covalent bonds are 0.74-1.8 Å long
        assert sum(r["atoms"] for r in m["force_by_nn_distance"]) == m["atoms"]
        assert 0.7 < m["force_worst_atom_nn_A"] < 2.0


def test_eval_on_extxyz(capsys, checkpoint, extxyz, tmp_path):
    png = tmp_path / "p.png"
    code, out, _ = run(capsys, "eval", checkpoint, extxyz, "--plot", png, "--backend", "cg")
    assert code == 0
    assert "\nall " in out and "backend cg" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_backends_agree(capsys, checkpoint, extxyz, tmp_path):
    """The weights are the same under every exact backend: so are the errors."""
    import json

    results = []
    for backend in ("path_shared", "cg"):
        js = tmp_path / f"{backend}.json"
        assert main(["eval", str(checkpoint), str(extxyz), "--no-plot", "--backend", backend,
                     "--json", str(js)]) == 0  # fmt: skip
        results.append(json.loads(js.read_text())["splits"]["all"])
    assert results[0]["force_mae_eV_per_A"] == pytest.approx(results[1]["force_mae_eV_per_A"])


def test_eval_energy_unit_and_keys(capsys, checkpoint, extxyz, tmp_path):
    """Labels stored in kcal/mol under other keys give the same errors as the eV file,
    and the debiased energy MAE ignores a constant shift of the energy zero."""
    import json

    from ase.io import read, write

    from tdn_data._units import energy_factor

    kcal = 1 / energy_factor("kcal/mol")  # kcal/mol per eV
    frames = read(extxyz, index=":")
    for atoms in frames:
        atoms.info["E_dft"] = (atoms.get_potential_energy() + 7.0 * len(atoms)) * kcal
        atoms.arrays["F_dft"] = atoms.get_forces() * kcal
        atoms.calc = None
    other = tmp_path / "kcal.extxyz"
    write(other, frames, format="extxyz")
    results = {}
    for name, extra in (
        ("ev", [str(extxyz)]),
        (
            "kcal",
            [
                str(other),
                "--energy-unit",
                "kcal/mol",
                "--energy-key",
                "E_dft",
                "--forces-key",
                "F_dft",
            ],
        ),
    ):
        js = tmp_path / f"{name}.json"
        assert main(["eval", str(checkpoint), *extra, "--no-plot", "--json", str(js)]) == 0
        results[name] = json.loads(js.read_text())["splits"]["all"]
    ev, kc = results["ev"], results["kcal"]
    assert kc["force_mae_eV_per_A"] == pytest.approx(ev["force_mae_eV_per_A"], rel=1e-5)
    # the labels are 7 eV/atom higher: the offset moves by -7, the debiased MAE stays
    assert kc["energy_median_error_eV_per_atom"] == pytest.approx(
        ev["energy_median_error_eV_per_atom"] - 7.0, abs=1e-4
    )
    assert kc["energy_mae_debiased_eV_per_atom"] == pytest.approx(
        ev["energy_mae_debiased_eV_per_atom"], abs=1e-4
    )
    assert ev["energy_mae_debiased_eV_per_atom"] <= ev["energy_mae_eV_per_atom"] + 1e-12


# ---------------------------------------------------------------------------- md/relax


def test_md_writes_a_trajectory(capsys, checkpoint, molecule, tmp_path):
    from ase.io import read

    traj = tmp_path / "md.traj"
    code, out, _ = run(capsys, "md", checkpoint, molecule, "--steps", "4", "--out", traj)
    assert code == 0 and "Langevin" in out
    frames = read(traj, ":")
    assert len(frames) == 5  # the start and every step
    assert frames[-1].get_potential_energy() == pytest.approx(frames[-1].calc.results["energy"])


def test_nve_md(capsys, checkpoint, molecule, tmp_path):
    from ase.io import read

    traj = tmp_path / "nve.traj"
    code, out, _ = run(capsys, "md", checkpoint, molecule, "--steps", "3", "--friction", "0",
                       "--interval", "3", "--out", traj)  # fmt: skip
    assert code == 0 and "NVE" in out
    assert len(read(traj, ":")) == 2


def test_relax_writes_a_trajectory(capsys, checkpoint, molecule, tmp_path):
    from ase.io import read

    traj = tmp_path / "relax.traj"
    code, out, _ = run(capsys, "relax", checkpoint, molecule, "--steps", "3", "--fmax", "1e-6",
                       "--optimizer", "FIRE", "--out", traj)  # fmt: skip
    assert code == 0 and "NOT converged within 3 steps" in out
    frames = read(traj, ":")
    assert len(frames) == 4
    assert frames[-1].get_potential_energy() <= frames[0].get_potential_energy() + 1e-6


# --------------------------------------------------------------------------- bad input


def test_unknown_backend_message_lists_registered(capsys):
    code, _, err = run(capsys, "bench", "--backend", "nope")
    assert code == 2
    from tdn_core import available_backends

    assert all(name in err for name in available_backends())


def test_eval_metrics_report_the_force_tail_per_atom():
    """A hand-made example: atom k (k = 1..100) is off by k eV/Å along x, nothing else;
    binned by the distance to its nearest neighbour."""
    import numpy as np

    from tdn_cli.evaluate import metrics

    k = np.arange(1, 101, dtype=float)
    f = np.zeros((100, 3))
    p = {"energy": np.zeros(2), "energy_pred": np.zeros(2), "atoms": np.array([50, 50]),
         "f": f, "f_pred": f + np.stack([k, 0 * k, 0 * k], axis=1)}  # fmt: skip
    m = metrics(p)
    assert m["force_mae_eV_per_A"] == pytest.approx(k.sum() / 300)
    assert m["force_rmse_eV_per_A"] == pytest.approx(np.sqrt((k**2).sum() / 300))
    assert m["force_atom_p99_eV_per_A"] == pytest.approx(99.01)  # linear between 99 and 100
    assert m["force_atom_p999_eV_per_A"] == pytest.approx(99.901)
    assert m["force_worst_atom_eV_per_A"] == 100.0
    assert "force_by_nn_distance" not in m  # no distances given
    # atom k's nearest neighbour at 0.75 Å (k <= 10), 0.95 Å (k <= 40), else 1.5 Å
    p["nn"] = np.where(k <= 10, 0.75, np.where(k <= 40, 0.95, 1.5))
    m = metrics(p)
    assert m["force_worst_atom_nn_A"] == 1.5
    rows = {(r["nn_from_A"], r["nn_to_A"]): r for r in m["force_by_nn_distance"]}
    assert rows[(0.0, 0.8)]["atoms"] == 10
    assert rows[(0.9, 1.0)]["force_atom_mean_eV_per_A"] == pytest.approx(25.5)  # 11..40
    assert rows[(1.3, None)]["force_worst_atom_eV_per_A"] == 100.0
    assert rows[(1.0, 1.1)]["atoms"] == 0 and rows[(1.0, 1.1)]["force_atom_mean_eV_per_A"] is None
    assert sum(r["atoms"] for r in rows.values()) == 100
