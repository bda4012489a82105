"""benchmarks/lambda_sweep.py on a tiny synthetic experiment: one row per (method, lambda), the val split
chooses, a stronger lambda moves the gammas further, resumable, bad input is one line."""
import json

import yaml
from conftest import load_benchmark


def _load():
    return load_benchmark("lambda_sweep")


def _tiny(tmp_path):
    from toolchain.config import load_config
    from toolchain.models import build_from_config
    from toolchain.train.trainer import fit

    raw = {"name": "tiny_seg", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
           "train": {"epochs": 1, "batch_size": 4, "optimizer": "sgd", "lr": 0.05, "seed": 0, "threads": 1},
           "prune": {"min_channels": 2, "sparsity": {"epochs": 2}, "recover": {"method": "finetune", "epochs": 1}},
           "out_dir": str(tmp_path / "runs")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    result = fit(cfg, build_from_config(cfg), cfg.run_dir(), stage="dense")
    return path, result.best_path


def test_lambda_sweep_tiny(tmp_path, capsys):
    cfg_path, dense = _tiny(tmp_path)
    sweep = _load()
    argv = [str(cfg_path), "--checkpoint", str(dense), "--budget", "params=0.5", "--methods", "acsl,slimming",
            "--lams", "1e-4,6", "--results", str(tmp_path / "results"), "--dataset", "synthetic"]
    assert sweep.main(argv) == 0
    out = tmp_path / "results" / "lambda_sweep_synthetic_segnet.json"
    result = json.loads(out.read_text())
    runs = {(r["method"], r["lam"]): r for r in result["runs"]}
    assert set(runs) == {("acsl", 1e-4), ("slimming", 1e-4), ("acsl", 6.0), ("slimming", 6.0)}
    assert not any(r.get("error") for r in runs.values())
    for method in ("acsl", "slimming"):   # the strong penalty shrinks the gammas, the weak one barely
        weak, strong = runs[(method, 1e-4)]["gammas"], runs[(method, 6.0)]["gammas"]
        assert strong["median_abs_gamma"] < 0.5 * weak["median_abs_gamma"]
    best = {m: max((r for r in runs.values() if r["method"] == m), key=lambda r: r["metric_val"])["lam"]
            for m in ("acsl", "slimming")}
    assert result["chosen_on_val"] == best
    table = out.with_suffix(".md").read_text()
    assert table.count("| acsl |") == 2 and "chosen on val" in table
    assert out.with_suffix(".png").stat().st_size > 1000
    capsys.readouterr()
    assert sweep.main(argv) == 0                       # resumable: nothing runs again
    assert "[lambda_sweep] acsl" not in capsys.readouterr().out
    # one method per parallel process, then merged into one table: cap's sweep joins, nothing reruns
    other = ["--methods", "cap", "--lams", "1e-4", "--results", str(tmp_path / "other")]
    assert sweep.main(argv[:3] + ["--budget", "params=0.5", "--dataset", "synthetic"] + other) == 0
    capsys.readouterr()
    other_json = tmp_path / "other" / "lambda_sweep_synthetic_segnet.json"
    assert sweep.main(argv + ["--merge", str(other_json)]) == 0
    assert "merged 1 runs" in capsys.readouterr().out
    merged = json.loads(out.read_text())
    assert {(r["method"], r["lam"]) for r in merged["runs"]} == set(runs) | {("cap", 1e-4)}
    assert merged["chosen_on_val"] == best | {"cap": 1e-4} and merged["merged_commands"]
    assert "| cap |" in out.with_suffix(".md").read_text()
    # another budget: its own run folders, the sparsity phase of the same lambda comes from the cache
    again = [str(cfg_path), "--checkpoint", str(dense), "--budget", "params=0.3", "--methods", "acsl", "--lams", "6",
             "--results", str(tmp_path / "p30"), "--dataset", "synthetic"]
    assert sweep.main(again) == 0
    at30 = json.loads((tmp_path / "p30" / "lambda_sweep_synthetic_segnet.json").read_text())["runs"][0]
    assert at30["sparsity_reused"] and at30["run_dir"] != runs[("acsl", 6.0)]["run_dir"]
    assert at30["gammas"] == runs[("acsl", 6.0)]["gammas"] and at30["params"] > runs[("acsl", 6.0)]["params"]
    wrong = json.loads(other_json.read_text()) | {"budget": "params=0.7"}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    assert sweep.main(argv + ["--merge", str(tmp_path / "wrong.json")]) == 2
    assert "another sweep" in capsys.readouterr().err


def test_merge_keeps_the_other_sweeps_failed_lambdas():
    """A lambda that diverged in one method's sweep stays in the merged table (it bounds the usable range); a
    success replaces a failure of the same run, and a failure never replaces a success."""
    sweep = _load()
    key = {"model": "segnet", "profile": "quick", "budget": "params=0.7", "dense": {"checkpoint": "d.pt"},
           "higher_is_better": True}
    ok = lambda m, lam: {"method": m, "lam": lam, "metric_val": 40.0 + lam}
    bad = lambda m, lam: {"method": m, "lam": lam, "error": "acsl sparsity learning diverged"}
    result = dict(key, runs=[ok("cap", 1.0), bad("slimming", 1.5), ok("acsl", 0.5)])
    other = dict(key, runs=[ok("acsl", 1.0), bad("acsl", 1.5), ok("slimming", 1.5), bad("acsl", 0.5)])
    assert sweep.merge_sweeps(result, other, "other.json") == 3
    runs = {(r["method"], r["lam"]): bool(r.get("error")) for r in result["runs"]}
    assert runs == {("cap", 1.0): False, ("acsl", 0.5): False, ("acsl", 1.0): False, ("acsl", 1.5): True,
                    ("slimming", 1.5): False}
    assert sweep.chosen(result) == {"acsl": 1.0, "cap": 1.0, "slimming": 1.5}


def test_lambda_sweep_bad_input(tmp_path, capsys):
    sweep = _load()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "classification", "model": {"name": "resnet20"},
                                   "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10}}))
    assert sweep.main([str(cfg), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert sweep.main([str(cfg), "--checkpoint", str(cfg), "--methods", "l1"]) == 2
    assert "no sparsity learning" in capsys.readouterr().err
    assert sweep.main([str(cfg), "--checkpoint", str(cfg), "--lams", "big"]) == 2
    assert "--lams" in capsys.readouterr().err
