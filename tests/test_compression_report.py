"""benchmarks/compression.py report: mean +- std over seeds, ACSL-vs-best-other verdicts (a claim only where the gap
exceeds the pooled std), error-bar plot, and the interleaved ONNX Runtime latency / realisation of --measure-latency."""
import json
import math

import pytest
import torch
import yaml
from conftest import load_benchmark

bench = load_benchmark("compression")
DENSE = {"checkpoint": "d.pt", "params": 1000, "macs": 10000, "metric": 50.0, "metric_val": 50.0}


def _run(method, metric, seed, value=0.5, **kw):
    return {"method": method, "budget": {"kind": "params", "value": value}, "seed": seed, "metric": metric,
            "metric_val": metric, "params": 500, "macs": 4000, "recover": "finetune", "wall_s": 1.0, **kw}


def _result(runs, higher=True, metric="miou"):
    return {"dataset": "syn", "model": "segnet", "profile": "quick", "metric": metric, "higher_is_better": higher,
            "dense": dict(DENSE), "runs": runs, "command": "python benchmarks/compression.py x", "machine": "test",
            "git_commit": "abc"}


def _verdict(result, other="l1"):
    return next(v for v in bench.summarize(result) if v["other"] == other)


def test_clear_gap_over_three_seeds_is_acsl_ahead():
    runs = [_run("acsl", m, s) for s, m in enumerate([40.0, 41.0, 42.0])]
    runs += [_run("l1", m, s) for s, m in enumerate([30.0, 31.0, 32.0])]
    runs += [_run("slimming", m, s) for s, m in enumerate([20.0, 21.0, 22.0])]   # not the best other: not compared
    runs += [_run("scratch-uniform", 99.0, s) for s in range(3)]                   # a reference, not a pruning method
    v = _verdict(_result(runs))
    assert [x["other"] for x in bench.summarize(_result(runs))] == ["l1"]
    assert (v["n_acsl"], v["n_other"]) == (3, 3)
    assert v["mean_acsl"] == pytest.approx(41.0) and v["std_acsl"] == pytest.approx(1.0)   # ddof=1
    assert v["gap"] == pytest.approx(10.0) and v["pooled_std"] == pytest.approx(1.0)
    assert v["verdict"] == "ACSL ahead"


def test_gap_inside_pooled_std_is_within_noise_and_scratch_plan_is_reported_separately():
    runs = [_run("acsl", m, s) for s, m in enumerate([40.0, 44.0, 36.0])]          # std 4
    runs += [_run("l1", m, s) for s, m in enumerate([39.0, 42.0, 36.0])]           # std 3, gap 1
    runs += [_run("scratch-plan", m, s) for s, m in enumerate([50.0, 51.0, 52.0])]
    verdicts = bench.summarize(_result(runs))
    assert [v["other"] for v in verdicts] == ["l1", "scratch-plan"]
    assert verdicts[0]["pooled_std"] == pytest.approx(math.sqrt((16 + 9) / 2))
    assert verdicts[0]["verdict"] == "within noise"
    assert verdicts[1]["gap"] == pytest.approx(-11.0) and verdicts[1]["verdict"] == "ACSL behind"


def test_lower_is_better_metric_turns_the_gap_around():
    runs = [_run("acsl", m, s) for s, m in enumerate([10.0, 11.0, 12.0])]          # MAE: ACSL lower = better
    runs += [_run("l1", m, s) for s, m in enumerate([20.0, 21.0, 22.0])]
    runs += [_run("cap", m, s) for s, m in enumerate([30.0, 31.0, 32.0])]          # worse MAE: not the best other
    v = _verdict(_result(runs, higher=False, metric="mae"))
    assert v["gap"] == pytest.approx(10.0) and v["verdict"] == "ACSL ahead"
    flipped = _verdict(_result([dict(r, metric=-r["metric"]) for r in runs if r["method"] != "cap"], higher=False,
                               metric="mae"))
    assert flipped["gap"] == pytest.approx(-10.0) and flipped["verdict"] == "ACSL behind"


