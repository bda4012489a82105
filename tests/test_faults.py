"""Faults (issue 9): two deploys in one run folder, leftovers of killed runs, truncated in-progress
checkpoints, Ctrl-C, disk full, read-only folders, NaN/inf weights and learning rates, a bad opset.

The promise for each: one line (exit 2, no traceback) naming only paths that exist, nothing
half-written left behind, and a rerun that continues.
"""
from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toolchain.cli import build_parser
from toolchain.cli import main as acsl
from toolchain.config import load_config
from toolchain.deploy.cache import RunLock
from toolchain.errors import ToolchainError
from toolchain.models import build_from_config
from toolchain.train.checkpoint import load_model, save_checkpoint
from toolchain.train.trainer import NonFiniteLoss, fit
from toolchain.utils.io import atomic_write_text, remove_stale_partials

REPO = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from toolchain.deploy.cache import RunLock
with RunLock(sys.argv[1], log=lambda s: None):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _paths_named_exist(line: str) -> None:
    """Every absolute path a message names exists (no pointing at files that were never written)."""
    for path in re.findall(r"(/[^\s;:,()`']+/[^\s;:,()`']+)", line):
        assert Path(path).exists(), f"{path} named in {line!r} does not exist"


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _demo_config(tmp_path: Path) -> Path:
    text = (REPO / "configs" / "demo.yaml").read_text()
    path = tmp_path / "demo.yaml"
    path.write_text(text + f"\nout_dir: {tmp_path / 'runs'}\n")
    return path


# -- one deploy per run folder -------------------------------------------------------------------
def test_second_deploy_in_a_locked_run_folder_waits_naming_the_holder(tmp_path):
    run = tmp_path / "runs" / "demo_segnet"
    holder = _holder(run, 1.5)
    try:
        with pytest.raises(ToolchainError, match=rf"in use by pid {holder.pid} \(`.*`, since .*\)") as err:
            with RunLock(run, wait=False, log=lambda s: None):
                pass
        assert "\n" not in str(err.value)
        logs: list[str] = []
        started = time.monotonic()
        with RunLock(run, log=logs.append):  # waits until the holder lets go, then owns the folder
            waited = time.monotonic() - started
            assert holder.wait(timeout=10) == 0
        assert waited > 0.5 and f"waiting for pid {holder.pid}" in logs[0], logs
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_deploy_is_released(tmp_path):
    holder = _holder(tmp_path / "run", 60)
    holder.kill()  # kill -9: the kernel drops the flock with the process
    holder.wait()
    with RunLock(tmp_path / "run", wait=False, log=lambda s: None):
        pass


def test_acsl_deploy_no_wait_fails_in_one_line_naming_the_pid(tmp_path, capsys, monkeypatch):
    config = _demo_config(tmp_path)
    monkeypatch.setattr("toolchain.deploy.pipeline.run_deploy", lambda *a, **k: pytest.fail("ran unlocked"))
    holder = _holder(tmp_path / "runs" / "demo_segnet", 30)  # demo.yaml's name: demo_segnet
    try:
        assert acsl(["deploy", str(config), "--target", "cpu", "--no-wait"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"is in use by pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


def test_stale_partials_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    stages = tmp_path / "runs" / "demo" / "stages" / "train"
    stages.mkdir(parents=True)
    stale = [stages / f".dense_last.pt.{dead}.k2j4x.tmp", tmp_path / f".cpu.partial-{dead}",
             tmp_path / f".cpu.old-{dead}"]
    kept = [stages / f".dense_last.pt.{live}.abcde.tmp", tmp_path / f".cpu.partial-{live}",
            stages / "dense_last.pt", stages / ".lock"]
    for p in stale + kept:
        if "partial" in p.name or ".old-" in p.name:
            p.mkdir()
            (p / "manifest.json").write_text("{}")
        else:
            p.write_text("x")
    removed = remove_stale_partials(tmp_path / "runs") + remove_stale_partials(tmp_path, recursive=False)
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_atomic_temp_files_carry_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(Path(a).name), real_replace(a, b)))
    atomic_write_text(tmp_path / "record.json", "{}")
    assert re.fullmatch(rf"\.record\.json\.{os.getpid()}\.[^.]+\.tmp", seen[0]), seen


