"""backend="auto": the policy, the choice from a timing table, the per-machine cache."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tdn_core import AutoPolicy, TensorProduct, TPDescriptor, UnsupportedDescriptor, _autotune

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    return tmp_path / _autotune.CACHE_NAME


@pytest.fixture
def fake_timings(monkeypatch):
    """measure() replaced by a table (name -> ms); returns the list of calls made."""
    calls = []
    table = {"cg": 50.0, "path_shared": 9.0, "sparse": 7.0, "cp_eager": 3.0, "e3nn": math.inf}

    def measure(desc, dtype, device, names, best=math.inf, edges=None):
        calls.append(list(names))
        return {n: table.get(n, 100.0) for n in names}

    monkeypatch.setattr(_autotune, "measure", measure)
    return calls


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exact": "yes"}, "policy.exact: expected True or False"),
        ({"exact": False}, "policy.max_bound: expected a positive number"),
        ({"exact": False, "max_bound": -1.0}, "policy.max_bound: expected a positive number"),
        ({"exact": False, "max_bound": float("nan")}, "policy.max_bound"),
        ({"exact": True, "max_bound": 0.1}, "policy.max_bound: only applies with exact=False"),
    ],
)
def test_bad_policies_are_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        AutoPolicy(**kwargs)
    assert "\n" not in str(err.value)


def test_policy_from_a_config_mapping():
    assert AutoPolicy.coerce(None) == AutoPolicy()
    assert AutoPolicy.coerce({"exact": False, "max_bound": 0.2}) == AutoPolicy(False, 0.2)
    with pytest.raises(ValueError, match="policy: unknown key 'tol'"):
        AutoPolicy.coerce({"exact": True, "tol": 1e-6})
    with pytest.raises(ValueError, match="policy: expected an AutoPolicy"):
        AutoPolicy.coerce("exact")


def test_choose_takes_the_fastest_allowed():
    timings = {"cg": 50.0, "path_shared": 9.0, "cp_eager": 3.0, "e3nn": math.inf}
    assert _autotune.choose(timings, lambda n: True) == "cp_eager"
    assert _autotune.choose(timings, lambda n: n != "cp_eager") == "path_shared"
    with pytest.raises(UnsupportedDescriptor, match="no backend the policy allows"):
        _autotune.choose(timings, lambda n: n == "e3nn")  # never finished: inf


def test_policy_decides_between_exact_and_cp(cache, fake_timings):
    desc = TPDescriptor(2, 2, 2, 16, mode="uuu", rank=28)
    assert _autotune.select_backend(desc, torch.float32, CPU) == "sparse"
    # CP at L = 2, rank 28 has bound ~0.05: allowed under 0.1, refused under 0.01
    loose = AutoPolicy(exact=False, max_bound=0.1)
    assert _autotune.select_backend(desc, torch.float32, CPU, loose) == "cp_eager"
    strict = {"exact": False, "max_bound": 0.01}
    assert _autotune.select_backend(desc, torch.float32, CPU, strict) == "sparse"


def test_timings_are_cached_per_machine(cache, fake_timings, monkeypatch):
    desc = TPDescriptor(1, 1, 1, 8, mode="uuu", rank=7)
    _autotune.select_backend(desc, torch.float32, CPU)
    _autotune.select_backend(desc, torch.float32, CPU)
    assert len(fake_timings) == 1  # the second call read the cache
    assert "cp_eager" not in fake_timings[0]  # exact policy: CP not timed
    _autotune.select_backend(desc, torch.float32, CPU, AutoPolicy(False, 1.0))
    assert fake_timings[1] == ["cp_eager"]  # only what the cache lacked
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left
    stored = json.loads(cache.read_text())
    assert stored["fingerprint"] == _autotune.machine_fingerprint(CPU)
    # another torch, tdn-core, CPU or thread count: measured again
    monkeypatch.setattr(_autotune, "machine_fingerprint", lambda device: "another machine")
    _autotune.select_backend(desc, torch.float32, CPU)
    assert len(fake_timings) == 3


def test_a_damaged_cache_is_measured_again(cache, fake_timings):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{not json")
    desc = TPDescriptor(1, 1, 1, 8, rank=7)
    assert _autotune.select_backend(desc, torch.float32, CPU) in {"sparse", "path_shared"}
    assert len(fake_timings) == 1
    assert json.loads(cache.read_text())["cases"]


def test_layer_runs_the_chosen_backend(cache, fake_timings):
    tp = TensorProduct(1, 1, 1, 8, backend="auto", mode="uuu")
    assert (tp.backend, tp.requested_backend) == ("sparse", "auto")
    assert type(tp.executor).__name__ == "SparseProduct"
    tp.double()  # another dtype is another case: chosen again
    assert len(fake_timings) == 2 and tp.backend == "sparse"
    with pytest.raises(ValueError, match="policy: only applies with backend='auto'"):
        TensorProduct(1, 1, 1, 8, backend="cg", policy={"exact": True})


def test_one_real_run_picks_the_fastest_it_measured(cache, monkeypatch):
    monkeypatch.setattr(_autotune, "AUTOTUNE_EDGES", 64)
    monkeypatch.setattr(_autotune, "PROBE_EDGES", 16)
    tp = TensorProduct(2, 2, 2, 16, backend="auto", mode="uuu")
    (timings,) = json.loads(cache.read_text())["cases"].values()
    assert set(timings) >= {"cg", "path_shared", "sparse"}
    assert "cp_eager" not in timings and "cp_triton" not in timings  # exact; no interpreter
    finite = {n: t for n, t in timings.items() if math.isfinite(t)}
    assert tp.backend == min(finite, key=finite.__getitem__)


def test_the_fingerprint_follows_the_code_and_the_threads(monkeypatch):
    before = _autotune.machine_fingerprint(CPU)
    monkeypatch.setattr(_autotune, "_source_digest", lambda: "an edited kernel")
    assert _autotune.machine_fingerprint(CPU) != before
    monkeypatch.undo()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert _autotune.machine_fingerprint(CPU) != before
    finally:
        torch.set_num_threads(threads)
    assert _autotune.machine_fingerprint(CPU) == before
