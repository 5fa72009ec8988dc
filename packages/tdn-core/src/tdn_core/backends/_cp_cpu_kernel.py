"""cp_eager's fused CPU forward (``_cp_cpu_kernel.cpp``): built on first use, loaded with ctypes.

The factored uvu forward as PyTorch ops is a loop of small per-edge GEMMs (``bmm`` of
[d3, R] x [R, C] matrices), which MKL runs one call at a time, mostly on one core; the
fused kernel keeps each edge's [R, C] intermediate in cache and splits edges over
threads. It is compiled with the system C++ compiler (``$CXX``, else ``c++``) for this
CPU (``-march=native``) into the user cache (``<cache>/kernels``, keyed by source, flags,
compiler and CPU), in about a second, and written atomically. Without a compiler, or
with ``TDN_CPU_KERNEL=0``, :func:`load` returns None and cp_eager runs its PyTorch path;
:func:`unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch

from .._factors import default_cache_dir
from .._io import atomic_write

log = logging.getLogger("tdn_core")

FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-pthread")

#: channels must be a multiple of this: the kernel's vector width on every build
LANES = 16

#: the smallest share of work worth a thread of its own (FLOPs): starting one costs
#: tens of microseconds, what the kernel does with ~4 MFLOP
MIN_FLOP_PER_THREAD = 4e6

_SYMBOL = "tdn_cp_uvu_forward_f32"
_state: dict = {}  # "fn": the loaded function or None, "reason": why None


def _source() -> bytes:
    return resources.files(__package__).joinpath("_cp_cpu_kernel.cpp").read_bytes()


def _cpu_id() -> str:
    # -march=native code must not be loaded on another CPU sharing the cache directory
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tdn-kernel-") as tmp:
        src = Path(tmp, "kernel.cpp")
        src.write_bytes(_source())
        lib = Path(tmp, "kernel.so")
        proc = subprocess.run(
            [compiler, *FLAGS, "-o", str(lib), str(src)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
        atomic_write(target, lambda f: f.write(lib.read_bytes()))


def compiler() -> str | None:
    """Path of the C++ compiler the kernel is built with (``$CXX``, else ``c++``)."""
    return shutil.which(os.environ.get("CXX", "c++"))


def library_path(compiler: str) -> Path:
    """Where the kernel built by ``compiler`` for this CPU lives in the user cache."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    parts = (_source(), " ".join(FLAGS).encode(), version.encode(), _cpu_id().encode())
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    return default_cache_dir() / "kernels" / f"cp_cpu_{platform.machine()}_{key}.so"


def _load():
    if os.environ.get("TDN_CPU_KERNEL", "1") == "0":
        return None, "TDN_CPU_KERNEL=0"
    cxx = compiler()
    if cxx is None:
        return None, f"no C++ compiler ({os.environ.get('CXX', 'c++')} not on PATH)"
    target = library_path(cxx)
    try:
        return _open(target), None
    except (OSError, AttributeError):  # not built yet, or a damaged file: rebuild
        pass
    try:
        log.info("building cp_eager's CPU kernel into %s", target)
        _build(cxx, target)
        return _open(target), None
    except (OSError, RuntimeError, AttributeError) as err:
        return None, f"could not build or load {target.name}: {err}"


def _open(library: Path):
    fn = getattr(ctypes.CDLL(str(library)), _SYMBOL)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6
    return fn


def load():
    """The kernel's C function, building it on first call; None if it cannot be had."""
    if "fn" not in _state:
        _state["fn"], _state["reason"] = _load()
        if _state["fn"] is None:
            log.warning(
                "cp_eager: CPU kernel unavailable (%s); using PyTorch matmuls", _state["reason"]
            )
    return _state["fn"]


def unavailable_reason() -> str | None:
    """None if the kernel loads here, else why not."""
    load()
    return _state["reason"]


def supports(x: torch.Tensor) -> bool:
    """Whether :func:`forward` takes these inputs: float32 on the CPU, channels a multiple
    of :data:`LANES`, outside torch.compile (dynamo cannot trace a ctypes call)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[-1] % LANES == 0
        and not torch.compiler.is_compiling()
        and load() is not None
    )


def forward(
    x: torch.Tensor, v: torch.Tensor, w: torch.Tensor, A: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """out [E, d3, C] = w * C (v * (A^T x)) per edge, for x [E, d1, C], v [E, R], w [E, C],
    A [d1, R], C [d3, R] (float32, CPU; see :func:`supports`)."""
    E, d1, channels = x.shape
    rank, d3 = A.shape[1], C.shape[0]
    x, v, w, A, C = (t.contiguous() for t in (x, v, w, A, C))
    out = x.new_empty(E, d3, channels)
    flops = 2 * E * channels * rank * (d1 + d3)
    threads = max(1, min(torch.get_num_threads(), int(flops // MIN_FLOP_PER_THREAD)))
    pointers = (t.data_ptr() for t in (x, v, w, A, C, out))
    load()(*pointers, E, d1, rank, d3, channels, threads)
    return out
