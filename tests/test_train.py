"""Dense training: checkpoints, exact resume, Ctrl-C safety, checkpoint mismatch errors, DDP."""
import json
import os
import subprocess
import sys

import pytest
import torch

from toolchain.cli import main as acsl
from toolchain.config import load_config
from toolchain.errors import ToolchainError
from toolchain.models import build_from_config
from toolchain.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from toolchain.train.evaluate import evaluate
from toolchain.train.trainer import fit, seed_everything


def build(cfg):
    seed_everything(cfg.train.seed)
    return build_from_config(cfg)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_fit_writes_resumable_checkpoints_that_load_weights_only(tiny_seg_config, tmp_path):
    cfg = load_config(tiny_seg_config)
    model = build_from_config(cfg)
    result = fit(cfg, model, tmp_path / "run")
    assert result.best_path.is_file() and result.last_path.is_file()
    assert len(result.history) == 2 and result.history[1]["loss"] < result.history[0]["loss"] * 1.5
    ckpt = torch.load(result.last_path, weights_only=True)  # no pickled objects inside
    assert ckpt["epoch"] == 1 and "optimizer" in ckpt and "rng" in ckpt
    assert ckpt["preprocessing"]["mean"] == list(cfg.data.mean)
    loaded, _ = load_model(result.best_path, cfg)
    val = evaluate(loaded, cfg, "val")
    assert abs(val["miou"] - result.best_metric) < 1e-6


def test_resume_continues_exactly(tiny_seg_config, tmp_path):
    cfg = load_config(tiny_seg_config)
    straight = build(cfg)
    fit(cfg, straight, tmp_path / "a")

    torch.manual_seed(123)  # resume must not depend on the caller's RNG
    half = build(cfg)
    with pytest.raises(KeyboardInterrupt):  # 4 steps/epoch: dies in epoch 2
        fit(cfg, half, tmp_path / "b", step_callback=_interrupt_at(6))
    resumed = build_from_config(cfg)
    fit(cfg, resumed, tmp_path / "b", resume=True)
    assert torch.allclose(_weights(straight), _weights(resumed), atol=1e-6)


def test_resume_same_run_continues_exactly_and_never_resumes_other_settings(tiny_seg_config, tmp_path, capsys):
    """resume_same_run (scratch references, recovery): an interrupted run of the same settings continues
    exactly; a last.pt of another learning rate, another plan or other starting weights is not resumed."""
    cfg = load_config(tiny_seg_config)
    plan = {"extra_checkpoint": {"channel_plan": {"conv1": 3}}}
    straight = build(cfg)
    fit(cfg, straight, tmp_path / "a", resume_same_run=True, **plan)

    half = build(cfg)
    with pytest.raises(KeyboardInterrupt):  # 4 steps/epoch: dies in epoch 2
        fit(cfg, half, tmp_path / "b", step_callback=_interrupt_at(6), resume_same_run=True, **plan)
    resumed = build(cfg)
    result = fit(cfg, resumed, tmp_path / "b", resume_same_run=True, **plan)
    out = capsys.readouterr().out
    assert "resuming from" in out and "other settings" not in out
    assert len(result.history) == cfg.train.epochs
    assert torch.allclose(_weights(straight), _weights(resumed), atol=1e-6)

    for change in ({"lr": cfg.train.lr * 0.5}, {"extra_checkpoint": {"channel_plan": {"conv1": 2}}}, {"init": 1}):
        run = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, build(cfg), run, step_callback=_interrupt_at(6), resume_same_run=True, **plan)
        capsys.readouterr()
        model = build(cfg)
        if change.pop("init", None):  # same settings, other starting weights (another sparsity run's slim model)
            with torch.no_grad():
                next(model.parameters()).add_(0.01)
        fresh = fit(cfg, model, run, resume_same_run=True, **{**plan, **change})
        out = capsys.readouterr().out
        assert "written by a run of other settings; starting this stage over" in out and "resuming" not in out
        assert [h["epoch"] for h in fresh.history] == list(range(1, cfg.train.epochs + 1))
    # a last.pt without a run key (written before keys existed) is not trusted either
    ckpt = torch.load(tmp_path / "b" / "dense_last.pt", weights_only=True)
    del ckpt["run_key"]
    torch.save(ckpt, tmp_path / "b" / "dense_last.pt")
    fit(cfg, build(cfg), tmp_path / "b", resume_same_run=True, **plan)
    assert "other settings" in capsys.readouterr().out


