"""Bad input gets an error that names the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

import tdn_core
from tdn_core import TensorProduct


@pytest.fixture
def tp():
    return TensorProduct(2, 1, 2, channels=4, backend="path_shared").double()


def inputs(E=5, d1=9, d2=4, C=4, dtype=torch.float64):
    return (
        torch.randn(E, d1, C, dtype=dtype),
        torch.randn(E, d2, dtype=dtype),
        torch.randn(E, C, dtype=dtype),
    )


@pytest.mark.parametrize(
    "which,shape,match",
    [
        ("x", (5, 9), r"x: expected shape \[E, 9, 4\]"),
        ("x", (5, 16, 4), r"x: expected shape \[E, 9, 4\] for lmax=\(2, 1, 2\)"),
        ("x", (5, 9, 3), r"x: expected shape \[E, 9, 4\].*channels=4"),
        ("y", (5, 9), r"y: expected shape \[E, 4\]"),
        ("y", (4, 4), r"y: expected shape \[E, 4\].*got \[4, 4\]"),
        ("weight", (5, 4, 1), r"weight: expected shape \[E, 4\]"),
    ],
)
def test_wrong_shapes(tp, which, shape, match):
    args = dict(zip(("x", "y", "weight"), inputs(), strict=True))
    args[which] = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        tp(args["x"], args["y"], args["weight"])


def test_dtype_mismatch_names_the_argument(tp):
    x, y, w = inputs()
    with pytest.raises(
        TypeError, match=r"y: dtype torch.float32 does not match the module's torch.float64"
    ):
        tp(x, y.float(), w)


def test_non_tensor_input(tp):
    x, y, w = inputs()
    with pytest.raises(TypeError, match=r"weight: expected a torch\.Tensor, got list"):
        tp(x, y, w.tolist())


def test_missing_and_extra_weight():
    tp = TensorProduct(1, 1, 1, 2, backend="cg")
    x, y, w = inputs(d1=4, d2=4, C=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="weight: required"):
        tp(x, y)
    own = TensorProduct(1, 1, 1, 2, backend="cg", internal_weights=True)
    with pytest.raises(ValueError, match="weight: the module owns its weight"):
        own(x, y, w)


def test_unknown_backend_lists_registered_names():
    with pytest.raises(
        ValueError, match=r"unknown name 'fast'.*cg, path_shared, sparse, cp_eager, cp_triton"
    ):
        TensorProduct(1, 1, 1, 2, backend="fast")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(channels=0), "channels: expected a positive int, got 0"),
        (dict(mode="uvw"), "mode: expected one of"),
        (dict(group="SU2"), "group: expected one of"),
        (dict(path_weights="each"), "path_weights: expected one of"),
        (dict(rank="cubic"), "rank"),
        (dict(rank=0), "rank"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = dict(lmax_in=1, lmax_sh=1, lmax_out=1, channels=2, backend="cg") | kwargs
    with pytest.raises(ValueError, match=match):
        TensorProduct(**args)


def test_backend_that_cannot_express_the_product():
    with pytest.raises(
        tdn_core.UnsupportedDescriptor, match=r"cp_eager.*per_path.*use 'cg' or 'e3nn'"
    ):
        TensorProduct(1, 1, 1, 2, backend="cp_eager", path_weights="per_path")


def test_set_backend_failure_keeps_the_working_backend():
    tp = TensorProduct(1, 1, 1, 2, backend="cg", path_weights="per_path")
    with pytest.raises(ValueError, match="path_weights"):
        tp.set_backend("path_shared")
    assert tp.backend == "cg"
    x, y, _ = inputs(d1=4, d2=4, C=2, dtype=torch.float32)
    assert tp(x, y, torch.randn(5, 5, 2)).shape == (5, 4, 2)


def test_device_mismatch_names_the_argument(tp):
    x, y, w = inputs()
    with pytest.raises(ValueError, match=r"x: on meta, but the module is on cpu"):
        tp(x.to("meta"), y, w)
