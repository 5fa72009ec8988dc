"""Checkpoints: bitwise round trip, backend switching, and every way a file can be wrong.

No GPU was available when these were written: "saved on a GPU, loaded on the CPU" is
covered by checking that ``device=`` reaches ``map_location`` (every tensor lands there).
"""

import os

import pytest
import torch
from torch_geometric.data import Batch

import tdn_models._checkpoint as ckpt_module
from tdn_data import load_dataset
from tdn_models import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    TDN,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def samples():
    ds = load_dataset("embedded-tiny")
    picks = sorted({ds[i].mol_id: i for i in range(len(ds))}.values())
    return [ds[i] for i in picks]


@pytest.fixture
def model(samples):
    torch.manual_seed(0)
    m = TDN(lmax=1, channels=8, layers=2, num_basis=16, radial_hidden=16, backend="cp_eager")
    m = m.double()
    m.normalization.fit(samples)
    # perturb every parameter so the round trip is not of an initialization pattern
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m.eval()


@pytest.fixture
def saved(tmp_path, model):
    return save_checkpoint(tmp_path / "model.pt", model, extra={"step": 7, "mae": 0.5})


def _rewrite(path, edit):
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


def test_round_trip_is_bitwise(saved, model, samples):
    loaded, info = load_checkpoint(saved)
    batch = Batch.from_data_list(samples[:3])
    with torch.no_grad():
        ref, out = model(batch), loaded(batch)
    assert loaded.dtype == torch.float64 and not loaded.training
    assert torch.equal(out["energy"], ref["energy"])
    assert torch.equal(out["forces"], ref["forces"])
    assert info["format"] == CHECKPOINT_FORMAT and info["version"] == CHECKPOINT_VERSION
    assert info["model"] == "tdn" and info["config"] == model.config
    assert info["extra"] == {"step": 7, "mae": 0.5}
    assert info["normalization"]["scale"] == float(model.normalization.scale)
    assert set(info["versions"]) >= {"python", "torch", "tdn-core", "tdn-models"}
    tp = info["tensor_products"][0]
    assert tp["backend"] == "cp_eager" and tp["rank"] == tp["factors"]["rank"]
    assert tp["factors"]["rel_error"] == model.tensor_products()[0].factors.rel_error


def test_device_goes_to_map_location(saved):
    loaded, _ = load_checkpoint(saved, device="cpu")
    devices = {t.device for t in loaded.state_dict().values()}
    assert devices == {torch.device("cpu")}
    raw = read_checkpoint(saved, device="cpu")
    assert {t.device.type for t in raw["state_dict"].values()} == {"cpu"}


def test_float32_load_keeps_normalization_at_float64(saved, model):
    loaded, _ = load_checkpoint(saved, dtype=torch.float32)
    assert loaded.dtype == torch.float32
    norm = loaded.normalization
    assert norm.element_energies.dtype == torch.float64
    assert torch.equal(norm.element_energies, model.normalization.element_energies)


def test_load_with_an_exact_backend_stays_within_the_cp_error(saved, model, samples):
    loaded, _ = load_checkpoint(saved, backend="path_shared")
    assert loaded.backend == "path_shared"
    batch = Batch.from_data_list(samples[:3])
    with torch.no_grad():
        ref, out = model(batch), loaded(batch)
    rel_error = model.tensor_products()[0].factors.rel_error  # ~0.017 at lmax 1, rank 7
    # the CP error of each product (4 of them) propagates; measured ~1e-3 relative on
    # forces, far below 4 * rel_error, and not zero (the backends really differ)
    df = float((out["forces"] - ref["forces"]).norm() / ref["forces"].norm())
    de = float((out["energy"] - ref["energy"]).abs().max() / ref["energy"].abs().max())
    assert 0 < df < 4 * rel_error
    assert de < 4 * rel_error


def test_unavailable_stored_backend_suggests_another(saved, monkeypatch):
    real = ckpt_module.available_backends()
    fake = {**real, "cp_eager": "cp_eager: pretend it needs a GPU"}
    monkeypatch.setattr(ckpt_module, "available_backends", lambda: fake)
    with pytest.raises(CheckpointError, match=r"backend 'cp_eager'.*unavailable.*backend="):
        load_checkpoint(saved)
    loaded, _ = load_checkpoint(saved, backend="path_shared")
    assert loaded.backend == "path_shared"


def test_unknown_backend_lists_the_registered_ones(saved):
    with pytest.raises(CheckpointError, match=r"unknown backend 'nope'; registered"):
        load_checkpoint(saved, backend="nope")


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt'.*unreadable"):
        load_checkpoint(saved)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(
        CheckpointError, match=r"noise\.pt'.*(unreadable|not a TDN checkpoint)"
    ) as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)


def test_plain_torch_save_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"plain\.pt'.*not a TDN checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"not a TDN checkpoint.*'list'"):
        load_checkpoint(path)


def test_code_in_the_file_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a TDN checkpoint: it holds objects of ") as e:
        load_checkpoint(path)
    # torch's own message advises weights_only=False: for a stranger's file, the wrong advice
    assert "weights_only" not in str(e.value) and "trust" not in str(e.value)


