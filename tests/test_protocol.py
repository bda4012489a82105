"""benchmarks/protocol.py: the comparison protocol's commands, in order, with each method's lambda read from its
own val sweep; and the merges that gather parallel runs into one table."""
import json
import shlex

import pytest
from conftest import REPO, load_benchmark

protocol = load_benchmark("protocol")


@pytest.mark.parametrize("name", sorted(protocol.EXPERIMENTS))
def test_dry_run_lists_every_step_in_order(name, capsys):
    assert protocol.main([name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    titles = [line[2:] for line in out.splitlines() if line.startswith("# ")]
    assert titles == ["dense", "lambda per method", "seeds", "scratch-plan (needs ACSL's plans)", "modelopt, one seed",
                      "distillation vs fine-tuning", "merge into benchmarks/results"]
    exp = protocol.EXPERIMENTS[name]
    assert (REPO / exp["config"]).is_file()
    commands = [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]
    for cmd in commands:
        assert (REPO / cmd[1]).is_file()                      # every script exists
        assert f"train.epochs={exp['epochs']}" in cmd       # one epoch budget: scratch = dense + sparsity + recovery
    distill = [c for c in commands if "prune.recover.method=distill" in c]
    seeds = [c for c in commands if "--seeds" in c and "compression.py" in c[1] and c not in distill]
    for method in ("acsl", "cap", "slimming", "depgraph", "scratch-plan"):
        assert sorted(c[c.index("--seeds") + 1] for c in seeds if c[c.index("--methods") + 1] == method) == ["0", "1", "2"]
    gamma = [c for c in seeds if c[c.index("--methods") + 1] in ("acsl", "cap", "slimming", "depgraph")]
    assert len(gamma) == 12 and all("prune.sparsity.lam=CHOSEN_ON_VAL" in c for c in gamma + distill)
    sweeps = [c for c in commands if c[1] == "benchmarks/lambda_sweep.py" and "--merge" not in c]
    assert [c[c.index("--methods") + 1] for c in sweeps] == ["acsl", "cap", "slimming", "depgraph"]
    assert len({c[c.index("--results") + 1] for c in sweeps}) == 4   # one results folder per parallel process
    assert len(distill) == 1 and distill[0][distill[0].index("--budgets") + 1] == exp["budgets"][-1]


@pytest.mark.parametrize("long, short, epochs", [("camvid-long", "camvid", 20), ("shb-long", "shb", 30)])
def test_long_sparsity_variant_keeps_its_own_runs_and_budget(long, short, epochs):
    """A long-phase variant changes only the sparsity phase: its runs must not resume the short one's (same config,
    method and budget give the same run folder name), and scratch-plan's budget follows (it reads
    prune.sparsity.epochs)."""
    long_cmds = [protocol.render(c) for _, cmds in protocol.steps(long, lam=lambda f, m: 1.0) for c in cmds]
    short_cmds = [protocol.render(c) for _, cmds in protocol.steps(short, lam=lambda f, m: 1.0) for c in cmds]
    runs = [c for c in long_cmds if c[1] in ("benchmarks/lambda_sweep.py", "benchmarks/compression.py")]
    assert runs and all(f"prune.sparsity.epochs={epochs}" in c for c in runs)
    out_dirs = {a for c in runs for a in c if a.startswith("out_dir=")}
    short_dirs = {a for c in short_cmds for a in c if a.startswith("out_dir=")}
    assert out_dirs and not out_dirs & short_dirs
    assert not any(f"prune.sparsity.epochs={epochs}" in c for c in short_cmds)
    labels = {c[c.index("--dataset") + 1] for c in runs}
    assert not labels & {c[c.index("--dataset") + 1] for c in short_cmds if "--dataset" in c}


def test_chosen_lambda_comes_from_the_methods_own_sweep(tmp_path):
    sweep = tmp_path / "s.json"
    sweep.write_text(json.dumps({"chosen_on_val": {"acsl": 7.0, "cap": 3.5}}))
    assert protocol.chosen_lambda(sweep, "cap") == 3.5
    with pytest.raises(SystemExit, match="chose no lambda for slimming"):
        protocol.chosen_lambda(sweep, "slimming")
    with pytest.raises(SystemExit, match="run the lambda sweep of acsl first"):
        protocol.chosen_lambda(tmp_path / "missing.json", "acsl")
    steps = dict(protocol.steps("shb", lam=lambda f, m: {"acsl": 10.0, "cap": 7.0}.get(m, 1e-4)))
    rendered = [protocol.render(c) for c in steps["seeds"]]
    acsl = next(c for c in rendered if c[c.index("--methods") + 1] == "acsl")
    cap = next(c for c in rendered if c[c.index("--methods") + 1] == "cap")
    assert "prune.sparsity.lam=10" in acsl and "prune.sparsity.lam=7" in cap


def test_compression_merge_starts_an_empty_table(tmp_path, capsys):
    bench = load_benchmark("compression")
    run = {"method": "acsl", "budget": {"kind": "params", "value": 0.5}, "seed": 0, "metric": 40.0, "metric_val": 41.0,
           "params": 500, "macs": 4000, "recover": "finetune", "wall_s": 1.0}
    part = {"dataset": "syn", "model": "segnet", "profile": None, "metric": "miou", "higher_is_better": True,
            "dense": {"checkpoint": "d.pt", "params": 1000, "macs": 10000, "metric": 50.0, "metric_val": 50.0},
            "runs": [run], "command": "python benchmarks/compression.py a", "machine": "test", "git_commit": "abc"}
    (tmp_path / "a.json").write_text(json.dumps(part))
    (tmp_path / "b.json").write_text(json.dumps(dict(part, runs=[dict(run, seed=1, metric=42.0)],
                                                     command="python benchmarks/compression.py b")))
    cfg = REPO / "configs" / "demo.yaml"
    results = tmp_path / "results"
    for f in ("a.json", "b.json"):
        assert bench.main([str(cfg), "--dataset", "syn", "--results", str(results), "--merge", str(tmp_path / f)]) == 0
    merged = json.loads((results / "compression_syn_segnet.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1] and merged["merged_commands"] == ["python benchmarks/compression.py b"]
    assert bench.main([str(cfg), "--dataset", "syn", "--results", str(results), "--merge", str(tmp_path / "no.json")]) == 2
    assert "no such file" in capsys.readouterr().err
