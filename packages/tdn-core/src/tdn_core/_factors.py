"""CP factor sets of the path-summed Clebsch-Gordan tensor M: fit once, ship, cache.

``M_ijk ~ sum_r A_ir B_jr C_kr`` (DESIGN.md section 4). :func:`cp_factors` returns a
verified :class:`CPFactors`, looking in this order:

1. the in-process cache;
2. files shipped with the package (``tdn_core/data/cp/``);
3. the user cache: ``$TDN_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tdn`` or
   ``~/.cache/tdn``, under ``cp/``;
4. otherwise it fits (seconds, logged) and writes the result to the user cache.

Files are ``.npz`` (loaded with ``allow_pickle=False``) holding ``A``, ``B``, ``C`` and
``meta`` (a JSON string), named ``cp_<group>_<lmax_in>_<lmax_sh>_<lmax_out>_r<rank>.npz``.
Every file is verified on load (shapes, finiteness, metadata, and the stored error and
bound recomputed from M); a file that fails is never used: a user-cache file is refitted
and overwritten, a shipped one is bypassed (refit into the user cache), with a warning
logged either way. Writes are atomic (temp file in the same directory, fsync,
``os.replace``), so a killed process leaves either the old file or the new one.

``python -m tdn_core._factors --ship`` regenerates the shipped files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import threading
import time
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._cg import cg_tensor_np, check_group, check_lmax
from ._cp_als import cp_als, equivariance_bound, exact_cp, relative_error
from ._errors import FactorFileError
from ._io import atomic_write
from .conventions import dim

__all__ = ["CPFactors", "cp_factors", "default_cache_dir", "resolve_rank"]

logger = logging.getLogger("tdn_core")

SCHEDULES = ("linear", "quadratic", "full")
_FORMAT = 1  # bump when the file layout or the meaning of a field changes
_SHIPPED_LMAX = range(1, 7)  # what `--ship` generates: L = lmax_in = lmax_sh = lmax_out
_INDEX_NAME = "tol_index.json"
# Recorded in the metadata of fitted files (informative: files are verified by their
# error, not by how they were made).
_ALGORITHM = "cp_als: ridge-annealed ALS + lazy line search, probe restarts"

# Stored error and bound must equal the values recomputed from the factors up to
# round-off (different BLAS may sum in a different order).
_RTOL_CHECK = 1e-6
_ATOL_CHECK = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class CPFactors:
    """A CP factor set of the path-summed CG tensor M.

    ``M_ijk ~ sum_r A_ir B_jr C_kr``, so the CP tensor product of x [d1] and y [d2] is
    ``m_R(x, y) = C ((A^T x) * (B^T y))`` [d3].

    Attributes:
        A: [d1, rank] float64, d1 = (lmax_in + 1)^2 (first input, e.g. node features).
        B: [d2, rank] float64, d2 = (lmax_sh + 1)^2 (second input, the edge harmonics).
        C: [d3, rank] float64, d3 = (lmax_out + 1)^2 (output).
            Components are balanced (equal norms in A, B, C) and sorted by weight.
            Every call of :func:`cp_factors` returns fresh tensors; treat them as
            read-only anyway (clone before editing in place).
        lmax_in, lmax_sh, lmax_out, group: which M (see ``conventions``).
        rank: number of components R.
        rel_error: ``||M - [[A, B, C]]||_F / ||M||_F``.
        bound: equivariance bound ``2 ||E_(3)||_2`` with ``E = M - [[A, B, C]]``: for
            every rotation (Wigner matrices D) and all x, y,
            ``||D m_R(x, y) - m_R(D x, D y)|| <= bound * ||x|| * ||y||``.
        method: ``"als"`` (fitted) or ``"exact"`` (slice-SVD construction, exact up to
            round-off; zero columns pad it if a larger rank was asked for).
        seed: seed of the ALS fit (derived from group, lmaxes and rank), else None.
        fit_seconds: time the fit took when it was made.
        norm_ratio: ``sum_r |a_r| |b_r| |c_r| / ||M||_F``, how much the components
            cancel (1 would be none). Large values cost accuracy in float32.
        tol: the tolerance this set was found for (``cp_factors(..., tol=...)``).
        source: where this object came from: ``"memory"``, ``"shipped"``, ``"cache"``
            (user cache dir) or ``"fit"``.
    """

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    lmax_in: int
    lmax_sh: int
    lmax_out: int
    group: str
    rank: int
    rel_error: float
    bound: float
    method: str = "als"
    seed: int | None = None
    fit_seconds: float = 0.0
    norm_ratio: float = float("nan")
    tol: float | None = None
    source: str = "fit"

    def __post_init__(self) -> None:
        dims = (dim(self.lmax_in), dim(self.lmax_sh), dim(self.lmax_out))
        for name, X, d in zip("ABC", (self.A, self.B, self.C), dims, strict=True):
            if not isinstance(X, torch.Tensor) or tuple(X.shape) != (d, self.rank):
                shape = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
                raise ValueError(
                    f"{name}: expected a tensor of shape {(d, self.rank)}, got {shape}"
                )

    @property
    def dims(self) -> tuple[int, int, int]:
        """(d1, d2, d3)."""
        return (self.A.shape[0], self.B.shape[0], self.C.shape[0])

    def reconstruct(self) -> torch.Tensor:
        """``[[A, B, C]]``, the approximation of M: [d1, d2, d3]."""
        return torch.einsum("ir,jr,kr->ijk", self.A, self.B, self.C)

    def __repr__(self) -> str:
        return (
            f"CPFactors(group={self.group!r}, lmax=({self.lmax_in}, {self.lmax_sh}, "
            f"{self.lmax_out}), rank={self.rank}, rel_error={self.rel_error:.3g}, "
            f"bound={self.bound:.3g}, method={self.method!r}, source={self.source!r})"
        )


# --------------------------------------------------------------------------- ranks


@functools.cache
def _exact(lmax_in: int, lmax_sh: int, lmax_out: int, group: str) -> tuple:
    """Exact decomposition of M (read-only arrays), cached: it also fixes the rank that
    "full" means and the top of every rank search."""
    A, B, C = exact_cp(cg_tensor_np(lmax_in, lmax_sh, lmax_out, group))
    for X in (A, B, C):
        X.setflags(write=False)
    return A, B, C


def _exact_rank(lmax_in: int, lmax_sh: int, lmax_out: int, group: str) -> int:
    return _exact(lmax_in, lmax_sh, lmax_out, group)[0].shape[1]


def resolve_rank(
    rank: int | str, lmax_in: int, lmax_sh: int, lmax_out: int, group: str = "SO3"
) -> int:
    """The number of CP components a rank request stands for.

    With ``L = max(lmax_in, lmax_sh, lmax_out)``: ``"linear"`` is ``7 L``,
    ``"quadratic"`` (the default everywhere) ``7 L^2``, both at least 1 and at most the
    exact rank below; ``"full"`` is the rank of the exact-by-construction decomposition
    of M (slice SVDs, at most ``d1 d2``; DESIGN.md's ``(L+1)^4`` is that upper limit
    for equal lmaxes). A positive int is returned as is. For L = 0, M is the scalar 1
    and every schedule gives 1 (exact).

    Raises:
        ValueError: ``rank`` is neither a positive int nor one of the schedule names.
    """
    check_lmax(lmax_in=lmax_in, lmax_sh=lmax_sh, lmax_out=lmax_out)
    check_group(group)
    if isinstance(rank, (int, np.integer)) and not isinstance(rank, (bool, np.bool_)):
        if rank < 1:
            raise ValueError(f"rank: expected a positive int or one of {SCHEDULES}, got {rank!r}")
        return int(rank)
    if not isinstance(rank, str) or rank not in SCHEDULES:
        raise ValueError(f"rank: expected a positive int or one of {SCHEDULES}, got {rank!r}")
    exact = _exact_rank(lmax_in, lmax_sh, lmax_out, group)
    if rank == "full":
        return exact
    L = max(lmax_in, lmax_sh, lmax_out)
    value = 7 * L if rank == "linear" else 7 * L * L
    return max(1, min(value, exact))


# ------------------------------------------------------------------------- fitting


def _seed(group: str, lmax_in: int, lmax_sh: int, lmax_out: int, rank: int) -> int:
    # crc32, not hash(): str hashes are salted per process.
    return zlib.crc32(f"tdn-cp:{group}:{lmax_in}:{lmax_sh}:{lmax_out}:{rank}".encode())


def _fit(key: tuple) -> tuple[tuple, dict]:
    """Factors and metadata for key = (group, lmax_in, lmax_sh, lmax_out, rank)."""
    group, l1, l2, l3, rank = key
    M = cg_tensor_np(l1, l2, l3, group)
    t0 = time.perf_counter()
    exact_rank = _exact_rank(l1, l2, l3, group)
    if rank >= exact_rank:
        # Exact beats any fit; pad with zero components up to the requested rank.
        pad = rank - exact_rank
        A, B, C = (np.pad(X, ((0, 0), (0, pad))) for X in _exact(l1, l2, l3, group))
        method, seed = "exact", None
    else:
        seed = _seed(*key)
        logger.info(
            "fitting CP factors (group=%s, lmax=(%d, %d, %d), rank=%d) by ALS; "
            "done once, then cached",
            group,
            l1,
            l2,
            l3,
            rank,
        )
        A, B, C, _ = cp_als(M, rank, seed=seed)
        method = "als"
    extra = {"algorithm": _ALGORITHM} if method == "als" else {}
    seconds = time.perf_counter() - t0
    meta = _make_meta(key, M, (A, B, C), method=method, seed=seed, fit_seconds=seconds, **extra)
    if method == "als":
        logger.info(
            "CP fit done in %.1f s: rel_error=%.3g, bound=%.3g",
            seconds,
            meta["rel_error"],
            meta["bound"],
        )
    return (A, B, C), meta


def _make_meta(key: tuple, M: np.ndarray, factors: tuple, **extra: Any) -> dict:
    group, l1, l2, l3, rank = key
    A, B, C = factors
    weights = np.linalg.norm(A, axis=0) * np.linalg.norm(B, axis=0) * np.linalg.norm(C, axis=0)
    return {
        "format": _FORMAT,
        "group": group,
        "lmax_in": l1,
        "lmax_sh": l2,
        "lmax_out": l3,
        "rank": rank,
        "rel_error": relative_error(M, A, B, C),
        "bound": equivariance_bound(M, A, B, C),
        "norm_ratio": float(weights.sum() / np.linalg.norm(M)),
        **extra,
    }


# --------------------------------------------------------------------------- files


def default_cache_dir() -> Path:
    """User cache root: ``$TDN_CACHE_DIR``, else ``$XDG_CACHE_HOME/tdn``, else
    ``~/.cache/tdn`` (factor files live under ``cp/`` inside it)."""
    env = os.environ.get("TDN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tdn"


def _user_dir() -> Path:
    return default_cache_dir() / "cp"


def _shipped_dir():  # -> importlib.resources Traversable
    return resources.files(__package__).joinpath("data", "cp")


def _file_name(key: tuple) -> str:
    group, l1, l2, l3, rank = key
    return f"cp_{group}_{l1}_{l2}_{l3}_r{rank}.npz"


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _ATOL_CHECK + _RTOL_CHECK * abs(b)


def _read_verified(fileobj, key: tuple) -> tuple[tuple, dict]:
    """Load and verify one factor file; raise FactorFileError on any problem."""
    group, l1, l2, l3, rank = key
    try:
        with np.load(fileobj, allow_pickle=False) as f:
            missing = {"A", "B", "C", "meta"} - set(f.files)
            if missing:
                raise FactorFileError(f"missing arrays {sorted(missing)}")
            A, B, C = (np.array(f[n]) for n in "ABC")
            meta = json.loads(str(f["meta"][()]))
    except FactorFileError:
        raise
    except Exception as exc:  # truncated zip, bad header, bad JSON, ...
        raise FactorFileError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict):
        raise FactorFileError("metadata is not a JSON object")
    expected = {"format": _FORMAT, "group": group, "lmax_in": l1, "lmax_sh": l2}
    expected.update({"lmax_out": l3, "rank": rank})
    for name, value in expected.items():
        if meta.get(name) != value:
            raise FactorFileError(f"metadata {name}={meta.get(name)!r}, expected {value!r}")
    for name, X, d in zip("ABC", (A, B, C), (dim(l1), dim(l2), dim(l3)), strict=True):
        if X.dtype != np.float64 or X.shape != (d, rank):
            raise FactorFileError(f"{name} is {X.dtype} {X.shape}, expected float64 {(d, rank)}")
        if not np.all(np.isfinite(X)):
            raise FactorFileError(f"{name} has non-finite entries")
    M = cg_tensor_np(l1, l2, l3, group)
    for name, fn in (("rel_error", relative_error), ("bound", equivariance_bound)):
        stored = meta.get(name)
        if not isinstance(stored, (int, float)) or not math.isfinite(stored):
            raise FactorFileError(f"metadata {name}={stored!r} is not a finite number")
        actual = fn(M, A, B, C)
        if not _close(stored, actual):
            raise FactorFileError(f"stored {name}={stored!r} but the factors give {actual!r}")
        meta[name] = actual
    return (A, B, C), meta


def _write_factors(path: Path, factors: tuple, meta: dict) -> None:
    A, B, C = factors
    meta_json = np.array(json.dumps(meta, sort_keys=True))
    atomic_write(path, lambda f: np.savez(f, A=A, B=B, C=C, meta=meta_json))


# --------------------------------------------------------------------------- lookup

_lock = threading.RLock()
_memory: dict[tuple, tuple[tuple, dict]] = {}  # key -> (read-only arrays, meta)
_memory_tol: dict[tuple, int] = {}  # (group, l1, l2, l3, tol) -> rank


def _remember(key: tuple, factors: tuple, meta: dict) -> tuple[tuple, dict]:
    frozen = []
    for X in factors:
        X = np.array(X, dtype=np.float64)  # own copy
        X.setflags(write=False)
        frozen.append(X)
    _memory[key] = (tuple(frozen), dict(meta))
    return _memory[key]


def _lookup(key: tuple, *, persist: bool = True) -> tuple[tuple, dict, str]:
    """(factors, meta, source) for key, through memory, shipped files, user cache, fit."""
    if key in _memory:
        factors, meta = _memory[key]
        return factors, meta, "memory"
    name = _file_name(key)
    shipped = _shipped_dir().joinpath(name)
    if shipped.is_file():
        try:
            with shipped.open("rb") as f:
                factors, meta = _read_verified(f, key)
            return (*_remember(key, factors, meta), "shipped")
        except FactorFileError as exc:
            logger.warning(
                "shipped CP factor file %s is invalid (%s); ignoring it and "
                "using the user cache instead",
                name,
                exc,
            )
    user = _user_dir() / name
    if user.is_file():
        try:
            factors, meta = _read_verified(user, key)
            return (*_remember(key, factors, meta), "cache")
        except FactorFileError as exc:
            logger.warning(
                "cached CP factor file %s is invalid (%s); refitting and overwriting it",
                user,
                exc,
            )
    factors, meta = _fit(key)
    if persist:
        _store(user, factors, meta)
    return (*_remember(key, factors, meta), "fit")


def _store(path: Path, factors: tuple, meta: dict) -> None:
    try:
        _write_factors(path, factors, meta)
    except OSError as exc:
        # A read-only home must not make the library unusable: keep it in memory.
        logger.warning("could not write CP factor cache %s (%s)", path, exc)


def _tol_key(group: str, l1: int, l2: int, l3: int, tol: float) -> str:
    return f"{group}/{l1}/{l2}/{l3}/{tol!r}"


def _read_index() -> dict:
    path = _user_dir() / _INDEX_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT or not isinstance(data.get("ranks"), dict):
            raise ValueError("unexpected layout")
        return {k: v for k, v in data["ranks"].items() if isinstance(v, int) and v >= 1}
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("ignoring unreadable CP tol index %s (%s)", path, exc)
        return {}


def _write_index(entry: str, rank: int) -> None:
    ranks = _read_index()
    ranks[entry] = rank
    text = json.dumps({"format": _FORMAT, "ranks": ranks}, indent=1, sort_keys=True)
    try:
        atomic_write(_user_dir() / _INDEX_NAME, lambda f: f.write(text.encode()))
    except OSError as exc:
        logger.warning("could not write the CP tol index (%s)", exc)


def _search_tol(group: str, l1: int, l2: int, l3: int, tol: float) -> tuple:
    """Smallest rank whose fit reaches rel_error <= tol, as ``(rank, factors, meta,
    source)``: from the quadratic-schedule rank (often shipped, so free) the rank is
    doubled until a fit qualifies (the exact rank always does), then the last gap is
    bisected.

    Galloping from there keeps the fits small: the answer is usually far below the
    exact rank (L = 4: rank 300 of 591 already fits to 3e-9), and ALS cost grows with
    the rank. Like any bisection it presumes the fitted error does not increase with
    the rank, which holds for these fits in practice but is not proven."""
    memo = (group, l1, l2, l3, tol)
    if memo in _memory_tol:
        rank = _memory_tol[memo]
        return (rank, *_lookup((group, l1, l2, l3, rank)))
    entry = _tol_key(group, l1, l2, l3, tol)
    rank = _read_index().get(entry)
    if rank is not None:
        found = _lookup((group, l1, l2, l3, rank))
        if found[1]["rel_error"] <= tol:
            _memory_tol[memo] = rank
            return (rank, *found)
        logger.warning("CP tol index entry %s is inconsistent; searching again", entry)
    exact = _exact_rank(l1, l2, l3, group)
    logger.info("searching the smallest CP rank in [1, %d] with rel_error <= %g", exact, tol)
    sources = {}

    def reaches(r: int) -> bool:
        # Intermediate fits stay in memory only; the answer is written below.
        _, meta, sources[r] = _lookup((group, l1, l2, l3, r), persist=False)
        return meta["rel_error"] <= tol

    lo, hi = 0, resolve_rank("quadratic", l1, l2, l3, group)  # lo fails (0: none known)
    while hi < exact and not reaches(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, exact)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    factors, meta, source = _lookup((group, l1, l2, l3, hi), persist=False)
    source = sources.get(hi, source)
    name = _file_name((group, l1, l2, l3, hi))
    path = _user_dir() / name
    if not path.is_file() and not _shipped_dir().joinpath(name).is_file():
        _store(path, factors, meta)
    _write_index(entry, hi)
    _memory_tol[memo] = hi
    return hi, factors, meta, source


def cp_factors(
    lmax_in: int,
    lmax_sh: int,
    lmax_out: int,
    rank: int | str = "quadratic",
    group: str = "SO3",
    *,
    tol: float | None = None,
) -> CPFactors:
    """CP factors of the path-summed CG tensor M [(lmax_in+1)^2, (lmax_sh+1)^2,
    (lmax_out+1)^2] (see ``cg_tensor``).

    Args:
        lmax_in, lmax_sh, lmax_out: maximum degrees of input 1, input 2 and output.
        rank: ``"quadratic"`` (7 L^2, default), ``"linear"`` (7 L), ``"full"`` (exact)
            or a positive int; see :func:`resolve_rank`. A rank at or above the exact
            rank gives the exact decomposition (zero-padded).
        group: ``"SO3"`` or ``"O3"`` (which paths M contains).
        tol: instead of a rank, ask for the smallest rank whose fit reaches
            ``rel_error <= tol`` (0 < tol < 1). Costs one fit per bisection step the
            first time; the answer is cached. Tolerances below ~1e-8 (what the ALS
            fits reach at best) end at the exact decomposition.

    Returns:
        A verified :class:`CPFactors` with fresh float64 tensors.

    Raises:
        ValueError: bad lmax, group, rank or tol, or tol together with a rank.
    """
    check_lmax(lmax_in=lmax_in, lmax_sh=lmax_sh, lmax_out=lmax_out)
    check_group(group)
    with _lock:
        if tol is not None:
            if rank != "quadratic":
                raise ValueError(
                    f"tol: give either tol or rank, not both (got rank={rank!r}, tol={tol!r})"
                )
            if (
                isinstance(tol, (bool, np.bool_))
                or not isinstance(tol, (int, float, np.floating, np.integer))
                or not 0.0 < float(tol) < 1.0
            ):
                raise ValueError(f"tol: expected a float with 0 < tol < 1, got {tol!r}")
            tol = float(tol)
            R, factors, meta, source = _search_tol(group, lmax_in, lmax_sh, lmax_out, tol)
        else:
            R = resolve_rank(rank, lmax_in, lmax_sh, lmax_out, group)
            factors, meta, source = _lookup((group, lmax_in, lmax_sh, lmax_out, R))
    A, B, C = (torch.tensor(X, dtype=torch.float64) for X in factors)
    return CPFactors(
        A=A,
        B=B,
        C=C,
        lmax_in=lmax_in,
        lmax_sh=lmax_sh,
        lmax_out=lmax_out,
        group=group,
        rank=R,
        rel_error=float(meta["rel_error"]),
        bound=float(meta["bound"]),
        method=str(meta.get("method", "als")),
        seed=meta.get("seed"),
        fit_seconds=float(meta.get("fit_seconds", 0.0)),
        norm_ratio=float(meta.get("norm_ratio", float("nan"))),
        tol=tol,
        source=source,
    )


def _clear_memory() -> None:
    """Forget the in-process cache (tests use this to exercise the file paths)."""
    with _lock:
        _memory.clear()
        _memory_tol.clear()


# --------------------------------------------------------------------------- shipping


def _ship(out_dir: Path | None = None, lmaxes=_SHIPPED_LMAX) -> list[dict]:
    """Fit the shipped factor sets (SO3, lmax_in = lmax_sh = lmax_out = L, quadratic
    rank) and write them to ``out_dir`` (default: the package's ``data/cp``).

    One process per core, largest L first: each fit is single-threaded (see
    ``_cp_als``) and deterministic, so the files are the same as from a serial run.
    Returns the metadata in the order of ``lmaxes``.
    """
    import concurrent.futures
    import multiprocessing

    out_dir = Path(__file__).resolve().parent / "data" / "cp" if out_dir is None else out_dir
    keys = {L: ("SO3", L, L, L, resolve_rank("quadratic", L, L, L, "SO3")) for L in lmaxes}
    metas = {}
    print(f"{'L':>2} {'d':>3} {'R':>4} {'rel_error':>10} {'bound':>10} {'seconds':>8}", flush=True)
    workers = max(1, min(len(keys), os.cpu_count() or 1))
    # spawn: a forked copy of a process that holds torch's thread pools can deadlock
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = {pool.submit(_fit, keys[L]): L for L in sorted(keys, reverse=True)}
        for job in concurrent.futures.as_completed(jobs):
            L = jobs[job]
            factors, meta = job.result()
            _write_factors(out_dir / _file_name(keys[L]), factors, meta)
            metas[L] = meta
            print(
                f"{L:>2} {dim(L):>3} {keys[L][4]:>4} {meta['rel_error']:>10.3e} "
                f"{meta['bound']:>10.3e} {meta['fit_seconds']:>8.1f}",
                flush=True,
            )
    return [metas[L] for L in lmaxes]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdn_core._factors", description=__doc__)
    parser.add_argument(
        "--ship", action="store_true", help="regenerate the shipped factor files (L = 1..6)"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory (default: package)")
    args = parser.parse_args(argv)
    if not args.ship:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    _ship(args.out)
    print(f"total {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
