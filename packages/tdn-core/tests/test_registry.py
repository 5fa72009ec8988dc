"""The registry: availability reasons, lookups, and third-party backends."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import tdn_core
from tdn_core.backends import _registry


def test_available_backends_reports_every_builtin_with_a_reason_or_none():
    avail = tdn_core.available_backends()
    assert set(_registry.BUILTIN) <= set(avail)
    for name in ("cg", "path_shared", "cp_eager"):
        assert avail[name] is None
    for name, reason in avail.items():
        assert reason is None or reason.startswith(f"{name}: ")


def test_cp_triton_reason_on_a_cpu_machine(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = _registry.unavailable_reason("cp_triton")
    assert reason is not None and reason.startswith("cp_triton: ")
    with pytest.raises(tdn_core.BackendUnavailable, match="cp_triton: "):
        tdn_core.TensorProduct(1, 1, 1, 2, backend="cp_triton")


def test_get_backend_unknown_name():
    with pytest.raises(ValueError, match="registered backends: cg, path_shared"):
        tdn_core.get_backend("nope")


PLUGIN = '''
import torch

from tdn_core.backends.path_shared import PathSharedBackend


class Doubled(PathSharedBackend):
    """A third-party backend: twice the exact product (so we can tell it ran)."""

    name = "doubled"

    @classmethod
    def build(cls, desc, dtype, device):
        return Twice(super().build(desc, dtype, device))


class Twice(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y, w):
        return 2 * self.inner(x, y, w)
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """An installed distribution that declares a ``tdn.backends`` entry point."""
    (tmp_path / "tdn_plugin_doubled.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "tdn_plugin_doubled-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tdn-plugin-doubled\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text("[tdn.backends]\ndoubled = tdn_plugin_doubled:Doubled\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _registry._plugins.cache_clear()
    _registry.available_backends.cache_clear()
    yield
    sys.modules.pop("tdn_plugin_doubled", None)
    _registry._plugins.cache_clear()
    _registry.available_backends.cache_clear()


def test_entry_point_plugin_is_discovered_and_runs(plugin_on_path):
    assert tdn_core.available_backends()["doubled"] is None
    tp = tdn_core.TensorProduct(1, 1, 1, 3, backend="doubled").double()
    x, y, w = torch.randn(4, 4, 3).double(), torch.randn(4, 4).double(), torch.randn(4, 3).double()
    exact = tp.set_backend("path_shared")(x, y, w)
    torch.testing.assert_close(tp.set_backend("doubled")(x, y, w), 2 * exact)


def test_register_backend_at_run_time():
    from tdn_core.backends.cg import CGBackend

    class Renamed(CGBackend):
        name = "cg_copy"

    tdn_core.register_backend("cg_copy", Renamed)
    try:
        assert tdn_core.available_backends()["cg_copy"] is None
        assert tdn_core.TensorProduct(1, 1, 1, 2, backend="cg_copy").backend == "cg_copy"
    finally:
        _registry._registered.pop("cg_copy")
        _registry.available_backends.cache_clear()


def test_builtin_names_cannot_be_replaced():
    with pytest.raises(ValueError, match="'cg' is a built-in backend"):
        tdn_core.register_backend("cg", "x:y")


def test_broken_plugin_only_reports_a_reason():
    tdn_core.register_backend("broken", "no_such_module_xyz:Backend")
    try:
        reason = tdn_core.available_backends()["broken"]
        assert reason.startswith("broken: failed to load (ModuleNotFoundError")
        assert tdn_core.available_backends()["cg"] is None
    finally:
        _registry._registered.pop("broken")
        _registry.available_backends.cache_clear()