def test_one_seed_makes_no_claim_and_std_is_na(tmp_path):
    runs = [_run("acsl", m, s) for s, m in enumerate([40.0, 41.0, 42.0])] + [_run("l1", 10.0, 0)]
    result = _result(runs)
    v = _verdict(result)
    assert v["verdict"] == "one seed: no claim" and v["pooled_std"] is None and v["std_other"] is None
    json_path = tmp_path / "compression_syn_segnet.json"
    bench.write_report(result, json_path)
    stored = json.loads(json_path.read_text())
    assert stored["summary"] == bench.summarize(result) and stored["summary"][0]["verdict"] == "one seed: no claim"
    md = json_path.with_suffix(".md").read_text()
    assert md.index("## Summary over seeds") < md.index("## Per seed")
    assert "| l1 | params=0.5 | 1 |  | 10.000 ± n/a |" in md and "| acsl | params=0.5 | 3 |  | 41.000 ± 1.000 |" in md
    assert "**one seed: no claim**" in md


def test_plot_draws_error_bars_with_several_seeds(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: calls.append((kw["label"], list(y), list(yerr)))
                        or real(self, x, y, yerr=yerr, **kw))
    runs = [_run("acsl", m, s, v) for v in (0.5, 0.7) for s, m in enumerate([40.0, 42.0])]
    runs += [_run("l1", 30.0, 0, 0.5)]
    bench.write_plot(_result(runs), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert dict((c[0], c[1:]) for c in calls) == {"acsl": ([41.0, 41.0], [pytest.approx(math.sqrt(2))] * 2),
                                                  "l1": ([30.0], [0.0])}
    calls.clear()
    bench.write_plot(_result([_run("acsl", 40.0, 0), _run("l1", 30.0, 0)]), tmp_path / "single.png")
    assert calls == [] and (tmp_path / "single.png").stat().st_size > 1000     # one seed each: plain points


# ------------------------------------------------------------------------------------------- --measure-latency
def _tiny_experiment(tmp_path):
    """A segnet at width 0.125 on 32x32: dense checkpoint, one slim.pt (a third of every group's channels removed),
    a results JSON with that row, a row whose model file is gone and a failed row."""
    from toolchain.config import load_config
    from toolchain.models import build_from_config
    from toolchain.models.complexity import model_summary
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.surgery import slim
    from toolchain.train.checkpoint import save_checkpoint

    raw = {"name": "tiny_seg", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 4},
           "out_dir": str(tmp_path / "runs")}
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    dense = build_from_config(cfg)
    save_checkpoint(tmp_path / "dense.pt", dense, cfg)
    graph = build_pruning_graph(build_from_config(cfg), (32, 32))
    plan = slim(graph, {g.index: list(range(0, g.size, 3)) for g in graph.groups if g.size >= 3})
    (tmp_path / "acsl").mkdir()
    save_checkpoint(tmp_path / "acsl" / "slim.pt", graph.model, cfg, stage="pruned", channel_plan=plan)
    d, s = model_summary(dense, (32, 32)), model_summary(graph.model, (32, 32))
    result = _result([_run("acsl", 40.0, 0, params=s["params"], macs=s["macs"], run_dir=str(tmp_path / "acsl")),
                      _run("l1", 30.0, 0, params=s["params"], macs=s["macs"], run_dir=str(tmp_path / "gone")),
                      {"method": "cap", "budget": {"kind": "params", "value": 0.5}, "seed": 0, "error": "boom",
                       "wall_s": 0.0}])
    result["profile"] = None
    result["dense"].update(checkpoint=str(tmp_path / "dense.pt"), params=d["params"], macs=d["macs"])
    return cfg_path, cfg, result


def test_measure_latency_interleaves_rounds_and_records_realisation(tmp_path, capsys, monkeypatch):
    import toolchain.profile.layer_latency as ll

    cfg_path, cfg, result = _tiny_experiment(tmp_path)
    order, real = [], ll.time_session
    monkeypatch.setattr(ll, "time_session", lambda session, shape, runs, warmup=2:
                        order.append(id(session)) or real(session, shape, runs, warmup))
    bench.measure_latency(result, cfg, rounds=3, runs=2)
    assert "skipping l1 params=0.5 seed 0: model file not found" in capsys.readouterr().out
    assert len(order) == 6 and order[:2] == order[2:4] == order[4:] and order[0] != order[1]   # dense, acsl, dense, ...
    acsl, l1, cap = result["runs"]
    lat = result["latency"]
    assert (lat["threads"], lat["rounds"], lat["runs"]) == (1, 3, 2) and lat["dense_ms"] > 0 and lat["machine"]
    assert acsl["latency_ms"] > 0 and acsl["speedup"] == pytest.approx(lat["dense_ms"] / acsl["latency_ms"])
    assert acsl["macs_ratio"] == pytest.approx(result["dense"]["macs"] / acsl["macs"]) and acsl["macs_ratio"] > 1
    assert acsl["realisation"] == pytest.approx(acsl["speedup"] / acsl["macs_ratio"])
    assert not any(k in l1 or k in cap for k in bench.LATENCY_FIELDS)


