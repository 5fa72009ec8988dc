"""CP decomposition of a dense 3-way tensor, numpy only, float64.

``M_ijk ~ sum_r A_ir B_jr C_kr`` (written ``[[A, B, C]]``).

:func:`cp_als` fits a given rank by regularised alternating least squares;
:func:`exact_cp` builds an exact decomposition from slice SVDs; :func:`equivariance_bound`
turns the residual into the bound stored with every factor set (DESIGN.md section 4).

Why this particular ALS. Low-rank approximations of the Clebsch-Gordan tensor sit in
"swamps": plain ALS crawls, and where it does make progress it is often by letting
pairs of components grow large and cancel (border-rank behaviour). Three things help,
all measured on the SO3 tensors at R = 7 L^2:

* a ridge term ``lam (|A|^2 + |B|^2 + |C|^2)`` that starts large and decays
  geometrically. It anneals the landscape (the early, strongly regularised iterations
  pick a better basin) and keeps the component norms bounded, so the factors do not
  rely on cancellation between huge terms (which would cost accuracy in float32);
* Bro's line search: after each sweep extrapolate along the sweep's step by
  ``it^(1/3)`` and keep the result only if the (regularised) objective went down
  (checked inside the next sweep, so an accepted step costs no extra GEMM);
* restarts run for a short probe each; only the best probe is run to the end (the
  ranking after a few hundred sweeps predicts the final ranking well). Probes alternate
  between strong and weak annealing, which find different kinds of minima.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Iterator

import numpy as np

__all__ = ["cp_als", "cp_reconstruct", "equivariance_bound", "exact_cp", "relative_error"]

# Ridge schedules (relative to the natural scale of the Gram matrices, see _Fit):
# (initial strength, geometric decay per sweep). Probes cycle through them.
_SCHEDULES = ((3e-2, 0.97), (1e-3, 0.97))
# Ridge floor, relative. Small enough not to bias near-exact fits (it reaches it only
# after the annealing has run its course), large enough to keep every solve well posed.
_RIDGE_FLOOR = 1e-9
# Convergence is judged over windows of this many sweeps.
_WINDOW = 50


@functools.cache
def _openblas_thread_controls() -> tuple:
    """(get, set) function pairs of the OpenBLAS builds loaded in this process (Linux).

    Why: a sweep is a dozen BLAS calls on matrices of a few hundred rows. Threading
    them gains little, and when another process holds a core, OpenBLAS threads spin
    waiting for a descheduled partner: we measured a 10-100x slowdown of the fit on a
    busy 2-core machine. So fits run single-threaded. Found the way threadpoolctl does
    it (scan the mapped libraries), without depending on it; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return ()
    controls = []
    prefixes = ("scipy_openblas_", "openblas_")
    suffixes = ("64_", "")
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in prefixes:
            for suffix in suffixes:
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    controls.append((get, put))
                    break
            else:
                continue
            break
    return tuple(controls)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    saved = []
    for get, put in _openblas_thread_controls():
        try:
            saved.append((put, get()))
            put(1)
        except Exception:  # pragma: no cover - best effort only
            continue
    try:
        yield
    finally:
        for put, n in saved:
            put(n)


