"""CP factor sets: the ALS fit, the exact decomposition, the equivariance bound, and the
shipped / cached files around them."""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import pytest
import torch

import tdn_core._factors as fac
from tdn_core._cg import cg_tensor, cg_tensor_np
from tdn_core._cp_als import (
    cp_als,
    cp_reconstruct,
    equivariance_bound,
    exact_cp,
    relative_error,
)
from tdn_core._factors import CPFactors, cp_factors, default_cache_dir, resolve_rank
from tdn_core.testing import random_rotation, wigner_D

# Quality bars at R = 7 L^2 (what plain ALS with 3 restarts reached; the paper's Adam
# fit reached 1.9e-2, 3.2e-2, 6.7e-2, 6.4e-2 for L = 1..4).
QUALITY_BAR = {1: 2e-2, 2: 4e-2, 3: 7e-2, 4: 7e-2, 5: 7e-2, 6: 7e-2}

# float64 rounding of an exact equivariant product: M is exact to ~1e-15 when the D
# matrices are built in float64 (tdn_core.testing.wigner_D); e3nn's D at L = 6 carries
# ~1e-11 from its angle extraction. The conformance suite uses the same 1e-10.
M_EQUIVARIANCE_TOL = 1e-10


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty user cache and an empty in-process cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TDN_CACHE_DIR", str(cache))
    fac._clear_memory()
    yield cache / "cp"
    fac._clear_memory()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------- _cp_als


@pytest.mark.parametrize("group", ["SO3", "O3"])
@pytest.mark.parametrize("L", [0, 1, 2, 3])
def test_exact_cp_reconstructs_M(L, group):
    M = cg_tensor_np(L, L, L, group)
    A, B, C = exact_cp(M)
    assert A.shape[1] == B.shape[1] == C.shape[1]
    assert A.shape[1] <= M.shape[0] * M.shape[1]
    assert np.abs(cp_reconstruct(A, B, C) - M).max() < 1e-12
    assert relative_error(M, A, B, C) < 1e-12


def test_exact_cp_known_ranks_and_general_tensors():
    assert exact_cp(cg_tensor_np(1, 1, 1, "SO3"))[0].shape[1] == 16
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 5, 4))
    A, B, C = exact_cp(X)
    assert (A.shape, B.shape, C.shape) == ((3, 12), (5, 12), (4, 12))
    assert relative_error(X, A, B, C) < 1e-12
    # Rank 1, but every standard-basis slice is nonzero: only the rotated basis sees it.
    a, b, c = rng.standard_normal((3, 4))
    Y = np.einsum("i,j,k->ijk", a, b, c)
    assert exact_cp(Y)[0].shape[1] == 1
    assert [F.shape for F in exact_cp(np.zeros((2, 3, 4)))] == [(2, 1), (3, 1), (4, 1)]


def test_cp_als_recovers_a_low_rank_tensor_and_reports_its_error():
    rng = np.random.default_rng(1)
    F = [rng.standard_normal((d, 3)) for d in (4, 5, 6)]
    X = cp_reconstruct(*F)
    A, B, C, err = cp_als(X, 3, seed=0, restarts=2, max_iter=600, probe_iter=100)
    assert err < 1e-6
    assert err == pytest.approx(relative_error(X, A, B, C), rel=1e-12)
    assert err == pytest.approx(np.linalg.norm(X - cp_reconstruct(A, B, C)) / np.linalg.norm(X))


