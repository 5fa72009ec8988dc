"""The MD stability benchmark's criteria and its resume (benchmarks/peers/md_stability.py).

The benchmark's numbers come from long runs of trained models; what is checked here is
what every one of them goes through: the collapse criteria, and that a run killed
mid-way and resumed gives the trajectory of a run never killed (with ASE's EMT, a fast
potential for H, C, N and O).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


def _module():
    spec = importlib.util.spec_from_file_location("peers_md_stability", PEERS / "md_stability.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


md = _module()


def test_collapse_criteria():
    start = molecule("CH3OH")
    bond = md.bonds(start)
    assert len(bond[0]) == 5  # C-O, three C-H, O-H
    pos = start.positions.copy()
    assert md.collapse(pos, bond) is None
    h = int(np.flatnonzero(start.numbers == 1)[0])
    for shift, word in ((0.45, None), (0.55, "stretched")):
        moved = pos.copy()
        c = int(np.flatnonzero(start.numbers == 6)[0])
        moved[h] += shift * (pos[h] - pos[c]) / np.linalg.norm(pos[h] - pos[c])
        why = md.collapse(moved, bond)
        assert (why is None) if word is None else (word in why), why
    # two atoms that share no bond come 0.4 Å close, every bond kept: a clash
    from ase import Atoms

    pair = Atoms("CHH", positions=[[0, 0, 0], [1.09, 0, 0], [-3.0, 0, 0]])
    bond = md.bonds(pair)
    assert len(bond[0]) == 1
    clash = pair.positions.copy()
    clash[2] = [0.0, 0.4, 0]
    assert md.collapse(clash, bond) == "atoms 0 and 2 0.40 Å apart"


class _Killed(Exception):
    pass


class _DiesAfter(EMT):
    """EMT that raises after ``calls`` force evaluations: a kill mid-run."""

    def __init__(self, calls: int):
        super().__init__()
        self.left = calls

    def calculate(self, *args, **kwargs):
        self.left -= 1
        if self.left < 0:
            raise _Killed
        super().calculate(*args, **kwargs)


def test_a_killed_run_resumes_into_the_same_trajectory(tmp_path, monkeypatch):
    monkeypatch.setattr(md, "PICOSECONDS", 0.1)  # 200 steps
    monkeypatch.setattr(md, "SAVE_EVERY", 50)
    start = molecule("NH3")  # EMT keeps it together (it tears methanol apart)
    whole = md.simulate(EMT(), start, 300, seed=7, state_file=tmp_path / "a.json")
    state = tmp_path / "b.json"
    with pytest.raises(_Killed):
        md.simulate(_DiesAfter(130), start, 300, seed=7, state_file=state)
    assert state.exists()
    resumed = md.simulate(EMT(), start, 300, seed=7, state_file=state)
    assert whole["steps"] == resumed["steps"] == 200
    assert resumed["temperature_K_at_saves"] == whole["temperature_K_at_saves"]
    assert whole["stable"] and resumed["stable"]