# -- interrupted and truncated runs ------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 5000, 0], ids=["half", "5000-bytes", "empty"])
def test_truncated_in_progress_checkpoint_restarts_the_stage(tiny_seg_config, tmp_path, capsys, keep):
    cfg = load_config(tiny_seg_config)
    run = tmp_path / "run"
    fit(cfg, build_from_config(cfg), run, epochs=1)
    last = run / "dense_last.pt"
    size = int(last.stat().st_size * keep) if isinstance(keep, float) else keep
    last.write_bytes(last.read_bytes()[:size])  # a copy cut short / a disk that filled
    result = fit(cfg, build_from_config(cfg), run, resume=True)
    out = capsys.readouterr().out
    assert "cannot resume from dense_last.pt (it is truncated or corrupt)" in out and "from scratch" in out
    assert (run / "dense_last.pt.bad").is_file() and len(result.history) == cfg.train.epochs
    load_model(result.best_path, cfg)  # the restarted stage finished with a readable checkpoint
    fit(cfg, build_from_config(cfg), run, resume=True)  # and the next rerun resumes from it quietly
    assert "cannot resume" not in capsys.readouterr().out


@pytest.mark.parametrize("command,extra", [
    (["deploy", "{config}", "--target", "cpu"], "toolchain.deploy.pipeline.run_deploy"),
    (["train", "{config}", "--set", "train.epochs=1"], "toolchain.models.build_from_config"),
])
def test_ctrl_c_prints_the_exact_command_that_resumes(tmp_path, capsys, monkeypatch, command, extra):
    config = _demo_config(tmp_path)
    module, name = extra.rsplit(".", 1)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{name}", interrupted)
    monkeypatch.setattr(sys, "argv", ["/some/venv/bin/acsl"])
    monkeypatch.delenv("MAKELEVEL", raising=False)  # under `make test` the line also names the make command
    argv = [a.format(config=config) for a in command]
    assert acsl(argv) == 130
    line = _one_line(capsys.readouterr().err)
    resume = line.split("to continue run: ", 1)[1]
    words = shlex.split(resume)
    assert words[:len(argv) + 1] == ["/some/venv/bin/acsl", *argv] and words[-1] == "--resume"
    args = build_parser().parse_args(words[1:])  # the printed command is valid
    assert args.resume is True and args.command == command[0]


