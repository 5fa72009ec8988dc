"""Potential.compile: the compiled energy, forces, stress and training gradients equal
the eager ones, and batches of other sizes reuse the compiled graph."""

import pytest
import torch
from torch_geometric.data import Batch

from tdn_data import load_dataset
from tdn_models import TDN, potential_loss

# each compile takes tens of seconds on a small CPU
slow = pytest.mark.slow


def _periodic(data, cell):
    out = data.clone()
    out.pos = data.pos.double() + cell.sum(0) / 2
    out.cell = cell.view(1, 3, 3)
    out.pbc = torch.ones(1, 3, dtype=torch.bool)
    return out


@pytest.fixture(scope="module")
def models():
    ds = load_dataset("embedded-tiny")
    torch.manual_seed(0)
    # lmax 2: the harmonics of degree >= 2 must not break the graph either
    kw = {"lmax": 2, "channels": 8, "layers": 1, "heads": 2, "num_basis": 8, "radial_hidden": 8}
    eager = TDN(**kw).double()
    eager.normalization.fit([ds[i] for i in range(len(ds))])
    compiled = TDN(**kw).double()
    compiled.load_state_dict(eager.state_dict())
    return ds, eager, compiled.compile()


def _loss_and_grads(model, data):
    model.zero_grad(set_to_none=True)
    out = model(data, stress=True)
    loss, _ = potential_loss(model, out, data)
    (loss + out["stress"].pow(2).sum()).backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


@slow
def test_compiled_training_step_matches_eager(models):
    """Energy, forces, stress of a periodic cell, and every parameter gradient of a loss
    on them (the force term is the second backward pass through the compiled graph)."""
    ds, eager, compiled = models
    cell = torch.tensor([[7.0, 0.0, 0.0], [0.6, 7.5, 0.0], [0.4, -0.5, 8.0]], dtype=torch.float64)
    data = Batch.from_data_list([_periodic(ds[0], cell), _periodic(ds[5], cell)])
    ref, ref_grads = _loss_and_grads(eager, data)
    torch._dynamo.utils.counters.clear()
    out, grads = _loss_and_grads(compiled, data)
    # a graph break inside torch.func.grad makes dynamo skip the whole function (eager)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-9, atol=1e-10)
    assert ref_grads.keys() == grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-10, msg=name)


@slow
def test_compiled_inference_reuses_the_graph_across_sizes(models):
    ds, eager, compiled = models
    torch._dynamo.utils.counters.clear()
    for picks in ([0, 1], [2, 3, 4]):  # dynamo specializes sizes 0 and 1: start at 2
        data = Batch.from_data_list([ds[i] for i in picks])
        with torch.no_grad():
            out, ref = compiled(data), eager(data)
        assert not out["forces"].requires_grad
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(out["forces"], ref["forces"], rtol=1e-9, atol=1e-10)
    # one graph for no-grad mode (no graph break), none more for the second size
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_custom_op_backends_are_refused():
    """cp_triton's torch.library ops cannot run inside torch.func: a clear error when
    compiling, or when switching a compiled model to it (nothing compiles here)."""
    kw = {"lmax": 1, "channels": 8, "layers": 1, "heads": 2}
    with pytest.raises(ValueError, match=r"backend: 'cp_triton' runs on torch\.library"):
        TDN(**kw, backend="cp_triton").compile()
    model = TDN(**kw).compile()
    with pytest.raises(ValueError, match="backend: 'cp_triton'"):
        model.set_backend("cp_triton")
    assert model.backend == "cp_eager"
