"""`acsl prune` end to end on tiny synthetic data: stage records, sparsity reuse across budgets, slim
checkpoint reload, recovery modes, and the bad inputs (method, budget, mismatched checkpoint, NaN)."""
import json

import pytest
import torch
import yaml

from toolchain.cli import main
from toolchain.config import load_config
from toolchain.errors import ToolchainError
from toolchain.models import build_from_config
from toolchain.prune.pipeline import run_prune
from toolchain.prune.recover import kd_pixel_kl
from toolchain.train.checkpoint import load_model
from toolchain.train.trainer import fit


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    raw = {
        "name": "p", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0, "threads": 1},
        "prune": {"min_channels": 2, "sparsity": {"epochs": 1, "lam": 0.001},
                  "recover": {"epochs": 1, "feature_weight": 0.1}},
        "out_dir": str(root / "runs"),
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    torch.manual_seed(0)
    result = fit(cfg, build_from_config(cfg), cfg.run_dir(), epochs=1)
    return path, result.best_path, raw


def test_acsl_prune_writes_records_and_reuses_sparsity(dense):
    path, ckpt, _ = dense
    cfg = load_config(path)
    first = run_prune(cfg, ckpt, method="acsl", budget="params=0.5", recover_method="auto", evaluate_test=False)
    assert first["fraction_removed"]["params"] >= 0.5
    assert first["stages"]["sparsity"]["reused"] is False
    assert set(first["stages"]["recover"]["scores_val"]) == {"finetune", "distill"}
    run = cfg.run_dir() / "prune" / "acsl_params0.5"
    for name in ["sparsity", "select", "slim", "recover"]:
        record = json.loads((run / "records" / f"{name}.json").read_text())
        assert record["stage"] == name
    slim_record = json.loads((run / "records" / "slim.json").read_text())
    assert slim_record["after"]["params"] < slim_record["before"]["params"]
    assert slim_record["removed_per_layer"] and slim_record["equivalence_rel_error"] < 1e-4
    assert first["checkpoint"] == str(run / "slim.pt")  # the file to export is the recovered one, obvious name
    before = load_model(run / "slim_before_recovery.pt", cfg)[1]
    model, saved = load_model(run / "slim.pt", cfg)  # rebuilt from zoo name + plan, no pickled modules
    assert saved["stage"] == "pruned" and before["stage"] == "slim"
    changed = any(not torch.equal(v, before["model_state"][k]) for k, v in saved["model_state"].items())
    assert changed == (first["recover"] != "none")  # slim.pt holds the recovered weights
    assert sum(p.numel() for p in model.parameters()) == first["after"]["params"]
    assert "kd_feature_adapter.weight" not in saved["model_state"]
    second = run_prune(cfg, ckpt, method="acsl", budget="flops=0.6", recover_method="none", evaluate_test=False)
    assert second["stages"]["sparsity"]["reused"] is True
    assert second["fraction_removed"]["flops"] >= 0.6


@pytest.mark.parametrize("method,recover", [("l1", "none"), ("depgraph", "finetune")])
def test_other_methods_run(dense, method, recover):
    path, ckpt, _ = dense
    record = run_prune(load_config(path), ckpt, method=method, budget="params=0.4", recover_method=recover,
                       evaluate_test=False)
    assert record["fraction_removed"]["params"] >= 0.4 and record["val"] is not None


def test_cli_bad_inputs(dense, capsys):
    path, ckpt, _ = dense
    assert main(["prune", str(path), "--checkpoint", str(ckpt), "--method", "magic"]) == 2
    assert "valid: acsl, cap" in capsys.readouterr().err
    assert main(["prune", str(path), "--checkpoint", str(ckpt), "--budget", "params:0.5"]) == 2
    assert "params=F or flops=F" in capsys.readouterr().err
    assert main(["prune", str(path), "--checkpoint", str(ckpt), "--method", "l1", "--budget", "params=0.995"]) == 2
    assert "largest reachable fraction" in capsys.readouterr().err


def test_mismatched_checkpoint_is_surfaced(dense, tmp_path):
    _, ckpt, raw = dense
    other = dict(raw, model={"name": "segnet", "width": 0.25})
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    with pytest.raises(ToolchainError, match="width"):
        run_prune(load_config(path), ckpt, method="l1", budget="params=0.5")


def test_nan_during_sparsity_names_lambda(dense, tmp_path):
    _, ckpt, raw = dense
    bad = dict(raw, train=dict(raw["train"], optimizer="sgd"),
               prune=dict(raw["prune"], sparsity={"epochs": 1, "lam": 1e30}))
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ToolchainError, match=r"lower prune\.sparsity\.lam \(now 1e\+30\).*|diverged"):
        run_prune(load_config(path), ckpt, method="slimming", budget="params=0.5")


def test_kd_pixel_kl_zero_for_equal_logits_and_ignores_void():
    s = torch.randn(2, 3, 4, 4)
    assert kd_pixel_kl(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 3, 4, 4)
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[:, 0, 0] = True
    full = kd_pixel_kl(s, t, 2.0, valid)
    manual = kd_pixel_kl(s[:, :, :1, :1], t[:, :, :1, :1], 2.0)
    assert full.item() == pytest.approx(manual.item(), rel=1e-5)
