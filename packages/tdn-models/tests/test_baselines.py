"""The baseline potentials (SchNet from PyG, NequIP-style from e3nn) on the Potential contract."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from tdn_core.testing import random_rotation
from tdn_data import load_dataset
from tdn_models import build_model, potential_loss, train_steps
from tdn_models.baselines import SchNetPotential

# small widths keep the whole file fast on a 2-core CPU; the maths does not depend on them
SMALL = {
    "schnet": {
        "hidden_channels": 16,
        "num_filters": 16,
        "num_interactions": 2,
        "num_gaussians": 20,
    },
    "nequip": {"channels": 8, "lmax": 2, "layers": 2, "num_basis": 8, "radial_hidden": 16},
}


def _needs(name: str) -> None:
    if name == "nequip":
        pytest.importorskip("e3nn")


@pytest.fixture(params=["schnet", "nequip"])
def name(request) -> str:
    _needs(request.param)
    return request.param


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These graphs are tiny: intra-op threads only add overhead, and when the CPU is shared
    (other test runs) OpenMP barriers make each forward 10-100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("embedded-tiny")


def _molecules(dataset, count: int) -> list[Data]:
    """``count`` different molecules (first conformer of each)."""
    seen, out = set(), []
    for sample in dataset:
        if sample.mol_id not in seen:
            seen.add(sample.mol_id)
            out.append(sample)
        if len(out) == count:
            break
    return out


def _model(name: str, dtype=torch.float64, **overrides):
    model = build_model(name, **{**SMALL[name], **overrides}).to(dtype)
    return model.eval()


def _moved(sample: Data, pos: torch.Tensor) -> Data:
    return Data(z=sample.z, pos=pos)


def _eval(model, data, **kwargs) -> dict:
    """Outputs without a training graph (forces are still computed under no_grad)."""
    with torch.no_grad():
        return model(data, **kwargs)


# ------------------------------------------------------------------ symmetry


def test_energy_invariant_forces_equivariant_float64(name, dataset):
    model = _model(name)
    sample = dataset[0]
    pos = sample.pos.double()
    ref = _eval(model, _moved(sample, pos))
    e_errors, f_errors = [], []
    # 3 rotations, plus one improper rotation: both models are O(3)-invariant
    rotations = [random_rotation() for _ in range(3)]
    rotations.append(-random_rotation())
    for R in rotations:
        shift = torch.randn(3, dtype=torch.float64) * 5.0
        out = _eval(model, _moved(sample, pos @ R.T + shift))
        e_errors.append(float((out["energy"] - ref["energy"]).abs() / ref["energy"].abs()))
        expected = ref["forces"] @ R.T
        f_errors.append(float((out["forces"] - expected).norm() / expected.norm()))
    assert max(e_errors) <= 1e-8, e_errors
    assert max(f_errors) <= 1e-8, f_errors


def test_forces_are_minus_energy_gradient_by_finite_difference(name, dataset):
    model = _model(name)
    sample = dataset[1]
    pos = sample.pos.double()
    forces = _eval(model, _moved(sample, pos))["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2), (sample.num_nodes - 1, 0)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        e_plus = _eval(model, _moved(sample, plus), forces=False)["energy"]
        e_minus = _eval(model, _moved(sample, minus), forces=False)["energy"]
        fd = -(e_plus - e_minus) / (2 * h)
        assert float(fd) == pytest.approx(float(forces[atom, axis]), rel=1e-6, abs=1e-7)


def test_energy_smooth_at_the_cutoff(name):
    """A dimer just inside the cutoff has ~ the energy of two free atoms and ~ zero force.

    SchNet's cosine cutoff is C^1 (force ~ distance to the cutoff), NequIP's envelope C^5.
    """
    model = _model(name, cutoff=3.0)
    z = torch.tensor([6, 8])
    far = _eval(
        model, Data(z=z, pos=torch.tensor([[0.0, 0, 0], [10.0, 0, 0]], dtype=torch.float64))
    )
    near_pos = torch.tensor([[0.0, 0, 0], [3.0 * (1 - 1e-6), 0, 0]], dtype=torch.float64)
    near = _eval(model, Data(z=z, pos=near_pos))
    assert float((near["energy"] - far["energy"]).abs()) < 1e-6
    assert float(near["forces"].abs().max()) < 1e-5
    assert torch.equal(far["forces"], torch.zeros_like(far["forces"]))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("schnet", {}), ("nequip", {}), ("nequip", {"lmax": 0}), ("nequip", {"lmax": 1})],
    ids=["schnet", "nequip", "nequip-l0", "nequip-l1"],
)
def test_isolated_atom_and_zero_net_force(name, overrides, dataset):
    """No edges still gives an energy (and zero force); forces on a molecule sum to zero."""
    _needs(name)
    model = _model(name, **overrides)
    atom = _eval(model, Data(z=torch.tensor([8]), pos=torch.zeros(1, 3, dtype=torch.float64)))
    assert torch.isfinite(atom["energy"]).all()
    assert torch.equal(atom["forces"], torch.zeros(1, 3, dtype=torch.float64))
    forces = _eval(model, dataset[2])["forces"]
    assert float(forces.sum(0).abs().max()) < 1e-10 * max(1.0, float(forces.abs().max()))


# ------------------------------------------------------------------ batching, checkpoints


def test_batched_energies_equal_per_molecule(name, dataset):
    model = _model(name)
    molecules = _molecules(dataset, 3)
    batch = Batch.from_data_list(molecules)
    out = _eval(model, batch)
    singles = [_eval(model, m) for m in molecules]
    energies = torch.cat([s["energy"] for s in singles])
    forces = torch.cat([s["forces"] for s in singles])
    assert out["energy"].shape == (3,)
    torch.testing.assert_close(out["energy"], energies, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out["forces"], forces, rtol=1e-10, atol=1e-10)
    # the same through a DataLoader
    loaded = next(iter(DataLoader(molecules, batch_size=3)))
    torch.testing.assert_close(_eval(model, loaded)["energy"], energies, rtol=1e-12, atol=1e-10)


def test_rebuild_from_config_reproduces_energy(name, dataset):
    model = _model(name, dtype=torch.float32)
    model.normalization.fit([dataset[i] for i in range(8)])
    sample = dataset[0]
    rebuilt = build_model(name, **model.config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert rebuilt.config == model.config
    assert torch.equal(_eval(rebuilt, sample)["energy"], _eval(model, sample)["energy"])
    assert float(rebuilt.normalization.scale) == float(model.normalization.scale)


def test_training_lowers_the_loss(name, dataset):
    model = _model(name, dtype=torch.float32)
    samples = [dataset[i] for i in range(6)]
    model.normalization.fit(samples)
    batches = list(DataLoader(samples, batch_size=3))

    def total_loss() -> float:
        return sum(float(potential_loss(model, _eval(model, b), b, 1.0, 10.0)[0]) for b in batches)

    before = total_loss()
    history = list(train_steps(model, batches, steps=24, lr=1e-2))
    after = total_loss()
    assert len(history) == 24
    # measured over seeds 0-3: after / before <= 0.05 (SchNet), <= 0.8 (NequIP)
    assert after < 0.9 * before, (before, after)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cutoff": -1.0}, "cutoff"),
        ({"num_filters": 0}, "num_filters"),
        ({"hidden_channels": 1}, "hidden_channels"),
        ({"num_interactions": 0}, "num_interactions"),
        ({"num_gaussians": 1}, "num_gaussians"),
        ({"max_neighbors": 0}, "max_neighbors"),
    ],
)
def test_schnet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SchNetPotential(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cutoff": -1.0}, "cutoff"),
        ({"channels": 0}, "channels"),
        ({"lmax": -1}, "lmax"),
        ({"layers": 0}, "layers"),
        ({"num_basis": 0}, "num_basis"),
        ({"radial_hidden": 0}, "radial_hidden"),
        ({"avg_neighbors": 0.0}, "avg_neighbors"),
        ({"channels": 2.5}, "channels"),
    ],
)
def test_nequip_rejects_bad_arguments(kwargs, match):
    _needs("nequip")
    with pytest.raises(ValueError, match=match):
        build_model("nequip", **kwargs)


def test_set_backend_is_refused(name):
    model = _model(name)
    assert model.tensor_products() == []
    assert model.backend is None
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cp_eager")


def test_schnet_rejects_atomic_numbers_beyond_pyg_embedding():
    model = _model("schnet")
    data = Data(z=torch.tensor([6, 100]), pos=torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]))
    with pytest.raises(ValueError, match="z: PyG's SchNet"):
        model(data)


# ------------------------------------------------------------------ model-specific


class _FixedGraph(torch.nn.Module):
    """Stands in for PyG's RadiusInteractionGraph (which needs torch_cluster)."""

    def __init__(self, edge_index, edge_len):
        super().__init__()
        self.edge_index, self.edge_len = edge_index, edge_len

    def forward(self, pos, batch):
        return self.edge_index, self.edge_len


