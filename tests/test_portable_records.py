"""Committed records hold repo-relative paths, never a path of the machine that wrote them.

A record with ``/home/alice/tdn/runs/...`` in it means nothing on a clone and says
who ran it. The harnesses run their commands with ``cwd`` at the repository root and
write records through ``benchmarks/claims/_repo.py``; these tests hold them to it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where the harnesses write what gets committed
RECORDS = ("docs/results", "benchmarks/results")
#: an absolute POSIX path under a top folder where homes, scratch and clones live, as a
#: command, a JSON or YAML value or a log line would hold it
MACHINE_PATH = re.compile(
    r"""(?:^|[\s"'=:(])(/(?:home|Users|work|tmp|root|mnt|scratch|opt|var|private|data|srv)/\S*)""",
    re.MULTILINE,
)


def _committed(*paths: str) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", *paths], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of committed files")
    return [ROOT / p for p in out.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (UnicodeDecodeError, FileNotFoundError):
        return None  # binary (a checkpoint, a plot), or deleted in the work tree


def test_no_committed_record_holds_an_absolute_path():
    found = {}
    for path in _committed(*RECORDS):
        text = _text(path)
        if text is not None and (hits := MACHINE_PATH.findall(text)):
            found[str(path.relative_to(ROOT))] = hits[:2]
    assert not found, f"{len(found)} records hold absolute paths, e.g. {list(found.items())[:3]}"


def test_no_committed_file_holds_this_checkout_s_path():
    root = f"{ROOT}/"
    found = [
        str(p.relative_to(ROOT)) for p in _committed() if root in (_text(p) or "")
    ]  # fmt: skip
    assert not found, f"files holding {root}: {found[:5]}"


def test_the_record_helpers_make_repository_paths_relative(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "claims_repo", ROOT / "benchmarks/claims/_repo.py"
    )
    repo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repo)
    assert repo.ROOT == ROOT
    run = ROOT / "runs" / "peers" / "x-s0"
    assert repo.repo_relative(run) == "runs/peers/x-s0"
    assert repo.repo_relative("runs/x") == "runs/x"  # already relative: unchanged
    assert repo.repo_relative(tmp_path / "y") == str(tmp_path / "y")  # outside: unchanged
    command = f"{ROOT}/.venv/bin/tdn train output_dir={run} --data={tmp_path}/d"
    assert (
        repo.portable(command)
        == f".venv/bin/tdn train output_dir=runs/peers/x-s0 --data={tmp_path}/d"
    )
    src, dst = tmp_path / "config.yaml", tmp_path / "copy.yaml"
    src.write_text(f"output_dir: {run}\n")
    repo.copy_portable(src, dst)
    assert dst.read_text() == "output_dir: runs/peers/x-s0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "copy.yaml"]
