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


def test_edge_of_and_next_beyond():
    """A chosen lambda at the smallest or largest value tried is an edge; the next value out continues the grid's
    own ratio at that end; a value already tried (e.g. diverged) is not tried again; one value is no grid."""
    sweep = _load()
    ok = lambda m, lam, val: {"method": m, "lam": lam, "metric_val": val}
    result = {"higher_is_better": True, "runs": [ok("acsl", 0.03, 60), ok("acsl", 0.06, 61), ok("acsl", 0.12, 65),
                                                 ok("cap", 0.03, 66), ok("cap", 0.06, 61), ok("cap", 0.12, 60),
                                                 ok("slim", 0.03, 60), ok("slim", 0.06, 66), ok("slim", 0.12, 60),
                                                 ok("dg", 1e-3, 50)]}
    assert {m: sweep.edge_of(result, m) for m in ("acsl", "cap", "slim", "dg")} == \
        {"acsl": "largest", "cap": "smallest", "slim": None, "dg": None}
    assert sweep.next_beyond(result, "acsl") == 0.24 and sweep.next_beyond(result, "cap") == 0.015
    assert sweep.next_beyond(result, "slim") is None and sweep.next_beyond(result, "dg") is None
    result["runs"].append({"method": "acsl", "lam": 0.24, "error": "acsl sparsity learning diverged"})
    assert sweep.next_beyond(result, "acsl") == 0.17          # it failed there: halfway (geometric) to the failure
    result["runs"].append({"method": "acsl", "lam": 0.17, "error": "acsl sparsity learning diverged"})
    assert sweep.next_beyond(result, "acsl") == 0.143         # and again, never a value that already ran or failed
    result["runs"] += [{"method": "acsl", "lam": 0.143, "error": "x"}, {"method": "acsl", "lam": 0.131, "error": "x"},
                       {"method": "acsl", "lam": 0.125, "error": "x"}, {"method": "acsl", "lam": 0.122, "error": "x"},
                       {"method": "acsl", "lam": 0.121, "error": "x"}]
    assert sweep.next_beyond(result, "acsl") is None          # nothing new between 0.12 and 0.121 at 3 digits
    note = sweep.edge_note(result)
    assert "acsl 0.12 (largest that ran; 0.121 failed)" in note and "cap 0.03 (smallest that ran)" in note
    assert "slim" not in note
    result["higher_is_better"] = False                        # lower is better (MAE): the other ends
    assert sweep.edge_of(result, "acsl") == "smallest" and sweep.edge_of(result, "cap") == "largest"


def test_extend_edges_walks_out_until_the_choice_is_inside(tmp_path, monkeypatch, capsys):
    """--extend-edges K: val peaks at lambda 4 on a grid of 1, 2, so the sweep tries 4 (better), then 8 (worse) and
    stops with 4 inside; with K = 1 and the peak further out it stops after one value, and the table says the
    choice is still at the edge."""
    cfg_path, dense = _tiny(tmp_path)
    sweep = _load()
    peak = {"acsl": 4.0, "slimming": 100.0}
    tried = []

    def fake_run(cfg, checkpoint, method, lam, budget):
        import math
        tried.append((method, lam))
        val = 50.0 - abs(math.log2(lam / peak[method]))
        return {"params": 1, "macs": 1, "val_after_sparsity": val, "val_after_slim": val, "metric_val": val,
                "metric": val, "strengths": None, "sparsity_epochs": 1,
                "gammas": {"median_abs_gamma": 0.1 / lam, "frac_below_1pct_of_max": 0.0}, "recover_epochs": 1,
                "sparsity_reused": False, "run_dir": "x"}

    monkeypatch.setattr(sweep, "one_run", fake_run)
    base = [str(cfg_path), "--checkpoint", str(dense), "--budget", "params=0.5", "--lams", "1,2",
            "--dataset", "synthetic"]
    assert sweep.main(base + ["--methods", "acsl", "--results", str(tmp_path / "a"), "--extend-edges", "3"]) == 0
    assert tried == [("acsl", 1.0), ("acsl", 2.0), ("acsl", 4.0), ("acsl", 8.0)]
    result = json.loads((tmp_path / "a" / "lambda_sweep_synthetic_segnet.json").read_text())
    assert result["chosen_on_val"] == {"acsl": 4.0} and result["chosen_at_edge"] == {}
    assert "inside the values that ran" in (tmp_path / "a" / "lambda_sweep_synthetic_segnet.md").read_text()
    tried.clear()
    assert sweep.main(base + ["--methods", "slimming", "--results", str(tmp_path / "b"), "--extend-edges", "1"]) == 0
    assert tried == [("slimming", 1.0), ("slimming", 2.0), ("slimming", 4.0)]
    result = json.loads((tmp_path / "b" / "lambda_sweep_synthetic_segnet.json").read_text())
    assert result["chosen_on_val"] == {"slimming": 4.0} and result["chosen_at_edge"] == {"slimming": "largest"}
    assert "slimming 4 (largest that ran)" in (tmp_path / "b" / "lambda_sweep_synthetic_segnet.md").read_text()
    assert "is the largest tried; trying 4" in capsys.readouterr().out
    tried.clear()                                             # without the flag: the grid only, as before
    assert sweep.main(base + ["--methods", "slimming", "--results", str(tmp_path / "c")]) == 0
    assert tried == [("slimming", 1.0), ("slimming", 2.0)]
