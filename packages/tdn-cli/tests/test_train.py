"""``tdn train``: config composition, outputs, bad input, kill/resume and DDP."""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tdn_cli import train
from tdn_cli._errors import UserError
from tdn_cli.trainer import Trainer, epoch_batches, warmup_cosine
from tdn_models import load_checkpoint, read_checkpoint

TINY = ["experiment=tiny", "trainer.progress=false"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (path -> bytes), to show a refusal changed nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _env() -> dict:
    # one thread everywhere: CPU reductions then sum in the same order in every process
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert train.main([*TINY, f"output_dir={out}"]) == 0
    return out


# --------------------------------------------------------------------------- config


def test_defaults_compose_with_targets():
    cfg = train._resolved(train.compose_config([]))
    assert cfg["model"]["_target_"] == "tdn_models.build_model"
    assert cfg["model"]["backend"] == cfg["backend"]["name"] == "cp_eager"
    assert cfg["data"]["train"]["_target_"] == "tdn_data.load_dataset"
    assert cfg["trainer"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert cfg["trainer"]["scheduler"]["_target_"] == "tdn_cli.trainer.warmup_cosine"
    assert cfg["output_dir"] == "runs/default" and cfg["resume"] is False


def test_tdn_best_is_the_default():
    # experiment=tdn-best names the ablated best config (RESULTS section 5); it must stay
    # what `tdn train` runs without overrides, or one of the two has drifted
    default = train._resolved(train.compose_config([]))
    best = train._resolved(train.compose_config(["experiment=tdn-best"]))
    assert best == default
    assert default["model"]["channels"] == 48 and default["trainer"]["batch_size"] == 8


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=schnet"],
        ["model=nequip"],
        ["backend=path_shared"],
        ["backend=cg"],
        ["backend=cp_triton"],
        ["data=embedded_tiny"],
        ["trainer=quick"],
        ["trainer/scheduler=plateau"],
        ["experiment=tiny", "model.channels=16", "trainer.max_epochs=3"],
    ],
    ids=lambda o: " ".join(o),
)
def test_groups_and_overrides_compose(overrides):
    cfg = train._resolved(train.compose_config(overrides))
    for o in overrides:
        key, value = o.split("=")
        if "." in key:
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node) == value