def _interrupt_at(step_to_die):
    def callback(step):
        if step == step_to_die:
            raise KeyboardInterrupt
    return callback


@pytest.fixture
def interrupted_run(tiny_seg_config, tmp_path):
    cfg = load_config(tiny_seg_config)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, build_from_config(cfg), tmp_path / "c", step_callback=_interrupt_at(6))
    return cfg, tmp_path / "c"


def test_ctrl_c_keeps_last_complete_checkpoint(interrupted_run):
    cfg, run = interrupted_run
    ckpt = load_checkpoint(run / "dense_last.pt")
    assert ckpt["epoch"] == 0  # epoch 1 complete, epoch 2 interrupted
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left


def test_checkpoint_of_other_width_names_keys(tiny_seg_config, tmp_path):
    cfg = load_config(tiny_seg_config)
    save_checkpoint(tmp_path / "m.pt", build_from_config(cfg), cfg)
    other = load_config(tiny_seg_config, overrides={"model": {"width": 0.25}})
    with pytest.raises(ToolchainError, match="width 0.125.*width 0.25"):
        load_model(tmp_path / "m.pt", other)
    # same name/width claimed but different tensors: the differing keys are named
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    key = next(iter(ckpt["model_state"]))
    ckpt["model_state"][key] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ToolchainError, match=key.replace(".", r"\.")):
        load_model(tmp_path / "bad.pt", cfg)


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ToolchainError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(ToolchainError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_train_and_eval(tiny_seg_config, tmp_path, capsys):
    out = tmp_path / "cli"
    assert acsl(["train", str(tiny_seg_config), "--out", str(out), "--set", "train.epochs=2"]) == 0
    text = capsys.readouterr().out
    assert "built-in synthetic" in text and "checkpoint:" in text
    assert "plateau check: the last 1 epochs gained" in text   # the protocol's rule, printed and recorded
    record = json.loads((out / "train_record.json").read_text())
    assert record["plateau"]["epochs"] == 2 and isinstance(record["plateau"]["plateau"], bool)
    assert acsl(["eval", str(tiny_seg_config), "--checkpoint", str(out / "dense_best.pt"), "--split", "test"]) == 0
    assert "test: miou" in capsys.readouterr().out
    assert acsl(["train", str(tiny_seg_config), "--set", "train.epochz=1"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tiny_seg_config, tmp_path):
    """torchrun with 2 gloo ranks: same data per step as one process with the doubled batch."""
    cfg_single = load_config(tiny_seg_config, overrides={"train": {"epochs": 1}})
    seed_everything(cfg_single.train.seed)  # the same initial weights as `acsl train` builds (it seeds first)
    single = fit(cfg_single, build_from_config(cfg_single), tmp_path / "single")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "toolchain", "train", str(tiny_seg_config), "--out", str(tmp_path / "ddp"),
           "--set", "train.epochs=1", "--set", "train.batch_size=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp = load_checkpoint(tmp_path / "ddp" / "dense_last.pt")
    ddp_loss = ddp["history"][0]["loss"]
    assert abs(ddp_loss - single.history[0]["loss"]) / single.history[0]["loss"] < 0.05  # BN stats are per rank
    # the distributed evaluation of one checkpoint equals the single-process one exactly
    model, _ = load_model(tmp_path / "ddp" / "dense_last.pt", cfg_single)
    single_val = evaluate(model, cfg_single, "val")["miou"]
    assert abs(ddp["history"][0]["val"]["miou"] - single_val) < 1e-6


def test_real_data_path_replaces_demo_data(tiny_seg_config, capsys):
    """`--data` with a demo (synthetic) config switches to the real loader; the wrong task is an error."""
    from conftest import real_data

    camvid, shb = real_data("camvid"), real_data("shanghaitech_b")
    assert acsl(["data", "check", str(tiny_seg_config), "--data", str(camvid)]) == 0
    assert "CamVid" in capsys.readouterr().out
    assert acsl(["data", "check", str(tiny_seg_config), "--data", str(shb)]) == 2
    err = capsys.readouterr().err
    assert "counting dataset" in err and "task is segmentation" in err
