"""``tdn bench`` and ``tdn fit-cp`` on small problems."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from tdn_cli._timing import interleaved_medians_ms
from tdn_cli.main import main

TINY = ["--lmax", "1", "2", "--edges", "32", "--channels", "4", "--repeats", "1"]


def test_bench_table_json_and_plot(capsys, tmp_path):
    js, png = tmp_path / "tp.json", tmp_path / "tp.png"
    code = main(["bench", "--backend", "cp_eager", *TINY, "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "fwd+bwd ms" in out and "x path_shared" in out and "equi err" in out
    data = json.loads(js.read_text())
    assert data["machine"]["matmul_gflops"] > 0
    assert data["settings"]["edges"] == 32
    rows = {(r["backend"], r["L"]): r for r in data["results"]}
    # the chosen backend first, then the peers, at every L
    assert ("cp_eager", 1) in rows and ("path_shared", 2) in rows
    cp = rows[("cp_eager", 2)]
    assert cp["forward_ms"] > 0 and cp["forward_backward_ms"] > 0
    # the GEMM rate is the factored order's, against the matmul rate measured next to it
    assert cp["order"] in ("factored", "dense") and cp["factored_forward_ms"] > 0
    achieved = cp["cp_gflop"] / (cp["factored_forward_ms"] * 1e-3)
    assert cp["fraction_of_matmul_rate"] == pytest.approx(achieved / cp["matmul_gflops"])
    assert cp["speedup_vs_path_shared_fb"] > 0
    assert 0 < cp["equivariance_error"] <= cp["bound"]
    assert cp["output_rel_error"] == pytest.approx(cp["rel_error"], rel=1.0)
    assert rows[("path_shared", 1)]["output_rel_error"] < 1e-12
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_auto_is_checked_against_the_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    js = tmp_path / "tp.json"
    args = ["--backend", "auto", "--mode", "uuu", *TINY, "--json", str(js)]
    assert main(["bench", *args, "--max-seconds", "1e-6"]) == 0
    out, err = capsys.readouterr()
    assert "backend='auto' (exact policy)" in out and "dbl-bwd ms" in out
    assert "over --max-seconds" in err
    data = json.loads(js.read_text())
    # every backend was timed at L = 1 and none at L = 2 (all over the 1 us budget)
    assert {r["L"] for r in data["results"]} == {1}
    assert all(r["double_backward_ms"] > 0 for r in data["results"])
    assert "sparse" in {r["backend"] for r in data["results"]}
    (first, second) = data["auto"]
    assert first["chose"] in {"cg", "path_shared", "sparse"}
    assert first["within_10_percent"] in (True, False)
    assert second["chose_ms"] is None and second["within_10_percent"] is None


def test_bench_auto_does_not_take_model(capsys):
    assert main(["bench", "--model", "--backend", "auto"]) == 2
    assert "--backend auto: compares products only" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("c++") is None, reason="cp_eager's CPU kernel needs c++")
def test_bench_times_the_cpu_kernel_against_the_pytorch_ops(capsys, tmp_path):
    js = tmp_path / "tp.json"
    args = ["--lmax", "1", "--edges", "32", "--channels", "16", "--repeats", "1"]
    assert main(["bench", "--backend", "cp_eager", *args, "--json", str(js)]) == 0
    assert "ops rate" in capsys.readouterr().out
    (cp,) = [r for r in json.loads(js.read_text())["results"] if r["backend"] == "cp_eager"]
    # the default order is dense here: the kernel and the ops run the factored one
    assert cp["order"] == "dense" and cp["cpu_kernel"] is True
    achieved = cp["cp_gflop"] / (cp["factored_ops_forward_ms"] * 1e-3)
    assert cp["ops_fraction_of_matmul_rate"] == pytest.approx(achieved / cp["matmul_gflops"])
    assert cp["factored_forward_ms"] != cp["factored_ops_forward_ms"]


def test_interleaved_medians_call_in_turn():
    calls = []
    medians = interleaved_medians_ms(
        [lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert len(medians) == 2 and all(m >= 0 for m in medians)


def test_bench_uuu_skips_peers_that_cannot(capsys):
    code = main(["bench", "--backend", "cp_eager", "--mode", "uuu", "--lmax", "1",
                 "--edges", "8", "--channels", "4", "--repeats", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "cp_eager" in captured.out
    assert "skipped: backend 'e3nn'" in captured.err  # e3nn and cueq have no uuu mode


def test_bench_bad_values(capsys):
    assert main(["bench", "--edges", "0"]) == 2
    assert (
        capsys.readouterr().err
        == "tdn bench: error: argument --edges: '0': expected an integer >= 1\n"
    )
    assert main(["bench", "--device", "cuda:7" if not torch.cuda.is_available() else "nope"]) == 2
    assert capsys.readouterr().err.startswith("tdn bench: error: --device")


@pytest.mark.slow
def test_bench_model(capsys, tmp_path):
    js = tmp_path / "model.json"
    code = main(["bench", "--model", "--backend", "path_shared", "--lmax", "1",
                 "--molecules", "2", "--repeats", "1", "--json", str(js)])  # fmt: skip
    assert code == 0
    assert "train atoms/s" in capsys.readouterr().out
    rows = json.loads(js.read_text())["results"]
    assert {r["backend"] for r in rows} >= {"path_shared"}
    assert all(r["train_atoms_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_bench_model_compiled_rows(monkeypatch, capsys, tmp_path):
    """--compile adds a compiled row next to each eager one, with its compile time."""
    from functools import partial

    from tdn_cli import _bench_model
    from tdn_models import TDN

    # a small network: the default one takes minutes to compile on this CPU
    tiny = partial(TDN, channels=8, layers=1, heads=2, num_basis=8, radial_hidden=8)
    monkeypatch.setattr(_bench_model, "TDN", tiny)
    js = tmp_path / "model.json"
    code = main(["bench", "--model", "--backend", "cp_eager", "--lmax", "1", "--molecules",
                 "2", "--repeats", "1", "--compile", "--json", str(js)])  # fmt: skip
    assert code == 0
    assert "cp_eager (compiled)" in capsys.readouterr().out
    rows = [r for r in json.loads(js.read_text())["results"] if r["backend"] == "cp_eager"]
    assert [r["compiled"] for r in rows] == [False, True]
    assert rows[0]["compile_s"] is None and rows[1]["compile_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_cp_triton_on_cpu_checks_correctness_in_the_interpreter(tmp_path, tdn_script):
    pytest.importorskip("triton")
    js = tmp_path / "triton.json"
    # a fresh process without TRITON_INTERPRET: the command must switch the interpreter on
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [tdn_script, "bench", "--backend", "cp_triton", "--lmax", "1", "--edges", "8",
         "--channels", "4", "--repeats", "1", "--json", str(js)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("cp_triton: timings need a CUDA GPU")
    row = next(r for r in json.loads(js.read_text())["results"] if r["backend"] == "cp_triton")
    assert "forward_ms" not in row  # interpreted: no timing
    assert row["output_rel_error"] == pytest.approx(row["rel_error"], rel=0.5)
    assert row["equivariance_error"] <= row["bound"]


def test_fit_cp_writes_into_the_cache_dir(capsys, monkeypatch, tmp_path):
    from tdn_core._factors import _clear_memory

    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    _clear_memory()  # an earlier test may hold this factor set in memory
    js = tmp_path / "fit.json"
    assert main(["fit-cp", "--lmax", "1", "--rank", "6", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    stored = tmp_path / "cp" / "cp_SO3_1_1_1_r6.npz"
    assert stored.is_file() and str(stored) in out
    assert "rel_error" in out and "equivariance bound" in out
    data = json.loads(js.read_text())
    assert data["rank"] == 6 and data["source"] == "fit"
    assert 0 < data["rel_error"] < 1 and data["bound"] > 0
    # a second run finds the stored set instead of fitting again
    _clear_memory()
    assert main(["fit-cp", "--lmax", "1", "--rank", "6"]) == 0
    assert "source: cache" in capsys.readouterr().out


def test_fit_cp_tol_and_shipped(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    assert main(["fit-cp", "--lmax", "1", "--tol", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "bound" in out
    assert main(["fit-cp", "--lmax", "2"]) == 0  # quadratic rank at L=2 ships with tdn-core
    assert "shipped with tdn-core" in capsys.readouterr().out