def test_cp_als_is_deterministic_and_balanced():
    M = cg_tensor_np(2, 2, 2, "SO3")
    kw = dict(seed=3, restarts=2, max_iter=150, probe_iter=50)
    A1, B1, C1, e1 = cp_als(M, 10, **kw)
    A2, B2, C2, e2 = cp_als(M, 10, **kw)
    assert e1 == e2
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(B1, B2)
    np.testing.assert_array_equal(C1, C2)
    na, nb, nc = (np.linalg.norm(X, axis=0) for X in (A1, B1, C1))
    np.testing.assert_allclose(na, nb, rtol=1e-10)
    np.testing.assert_allclose(na, nc, rtol=1e-10)
    assert np.all(np.diff(na) <= 0)  # sorted by weight
    A3, *_ = cp_als(M, 10, **{**kw, "seed": 4})
    assert not np.array_equal(A1, A3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rank=0), "rank"),
        (dict(rank=2.0), "rank"),
        (dict(rank=True), "rank"),
        (dict(rank=2, restarts=0), "restarts"),
        (dict(rank=2, max_iter=-1), "max_iter"),
    ],
)
def test_cp_als_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cp_als(np.ones((2, 2, 2)), **kwargs)


def test_equivariance_bound_is_twice_the_mode3_spectral_norm():
    M = cg_tensor_np(1, 1, 1, "SO3")
    rng = np.random.default_rng(2)
    A, B, C = (rng.standard_normal((4, 3)) for _ in range(3))
    E3 = (M - cp_reconstruct(A, B, C)).reshape(16, 4).T
    assert equivariance_bound(M, A, B, C) == pytest.approx(2 * np.linalg.svd(E3)[1][0])
    assert equivariance_bound(M, *exact_cp(M)) < 1e-12


# ------------------------------------------------------------------ equivariance


def _equivariance_errors(f: CPFactors, n_rot: int = 4, n_xy: int = 8) -> tuple[float, float]:
    """max over random rotations and inputs of ||D m(x, y) - m(Dx, Dy)|| / (|x| |y|), for
    the CP product and for M itself."""
    gen = torch.Generator().manual_seed(1234)
    M = cg_tensor(f.lmax_in, f.lmax_sh, f.lmax_out, f.group)

    def m_cp(x, y):  # m_R(x, y)_k = sum_r C_kr (A^T x)_r (B^T y)_r
        return ((x @ f.A) * (y @ f.B)) @ f.C.T

    def m_exact(x, y):
        return torch.einsum("ijk,ni,nj->nk", M, x, y)

    worst_cp = worst_exact = 0.0
    for _ in range(n_rot):
        R = random_rotation(generator=gen)
        D1, D2, D3 = (wigner_D(l, R) for l in (f.lmax_in, f.lmax_sh, f.lmax_out))
        x = torch.randn(n_xy, D1.shape[0], generator=gen, dtype=torch.float64)
        y = torch.randn(n_xy, D2.shape[0], generator=gen, dtype=torch.float64)
        scale = x.norm(dim=1) * y.norm(dim=1)
        for fn, is_cp in ((m_cp, True), (m_exact, False)):
            err = (fn(x, y) @ D3.T - fn(x @ D1.T, y @ D2.T)).norm(dim=1) / scale
            if is_cp:
                worst_cp = max(worst_cp, err.max().item())
            else:
                worst_exact = max(worst_exact, err.max().item())
    return worst_cp, worst_exact


# ------------------------------------------------------------------ shipped sets


@pytest.mark.parametrize("L", range(1, 7))
def test_shipped_factors_are_found_verified_and_meet_the_quality_bar(L):
    f = cp_factors(L, L, L)
    assert f.source == "shipped"
    assert (f.rank, f.group, f.method) == (7 * L * L, "SO3", "als")
    d = (L + 1) ** 2
    assert f.A.shape == f.B.shape == f.C.shape == (d, f.rank)
    assert f.A.dtype == torch.float64
    assert f.rel_error <= QUALITY_BAR[L]
    # The stored error is the real one: recompute it from the returned tensors.
    M = cg_tensor(L, L, L)
    assert f.rel_error == pytest.approx(((M - f.reconstruct()).norm() / M.norm()).item(), rel=1e-9)
    assert f.bound == pytest.approx(
        equivariance_bound(M.numpy(), f.A.numpy(), f.B.numpy(), f.C.numpy()), rel=1e-9
    )