# -- disk full, read-only folders --------------------------------------------------------------------
def _fail_fsync(code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))
    return fsync


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "read-only file system")])
def test_write_failure_during_training_is_one_line_and_leaves_no_temp_files(tiny_seg_config, tmp_path, capsys,
                                                                              monkeypatch, code, words):
    run = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", _fail_fsync(code))
    assert acsl(["train", str(tiny_seg_config), "--set", "train.epochs=1", "--out", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert words in line and f"while writing into {run}" in line
    _paths_named_exist(line)
    assert not list(run.rglob("*.tmp")) and not (run / "dense_last.pt").exists()


def test_read_only_run_folder_is_one_line(tiny_seg_config, tmp_path, capsys, monkeypatch):
    """A folder that cannot be created (read-only runs/): the message names the nearest existing folder."""
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if tmp_path in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert acsl(["train", str(tiny_seg_config), "--set", "train.epochs=1",
                 "--out", str(tmp_path / "ro" / "run")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "read-only file system while writing into" in line
    _paths_named_exist(line)


def test_unexpected_write_error_anywhere_in_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    """Writes outside utils.io (a copy, a third-party save) reach main(): still one line, existing paths."""
    def copy_fails(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "runs" / "x" / "dense.pt"))

    monkeypatch.setattr("toolchain.deploy.pipeline.run_deploy", copy_fails)
    assert acsl(["deploy", str(_demo_config(tmp_path)), "--target", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "the disk is full" in line
    _paths_named_exist(line)


# -- NaN / inf weights and learning rates ------------------------------------------------------------
def test_checkpoint_with_nan_weights_is_refused_by_eval(tiny_seg_config, tmp_path, capsys):
    cfg = load_config(tiny_seg_config)
    model = build_from_config(cfg)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    ckpt = save_checkpoint(tmp_path / "nan.pt", model, cfg)
    with pytest.raises(ToolchainError, match=r"nan\.pt has NaN/inf values in 1 of \d+ tensors"):
        load_model(ckpt, cfg)
    assert acsl(["eval", str(tiny_seg_config), "--checkpoint", str(ckpt)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "diverged" in line
    _paths_named_exist(line)


def test_diverging_loss_names_only_checkpoints_that_exist(tiny_seg_config, tmp_path):
    cfg = load_config(tiny_seg_config, overrides={"train": {"optimizer": "sgd", "lr": 1e30}})
    with pytest.raises(NonFiniteLoss) as err:
        fit(cfg, build_from_config(cfg), tmp_path / "run")
    assert "no checkpoint was written" in str(err.value) and "dense_last.pt" not in str(err.value)
    _paths_named_exist(str(err.value))


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0, -1.0])
def test_fit_refuses_a_non_finite_learning_rate(tiny_seg_config, tmp_path, lr):
    cfg = load_config(tiny_seg_config)
    with pytest.raises(ToolchainError, match="learning rate is .*positive finite"):
        fit(cfg, build_from_config(cfg), tmp_path / "run", lr=lr, stage="sparsity")
    assert not (tmp_path / "run").exists()


# -- export never dumps a graph ----------------------------------------------------------------------
def test_export_bad_opset_is_one_line_and_prints_no_graph(tiny_seg_config, tmp_path, capfd, monkeypatch):
    cfg = load_config(tiny_seg_config)
    ckpt = save_checkpoint(tmp_path / "dense.pt", build_from_config(cfg), cfg)
    assert acsl(["export", str(tiny_seg_config), "--checkpoint", str(ckpt), "--opset", "5",
                 "--out", str(tmp_path / "x.onnx")]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "opset 5 is outside" in _one_line(err)
    # an exporter failure inside torch (it writes the IR graph to C++ stdout) stays one line too
    import toolchain.export.exporter as exporter

    monkeypatch.setattr(exporter, "MIN_OPSET", 5)
    model, _ = load_model(ckpt, cfg)
    with pytest.raises(ToolchainError, match="torch.onnx.export failed at opset 5") as failed:
        exporter.torch_to_onnx_bytes(model, cfg.data.input_size, 5)
    out, _ = capfd.readouterr()
    assert out == "" and "\n" not in str(failed.value) and len(str(failed.value)) < 400
    print("stdout works again")
    assert capfd.readouterr().out == "stdout works again\n"


def test_sparsity_divergence_names_only_checkpoints_that_exist(tiny_seg_config, tmp_path):
    """prune.sparsity.lam absurdly high diverges in the first epoch: no sparsity_last.pt to point at."""
    from toolchain.prune.pipeline import run_prune

    cfg = load_config(tiny_seg_config, overrides={"train": {"optimizer": "sgd"},
                                                  "prune": {"sparsity": {"epochs": 1, "lam": 1e30}}})
    dense = save_checkpoint(tmp_path / "dense.pt", build_from_config(cfg), cfg)
    with pytest.raises(ToolchainError, match="diverged") as err:
        run_prune(cfg, dense, method="slimming", budget="params=0.5")
    assert "\n" not in str(err.value)
    _paths_named_exist(str(err.value))
