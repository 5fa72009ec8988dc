"""Free memory, and a refusal before an allocation that cannot fit in it.

A dense CG tensor grows as (L+1)^6: at L = 99 it is 7.3 TiB. On a machine that
overcommits memory, allocating it may succeed and the process later be killed by the
OS, with no message; so large arrays are sized first (:func:`check_fits`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import AllocationTooLarge


def available_bytes() -> int | None:
    """Memory available to a new allocation (Linux ``MemAvailable``, else free physical
    pages), in bytes; ``None`` where the platform does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``7.28 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(nbytes: int, what: str) -> None:
    """Raise :class:`AllocationTooLarge` if ``nbytes`` exceed the available memory.

    ``what`` names the array and the arguments that size it, for the message."""
    free = available_bytes()
    if free is not None and nbytes > free:
        raise AllocationTooLarge(
            f"{what} needs {format_bytes(nbytes)}, more than the {format_bytes(free)} of "
            "memory available"
        )