@pytest.mark.parametrize("L", [1, 2, 3, 6])
def test_bound_holds_for_random_rotations(L):
    f = cp_factors(L, L, L)
    err_cp, err_exact = _equivariance_errors(f)
    assert err_exact < M_EQUIVARIANCE_TOL  # conventions of M and e3nn's D agree
    assert err_cp > 10 * M_EQUIVARIANCE_TOL  # the CP product is visibly not exact...
    assert err_cp <= f.bound + M_EQUIVARIANCE_TOL  # ...and stays within its bound


def test_exact_factors_are_equivariant():
    f = cp_factors(2, 2, 2, "full")
    assert f.method == "exact"
    assert f.rel_error < 1e-12 and f.bound < 1e-12
    err_cp, err_exact = _equivariance_errors(f)
    assert err_cp < M_EQUIVARIANCE_TOL and err_exact < M_EQUIVARIANCE_TOL


def test_returned_tensors_are_fresh_copies():
    f1 = cp_factors(1, 1, 1)
    f1.A.zero_()
    f2 = cp_factors(1, 1, 1)
    assert f2.source == "memory"
    assert f2.A.abs().sum() > 0


# ---------------------------------------------------------------------- ranks


def test_resolve_rank_schedules():
    assert resolve_rank("quadratic", 3, 3, 3) == 63
    assert resolve_rank("linear", 3, 3, 3) == 21
    assert resolve_rank("quadratic", 3, 2, 3) == 63  # L = max of the three
    assert resolve_rank("quadratic", 2, 1, 3) == 36 == resolve_rank("full", 2, 1, 3)  # capped
    assert resolve_rank("full", 1, 1, 1) == 16 == exact_cp(cg_tensor_np(1, 1, 1))[0].shape[1]
    assert resolve_rank("full", 2, 2, 2) <= 81
    assert resolve_rank(5, 2, 2, 2) == 5
    assert resolve_rank(np.int64(5), 2, 2, 2) == 5
    # L = 0: M is the scalar 1, rank 1 is exact, every schedule gives 1.
    for schedule in ("linear", "quadratic", "full"):
        assert resolve_rank(schedule, 0, 0, 0) == 1
    # Schedules never exceed the exact rank: (1, 0, 1) is the 4 x 4 identity.
    assert resolve_rank("quadratic", 1, 0, 1) == 4


@pytest.mark.parametrize("rank", [0, -3, "cubic", "", 2.5, True, None, "7"])
def test_bad_rank_raises(rank):
    with pytest.raises(ValueError, match=r"rank: expected a positive int or one of"):
        resolve_rank(rank, 2, 2, 2)
    with pytest.raises(ValueError, match="rank"):
        cp_factors(2, 2, 2, rank=rank)


@pytest.mark.parametrize("tol", [0, 0.0, -1e-3, 1.0, 2.0, math.nan, math.inf, "1e-3", True])
def test_bad_tol_raises(tol):
    with pytest.raises(ValueError, match=r"tol: expected a float with 0 < tol < 1"):
        cp_factors(1, 1, 1, tol=tol)


def test_tol_with_rank_raises():
    with pytest.raises(ValueError, match="tol: give either tol or rank"):
        cp_factors(1, 1, 1, rank=5, tol=1e-3)


def test_bad_lmax_and_group_raise():
    with pytest.raises(ValueError, match="lmax_in"):
        cp_factors(-1, 1, 1)
    with pytest.raises(ValueError, match="group"):
        cp_factors(1, 1, 1, group="SU2")


def test_exact_requests_and_padding():
    full = cp_factors(1, 1, 1, "full")
    assert (full.rank, full.method) == (16, "exact")
    padded = cp_factors(1, 1, 1, 18)
    assert padded.method == "exact" and padded.rank == 18
    assert padded.rel_error < 1e-12
    assert torch.all(padded.A[:, 16:] == 0)
    zero = cp_factors(0, 0, 0)
    assert (zero.rank, zero.method) == (1, "exact")
    assert zero.reconstruct().item() == pytest.approx(1.0)