def cp_reconstruct(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``[[A, B, C]]``: A [d1, R], B [d2, R], C [d3, R] -> tensor [d1, d2, d3]."""
    d1, d2, d3 = A.shape[0], B.shape[0], C.shape[0]
    kr = (A[:, None, :] * B[None, :, :]).reshape(d1 * d2, -1)
    return (kr @ C.T).reshape(d1, d2, d3)


def relative_error(M: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> float:
    """``||M - [[A, B, C]]||_F / ||M||_F`` computed from the explicit residual (no
    cancellation); 0 for M = 0 and an exact fit."""
    M = np.asarray(M, dtype=np.float64)
    norm = float(np.linalg.norm(M))
    res = float(np.linalg.norm(M - cp_reconstruct(A, B, C)))
    if norm == 0.0:
        return 0.0 if res == 0.0 else float("inf")
    return res / norm


def equivariance_bound(M: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> float:
    """``2 ||E_(3)||_2`` with ``E = M - [[A, B, C]]``.

    ``E_(3)`` is the mode-3 unfolding [d3, d1 d2] and ``||.||_2`` its largest singular
    value. If M is exactly equivariant (``D3 M(x, y) = M(D1 x, D2 y)`` with orthogonal
    D's), then for every rotation and all x, y the CP product ``m_R`` satisfies
    ``||D3 m_R(x, y) - m_R(D1 x, D2 y)|| <= bound * ||x|| * ||y||``: both
    ``D3 E(x, y)`` and ``E(D1 x, D2 y)`` are bounded by ``||E_(3)||_2 ||x|| ||y||``.
    """
    M = np.asarray(M, dtype=np.float64)
    d1, d2, d3 = M.shape
    E3 = (M - cp_reconstruct(A, B, C)).reshape(d1 * d2, d3).T
    return 2.0 * float(np.linalg.norm(E3, ord=2))


def _balance(A: np.ndarray, B: np.ndarray, C: np.ndarray) -> tuple:
    """Give the three vectors of each component equal norms (same product), and order
    components by decreasing weight, so returned factors are canonical up to signs."""
    na, nb, nc = (np.linalg.norm(X, axis=0) for X in (A, B, C))
    w = na * nb * nc
    keep = w > 0
    g = np.cbrt(w)
    # Components with a zero vector are zero altogether: make all three vectors zero.
    A, B, C = (
        X * np.where(keep, g / np.where(keep, n, 1.0), 0.0) for X, n in ((A, na), (B, nb), (C, nc))
    )
    order = np.argsort(-w, kind="stable")
    return (
        np.ascontiguousarray(A[:, order]),
        np.ascontiguousarray(B[:, order]),
        np.ascontiguousarray(C[:, order]),
    )


class _Fit:
    """One ALS trajectory: state plus the precomputed unfoldings of M."""

    def __init__(self, M: np.ndarray, factors: list, schedule: tuple) -> None:
        d1, d2, d3 = M.shape
        self.shape = M.shape
        self.R = factors[0].shape[1]
        # M12 [d1 d2, d3] gives T = M x_3 C, shared by the A and B updates (one GEMM for
        # two modes); M3 [d3, d1 d2] gives the C update. Both contiguous for BLAS.
        self.M12 = np.ascontiguousarray(M.reshape(d1 * d2, d3))
        self.M3 = np.ascontiguousarray(self.M12.T)
        self.norm2 = float(np.sum(M * M))
        # Entries of the Gram matrices are ~ (|M|^2 / R)^(2/3) for balanced factors of
        # the right size; the ridge is expressed relative to that.
        self.unit = (self.norm2 / self.R) ** (2.0 / 3.0)
        self.eye = np.eye(self.R)
        self.A, self.B, self.C = factors
        self.lam0, self.decay = schedule
        self.it = 0
        self.err2 = np.inf  # unregularised squared residual after the last sweep
        self.history: list[float] = []  # err2 at the end of every _WINDOW sweeps
        self.stalled = False
        self.pending: tuple | None = None  # extrapolated point to try next sweep
        self.lam_prev = 0.0
        self.f_cur = np.inf
        self.accepted = 0

    def _ridge(self) -> float:
        return self.unit * max(_RIDGE_FLOOR, self.lam0 * self.decay**self.it)

    @staticmethod
    def _solve(G: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        # G is SPD (Gram Hadamard product + ridge > 0); LU is as fast as Cholesky here
        # because numpy has no triangular solver.
        try:
            return np.linalg.solve(G, rhs.T).T
        except np.linalg.LinAlgError:  # pragma: no cover - only for degenerate input
            return np.linalg.lstsq(G, rhs.T, rcond=None)[0].T

    @staticmethod
    def _sumsq(*xs: np.ndarray) -> float:
        return float(sum(np.sum(x * x) for x in xs))

    def sweep(self) -> None:
        d1, d2, _ = self.shape
        R = self.R
        # Bro's line search, evaluated lazily: the extrapolated point proposed by the
        # previous sweep is tried here, where T = M x_3 C and the A-update product are
        # needed anyway, so its objective costs no extra GEMM when it is accepted.
        start = None
        if self.pending is not None:
            An, Bn, Cn = self.pending
            self.pending = None
            Tn = (self.M12 @ Cn).reshape(d1, d2, R)
            GAn = np.einsum("ijr,jr->ir", Tn, Bn)
            model2 = float(np.sum((An.T @ An) * (Bn.T @ Bn) * (Cn.T @ Cn)))
            err2n = self.norm2 - 2.0 * float(np.sum(GAn * An)) + model2
            if err2n + self.lam_prev * self._sumsq(An, Bn, Cn) < self.f_cur:
                start = (An, Bn, Cn, Tn, GAn)
                self.accepted += 1
        if start is None:
            A0, B0, C0 = self.A, self.B, self.C
            T = (self.M12 @ C0).reshape(d1, d2, R)
            GA = np.einsum("ijr,jr->ir", T, B0)
        else:
            A0, B0, C0, T, GA = start
        lam = self._ridge()
        CtC = C0.T @ C0
        A = self._solve((B0.T @ B0) * CtC + lam * self.eye, GA)
        AtA = A.T @ A
        B = self._solve(AtA * CtC + lam * self.eye, np.einsum("ijr,ir->jr", T, A))
        kr = (A[:, None, :] * B[None, :, :]).reshape(d1 * d2, R)
        GC = self.M3 @ kr
        G = AtA * (B.T @ B)
        C = self._solve(G + lam * self.eye, GC)
        # Residual from quantities at hand: |M|^2 - 2<M, model> + |model|^2.
        err2 = self.norm2 - 2.0 * float(np.sum(GC * C)) + float(np.sum(G * (C.T @ C)))
        # Rebalance column norms: same model, smaller ridge term, better-scaled solves.
        na, nb, nc = (np.linalg.norm(X, axis=0) + 1e-300 for X in (A, B, C))
        g = np.cbrt(na * nb * nc)
        A, B, C = A * (g / na), B * (g / nb), C * (g / nc)
        if self.it >= 3:
            s = self.it ** (1.0 / 3.0)
            self.pending = (A0 + s * (A - A0), B0 + s * (B - B0), C0 + s * (C - C0))
        self.A, self.B, self.C = A, B, C
        self.err2 = max(err2, 0.0)
        self.lam_prev = lam
        self.f_cur = err2 + lam * self._sumsq(A, B, C)
        self.it += 1
        if self.it % _WINDOW == 0:
            self.history.append(self.err2)

    def rel_error_estimate(self) -> float:
        return float(np.sqrt(self.err2 / self.norm2)) if self.norm2 > 0 else 0.0

    def run(self, n: int, tol: float) -> None:
        """Up to n more sweeps; stop early once the error stalls (relative decrease
        below ``tol`` over a window, after the annealing is over) or is at round-off."""
        for _ in range(n):
            self.sweep()
            if self.it % _WINDOW or len(self.history) < 2:
                continue
            if self.lam0 * self.decay**self.it > _RIDGE_FLOOR:
                continue
            # err2 from the expanded formula is only good to ~1e-16 |M|^2, i.e. a
            # relative error of ~1e-8: below that the fit is as exact as we can tell.
            if self.err2 <= 1e-15 * self.norm2:
                self.stalled = True
                return
            prev, cur = self.history[-2], self.history[-1]
            if prev - cur <= tol * prev:
                self.stalled = True
                return


def _init(shape: tuple, R: int, norm2: float, rng: np.random.Generator) -> list:
    # Gaussian factors scaled so that |[[A, B, C]]| ~ |M| and components are balanced.
    scale = (norm2 / R) ** (1.0 / 6.0) if norm2 > 0 else 1.0
    return [rng.standard_normal((d, R)) * (scale / np.sqrt(d)) for d in shape]


def _default_effort(shape: tuple, R: int) -> tuple[int, int, int]:
    """(restarts, probe_iter, max_iter) by problem size.

    A sweep costs about d1 d2 d3 R (two GEMMs, a third when the line search rejects
    its step) plus R^3 (three R x R solves). Small problems get many restarts and long runs (their
    landscapes have several distinct minima and sweeps are cheap); large ones get what
    fits the time budget (all of L = 1..6 at R = 7 L^2 in well under a minute).
    """
    d1, d2, d3 = shape
    work = d1 * d2 * d3 * R + R**3
    for limit, effort in (
        (1e4, (32, 500, 3000)),
        (2e5, (16, 400, 4000)),
        (1e6, (8, 300, 3000)),
        (5e6, (6, 250, 2500)),
        (2e7, (4, 200, 2000)),
    ):
        if work <= limit:
            return effort
    return (4, 150, 1500)


def cp_als(
    M: np.ndarray,
    rank: int,
    *,
    seed: int = 0,
    restarts: int | None = None,
    max_iter: int | None = None,
    probe_iter: int | None = None,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Rank-``rank`` CP fit of a 3-way tensor by regularised ALS with line search.

    Args:
        M: tensor [d1, d2, d3] (converted to float64).
        rank: number of components R >= 1.
        seed: seeds a ``numpy.random.default_rng``; the result is a deterministic
            function of (M, rank, seed, restarts, max_iter, probe_iter, tol) on a given
            machine and BLAS.
        restarts: number of random starts. Each runs ``probe_iter`` sweeps; the best
            one is continued up to ``max_iter`` sweeps in total.
        max_iter: sweeps of the continued start (a sweep updates A, B and C once).
        probe_iter: sweeps of every start before the best is picked.
            ``None`` (the default for these three) picks them by problem size.
        tol: stop once the squared error decreases by less than this fraction over 50
            sweeps (after the ridge annealing is over).

    Returns:
        ``(A [d1, R], B [d2, R], C [d3, R], rel_error)`` with
        ``rel_error = ||M - [[A, B, C]]||_F / ||M||_F`` computed from the explicit
        residual. Components are balanced (equal norms in A, B, C) and sorted by
        decreasing weight.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 3 or min(M.shape) < 1:
        raise ValueError(f"M: expected a non-empty 3-way array, got shape {M.shape}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank: expected a positive int, got {rank!r}")
    for name, v in (("restarts", restarts), ("max_iter", max_iter), ("probe_iter", probe_iter)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if not np.all(np.isfinite(M)):
        raise ValueError("M: contains non-finite values")
    rank = int(rank)
    rng = np.random.default_rng(seed)
    norm2 = float(np.sum(M * M))
    if norm2 == 0.0:
        zeros = [np.zeros((d, rank)) for d in M.shape]
        return zeros[0], zeros[1], zeros[2], 0.0

    auto = _default_effort(M.shape, rank)
    restarts = auto[0] if restarts is None else restarts
    probe_iter = auto[1] if probe_iter is None else probe_iter
    max_iter = auto[2] if max_iter is None else max_iter
    probe_iter = min(probe_iter, max_iter)
    with _single_threaded_blas():
        fits = []
        for i in range(restarts):
            fit = _Fit(M, _init(M.shape, rank, norm2, rng), _SCHEDULES[i % len(_SCHEDULES)])
            fit.run(probe_iter, tol)
            fits.append(fit)
        best = min(fits, key=lambda f: f.err2)
        if not best.stalled:
            best.run(max_iter - best.it, tol)
    A, B, C = _balance(best.A, best.B, best.C)
    return A, B, C, relative_error(M, A, B, C)


def exact_cp(M: np.ndarray, *, rtol: float = 1e-14) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exact CP decomposition of M [d1, d2, d3], by construction.

    Slice M along one mode, take the SVD of every slice and keep the singular triplets
    above ``rtol * (largest singular value of any slice)``: each slice ``S_t = U s V^T``
    contributes ``rank(S_t)`` components ``(s_u U_u, V_u, q_t)``. Tried for every mode,
    with slices taken both in the standard basis and in the basis of the mode's
    principal directions (left singular vectors of the unfolding); the smallest total
    rank wins (ties go to the standard basis, whose factors are sparser).

    Returns ``(A [d1, R], B [d2, R], C [d3, R])`` with ``R`` the total rank (at least 1;
    all-zero columns for M = 0); reconstruction error is at round-off level.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 3 or min(M.shape) < 1:
        raise ValueError(f"M: expected a non-empty 3-way array, got shape {M.shape}")
    best = None
    for mode in (2, 0, 1):
        # Bring the sliced mode last: P [da, db, dk].
        axes = [m for m in range(3) if m != mode] + [mode]
        P = np.transpose(M, axes)
        da, db, dk = P.shape
        unfold = P.reshape(da * db, dk)
        bases = [np.eye(dk)]
        if dk > 1:
            # Principal directions of the mode: eigenvectors of the unfolding's Gram
            # matrix, strongest first (slices beyond its rank vanish).
            bases.append(np.linalg.eigh(unfold.T @ unfold)[1][:, ::-1])
        for Q in bases:
            slices = (unfold @ Q).T.reshape(dk, da, db)  # S_t = sum_k P[:, :, k] Q[k, t]
            U, s, Vt = np.linalg.svd(slices, full_matrices=False)
            smax = float(s.max()) if s.size else 0.0
            keep = s > rtol * smax if smax > 0 else np.zeros_like(s, dtype=bool)
            total = int(keep.sum())
            if best is not None and total >= best[0]:
                continue
            cols_a, cols_b, cols_k = [], [], []
            for t in range(dk):
                for u in np.flatnonzero(keep[t]):
                    cols_a.append(U[t, :, u] * s[t, u])
                    cols_b.append(Vt[t, u, :])
                    cols_k.append(Q[:, t])
            best = (total, mode, cols_a, cols_b, cols_k, (da, db, dk))
    assert best is not None
    total, mode, cols_a, cols_b, cols_k, (da, db, dk) = best
    if total == 0:
        return tuple(np.zeros((d, 1)) for d in M.shape)  # type: ignore[return-value]
    Fa, Fb, Fk = (np.stack(c, axis=1) for c in (cols_a, cols_b, cols_k))
    # Undo the mode permutation: factors in order (other modes..., sliced mode).
    factors = [None, None, None]
    others = [m for m in range(3) if m != mode]
    factors[others[0]], factors[others[1]], factors[mode] = Fa, Fb, Fk
    A, B, C = _balance(*factors)
    return A, B, C