def test_report_only_with_measure_latency_fills_the_table(tmp_path, capsys):
    cfg_path, _, result = _tiny_experiment(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    json_path = results / "compression_syn_segnet.json"
    json_path.write_text(json.dumps(result))
    argv = [str(cfg_path), "--dataset", "syn", "--results", str(results), "--report-only", "--measure-latency",
            "--latency-rounds", "2", "--latency-runs", "2"]
    assert bench.main(argv) == 0
    stored = json.loads(json_path.read_text())
    assert stored["latency"]["rounds"] == 2 and "realisation" in stored["runs"][0] and "summary" in stored
    md = json_path.with_suffix(".md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| acsl | params=0.5 | 0 |"))
    assert row.rstrip(" |").endswith(f"{stored['runs'][0]['realisation']:.2f}")
    summary_row = next(line for line in md.splitlines() if line.startswith("| acsl | params=0.5 | 1 |"))
    assert summary_row.rstrip(" |").endswith(f"{stored['runs'][0]['realisation']:.2f}")
    assert "interleaved rounds" in md
    # a missing dense checkpoint is a one-line error
    stored["dense"]["checkpoint"] = str(tmp_path / "nope.pt")
    json_path.write_text(json.dumps(stored))
    capsys.readouterr()
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs the dense checkpoint" in err and len(err.strip().splitlines()) == 1


def test_summary_shows_each_methods_lambda_and_val_before_and_after_slimming(tmp_path):
    runs = [_run("acsl", 40.0 + s, s, lam=3.5, val_after_sparsity=30.0 + s, val_after_slim=28.0 + s) for s in range(3)]
    runs += [_run("cap", 39.0 + s, s, lam=7.0, val_after_sparsity=20.0, val_after_slim=10.0) for s in range(2)]
    result = _result(runs)
    st = bench.method_stats(result)[("params", 0.5)]
    assert st["acsl"]["lams"] == [3.5] and st["cap"]["lams"] == [7.0]
    assert st["acsl"]["val_after_sparsity"] == pytest.approx(31.0) and st["acsl"]["val_after_slim"] == pytest.approx(29.0)
    json_path = tmp_path / "compression_syn_segnet.json"
    bench.write_report(result, json_path)
    md = json_path.with_suffix(".md").read_text()
    assert "| acsl | params=0.5 | 3 | 3.5 | 41.000 ± 1.000 | 50.0% | 60.0% | 31.000 | 29.000 |" in md
    assert "| cap | params=0.5 | 2 | 7 | 39.500 ± 0.707 | 50.0% | 60.0% | 20.000 | 10.000 |" in md


def test_dense_entry_carries_the_plateau_evidence(tmp_path):
    from toolchain.config import load_config
    from toolchain.models import build_from_config
    from toolchain.train.trainer import fit

    raw = {"name": "tiny_seg", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
           "train": {"epochs": 3, "batch_size": 4, "optimizer": "sgd", "lr": 0.05, "seed": 0, "threads": 1},
           "out_dir": str(tmp_path / "runs")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "tiny.yaml")
    fit_result = fit(cfg, build_from_config(cfg), cfg.run_dir(), stage="dense")
    entry = bench.dense_entry(cfg, fit_result.best_path)
    assert entry["epochs"] == 3 and entry["plateau"]["window_start_epoch"] == 3
    assert isinstance(entry["plateau"]["plateau"], bool)
    result = _result([_run("acsl", 40.0, 0)])
    result["dense"] = dict(result["dense"], epochs=3, plateau=entry["plateau"])
    json_path = tmp_path / "compression_syn_segnet.json"
    bench.write_report(result, json_path)
    assert "Dense training: 3 epochs; its last 1 epochs gained" in json_path.with_suffix(".md").read_text()