def test_tol_search_returns_the_smallest_rank(isolated_cache):
    tol = 1e-6
    t0 = time.perf_counter()
    f = cp_factors(1, 1, 1, tol=tol)
    assert time.perf_counter() - t0 < 30
    assert f.rel_error <= tol and f.tol == tol
    assert 1 < f.rank <= 16
    # One rank less does not reach tol (the fits are deterministic per rank).
    assert cp_factors(1, 1, 1, f.rank - 1).rel_error > tol
    # The answer is cached on disk with an index; a new process finds it without search.
    index = json.loads((isolated_cache / "tol_index.json").read_text())
    assert index["ranks"] == {"SO3/1/1/1/1e-06": f.rank}
    assert (isolated_cache / f"cp_SO3_1_1_1_r{f.rank}.npz").is_file()
    fac._clear_memory()
    g = cp_factors(1, 1, 1, tol=tol)
    assert (g.rank, g.source) == (f.rank, "cache")
    torch.testing.assert_close(g.A, f.A, rtol=0, atol=0)


def test_tol_search_loose_and_tiny_tolerances():
    assert cp_factors(0, 0, 0, tol=0.5).rank == 1
    # Nothing the fits reach is below 1e-15: the exact decomposition is the answer.
    f = cp_factors(1, 0, 1, tol=1e-15)
    assert f.method == "exact" and f.rel_error <= 1e-15


# --------------------------------------------------------------------- files


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TDN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tdn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tdn"


def test_fit_is_written_to_the_user_cache_and_reloaded(isolated_cache, caplog):
    with caplog.at_level(logging.INFO, logger="tdn_core"):
        f = cp_factors(1, 1, 1, 3)
    assert f.source == "fit" and f.method == "als" and f.seed is not None
    assert any("fitting CP factors" in r.getMessage() for r in caplog.records)
    path = isolated_cache / "cp_SO3_1_1_1_r3.npz"
    assert path.is_file()
    assert [p.name for p in isolated_cache.iterdir()] == [path.name]  # no temp files left
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
        assert z["A"].shape == (4, 3)
    assert meta["rel_error"] == pytest.approx(f.rel_error)
    fac._clear_memory()
    g = cp_factors(1, 1, 1, 3)
    assert g.source == "cache"
    torch.testing.assert_close(g.C, f.C, rtol=0, atol=0)
    assert not _warnings(caplog)


def _rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: np.array(z[k]) for k in ("A", "B", "C")}
        meta = json.loads(str(z["meta"][()]))
    meta.update(changes.pop("meta", {}))
    arrays.update(changes)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def _nan_inside(path):
    with np.load(path, allow_pickle=False) as z:
        A = np.array(z["A"])
    A[1, 2] = np.nan
    _rewrite(path, A=A)


def _wrong_shape(path):
    with np.load(path, allow_pickle=False) as z:
        _rewrite(path, B=np.array(z["B"])[:, :-1])


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(500)),
    "nan_inside": _nan_inside,
    "wrong_shape": _wrong_shape,
    "meta_group": lambda p: _rewrite(p, meta={"group": "O3"}),
    "meta_rank": lambda p: _rewrite(p, meta={"rank": 17}),
    "meta_error": lambda p: _rewrite(p, meta={"rel_error": 1e-3}),
    "meta_bound_nan": lambda p: _rewrite(p, meta={"bound": math.nan}),
    "factors_changed": lambda p: _rewrite(p, C=np.zeros((4, 16))),
    "float32": lambda p: _rewrite(p, A=np.zeros((4, 16), dtype=np.float32)),
    "missing_meta": lambda p: np.savez(p, A=np.zeros((4, 16))),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_cache_file_is_refitted_with_a_warning(corruption, isolated_cache, caplog):
    good = cp_factors(1, 1, 1, "full")  # exact: instant, but stored like any fit
    path = isolated_cache / "cp_SO3_1_1_1_r16.npz"
    CORRUPTIONS[corruption](path)
    fac._clear_memory()
    with caplog.at_level(logging.WARNING, logger="tdn_core"):
        again = cp_factors(1, 1, 1, "full")
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "invalid" in warnings[0] and "refitting" in warnings[0]
    assert again.source == "fit" and again.rel_error < 1e-12
    torch.testing.assert_close(again.A, good.A)
    # The bad file was overwritten by a good one, and nothing else was left behind.
    fac._clear_memory()
    caplog.clear()
    assert cp_factors(1, 1, 1, "full").source == "cache"
    assert not _warnings(caplog)
    assert sorted(p.name for p in isolated_cache.iterdir()) == [path.name]