def test_newer_version_asks_to_upgrade(saved):
    _rewrite(saved, lambda raw: raw.update(version=CHECKPOINT_VERSION + 1))
    with pytest.raises(CheckpointError, match=r"newer tdn-models.*upgrade"):
        load_checkpoint(saved)


def test_incomplete_checkpoint(saved):
    _rewrite(saved, lambda raw: raw.pop("state_dict"))
    with pytest.raises(CheckpointError, match=r"missing \['state_dict'\]"):
        load_checkpoint(saved)


def test_mismatching_factor_set(saved):
    def edit(raw):
        raw["tensor_products"][1]["factors"]["rel_error"] *= 1.01

    _rewrite(saved, edit)
    with pytest.raises(CheckpointError, match=r"tp_value.*rel_error.*another approximation"):
        load_checkpoint(saved)
    # an exact backend uses no CP factors: the mismatch does not matter there
    loaded, _ = load_checkpoint(saved, backend="path_shared")
    assert loaded.backend == "path_shared"


def test_mismatching_rank(saved):
    _rewrite(saved, lambda raw: raw["tensor_products"][0]["factors"].update(rank=5))
    with pytest.raises(CheckpointError, match=r"rank 5.*rank 7"):
        load_checkpoint(saved)


def test_weights_that_do_not_fit(saved):
    _rewrite(saved, lambda raw: raw["config"].update(channels=16))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(saved)


def test_nonexistent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint file at .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_the_old_checkpoint_intact(saved, model, monkeypatch):
    before = saved.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the temp file first
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, model, extra={"step": 8})
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]  # no temp left
    assert load_checkpoint(saved)[1]["extra"]["step"] == 7


def test_save_rejects_objects_that_cannot_load_safely(tmp_path, model):
    with pytest.raises(TypeError, match=r"extra\['when'\].*cannot be stored"):
        save_checkpoint(tmp_path / "m.pt", model, extra={"when": object()})
    with pytest.raises(TypeError, match=r"model: expected a tdn_models\.Potential"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="directory"):
        save_checkpoint(tmp_path / "nodir" / "m.pt", model)


def test_auto_backend_is_chosen_again_on_load(tmp_path, samples, monkeypatch):
    """A model built with backend="auto" stores "auto" and its policy; loading picks the
    fastest backend of the machine it is loaded on (timings faked here)."""
    from tdn_core import _autotune

    monkeypatch.setenv("TDN_CACHE_DIR", str(tmp_path / "cache"))
    fastest = {"first": "sparse"}
    monkeypatch.setattr(
        _autotune,
        "measure",
        lambda desc, dtype, device, names, best=None, edges=None: {
            n: 1.0 if n == fastest["first"] else 2.0 for n in names
        },
    )
    model = TDN(lmax=1, channels=8, layers=1, num_basis=8, radial_hidden=8, backend="auto")
    assert model.backend == "sparse"
    path = save_checkpoint(tmp_path / "auto.pt", model)
    fastest["first"] = "path_shared"
    monkeypatch.setattr(_autotune, "machine_fingerprint", lambda device: "another machine")
    loaded, info = load_checkpoint(path)
    assert info["config"]["backend"] == "auto"
    assert info["config"]["backend_policy"] is None
    assert loaded.backend == "path_shared"
    batch = Batch.from_data_list(samples[:2])
    torch.testing.assert_close(loaded(batch)["energy"], model(batch)["energy"])
    pinned, _ = load_checkpoint(path, backend="cg")
    assert pinned.backend == "cg"


def test_zbl_and_bessel_basis_round_trip(tmp_path, samples):
    torch.manual_seed(0)
    m = TDN(lmax=1, channels=8, layers=1, num_basis=8, radial_basis="bessel", zbl=True)
    m = m.double()
    m.normalization.fit(samples)
    loaded, info = load_checkpoint(save_checkpoint(tmp_path / "zbl.pt", m))
    assert info["config"]["zbl"] is True and info["config"]["radial_basis"] == "bessel"
    assert loaded.repulsion is not None
    batch = Batch.from_data_list(samples[:3])
    torch.testing.assert_close(loaded(batch)["forces"], m(batch)["forces"], rtol=0, atol=0)


def test_checkpoints_from_before_zbl_load_as_they_were_trained(tmp_path, samples):
    # their config has neither key: TDN.LEGACY_CONFIG (Gaussians, no ZBL) applies, not
    # today's default (ZBL on)
    torch.manual_seed(0)
    old = TDN(lmax=1, channels=8, layers=1, num_basis=16, zbl=False).double()
    old.normalization.fit(samples)
    path = save_checkpoint(tmp_path / "old.pt", old)

    def drop(raw):
        del raw["config"]["zbl"], raw["config"]["radial_basis"]

    _rewrite(path, drop)
    loaded, _ = load_checkpoint(path)
    assert TDN().repulsion is not None  # the default
    assert loaded.repulsion is None and type(loaded.basis).__name__ == "GaussianBasis"
    batch = Batch.from_data_list(samples[:3])
    torch.testing.assert_close(loaded(batch)["energy"], old(batch)["energy"], rtol=0, atol=0)
