"""One suite for every registered backend usable here (ids = backend names).

Exact backends are compared with ``cg`` in float64; CP backends must stay within their
factor set's error and certified equivariance bound.
"""

from __future__ import annotations

import pytest
import torch

import tdn_core
from tdn_core import TensorProduct, TPDescriptor, get_backend
from tdn_core.testing import EXACT_RTOL, equivariance_error, random_inputs, random_rotation

BACKENDS = list(tdn_core.available_backends())

# (lmax_in, lmax_sh, lmax_out, channels): equal L's, mixed L's, a truncated output
CASES = [(1, 1, 1, 3), (2, 2, 2, 4), (3, 2, 3, 2), (2, 1, 0, 5)]
CASE_IDS = ["-".join(map(str, c)) for c in CASES]


def usable(name: str, desc: TPDescriptor, dtype=torch.float64) -> type:
    """The backend class, or skip with the registry's / check()'s reason."""
    reason = tdn_core.available_backends()[name]
    if reason is not None:
        pytest.skip(reason)
    cls = get_backend(name)
    reason = cls.check(desc) or cls.check_placement(dtype, torch.device("cpu"))
    if reason is not None:
        pytest.skip(reason)
    return cls


def make(name: str, case, dtype=torch.float64, **kw) -> TensorProduct:
    lin, lsh, lout, ch = case
    desc = TPDescriptor(
        lin,
        lsh,
        lout,
        ch,
        kw.get("mode", "uvu"),
        kw.get("group", "SO3"),
        kw.get("path_weights", "shared"),
        rank=1,
    )
    usable(name, desc, dtype)
    return TensorProduct(lin, lsh, lout, ch, backend=name, **kw).to(dtype)


def reference(case, x, y, w, **kw) -> torch.Tensor:
    return make("cg", case, x.dtype, **kw)(x, y, w)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", ["uvu", "uuu"])
def test_shapes_dtypes_and_agreement(name, case, mode, dtype):
    tp = make(name, case, dtype, mode=mode)
    x, y, w = random_inputs(tp.descriptor, 7, dtype)
    out = tp(x, y, w)
    assert out.shape == (7, tdn_core.dim(case[2]), case[3])
    assert out.dtype == dtype
    expected = reference(case, x.double(), y.double(), w.double(), mode=mode)
    if tp.factors is None:
        assert rel(out.double(), expected) <= EXACT_RTOL[dtype]
    else:
        # ||m_R(x,y) - m(x,y)|| <= ||M - M_R||_F ||x|| ||y|| per edge and channel
        abs_err = tp.factors.rel_error * tdn_core.cg_tensor(*case[:3]).norm()
        diff = (out.double() - expected).norm(dim=1)
        y_norm = y.double().norm(dim=1) if mode == "uuu" else y.double().norm(dim=1, keepdim=True)
        scale = abs_err * w.double().abs() * x.double().norm(dim=1) * y_norm
        assert bool((diff <= scale * (1 + 1e-6) + EXACT_RTOL[dtype] * expected.norm(dim=1)).all())


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("group", ["SO3", "O3"])
def test_per_path_weights_match_cg(name, case, group):
    tp = make(name, case, path_weights="per_path", group=group)
    x, y, w = random_inputs(tp.descriptor, 5)
    expected = reference(case, x, y, w, path_weights="per_path", group=group)
    assert rel(tp(x, y, w), expected) <= EXACT_RTOL[torch.float64]


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_batch(name, dtype):
    tp = make(name, (2, 2, 2, 4), dtype)
    x, y, w = random_inputs(tp.descriptor, 0, dtype)
    x.requires_grad_(True)
    out = tp(x, y, w)
    assert out.shape == (0, 9, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", ["uvu", "uuu"])
def test_gradcheck_and_double_backward(name, mode):
    tp = make(name, (2, 1, 2, 2), mode=mode)
    x, y, w = (t.requires_grad_(True) for t in random_inputs(tp.descriptor, 3))
    assert torch.autograd.gradcheck(tp, (x, y, w))
    assert torch.autograd.gradgradcheck(tp, (x, y, w))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("group", ["SO3", "O3"])
def test_equivariance(name, case, group):
    tp = make(name, case, group=group)
    x, y, w = random_inputs(tp.descriptor, 4)
    errors = [equivariance_error(tp, tp.descriptor, x, y, w, random_rotation()) for _ in range(5)]
    if tp.factors is None:
        assert max(errors) <= 1e-10
    else:
        # the bound holds in exact arithmetic; 1e-12 covers float64 rounding when the
        # factors are themselves exact (bound ~ 1e-16)
        assert max(errors) <= tp.factors.bound + 1e-12


@pytest.mark.parametrize("name", BACKENDS)
def test_state_dict_is_backend_independent(name):
    tp = make(name, (2, 2, 2, 3), internal_weights=True)
    x, y, _ = random_inputs(tp.descriptor, 6)
    ref = TensorProduct(2, 2, 2, 3, backend="cg", internal_weights=True).double()
    assert tp.state_dict().keys() == ref.state_dict().keys() == {"weight"}
    ref.load_state_dict(tp.state_dict())
    before = tp(x, y)
    tp.set_backend("cg")
    assert tp.backend == "cg"
    assert torch.equal(tp.weight, ref.weight)
    torch.testing.assert_close(tp(x, y), ref(x, y))
    tp.set_backend(name)
    torch.testing.assert_close(tp(x, y), before)


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_torch_compile_agrees(name):
    tp = make(name, (2, 2, 2, 4))
    x, y, w = random_inputs(tp.descriptor, 8)
    torch._dynamo.reset()
    compiled = torch.compile(tp)
    torch.testing.assert_close(compiled(x, y, w), tp(x, y, w), rtol=1e-10, atol=1e-12)