def test_help_lists_groups(capsys):
    assert train.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "tdn train" in text and "schnet" in text and "cp_triton" in text


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.chanels=3", r"unknown key 'model.chanels'; keys under model: .*'channels'"),
        ("learning_rate=1", r"unknown key 'learning_rate'"),
        ("trainer.optimizer.momentum=0.9", r"keys under trainer.optimizer"),
        ("model=transformer", r"Could not find 'model/transformer'.*schnet"),
        ("+foo=1", r"expected key=value of an existing key"),
        ("channels", r"expected key=value"),
    ],
)
def test_unknown_override_is_one_clear_error(tmp_path, override, match):
    with pytest.raises(UserError, match=match):
        train.main([override, f"output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_required_data_source(tmp_path):
    with pytest.raises(UserError, match=r"data.source: required"):
        train.main(["data=path", f"output_dir={tmp_path / 'run'}"])


# --------------------------------------------------------------------------- pieces


def test_epoch_batches_shard_the_global_batch():
    full = epoch_batches(37, 8, seed=3, epoch=2, rank=0, world=1)
    assert len(full) == 4 and all(len(b) == 8 for b in full)
    shards = [epoch_batches(37, 8, seed=3, epoch=2, rank=r, world=2) for r in range(2)]
    for s, batch in enumerate(full):
        assert sorted(shards[0][s] + shards[1][s]) == sorted(batch)
    assert epoch_batches(37, 8, 3, 2, 0, 1) == full  # deterministic
    assert epoch_batches(37, 8, 3, 3, 0, 1) != full  # reshuffled every epoch


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_steps=20, warmup_steps=4, min_factor=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- a run


def test_run_writes_every_output(finished_run):
    out = finished_run
    for name in ("config.yaml", "metrics.csv", "loss_curve.png", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,split,lr,loss,energy_mae")
    # experiment=tiny: 77 snapshots // 8 = 9 steps per epoch, 2 epochs, one val row each
    assert sum(",train," in r for r in lines) == 18 and sum(",val," in r for r in lines) == 2
    # the model checkpoints load as plain data (weights_only) and hold the EMA weights
    raw = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    position = raw["extra"]["train_state"]["position"]
    assert position["finished"] and position["step"] == 18
    model, info = load_checkpoint(out / "checkpoints" / "best.pt")
    assert info["extra"]["kind"] == "best" and model.config["channels"] == 8
    assert float(model.normalization.scale) != 1.0  # fitted on the training data
    ema = raw["state_dict"]
    weights = raw["extra"]["train_state"]["model"]
    assert any(not torch.equal(ema[k], weights[k]) for k in weights)


def test_refusals_leave_files_intact(finished_run, tmp_path):
    out = finished_run
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"already holds a run .*resume=true"):
        train.main([*TINY, f"output_dir={out}"])
    with pytest.raises(UserError, match=r"already finished \(2 epochs, 18 steps\)"):
        train.main([*TINY, f"output_dir={out}", "resume=true"])
    with pytest.raises(UserError, match=r"differs .* model.channels: run 8, now 16"):
        train.main([*TINY, f"output_dir={out}", "resume=true", "model.channels=16"])
    fd = os.open(out, os.O_RDONLY)  # another process holds the run
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"in use by another tdn train process"):
            train.main([*TINY, f"output_dir={out}", "resume=true"])
    finally:
        os.close(fd)
    assert _snapshot(out) == before
    with pytest.raises(UserError, match=r"resume=true: no run in"):
        train.main([*TINY, f"output_dir={tmp_path / 'none'}", "resume=true"])
    assert not (tmp_path / "none").exists()


def test_dataset_without_usable_snapshots(tmp_path):
    data = tmp_path / "no_energy.xyz"
    data.write_text("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 0.74\n")
    path = [f"data.source={data}", "data.train.split=null", "data.val=null"]
    with pytest.raises(UserError, match=r"data.train: .*no energy"):
        train.main([*TINY, "data=path", *path, f"output_dir={tmp_path / 'a'}"])
    with pytest.raises(UserError, match=r"data.max_train_samples=0: expected an integer >= 1"):
        train.main([*TINY, "data.max_train_samples=0", f"output_dir={tmp_path / 'b'}"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_interrupted_run_resumed_twice(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*TINY, f"output_dir={out}"]
    step = Trainer._train_step

    def interrupted(self, batch, weights):
        if self.state["step"] == 6:
            raise KeyboardInterrupt  # stands in for Ctrl-C after step 6
        return step(self, batch, weights)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train.main(args)
    position = read_checkpoint(out / "checkpoints" / "last.pt")["extra"]["train_state"]
    assert position["position"]["step"] == 4 and not position["position"]["finished"]
    assert train.main([*args, "resume=true"]) == 0
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"already finished"):
        train.main([*args, "resume=true"])
    assert _snapshot(out) == before
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 18 + 2


def test_max_steps_cuts_the_last_epoch_and_ends_the_schedule(tmp_path, monkeypatch):
    # experiment=tiny: 9 steps per epoch; 13 steps end 4 steps into the second epoch
    out = tmp_path / "run"
    args = [*TINY, "trainer.max_steps=13", f"output_dir={out}"]
    step = Trainer._train_step

    def interrupted(self, batch, weights):
        if self.state["step"] == 11:
            raise KeyboardInterrupt
        return step(self, batch, weights)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train.main(args)
    assert train.main([*args, "resume=true"]) == 0
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    train_rows = [r for r in rows if r[2] == "train"]
    assert len(train_rows) == 13 and [r[0] for r in rows if r[2] == "val"] == ["0", "1"]
    position = read_checkpoint(out / "checkpoints" / "last.pt")["extra"]["train_state"]
    assert position["position"]["finished"] and position["position"]["step"] == 13
    # the cosine ran over 13 steps, not over the 18 of two whole epochs
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = warmup_cosine(opt, total_steps=13, warmup_steps=3)
    factors = [sched.lr_lambdas[0](i) for i in range(13)]
    lr0 = train.compose_config(TINY).trainer.optimizer.lr
    assert [float(r[3]) for r in train_rows] == pytest.approx([lr0 * f for f in factors])
    with pytest.raises(
        UserError, match=r"trainer.max_steps=0: expected an integer >= 1 \(or null\)"
    ):
        train.main([*TINY, "trainer.max_steps=0", f"output_dir={tmp_path / 'zero'}"])


def test_backend_override_on_a_baseline(tmp_path):
    with pytest.raises(UserError, match=r"model 'schnet' has no tdn-core tensor products"):
        train.main(["data=embedded_tiny", "model=schnet", "backend=cg", f"output_dir={tmp_path}"])


# --------------------------------------------------------------------------- slow


def _train_cmd(out: Path, *extra: str) -> list[str]:
    args = [*TINY, "trainer.max_epochs=4", f"output_dir={out}", *extra]
    return [sys.executable, "-m", "tdn_cli.train", *args]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref), env=_env(), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_train_cmd(run), env=_env(), stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.pt"
    try:
        # kill once a checkpoint exists and metrics.csv has rows past it (cut on resume)
        deadline = time.monotonic() + 120
        csv_path = run / "metrics.csv"

        def rows() -> int:
            return len(csv_path.read_text().splitlines()) - 1 if csv_path.exists() else 0

        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists() and rows() >= 6:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = read_checkpoint(last)["extra"]["train_state"]["position"]
    assert not state["finished"] and state["step"] < 36
    resumed = subprocess.run(
        _train_cmd(run, "resume=true"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {state['step']}" in resumed.stderr
    assert (run / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()
    a = read_checkpoint(ref / "checkpoints" / "last.pt")
    b = read_checkpoint(last)
    for key in a["state_dict"]:  # EMA weights and the raw weights, bit for bit
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    wa, wb = a["extra"]["train_state"]["model"], b["extra"]["train_state"]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


_DDP_SCRIPT = """
import sys
import torch
from tdn_cli import train

out, overrides = sys.argv[1], sys.argv[2:]
cfg = train.compose_config(overrides)
dist = train._init_distributed(torch.device("cpu"))
trainer = train._run(cfg, train._resolved(cfg), dist, overrides)
torch.save(trainer.model.state_dict(), f"{out}/rank{dist.rank}.pt")
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    common = [*TINY, "trainer.dtype=float64", "trainer.max_epochs=1"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    launch += ["--standalone", str(script), str(tmp_path), *common]
    done = subprocess.run(
        [*launch, f"output_dir={tmp_path / 'ddp'}"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    train.main([*common, f"output_dir={tmp_path / 'single'}"])

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    def losses(name: str) -> torch.Tensor:
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()[1:]
        return torch.tensor([float(r.split(",")[4]) for r in rows], dtype=torch.float64)

    assert torch.allclose(losses("ddp"), losses("single"), rtol=1e-9, atol=0)
    single = read_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    weights = single["extra"]["train_state"]["model"]
    for key in weights:
        assert torch.allclose(ranks[0][key], weights[key], rtol=1e-9, atol=1e-12), key
