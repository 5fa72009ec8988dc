"""TDN's CPU kernels (``_cpu_kernels.cpp``): built on first use, loaded with ctypes.

Two float32 kernels, each the forward of a product whose PyTorch form is a loop of small
per-edge matrix products that MKL runs one call at a time, mostly on one core:

- :func:`cp_uvu_forward`: cp_eager's factored uvu forward; each edge's [R, C]
  intermediate stays in cache.
- :func:`sparse_bilinear`: the sparse backend's contraction over M's nonzeros (forward
  and, with permuted index lists, every derivative; ``_sparse_contraction.py``).

Edges split over ``torch.get_num_threads()`` threads. The library is compiled with the
system C++ compiler (``$CXX``, else ``c++``) for this CPU (``-march=native``) into the
user cache (``<cache>/kernels``, keyed by source, flags, compiler and CPU), in a few
seconds, and written atomically. Without a compiler, on a CPU without the vector
instructions the kernels are written for (x86-64 without AVX2 and FMA), or with
``TDN_CPU_KERNEL=0``, :func:`load` returns None, the reason is logged once and the
callers run their PyTorch ops; :func:`unavailable_reason` says why.
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

_state: dict = {}  # "lib": the loaded library or None, "reason": why None


def _source() -> bytes:
    return resources.files(__package__).joinpath("_cpu_kernels.cpp").read_bytes()


def _cpu_id() -> str:
    # -march=native code must not be loaded on another CPU sharing the cache directory
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    return {word for line in _cpu_id().splitlines() for word in line.split(":")[-1].split()}


def isa_problem() -> str | None:
    """Why this CPU lacks the vector instructions the kernels are written for (None: it
    has them): AVX2 and FMA (or AVX-512) on x86-64, NEON (always there) on arm64."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        missing_flags = {"avx2", "fma"} - _cpu_flags()
        if missing_flags:
            return f"this CPU lacks {', '.join(sorted(missing_flags)).upper()}"
        return None
    if machine in ("aarch64", "arm64"):
        return None
    return f"no vector kernels for {platform.machine() or 'this CPU'}"


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
    return default_cache_dir() / "kernels" / f"cpu_kernels_{platform.machine()}_{key}.so"


def _load():
    if os.environ.get("TDN_CPU_KERNEL", "1") == "0":
        return None, "TDN_CPU_KERNEL=0"
    problem = isa_problem()
    if problem is not None:
        return None, problem
    cxx = compiler()
    if cxx is None:
        return None, f"no C++ compiler ({os.environ.get('CXX', 'c++')} not on PATH)"
    target = library_path(cxx)
    try:
        return _open(target), None
    except (OSError, AttributeError):  # not built yet, or a damaged file: rebuild
        pass
    try:
        log.info("building TDN's CPU kernels into %s", target)
        _build(cxx, target)
        return _open(target), None
    except (OSError, RuntimeError, AttributeError) as err:
        return None, f"could not build or load {target.name}: {err}"


_SIGNATURES = {  # C function -> (pointer arguments, int64 arguments)
    "tdn_cp_uvu_forward_f32": (6, 6),
    "tdn_sparse_bilinear_f32": (11, 9),
}


def _open(library: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library))
    for symbol, (pointers, ints) in _SIGNATURES.items():
        fn = getattr(lib, symbol)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * ints
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, building it on first call; None if it cannot be had (the
    reason is logged once)."""
    if "lib" not in _state:
        _state["lib"], _state["reason"] = _load()
        if _state["lib"] is None:
            log.warning(
                "CPU kernels unavailable (%s); cp_eager and sparse run PyTorch ops",
                _state["reason"],
            )
    return _state["lib"]


def unavailable_reason() -> str | None:
    """None if the kernel loads here, else why not."""
    load()
    return _state["reason"]


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels take an input like ``x`` [..., C]: float32 on the CPU, channels
    a multiple of :data:`LANES`, outside torch.compile (dynamo cannot trace a ctypes
    call)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[-1] % LANES == 0
        and not torch.compiler.is_compiling()
        and load() is not None
    )


def _threads(flops: float) -> int:
    return max(1, min(torch.get_num_threads(), int(flops // MIN_FLOP_PER_THREAD)))


def cp_uvu_forward(
    x: torch.Tensor, v: torch.Tensor, w: torch.Tensor, A: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """out [E, d3, C] = w * C (v * (A^T x)) per edge, for x [E, d1, C], v [E, R], w [E, C],
    A [d1, R], C [d3, R] (float32, CPU; see :func:`supports`)."""
    E, d1, channels = x.shape
    rank, d3 = A.shape[1], C.shape[0]
    x, v, w, A, C = (t.contiguous() for t in (x, v, w, A, C))
    out = x.new_empty(E, d3, channels)
    threads = _threads(2 * E * channels * rank * (d1 + d3))
    pointers = (t.data_ptr() for t in (x, v, w, A, C, out))
    load().tdn_cp_uvu_forward_f32(*pointers, E, d1, rank, d3, channels, threads)
    return out


def sparse_bilinear(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor | None,
    layout: tuple[torch.Tensor, ...],
    val: torch.Tensor,
    d_out: int,
    out_channels: bool,
    dot_with: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The sparse contraction of ``_cpu_kernels.cpp`` (S layout if ``out_channels``, else
    R): a [E, da, C], b [E, db, C] or [E, db], scale [E, C] or None, layout = four int64
    index tensors, val [nnz] -> out [E, d_out, C] or [E, d_out] (float32, CPU). With
    ``dot_with`` [E, d_out, C] (S only): (out, sum_o out_unscaled * dot_with [E, C])."""
    E, da, channels = a.shape
    a, b, val = a.contiguous(), b.contiguous(), val.contiguous()
    layout = tuple(t.contiguous() for t in layout)
    scale = None if scale is None else scale.contiguous()
    out = a.new_empty((E, d_out, channels) if out_channels else (E, d_out))
    dot = None if dot_with is None else a.new_zeros(E, channels)
    dot_with = None if dot_with is None else dot_with.contiguous()
    groups = layout[1].shape[0] if out_channels else layout[2].shape[0]
    b_channels = b.dim() == 3
    work = val.shape[0] * channels if b_channels else (groups + val.shape[0]) * channels
    pointers = [t.data_ptr() for t in (a, b)]
    pointers += [0 if scale is None else scale.data_ptr()]
    pointers += [t.data_ptr() for t in (*layout, val, out)]
    pointers += [0 if t is None else t.data_ptr() for t in (dot_with, dot)]
    load().tdn_sparse_bilinear_f32(
        *pointers, E, da, b.shape[1], d_out, channels, groups, int(b_channels),
        int(out_channels), _threads(2 * E * work),
    )  # fmt: skip
    return out if dot is None else (out, dot)