def test_corrupt_shipped_file_is_bypassed_into_the_user_cache(
    isolated_cache, tmp_path, monkeypatch, caplog
):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    name = "cp_SO3_1_1_1_r7.npz"
    (shipped / name).write_bytes((fac._shipped_dir() / name).read_bytes()[:-100])
    monkeypatch.setattr(fac, "_shipped_dir", lambda: shipped)
    with caplog.at_level(logging.WARNING, logger="tdn_core"):
        f = cp_factors(1, 1, 1)
    assert any("shipped" in w and "invalid" in w for w in _warnings(caplog))
    assert f.source == "fit" and f.rel_error <= QUALITY_BAR[1]
    assert (isolated_cache / name).is_file()
    fac._clear_memory()
    assert cp_factors(1, 1, 1).source == "cache"


def test_failed_write_leaves_no_temp_file_and_still_returns(isolated_cache, monkeypatch, caplog):
    def disk_full(file, **arrays):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fac.np, "savez", disk_full)
    with caplog.at_level(logging.WARNING, logger="tdn_core"):
        f = cp_factors(1, 1, 1, "full")
    assert f.rel_error < 1e-12
    assert any("could not write" in w for w in _warnings(caplog))
    assert list(isolated_cache.iterdir()) == []


def test_unwritable_cache_dir_is_not_fatal(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("TDN_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="tdn_core"):
        f = cp_factors(1, 1, 1, "full")
    assert f.rel_error < 1e-12
    assert any("could not write" in w for w in _warnings(caplog))


def test_cpfactors_validates_shapes_and_repr():
    f = cp_factors(1, 1, 1)
    assert f.dims == (4, 4, 4)
    text = repr(f)
    assert "rank=7" in text and "SO3" in text and "tensor(" not in text
    with pytest.raises(ValueError, match="B: expected a tensor of shape"):
        CPFactors(
            A=f.A,
            B=f.B[:, :3],
            C=f.C,
            lmax_in=1,
            lmax_sh=1,
            lmax_out=1,
            group="SO3",
            rank=7,
            rel_error=f.rel_error,
            bound=f.bound,
        )


def test_o3_group_is_its_own_factor_set():
    f = cp_factors(2, 2, 2, group="O3")
    assert f.group == "O3"
    M = cg_tensor(2, 2, 2, "O3")
    assert f.rel_error == pytest.approx(((M - f.reconstruct()).norm() / M.norm()).item(), rel=1e-6)


# ---------------------------------------------------------------------- slow


@pytest.mark.slow
def test_regenerating_the_shipped_set_is_fast_and_reproduces_it(tmp_path):
    """What `python -m tdn_core._factors --ship` does, into a temp dir: all of L = 1..6
    in under a minute on a 2-core CPU, meeting the quality bars."""
    t0 = time.perf_counter()
    rows = fac._ship(tmp_path)
    assert time.perf_counter() - t0 < 60
    for L, meta in zip(range(1, 7), rows, strict=True):
        assert meta["rel_error"] <= QUALITY_BAR[L]
        name = f"cp_SO3_{L}_{L}_{L}_r{7 * L * L}.npz"
        with np.load(tmp_path / name, allow_pickle=False) as z:
            assert z["A"].shape == ((L + 1) ** 2, 7 * L * L)
        shipped = cp_factors(L, L, L)
        # Same deterministic fit; BLAS differences may move it slightly.
        assert meta["rel_error"] == pytest.approx(shipped.rel_error, rel=0.1)