def test_schnet_matches_pyg_forward_on_the_same_graph(dataset):
    """The wrapper runs PyG's own SchNet: its forward (given our graph) gives the same sum."""
    model = _model("schnet")
    sample = dataset[0]
    pos = sample.pos.double()
    captured = {}
    original = model.atomic_outputs

    def spy(inputs):
        captured["inputs"] = inputs
        return original(inputs)

    model.atomic_outputs = spy
    with torch.no_grad():
        u = model(_moved(sample, pos), forces=False)["node_energy"]
    inputs = captured["inputs"]
    net = model.schnet
    # PyG's forward builds its graph through interaction_graph: hand it ours
    net.interaction_graph = _FixedGraph(inputs.edge_index, inputs.edge_len)
    with torch.no_grad():
        reference = net(sample.z, pos, torch.zeros_like(sample.z))
    # node_energy = scale * u + shift + E0 with the default (identity) normalization
    torch.testing.assert_close(u.sum().view(1, 1), reference, rtol=1e-12, atol=1e-12)


def test_nequip_uses_exact_e3nn_products():
    pytest.importorskip("e3nn")
    from e3nn import o3

    model = _model("nequip", lmax=2, channels=4)
    # exact type: e3nn's Gate holds an ElementwiseTensorProduct (a subclass) of its own
    tps = [m for m in model.modules() if type(m) is o3.TensorProduct]
    assert len(tps) == model.config["layers"]
    assert all(ins.connection_mode == "uvu" for tp in tps for ins in tp.instructions)
    assert str(model.irreps_hidden) == "4x0e+4x1o+4x2e"
    # no trainable weights inside the product: they come per edge from the radial MLP
    assert all(not tp.internal_weights and not tp.shared_weights for tp in tps)


def test_nequip_float64_is_exact_after_cast_and_float32_checkpoint(dataset):
    """e3nn's CG buffers are recomputed in the new dtype, not cast from float32 values."""
    pytest.importorskip("e3nn")
    config = {**SMALL["nequip"], "lmax": 3}
    model32 = build_model("nequip", **config)
    cast = build_model("nequip", **config)
    cast.load_state_dict(model32.state_dict())
    loaded = build_model("nequip", **config).double()
    loaded.load_state_dict(model32.state_dict())  # float32 values copied into float64
    sample = dataset[0]
    pos = sample.pos.double()
    R = random_rotation()
    for model in (cast.double().eval(), loaded.eval()):
        ref = _eval(model, _moved(sample, pos))
        out = _eval(model, _moved(sample, pos @ R.T))
        expected = ref["forces"] @ R.T
        # float32-rounded CG coefficients give ~1e-9 here
        assert float((out["forces"] - expected).norm() / expected.norm()) < 1e-12
