"""The e3nn and cueq peers and the e3nn adapters.

Every product is compared in float64 with a reference computed here, straight from
``e3nn.o3.wigner_3j`` blocks with einsum (no tdn backend involved).
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from tdn_core import BackendUnavailable, TPDescriptor, UnsupportedDescriptor
from tdn_core.adapters import (
    e3nn_irreps,
    from_e3nn_layout,
    to_e3nn_layout,
    weights_from_e3nn,
    weights_to_e3nn,
)
from tdn_core.backends import _registry

o3 = pytest.importorskip("e3nn.o3")

PEERS = ["e3nn", "cueq"]
CASES = [(1, 1, 1), (2, 2, 2), (3, 2, 3), (2, 1, 0)]


def _backend(name: str):
    reason = _registry.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return _registry.get_backend(name)


def _paths(lmax_in, lmax_sh, lmax_out, group):
    return [
        (l1, l2, l3)
        for l1 in range(lmax_in + 1)
        for l2 in range(lmax_sh + 1)
        for l3 in range(lmax_out + 1)
        if abs(l1 - l2) <= l3 <= l1 + l2 and (group == "SO3" or (l1 + l2 + l3) % 2 == 0)
    ]


def reference(desc: TPDescriptor, x, y, w) -> torch.Tensor:
    """out[e,k,c] = sum_p w[e,(p),c] sum_ij W^p_ijk x[e,i,c] y[e,j], W = e3nn wigner_3j."""
    E, C = x.shape[0], x.shape[2]
    out = torch.zeros(E, (desc.lmax_out + 1) ** 2, C, dtype=torch.float64)
    for p, (l1, l2, l3) in enumerate(_paths(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.group)):
        block = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        xs = x[:, l1 * l1 : (l1 + 1) ** 2].double()
        ys = y[:, l2 * l2 : (l2 + 1) ** 2].double()
        wp = (w if desc.path_weights == "shared" else w[:, p]).double()
        out[:, l3 * l3 : (l3 + 1) ** 2] += wp[:, None] * torch.einsum(
            "ijk,eic,ej->ekc", block, xs, ys
        )
    return out


def _inputs(desc: TPDescriptor, E: int, dtype=torch.float64, requires_grad=False):
    d1, d2, _ = desc.dims
    x = torch.randn(E, d1, desc.channels, dtype=dtype, requires_grad=requires_grad)
    y = torch.randn(E, d2, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(*desc.weight_shape(E), dtype=dtype, requires_grad=requires_grad)
    return x, y, w


# -- products ------------------------------------------------------------------------


@pytest.mark.parametrize("path_weights", ["shared", "per_path"])
@pytest.mark.parametrize("group", ["SO3", "O3"])
@pytest.mark.parametrize("lmaxes", CASES, ids=lambda L: "L{}{}{}".format(*L))
@pytest.mark.parametrize("name", PEERS)
def test_peer_matches_wigner3j_reference(name, lmaxes, group, path_weights):
    backend = _backend(name)
    desc = TPDescriptor(*lmaxes, channels=3, group=group, path_weights=path_weights)
    assert list(desc.paths) == _paths(*lmaxes, group)
    assert backend.check(desc) is None
    executor = backend.build(desc, torch.float64, torch.device("cpu"))
    x, y, w = _inputs(desc, E=6)
    out = executor(x, y, w)
    assert out.shape == (6, desc.dims[2], 3) and out.dtype == torch.float64
    torch.testing.assert_close(out, reference(desc, x, y, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", PEERS)
def test_peer_float32(name):
    desc = TPDescriptor(3, 2, 3, channels=4, path_weights="per_path")
    executor = _backend(name).build(desc, torch.float32, torch.device("cpu"))
    x, y, w = _inputs(desc, E=5, dtype=torch.float32)
    out = executor(x, y, w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(desc, x, y, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path_weights", ["shared", "per_path"])
@pytest.mark.parametrize("name", PEERS)
def test_peer_empty_batch(name, path_weights):
    desc = TPDescriptor(2, 1, 2, channels=3, path_weights=path_weights)
    executor = _backend(name).build(desc, torch.float64, torch.device("cpu"))
    out = executor(*_inputs(desc, E=0))
    assert out.shape == (0, 9, 3)


@pytest.mark.parametrize("name", PEERS)
def test_peer_gradients(name):
    desc = TPDescriptor(2, 1, 1, channels=2, group="SO3", path_weights="per_path")
    executor = _backend(name).build(desc, torch.float64, torch.device("cpu"))
    inputs = _inputs(desc, E=2, requires_grad=True)
    assert torch.autograd.gradcheck(executor, inputs)
    assert torch.autograd.gradgradcheck(executor, inputs)


@pytest.mark.parametrize("name", PEERS)
def test_peer_executor_has_no_parameters_or_state(name):
    desc = TPDescriptor(2, 2, 2, channels=3, path_weights="per_path")
    executor = _backend(name).build(desc, torch.float64, torch.device("cpu"))
    assert list(executor.parameters()) == []
    assert executor.state_dict() == {}


@pytest.mark.parametrize("name", PEERS)
def test_peer_rejects_uuu(name):
    backend = _backend(name)
    desc = TPDescriptor(1, 1, 1, channels=2, mode="uuu")
    assert "uuu" in backend.check(desc)
    with pytest.raises(UnsupportedDescriptor, match="uuu"):
        backend.build(desc, torch.float64, torch.device("cpu"))


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("e3nn", "e3nn", "e3nn"),
        ("cueq", "cuequivariance", "cueq"),
        ("cueq", "cuequivariance_torch", "cueq"),
    ],
)
def test_peer_reason_when_a_requirement_is_missing(monkeypatch, name, module, extra):
    find_spec = importlib.util.find_spec

    def without(target, *args, **kwargs):
        return None if target == module else find_spec(target, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    reason = _registry.unavailable_reason(name)
    assert reason == f"{name}: needs {module}: pip install 'tdn-core[{extra}]'"
    with pytest.raises(BackendUnavailable, match=rf"tdn-core\[{extra}\]"):
        _registry.get_backend(name)
    # building directly (bypassing the registry) fails the same way, not with an ImportError
    backend = _registry._load(name)
    with pytest.raises(BackendUnavailable, match=f"backend '{name}' needs {module}"):
        backend.build(TPDescriptor(1, 1, 1, channels=2), torch.float64, torch.device("cpu"))


# -- peer specifics ------------------------------------------------------------------


def test_e3nn_weight_layout_matches_e3nn_weight_views():
    desc = TPDescriptor(2, 2, 2, channels=3, group="O3", path_weights="per_path")
    executor = _backend("e3nn").build(desc, torch.float64, torch.device("cpu"))
    w = torch.randn(4, len(desc.paths), 3, dtype=torch.float64)
    views = list(executor.tp.weight_views(weights_to_e3nn(w), yield_instruction=True))
    assert len(views) == len(desc.paths)
    for p, (index, ins, view) in enumerate(views):
        assert index == p
        l1, l2, l3 = desc.paths[p]
        assert (ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode) == (l1, l2, l3, "uvu")
        assert ins.path_weight == 1.0  # no normalization factor left in e3nn
        torch.testing.assert_close(view, w[:, p, :, None], rtol=0, atol=0)


def test_cueq_runs_naive_without_warnings_and_records_scales():
    backend = _backend("cueq")
    desc = TPDescriptor(2, 2, 2, channels=3, group="SO3", path_weights="shared")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cueq's fallback path only warns: forbid it
        executor = backend.build(desc, torch.float64, torch.device("cpu"))
    assert backend.methods["cpu"] == "naive"
    assert executor.method == "naive" and executor.poly.method == "naive"
    # cueq's blocks are positive multiples of wigner_3j; the factor was divided out
    assert len(executor.path_scales) == len(desc.paths)
    assert all(s > 0 for s in executor.path_scales)


# -- adapters ------------------------------------------------------------------------


def test_e3nn_irreps_strings():
    assert e3nn_irreps(2, 64, "SO3") == "64x0e+64x1e+64x2e"
    assert e3nn_irreps(3, 8, "O3") == "8x0e+8x1o+8x2e+8x3o"
    assert e3nn_irreps(0, 1) == "1x0e"
    with pytest.raises(ValueError, match="group: expected one of"):
        e3nn_irreps(2, 4, "SU2")
    with pytest.raises(ValueError, match="channels: expected a positive int, got 0"):
        e3nn_irreps(2, 0)


def test_so3_parity_labels_leave_rotations_unchanged():
    R = o3.rand_matrix(dtype=torch.float64)
    D_so3 = o3.Irreps(e3nn_irreps(3, 2, "SO3")).D_from_matrix(R)
    D_o3 = o3.Irreps(e3nn_irreps(3, 2, "O3")).D_from_matrix(R)
    torch.testing.assert_close(D_so3, D_o3, rtol=0, atol=1e-12)


def test_to_e3nn_layout_matches_e3nn_irreps_slices():
    lmax, C = 3, 5
    x = torch.randn(4, (lmax + 1) ** 2, C, dtype=torch.float64)
    flat = to_e3nn_layout(x, lmax)
    irreps = o3.Irreps(e3nn_irreps(lmax, C, "O3"))
    assert flat.shape == (4, irreps.dim)
    for (mul, ir), sl in zip(irreps, irreps.slices(), strict=True):
        block = flat[:, sl].reshape(4, mul, ir.dim)
        torch.testing.assert_close(
            block, x[:, ir.l**2 : (ir.l + 1) ** 2].transpose(1, 2), rtol=0, atol=0
        )


def test_layout_round_trip_is_exact():
    x = torch.randn(2, 3, 16, 7)  # leading dims are kept
    flat = to_e3nn_layout(x, 3)
    assert flat.shape == (2, 3, 16 * 7)
    assert torch.equal(from_e3nn_layout(flat, 3, 7), x)
    z = torch.randn(6, 9 * 4)
    assert torch.equal(to_e3nn_layout(from_e3nn_layout(z, 2, 4), 2), z)
    e = torch.randn(0, 9, 4)
    assert to_e3nn_layout(e, 2).shape == (0, 36)


def test_layout_gradients():
    x = torch.randn(3, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: to_e3nn_layout(t, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: from_e3nn_layout(t.reshape(3, 18), 2, 2), (x,))


def test_weights_round_trip():
    w = torch.randn(5, 7, 3)
    flat = weights_to_e3nn(w)
    assert flat.shape == (5, 21)
    assert torch.equal(weights_from_e3nn(flat, 7, 3), w)


def test_adapter_errors_name_the_argument_and_shape():
    with pytest.raises(
        ValueError, match=r"x: expected shape \[\.\.\., 9, C\] for lmax=2, got \(4, 8, 3\)"
    ):
        to_e3nn_layout(torch.zeros(4, 8, 3), 2)
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., 36\] .*got \(4, 35\)"):
        from_e3nn_layout(torch.zeros(4, 35), 2, 4)
    with pytest.raises(ValueError, match="lmax: expected a non-negative int, got -1"):
        to_e3nn_layout(torch.zeros(4, 1, 3), -1)
    with pytest.raises(ValueError, match=r"weight: expected shape \[E, P, C\], got \(4, 5\)"):
        weights_to_e3nn(torch.zeros(4, 5))
    with pytest.raises(
        ValueError, match=r"weight: expected shape \[E, 6\] \(= 2 paths x 3 channels\)"
    ):
        weights_from_e3nn(torch.zeros(4, 5), 2, 3)
