"""Helpers shared by the subcommands: argument parsing, progress bars, atomic outputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from tdn_core._io import atomic_write

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, ``<prog>: error: <message>``, exit 2
    (argparse's default also prints the whole usage, which buries the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in descriptions as written and shows each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: str,
    func: Callable[[argparse.Namespace], int],
) -> Parser:
    """Add subcommand ``name`` (help ``summary``; ``--help`` shows ``description`` and the
    ``examples``) that runs ``func(args)``; ``args.prog`` is its name in error messages."""
    p = sub.add_parser(
        name,
        help=summary,
        description=f"{description.replace('``', '')}\n\n{examples}",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=func, prog=p.prog)
    return p


def parse_rank(text: str) -> int | str:
    """A ``--rank`` value: an int, or a schedule name that tdn_core checks."""
    return int(text) if text.lstrip("-").isdigit() else text


def switch_on_triton_interpreter() -> bool:
    """Make cp_triton usable on CPU tensors where torch sees no CUDA device, by setting
    ``TRITON_INTERPRET=1`` (Triton reads it once, when it is first imported). Returns
    whether the interpreter is (or will be) on."""
    import torch

    from tdn_core import available_backends

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if torch.cuda.is_available() or "triton" in sys.modules:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    available_backends.cache_clear()  # its cp_triton entry may predate the switch
    return True


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return iter(tqdm(items, desc=desc, total=total, file=sys.stderr, disable=None, leave=False))


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; raises FileNotFoundError naming ``what`` if it is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist or is not a file")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` for a writer that wants a file name (an ASE
    trajectory); renamed over ``path`` when the block succeeds, removed when it fails,
    so ``path`` holds the old file or the complete new one, never a part."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (the old file or the new one)."""
    text = json.dumps(payload, indent=1).encode()
    atomic_write(Path(path), lambda f: f.write(text))
