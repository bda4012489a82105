"""benchmarks/compression.py on a tiny synthetic experiment: 2 methods x 2 budgets x 1 epoch plus the two
scratch references; results written per run, resumable, table and Pareto plot produced."""
import json

import yaml
from conftest import load_benchmark


def _load_benchmark():
    return load_benchmark("compression")


def _tiny_seg(path, out_dir):
    """The tiny synthetic segmentation comparison (one epoch per phase, 2 steps per epoch) as YAML at `path`."""
    raw = {
        "name": "tiny_seg", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0, "threads": 1},
        "prune": {"min_channels": 2, "sparsity": {"epochs": 1, "lam": 0.001},
                  "recover": {"method": "finetune", "epochs": 1}},
        "out_dir": str(out_dir),
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compression_benchmark_tiny(tmp_path, capsys):
    cfg_path = _tiny_seg(tmp_path / "tiny.yaml", tmp_path / "runs")
    bench = _load_benchmark()
    argv = [str(cfg_path), "--methods", "acsl,l1,scratch-plan,scratch-uniform", "--budgets", "params=0.3,params=0.6",
            "--results", str(tmp_path / "results"), "--dataset", "synthetic"]
    assert bench.main(argv) == 0
    out = tmp_path / "results" / "compression_synthetic_segnet.json"
    result = json.loads(out.read_text())
    for key in ["dataset", "model", "profile", "metric", "higher_is_better", "split", "dense", "runs", "machine",
                "command", "git_commit"]:
        assert key in result
    assert result["split"] == "test" and set(result["dense"]) >= {"params", "macs", "metric"}
    runs = result["runs"]
    assert len(runs) == 8 and not any(r.get("error") for r in runs)
    for run in runs:
        for key in ["method", "budget", "params", "macs", "metric", "metric_val", "recover", "sparsity_epochs",
                    "recover_epochs", "wall_s"]:
            assert key in run, (run["method"], key)
        if not run["method"].startswith("scratch"):
            assert 1 - run["params"] / result["dense"]["params"] >= run["budget"]["value"]
    acsl = {r["budget"]["value"]: r for r in runs if r["method"] == "acsl"}
    plan = {r["budget"]["value"]: r for r in runs if r["method"] == "scratch-plan"}
    assert all(plan[v]["params"] == acsl[v]["params"] for v in acsl)  # same architecture as ACSL found
    assert [r["sparsity_reused"] for r in sorted(acsl.values(), key=lambda r: r["budget"]["value"])] == [False, True]
    summary, per_seed = (tmp_path / "results" / "compression_synthetic_segnet.md").read_text().split("## Per seed")
    assert summary.count("| acsl |") == 2 and per_seed.count("| acsl |") == 2  # one seed: one summary row per budget
    assert [v["verdict"] for v in result["summary"]] == ["one seed: no claim"] * 4  # vs l1 and vs scratch-plan
    scratch = [r for r in runs if r["method"].startswith("scratch")]
    assert all(bench.row_model_file(None, r)[0] is not None for r in scratch)  # their checkpoint, for --measure-latency
    assert (tmp_path / "results" / "compression_synthetic_segnet.png").stat().st_size > 1000
    # resumable: a second invocation finds every run done and trains nothing
    before = out.read_text()
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert "[compression] acsl" not in capsys.readouterr().out
    assert json.loads(out.read_text())["runs"] == json.loads(before)["runs"]


def test_unknown_method_is_one_line_error(tmp_path, capsys):
    bench = _load_benchmark()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "classification", "model": {"name": "resnet20"},
                                   "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10}}))
    assert bench.main([str(cfg), "--methods", "acsl,magic"]) == 2
    assert "valid: acsl" in capsys.readouterr().err


def test_merge_adds_missing_runs_and_refuses_other_experiments():
    import pytest

    from toolchain.errors import ToolchainError

    bench = _load_benchmark()
    dense = {"checkpoint": "d.pt", "params": 100, "macs": 1000, "metric": 50.0}
    run = lambda m, v, **kw: {"method": m, "budget": {"kind": "params", "value": v}, **kw}  # noqa: E731
    mine = {"model": "segnet", "profile": "quick", "dense": dense,
            "runs": [run("acsl", 0.5, metric=40.0), run("scratch-plan", 0.5, error="needs ACSL")]}
    other = {"model": "segnet", "profile": "quick", "dense": dense, "command": "python benchmarks/compression.py x",
             "runs": [run("acsl", 0.5, metric=1.0), run("scratch-plan", 0.5, metric=30.0)]}
    bench.merge_results(mine, other, "other.json")
    got = {(r["method"], r["budget"]["value"]): r for r in mine["runs"]}
    assert got[("acsl", 0.5)]["metric"] == 40.0                 # a run already here is kept
    assert got[("scratch-plan", 0.5)]["metric"] == 30.0         # the failed row is replaced by the other's result
    assert len(mine["runs"]) == 2 and mine["merged_commands"] == ["python benchmarks/compression.py x"]
    with pytest.raises(ToolchainError, match="another experiment"):
        bench.merge_results(mine, dict(other, dense=dict(dense, checkpoint="other.pt")), "other.json")
    # the same path holding another model (retrained on another machine): refused once both sides record a sha256
    mine["dense"] = dict(dense, checkpoint_sha256="a" * 64)
    with pytest.raises(ToolchainError, match="another experiment"):
        bench.merge_results(mine, dict(other, dense=dict(dense, checkpoint_sha256="b" * 64)), "other.json")
    bench.merge_results(mine, dict(other, dense=dict(dense, checkpoint_sha256="a" * 64)), "other.json")
    bench.merge_results(mine, other, "old.json")  # written before sha256s were recorded: the path decides
    # merging a table's own run again adds no "merged from" line that repeats its command
    own = {"model": "segnet", "profile": "quick", "dense": dense, "command": "python benchmarks/compression.py y",
           "runs": []}
    bench.merge_results(own, dict(own, runs=[]), "own.json")
    assert "merged_commands" not in own


