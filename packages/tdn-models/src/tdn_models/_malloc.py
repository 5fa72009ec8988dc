"""Keep freed memory in the process: a large, measured speed-up of CPU training.

A training step allocates and frees thousands of [E, d, C] tensors of a few MB. glibc's
malloc hands such blocks back to the kernel (munmap, heap trimming) and then takes them
again, so every step pays page faults: 22,500 minor faults and ~20 % of a TDN training
step on the project's 2-core CPU (see benchmarks/bench_models.py). Raising the mmap and
trim thresholds keeps the memory mapped; peak memory use is unchanged.

This changes process-wide allocator settings, so the library never does it on its own:
the ``tdn`` command and the benchmarks call it, and users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger blocks still mmap
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_INT_MAX = 2**31 - 1


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks mapped. Returns True if it applied.

    No-op (False) on systems without glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    )
