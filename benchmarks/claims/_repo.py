"""The repository's root, and paths as committed records keep them: relative to it.

The harnesses run every command with ``cwd=ROOT``, so a repo-relative path means the
same in a record as it did to the run, on any clone. Standard library only: the peers'
venvs import it too.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to :data:`ROOT` where it lies inside it, else unchanged."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def portable(text: str) -> str:
    """``text`` with every absolute path inside :data:`ROOT` made relative to it: what a
    committed record (a command, a copied config) holds."""
    return text.replace(f"{ROOT}{os.sep}", "")


def copy_portable(src: Path, dst: Path) -> None:
    """Copy the text file ``src`` to ``dst`` through :func:`portable`, atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_text(portable(src.read_text()))
    os.replace(tmp, dst)
