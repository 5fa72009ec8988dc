"""The layer itself: rank requests, dtype moves, and what it reports."""

from __future__ import annotations

import pytest
import torch

import tdn_core
from tdn_core import TensorProduct
from tdn_core.testing import random_inputs


def test_tol_picks_the_smallest_rank_that_reaches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path))
    tp = TensorProduct(1, 1, 1, 2, backend="cp_eager", tol=1e-6)
    assert tp.factors.rel_error <= 1e-6
    assert tp.descriptor.rank == tp.factors.rank
    assert tdn_core.cp_factors(1, 1, 1, rank=tp.factors.rank - 1).rel_error > 1e-6


@pytest.mark.parametrize("rank,expected", [("linear", 14), ("quadratic", 28), (5, 5)])
def test_rank_requests(rank, expected):
    tp = TensorProduct(2, 2, 2, 3, backend="cp_eager", rank=rank)
    assert tp.descriptor.rank == tp.factors.rank == expected


def test_moving_to_float64_rebuilds_constants_at_full_precision():
    # a float32-built executor cast to float64 would carry float32-rounded CG blocks
    tp = TensorProduct(2, 2, 2, 3, backend="cg").double()
    exact = TensorProduct(2, 2, 2, 3, backend="path_shared").double()
    x, y, w = random_inputs(tp.descriptor, 4)
    torch.testing.assert_close(tp(x, y, w), exact(x, y, w), rtol=1e-13, atol=1e-13)
    assert tp.executor.block_0.dtype == torch.float64


def test_exact_backends_report_no_factors_and_cp_backends_do():
    tp = TensorProduct(3, 3, 3, 2, backend="path_shared")
    assert tp.factors is None
    tp.set_backend("cp_eager")
    assert tp.factors.rank == 63 and 0 < tp.factors.rel_error < tp.factors.bound


def test_descriptor_round_trips_through_json():
    desc = TensorProduct(2, 1, 3, 5, backend="cg", group="O3").descriptor
    assert tdn_core.TPDescriptor.from_json(desc.to_json()) == desc
    assert desc.flops("cp", 10) == 2 * 10 * (
        4 * desc.rank + 5 * (9 * desc.rank + 16 * desc.rank + desc.rank)
    )