def test_a_comparison_refuses_to_continue_on_a_retrained_dense_model(tmp_path, capsys):
    """Rows added to a comparison must come from the dense model it started from: a checkpoint whose sha256
    differs from the recorded one is a one-line error, and the JSON is left as it was."""
    bench = _load_benchmark()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "classification", "model": {"name": "resnet20"},
                                   "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10}}))
    checkpoint = tmp_path / "dense_best.pt"
    checkpoint.write_bytes(b"retrained")
    results = tmp_path / "results"
    results.mkdir()
    started = {"dataset": "synthetic", "model": "resnet20", "profile": None, "metric": "top1", "runs": [],
               "dense": {"checkpoint": str(checkpoint), "checkpoint_sha256": "0" * 64, "params": 1, "macs": 1}}
    json_path = results / "compression_synthetic_resnet20.json"
    json_path.write_text(json.dumps(started))
    before = json_path.read_text()
    argv = [str(cfg), "--checkpoint", str(checkpoint), "--methods", "l1", "--budgets", "params=0.5",
            "--results", str(results), "--dataset", "synthetic"]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert "is not the dense model" in err and "000000000000..." in err and len(err.strip().splitlines()) == 1
    assert json_path.read_text() == before


def test_scratch_uniform_matches_the_budgets_cost():
    """params budget -> the uniform width with ACSL's parameter count; flops budget -> with ACSL's MACs."""
    from toolchain.config import config_from_dict
    from toolchain.models import create_model
    from toolchain.models.complexity import count_params, model_summary

    bench = _load_benchmark()
    cfg = config_from_dict({"name": "x", "task": "classification", "model": {"name": "resnet20", "width": 1.0},
                            "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10}})
    half = create_model("resnet20", 10, width=0.5)
    target_params, target_macs = count_params(half), model_summary(half, (32, 32))["macs"]
    w_params = bench.uniform_width(cfg, target_params, "params")
    w_macs = bench.uniform_width(cfg, target_macs, "macs")
    assert abs(count_params(create_model("resnet20", 10, width=w_params)) - target_params) < 0.03 * target_params
    got_macs = model_summary(create_model("resnet20", 10, width=w_macs), (32, 32))["macs"]
    assert abs(got_macs - target_macs) < 0.03 * target_macs
    # a target between the two costs' curves tells them apart: matching MACs to a params count picks another width
    assert abs(bench.uniform_width(cfg, target_params // 4, "macs") - bench.uniform_width(cfg, target_params // 4)) > 0.05


def test_interrupted_scratch_reference_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    """A scratch reference killed mid-run (Ctrl-C in its second epoch) continues from its last complete epoch on
    the rerun and ends with the same test metric as a run never interrupted."""
    import pytest

    import toolchain.train.trainer as trainer

    def config(name):
        path = _tiny_seg(tmp_path / f"{name}.yaml", tmp_path / name / "runs")
        return [str(path), "--methods", "acsl,scratch-plan", "--budgets", "params=0.5",
                "--results", str(tmp_path / name / "results"), "--dataset", "synthetic"]

    bench = _load_benchmark()
    assert bench.main(config("straight")) == 0
    straight = json.loads((tmp_path / "straight" / "results" / "compression_synthetic_segnet.json").read_text())

    real_fit = trainer.fit

    def ctrl_c_at_step_3(step):  # 2 steps per epoch: step 3 is inside epoch 2 of 3
        if step == 3:
            raise KeyboardInterrupt

    def dying_fit(*args, stage="dense", **kwargs):
        if stage == "scratch_plan":
            kwargs["step_callback"] = ctrl_c_at_step_3
        return real_fit(*args, stage=stage, **kwargs)

    argv = config("cut")
    monkeypatch.setattr(trainer, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    monkeypatch.setattr(trainer, "fit", real_fit)
    capsys.readouterr()
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "[scratch_plan] resuming from" in out and "at epoch 2/3" in out
    cut = json.loads((tmp_path / "cut" / "results" / "compression_synthetic_segnet.json").read_text())
    metric = {r["method"]: r["metric"] for r in straight["runs"]}
    assert {r["method"]: r["metric"] for r in cut["runs"]} == metric and "scratch-plan" in metric
