"""benchmarks/protocol.py: the comparison protocol's commands, in order, with each method's lambda read from its
own val sweep; and the merges that gather parallel runs into one table."""
import json
import shlex
import subprocess
import sys
import time

import pytest
from conftest import REPO, load_benchmark

protocol = load_benchmark("protocol")


@pytest.mark.parametrize("name", sorted(protocol.EXPERIMENTS))
def test_dry_run_lists_every_step_in_order(name, capsys):
    assert protocol.main([name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    titles = [line[2:] for line in out.splitlines() if line.startswith("# ")]
    assert titles == ["dense", "lambda per method", "seeds", "scratch-plan (needs ACSL's plans)", "modelopt",
                      "baselines without a sparsity phase (one seed)", "distillation vs fine-tuning",
                      "merge into benchmarks/results"]
    assert set(protocol.NEEDS) <= set(titles)
    exp = protocol.EXPERIMENTS[name]
    assert (REPO / exp["config"]).is_file()
    commands = [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]
    for cmd in commands:
        assert (REPO / cmd[1]).is_file()                      # every script exists
        assert f"train.epochs={exp['epochs']}" in cmd       # one epoch budget: scratch = dense + sparsity + recovery
    distill = [c for c in commands if "prune.recover.method=distill" in c]
    seeds = [c for c in commands if "--seeds" in c and "compression.py" in c[1] and c not in distill]
    for method in ("acsl", "cap", "slimming", "depgraph", "scratch-plan", "modelopt-fastnas"):
        assert sorted(c[c.index("--seeds") + 1] for c in seeds if c[c.index("--methods") + 1] == method) == ["0", "1", "2"]
    gamma = [c for c in seeds if c[c.index("--methods") + 1] in ("acsl", "cap", "slimming", "depgraph")]
    assert len(gamma) == 12 and all("prune.sparsity.lam=CHOSEN_ON_VAL" in c for c in gamma + distill)
    sweeps = [c for c in commands if c[1] == "benchmarks/lambda_sweep.py" and "--merge" not in c]
    assert [c[c.index("--methods") + 1] for c in sweeps] == ["acsl", "cap", "slimming", "depgraph"]
    assert len({c[c.index("--results") + 1] for c in sweeps}) == 4   # one results folder per parallel process
    assert all(c[c.index("--extend-edges") + 1] == "2" for c in sweeps)  # no method stops at its grid's edge
    assert len(distill) == 1 and distill[0][distill[0].index("--budgets") + 1] == exp["budgets"][-1]
    # the methods without a sparsity phase recover for the gamma methods' sparsity + recovery epochs
    from toolchain.config import load_config
    cfg = load_config(REPO / exp["config"], profile="quick")
    fair = f"prune.recover.epochs={exp.get('sparsity_epochs', cfg.prune.sparsity.epochs) + cfg.prune.recover.epochs}"
    no_phase = [c for c in seeds if c[c.index("--methods") + 1] in protocol.BASELINES + ("modelopt-fastnas",)]
    assert len(no_phase) == len(protocol.BASELINES) + 3 and all(fair in c for c in no_phase)
    assert not any("prune.recover.epochs" in " ".join(c) for c in seeds if c not in no_phase)
    for method in protocol.BASELINES:
        assert [c[c.index("--seeds") + 1] for c in no_phase if c[c.index("--methods") + 1] == method] == ["0"]
    merged = [c[c.index("--merge") + 1] for c in commands if "compression.py" in c[1] and "--merge" in c]
    assert sum(f"res_{m}_s0/" in f for f in merged for m in protocol.BASELINES) == len(protocol.BASELINES)


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


def test_lambda_per_budget_dry_run_sweeps_the_other_budgets_into_its_own_runs(capsys):
    assert protocol.main(["shb-long", "--lam-per-budget", "--dry-run"]) == 0
    out = capsys.readouterr().out
    titles = [line[2:] for line in out.splitlines() if line.startswith("# ")]
    assert titles == ["lambda at the other budgets", "seeds where a budget's lambda changed",
                      "scratch-plan where ACSL's plan changed", "merge the lambda-per-budget table"]
    exp = protocol.EXPERIMENTS["shb-long"]
    commands = [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]
    sweeps = [c for c in commands if c[1] == "benchmarks/lambda_sweep.py" and "--merge" not in c]
    assert sorted({c[c.index("--budget") + 1] for c in sweeps}) == ["params=0.5", "params=0.9"]  # not the middle one
    assert all("out_dir=benchmarks/.runs/p12/long" in c for c in sweeps)  # the main runs' sparsity cache is reused
    runs = [c for c in commands if c[1] == "benchmarks/compression.py" and "--seeds" in c]
    assert len(runs) == 3 * 4 * 2 + 3 * 2  # seeds x gamma methods + depgraph x other budgets, then scratch-plan
    assert all("out_dir=benchmarks/.runs/p12/long/lam_per_budget" in c and len(c[c.index("--budgets") + 1].split(",")) == 1
               for c in runs)  # own run folders: the middle-lambda runs and ACSL's plans stay as they were
    merges = [c[c.index("--merge") + 1] for c in commands if c[1] == "benchmarks/compression.py" and "--merge" in c]
    own = [m for m in merges if "_params0." in m]
    assert own and merges[:len(own)] == own  # a budget's own-lambda runs merge first, so they win over the middle ones
    assert all(c[c.index("--dataset") + 1] == f"{exp['label']}_lam-per-budget"
               for c in commands if c[1] == "benchmarks/compression.py" and "--merge" in c)


def test_lambda_per_budget_runs_only_where_the_lambda_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "RUNS", str(tmp_path))
    exp = protocol.EXPERIMENTS["shb"]
    label, model = exp["label"], exp["model"]

    def sweep(folder, chosen, runs=()):
        path = tmp_path / label / folder / f"lambda_sweep_{label}_{model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"chosen_on_val": chosen, "runs": list(runs)}))

    diverged = {"method": "acsl", "lam": 14.0, "error": "acsl sparsity learning diverged (loss nan); lower lam"}
    for m, v in {"acsl": 7.0, "cap": 7.0, "slimming": 3.5, "depgraph": 1e-3}.items():
        grid = protocol.DEPGRAPH_LAMS if m == "depgraph" else exp["lams"]
        ran = [{"method": m, "lam": float(x), "metric_val": 1.0} for x in grid.split(",") if (m, x) != ("acsl", "14")]
        extra = [{"method": m, "lam": 19.6, "metric_val": 1.0}] if m == "cap" else []  # an edge extension
        sweep(f"sweep_{m}", {m: v}, ran + extra + ([diverged] if m == "acsl" else []))
    for tag, acsl in (("params0.5", 3.5), ("params0.9", 7.0)):  # ACSL's lambda changes at 50% only
        for m, v in {"acsl": acsl, "cap": 7.0, "slimming": 3.5, "depgraph": 1e-3}.items():
            sweep(f"sweep_{m}_{tag}", {m: v})
    steps = dict(protocol.lam_per_budget_steps("shb"))
    grids = {(c[c.index("--methods") + 1], c[c.index("--budget") + 1]): c[c.index("--lams") + 1]
             for c in map(protocol.render, steps["lambda at the other budgets"])}
    # every lambda the middle budget's sweep finished (its edge extensions too), not the diverged one
    assert grids[("acsl", "params=0.5")] == "3.5,7,10" and grids[("cap", "params=0.9")] == exp["lams"] + ",19.6"
    ran = [c for c in map(protocol.render, steps["seeds where a budget's lambda changed"]) if c is not None]
    assert {(c[c.index("--methods") + 1], c[c.index("--budgets") + 1]) for c in ran} == {("acsl", "params=0.5")}
    assert len(ran) == 3 and all("prune.sparsity.lam=3.5" in c for c in ran)
    scratch = [c for c in map(protocol.render, steps["scratch-plan where ACSL's plan changed"]) if c is not None]
    assert len(scratch) == 3 and {c[c.index("--budgets") + 1] for c in scratch} == {"params=0.5"}
    done = tmp_path / label / "res_acsl_s0_params0.5" / f"compression_{label}_{model}.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    main_run = tmp_path / label / "res_modelopt-fastnas_s0" / f"compression_{label}_{model}.json"
    main_run.parent.mkdir(parents=True)
    main_run.write_text("{}")  # a main-protocol run; ModelOpt seeds 1-2 (one seed before session 10) are missing
    merges = [c for c in map(protocol.render, steps["merge the lambda-per-budget table"]) if c and "compression.py" in c[1]]
    merged = [c[c.index("--merge") + 1] for c in merges]
    assert merged == [str(done), str(main_run)]  # the runs that did not happen are not merged; own runs first


def _stamp(name, seconds=0.0, code=0):
    """A command that sleeps, appends '<name> <start> <end> <OMP_NUM_THREADS>' to the file in $STAMPS, and exits."""
    body = ("import os, sys, time; t = time.time(); time.sleep(%r); "
            "open(os.environ['STAMPS'], 'a').write('%s %%f %%f %%s\\n' %% (t, time.time(), os.environ['OMP_NUM_THREADS'])); "
            "sys.exit(%d)") % (seconds, name, code)
    return [protocol.PY, "-c", body]


def _stamps(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return {r[0]: (float(r[1]), float(r[2]), r[3]) for r in rows}


def test_jobs_overlap_independent_steps_and_keep_dependencies(tmp_path, monkeypatch):
    """--jobs: ModelOpt (needs only dense) runs beside the sweeps; seeds wait for every sweep and read the lambda
    only then; scratch-plan waits for the seeds; a merge step runs one command at a time, in order."""
    stamps = tmp_path / "stamps.txt"
    monkeypatch.setenv("STAMPS", str(stamps))
    read_at = {}

    def lazy():
        read_at["seeds"] = time.time()
        return []

    plan = [("dense", [_stamp("dense", 0.2)]),
            ("lambda per method", [_stamp("sweep_a", 1.0), _stamp("sweep_b", 1.0)]),
            ("seeds", [(_stamp("seed_a", 0.2), lazy)]),
            ("scratch-plan (needs ACSL's plans)", [_stamp("scratch", 0.1)]),
            ("modelopt", [_stamp("modelopt", 0.3)]),
            ("merge into benchmarks/results", [_stamp("merge1", 0.3), _stamp("merge2", 0.0)])]
    assert protocol.run_parallel(plan, jobs=3, log_dir=tmp_path / "logs", poll_s=0.05) == 0
    s = _stamps(stamps)
    assert set(s) == {"dense", "sweep_a", "sweep_b", "seed_a", "scratch", "modelopt", "merge1", "merge2"}
    assert all(v[2] == "1" for v in s.values())                       # 1 thread each
    assert s["sweep_a"][0] >= s["dense"][1] and s["modelopt"][0] >= s["dense"][1]
    assert s["modelopt"][0] < s["sweep_a"][1]                         # overlapped with the sweeps
    assert read_at["seeds"] >= max(s["sweep_a"][1], s["sweep_b"][1])  # the lambda is read once the sweeps are done
    assert s["scratch"][0] >= s["seed_a"][1]
    assert s["merge2"][0] >= s["merge1"][1] >= s["merge1"][0] >= max(v[1] for k, v in s.items() if "merge" not in k)
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 8 and logs[0].read_text().startswith("$ ")


def test_jobs_stop_starting_after_a_failure(tmp_path, monkeypatch, capsys):
    stamps = tmp_path / "stamps.txt"
    monkeypatch.setenv("STAMPS", str(stamps))
    plan = [("dense", [_stamp("dense")]),
            ("lambda per method", [_stamp("bad", 0.0, code=3), _stamp("slow", 0.5)]),
            ("seeds", [_stamp("never")])]
    assert protocol.run_parallel(plan, jobs=2, log_dir=tmp_path / "logs", poll_s=0.05) == 3
    assert set(_stamps(stamps)) == {"dense", "bad", "slow"}  # the running one finished, nothing after it started
    err = capsys.readouterr()
    assert "FAILED (exit 3" in err.out and "rerun the same command" in err.err


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        protocol.main(["shb", "--jobs", "0"])
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_merge_only_merges_just_the_finished_runs(tmp_path, monkeypatch, capsys):
    """--merge-only: the tables of a protocol still running (or cut short) from the run files that exist; the
    commands whose runs have not finished are named as skipped, and nothing else runs."""
    monkeypatch.setattr(protocol, "RUNS", str(tmp_path))
    exp = protocol.EXPERIMENTS["cifar"]
    label, model = exp["label"], exp["model"]
    done = [tmp_path / label / "sweep_acsl" / f"lambda_sweep_{label}_{model}.json",
            tmp_path / label / "res_acsl_s1" / f"compression_{label}_{model}.json"]
    for f in done:
        f.parent.mkdir(parents=True)
        f.write_text("{}")
    assert protocol.main(["cifar", "--merge-only", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("# ")] == ["# merge into benchmarks/results"]
    commands = [shlex.split(line) for line in out.splitlines() if line and line[0] not in "#("]
    merged = [c[i + 1] for c in commands for i, a in enumerate(c) if a == "--merge"]
    assert merged == [str(f) for f in done]      # the sweep's merge keeps only ACSL's file; one compression merge
    assert [c[1] for c in commands] == ["benchmarks/lambda_sweep.py", "benchmarks/compression.py"]
    names = [f"{m}_s{s}" for s in protocol.SEEDS
             for m in protocol.GAMMA_METHODS + ("depgraph", "scratch-plan", "modelopt-fastnas")]
    names += [f"{m}_s0" for m in protocol.BASELINES]
    not_run = len(names) + 1 - 1  # every seed run, the baselines and the distillation check, less ACSL seed 1
    assert out.count("(skipped: none of its runs has finished)") == not_run


def test_longer_dense_variant_prunes_its_own_dense_model_in_its_own_runs():
    """cifar-80: every run reads the 80-epoch dense model (not the 40-epoch one the cifar runs resume from), trains
    scratch references for 80 + sparsity + recovery epochs, and keeps its own run folders and tables."""
    long_cmds = [protocol.render(c) for _, cmds in protocol.steps("cifar-80", lam=lambda f, m: 1.0) for c in cmds]
    short_cmds = [protocol.render(c) for _, cmds in protocol.steps("cifar", lam=lambda f, m: 1.0) for c in cmds]
    dense = long_cmds[0]
    assert dense[dense.index("--label") + 1] == "plateau80" and "train.epochs=80" in dense
    runs = [c for c in long_cmds if "--checkpoint" in c]
    assert runs and {c[c.index("--checkpoint") + 1] for c in runs} == {
        "benchmarks/.runs/cifar_resnet56_quick_plateau80/dense_best.pt"}
    assert all("train.epochs=80" in c for c in runs)
    dirs = lambda cmds: {a for c in cmds for a in c if a.startswith("out_dir=")}  # noqa: E731
    labels = lambda cmds: {c[c.index("--dataset") + 1] for c in cmds if "--dataset" in c}  # noqa: E731
    assert dirs(long_cmds) and not dirs(long_cmds) & dirs(short_cmds)
    assert not labels(long_cmds) & labels(short_cmds)


def test_dry_run_into_a_closed_pipe_ends_quietly():
    # `protocol.py camvid --dry-run | head -1` used to end in a BrokenPipeError traceback; `true` reads nothing and
    # is gone before Python has started, so every write meets a closed pipe
    shell = f"{shlex.quote(sys.executable)} benchmarks/protocol.py camvid --dry-run | true"
    done = subprocess.run(["bash", "-c", shell], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert done.stderr == ""


def test_a_dense_model_on_record_is_not_trained_again(tmp_path, monkeypatch, capsys):
    """Rerunning a protocol (e.g. to finish it in another session) skips dense.py when the dense JSON names the
    checkpoint with the experiment's epochs and the file's sha256; any mismatch runs it (it resumes or retrains)."""
    from toolchain.utils.io import sha256_file

    monkeypatch.setattr(protocol, "REPO", tmp_path)  # the checkpoint's path is relative to the repository
    exp = protocol.EXPERIMENTS["camvid-long"]
    ckpt = protocol.paths(exp)["dense"]
    (tmp_path / ckpt).parent.mkdir(parents=True)
    (tmp_path / ckpt).write_bytes(b"weights")
    results = tmp_path / "results"
    results.mkdir()
    record = {"checkpoint": ckpt, "epochs": exp["epochs"], "checkpoint_sha256": sha256_file(tmp_path / ckpt)}
    json_path = results / f"dense_camvid_segnet_{exp['dense_label']}.json"
    assert not protocol.dense_done(exp, results)
    json_path.write_text(json.dumps(record))
    assert protocol.dense_done(exp, results)
    for change in ({"epochs": exp["epochs"] + 1}, {"checkpoint_sha256": "0" * 64}, {"checkpoint": "other.pt"}):
        json_path.write_text(json.dumps(dict(record, **change)))
        assert not protocol.dense_done(exp, results)
    json_path.write_text(json.dumps(record))
    (tmp_path / ckpt).write_bytes(b"retrained")  # a retrain at the same path is another model
    assert not protocol.dense_done(exp, results)
    # in the plan: the dense step renders as skipped when done
    monkeypatch.setattr(protocol, "REPO", REPO)
    monkeypatch.setattr(protocol, "dense_done", lambda e: True)
    assert protocol.main(["camvid-long", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# dense\n(skipped: the dense model is trained and on record)\n# lambda per method")
