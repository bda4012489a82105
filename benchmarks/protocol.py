"""The comparison protocol of docs/SPARSITY.md, one experiment end to end:

    python benchmarks/protocol.py shb              # ShanghaiTech B CSRNet
    python benchmarks/protocol.py camvid --dry-run # print the commands only (e.g. to spread them over processes)

Experiments: shb, camvid, cifar, the long-phase variants camvid-long (CamVid, a 20-epoch sparsity phase,
lambda <= 1.5) and shb-long (ShanghaiTech B, a 30-epoch phase, lambda <= 3), and cifar-80 (CIFAR pruned from an
80-epoch dense model: the 40-epoch one is not finished), each in its own run folders.

1. dense: `benchmarks/dense.py --label plateau` with the experiment's epochs; its JSON carries the plateau check
   (best val gain over the last 20% of the epochs < 0.3) and the curve PNG;
2. lambda per method, on val: `benchmarks/lambda_sweep.py` at the middle budget, one process per method (each
   with its own --results), merged into benchmarks/results/lambda_sweep_<label>_<model>.json; where a method's
   choice is the smallest or largest lambda of the grid, the sweep walks on past it (`--extend-edges 2`: up to two
   more values at the grid's ratio), so no method is held to a grid that stops short of its best;
3. seeds: `benchmarks/compression.py` per method and seed at the method's chosen lambda, DepGraph at its own,
   scratch-plan (ACSL's plan, random init) for dense + sparsity + recovery epochs, ModelOpt FastNAS (3 seeds too:
   it needs only the dense model and is cheap, and on CIFAR it leads), and one seed of each baseline without a
   sparsity phase (BN-Scale, L1, FPGM, random); these and ModelOpt recover for sparsity + recovery epochs (since
   session 13; before, ModelOpt recovered for the recovery epochs only);
4. recovery: ACSL with distillation instead of fine-tuning at the most aggressive budget;
5. merge: every run into benchmarks/results/compression_<label>_<model>.json (+ .md, .png) and the distillation
   check into compression_<label>_distill_<model>.json.

After it, `python benchmarks/protocol.py EXP --lam-per-budget` chooses lambda on val at every budget, not only the
middle one (see lam_per_budget_steps): where a budget's lambda changes, its seeds (and scratch-plan on ACSL's new
plans) run again, into compression_<label>_lam-per-budget_<model>.json.

Every step is resumable (rerun the same command after an interruption: finished runs are kept, and the run that
was cut short continues from its last complete epoch; the dense step is skipped once its JSON in benchmarks/results
names the checkpoint with its sha256). Run folders go
under benchmarks/.runs/p12. Each step is a plain command; --dry-run prints them in order. `--jobs N` runs N commands
at a time (1 thread each), every command as soon as the steps it needs have finished (NEEDS: e.g. ModelOpt needs
only the dense model, scratch-plan needs the seeds), each with its own log under benchmarks/.runs/p12/logs.
`--merge-only` merges just the runs finished so far (tables while the rest runs, or after a run cut short).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RUNS = "benchmarks/.runs/p12"
RESULTS = "benchmarks/results"
PY = "python"

EXPERIMENTS = {
    "shb": {"config": "configs/shb_csrnet.yaml", "model": "csrnet", "label": "shanghaitech_b_protocol",
            "epochs": 60, "budgets": ["params=0.5", "params=0.7", "params=0.9"],
            "lams": "3.5,7,10,14"},
    # CamVid's dense model, retrained in session 13 (Intel Xeon) under its own label: the committed camvid and
    # camvid-long tables came from the earlier `plateau` checkpoint, which is gone with its machine, and a retrain
    # on another CPU gives other weights (benchmarks/results/README.md), so the rerun is a new experiment.
    "camvid": {"config": "configs/camvid_segnet.yaml", "model": "segnet", "label": "camvid_protocol",
               "epochs": 75, "dense_label": "plateau_rerun", "budgets": ["params=0.5", "params=0.7", "params=0.85"],
               "lams": "1.75,3.5,7"},
    # SGD at lr 0.1: 4 sparsity epochs give sum lr_t ~ 17, so lam 0.03 / 0.06 / 0.12 is S ~ 0.5 / 1 / 2.
    "cifar": {"config": "configs/cifar_resnet56.yaml", "model": "resnet56", "label": "cifar10_subset_protocol",
              "epochs": 40, "budgets": ["flops=0.5", "flops=0.6", "flops=0.7"],
              "lams": "0.03,0.06,0.12"},
    # CamVid with a sparsity phase 3x longer (20 epochs, sum lr_t ~ 0.97) so that lambda <= ~1 can zero channels:
    # the schedule the full profiles use, where Adam's normalised gradient (at most ~1 per step) can hold a
    # channel the task needs against the proximal shrink and only the weak ones reach zero.
    "camvid-long": {"config": "configs/camvid_segnet.yaml", "model": "segnet", "label": "camvid_protocol_long",
                    "epochs": 75, "dense_label": "plateau_rerun", "budgets": ["params=0.5", "params=0.7", "params=0.85"],
                    "lams": "0.5,1,1.5", "depgraph_lams": "1e-4,1e-3", "sparsity_epochs": 20,
                    "out_dir": f"{RUNS}/long"},  # own run folders: camvid's (same config, method, budget) are kept
    # ShanghaiTech B with a 30-epoch sparsity phase (sum lr_t ~ 0.69 against 0.14 for 6): lam 1 / 1.5 / 2 / 3 is
    # S ~ 0.7 / 1.0 / 1.4 / 2.1, around the range the 6-epoch sweep chose from (lam 7 / 10 there).
    "shb-long": {"config": "configs/shb_csrnet.yaml", "model": "csrnet", "label": "shanghaitech_b_protocol_long",
                 "epochs": 60, "budgets": ["params=0.5", "params=0.7", "params=0.9"],
                 "lams": "1,1.5,2,3", "depgraph_lams": "1e-4,1e-3", "sparsity_epochs": 30,
                 "out_dir": f"{RUNS}/long"},
    # CIFAR on a dense model trained twice as long: 40 -> 80 epochs gained 3.05 test top-1 (session 10), so the
    # 40-epoch model the cifar protocol prunes is not finished. Own dense label, run folders and tables.
    "cifar-80": {"config": "configs/cifar_resnet56.yaml", "model": "resnet56", "label": "cifar10_subset_protocol80",
                 "epochs": 80, "dense_label": "plateau80", "budgets": ["flops=0.5", "flops=0.6", "flops=0.7"],
                 "lams": "0.03,0.06,0.12", "out_dir": f"{RUNS}/dense80"},
}
# The earlier steps a step's commands wait for under --jobs; a step not named here waits for every earlier one, and a
# merge step runs its commands one at a time, in order (a budget's own runs merge first and win).
NEEDS = {"lambda per method": ("dense",), "seeds": ("lambda per method",),
         "scratch-plan (needs ACSL's plans)": ("seeds",), "modelopt": ("dense",),
         "baselines without a sparsity phase (one seed)": ("dense",),
         "distillation vs fine-tuning": ("lambda per method",)}
GAMMA_METHODS = ("acsl", "cap", "slimming")
# docs/ACSL.md's baselines without a sparsity phase, one seed each (the issue lets the baselines other than the
# gamma methods, DepGraph and scratch-plan keep one). BN-Scale is the null hypothesis of sparsity learning: the
# dense model's own |gamma| ranking.
BASELINES = ("bn-scale", "l1", "fpgm", "random")
DEPGRAPH_LAMS = "1e-4,1e-3,1e-2"  # Torch-Pruning's group-norm regulariser strength (its default is 1e-4)
EXTEND_EDGES = 2  # lambda_sweep --extend-edges: values tried past a choice at the grid's edge, per method
SEEDS = (0, 1, 2)


def paths(exp: dict) -> dict:
    cfg_name = Path(exp["config"]).stem
    label, model = exp["label"], exp["model"]
    dense_label = exp.get("dense_label", "plateau")
    return {"dense": f"benchmarks/.runs/{cfg_name}_quick_{dense_label}/dense_best.pt",
            "sweep": lambda m: f"{RUNS}/{label}/sweep_{m}/lambda_sweep_{label}_{model}.json",
            "runs": lambda name: f"{RUNS}/{label}/res_{name}/compression_{label}_{model}.json",
            "distill": f"{RUNS}/{label}/res_distill/compression_{label}_distill_{model}.json"}


def read_sweep(sweep_json: str | Path, method: str) -> dict:
    """A finished sweep of `method` (paths relative to the repository), or a one-line exit saying to run it."""
    path = Path(sweep_json)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        raise SystemExit(f"protocol: {sweep_json} not found; run the lambda sweep of {method} first")
    return json.loads(path.read_text())


def middle_budget(exp: dict) -> str:
    """The budget the main protocol sweeps lambda at."""
    return exp["budgets"][len(exp["budgets"]) // 2]


def chosen_lambda(sweep_json: str | Path, method: str) -> float:
    """The lambda the val split chose for `method` in a finished sweep."""
    chosen = read_sweep(sweep_json, method).get("chosen_on_val") or {}
    if method not in chosen:
        raise SystemExit(f"protocol: {sweep_json} chose no lambda for {method} (every run failed?)")
    return float(chosen[method])


def dense_done(exp: dict, results: Path = REPO / RESULTS) -> bool:
    """The experiment's dense model is trained and on record: a dense_*_<model>_<label>.json in `results` names its
    checkpoint, with the experiment's epochs and that file's sha256. Then the protocol does not run dense.py again
    (which would only reevaluate it and rewrite the tables)."""
    from toolchain.utils.io import sha256_file

    checkpoint = paths(exp)["dense"]
    for f in results.glob(f"dense_*_{exp['model']}_{exp.get('dense_label', 'plateau')}.json"):
        rec = json.loads(f.read_text())
        if (rec.get("checkpoint") == checkpoint and rec.get("epochs") == exp["epochs"] and (REPO / checkpoint).is_file()
                and rec.get("checkpoint_sha256") == sha256_file(REPO / checkpoint)):
            return True
    return False


def fair_recover_epochs(exp: dict) -> int:
    """Recovery epochs for a method without a sparsity phase (ModelOpt, the baselines): the gamma methods' sparsity
    + recovery epochs, so every pruned model trains as long after dense (the protocol's one epoch budget)."""
    from toolchain.config import load_config

    cfg = load_config(REPO / exp["config"], profile="quick")
    return exp.get("sparsity_epochs", cfg.prune.sparsity.epochs) + cfg.prune.recover.epochs


def run_opts(exp: dict, out_dir: str) -> list[str]:
    """The settings every run of an experiment shares: profile, run folders, 1 thread, the epoch budget."""
    sparsity = ["--set", f"prune.sparsity.epochs={exp['sparsity_epochs']}"] if "sparsity_epochs" in exp else []
    return ["--profile", "quick", "--set", f"out_dir={out_dir}", "--set", "train.threads=1",
            "--set", f"train.epochs={exp['epochs']}", *sparsity]


def steps(name: str, lam=chosen_lambda) -> list[tuple[str, list[list[str]]]]:
    """(step name, commands) in order; `lam(sweep_json, method)` gives a method's chosen lambda (called lazily)."""
    exp = EXPERIMENTS[name]
    p = paths(exp)
    runs = exp.get("out_dir", RUNS)

    base = run_opts(exp, runs)
    mid = middle_budget(exp)
    dense = [PY, "benchmarks/dense.py", exp["config"], "--profile", "quick", "--label", exp.get("dense_label", "plateau"),
             "--set", f"train.epochs={exp['epochs']}", "--set", "train.threads=1"]
    out = [("dense", [(dense, lambda: None if dense_done(exp) else [])])]
    sweeps = []
    for method in GAMMA_METHODS + ("depgraph",):
        lams = exp.get("depgraph_lams", DEPGRAPH_LAMS) if method == "depgraph" else exp["lams"]
        sweeps.append([PY, "benchmarks/lambda_sweep.py", exp["config"], *base, "--checkpoint", p["dense"],
                       "--budget", mid, "--methods", method, "--lams", lams, "--extend-edges", str(EXTEND_EDGES),
                       "--dataset", exp["label"], "--results", str(Path(p["sweep"](method)).parent)])
    out.append(("lambda per method", sweeps))

    def comp(method, seeds, results, extra=(), budgets=None, out_dir=runs, dataset=exp["label"]):
        return [PY, "benchmarks/compression.py", exp["config"], *run_opts(exp, out_dir), "--checkpoint", p["dense"],
                "--budgets", ",".join(budgets or exp["budgets"]), "--methods", method, "--seeds", seeds,
                "--modelopt-divisor", "4", "--dataset", dataset, "--results", results, *extra]

    def lam_of(method):
        return lambda: ["--set", f"prune.sparsity.lam={lam(p['sweep'](method), method):g}"]

    seeds = []
    for s in SEEDS:
        for method in GAMMA_METHODS + ("depgraph",):
            seeds.append((comp(method, str(s), str(Path(p["runs"](f"{method}_s{s}")).parent)), lam_of(method)))
    out.append(("seeds", seeds))
    out.append(("scratch-plan (needs ACSL's plans)",
                [comp("scratch-plan", str(s), str(Path(p["runs"](f"scratch-plan_s{s}")).parent)) for s in SEEDS]))
    fair = ("--set", f"prune.recover.epochs={fair_recover_epochs(exp)}")  # no sparsity phase: recovery makes it up
    out.append(("modelopt", [comp("modelopt-fastnas", str(s), str(Path(p["runs"](f"modelopt-fastnas_s{s}")).parent),
                                  fair) for s in SEEDS]))
    out.append(("baselines without a sparsity phase (one seed)",
                [comp(m, "0", str(Path(p["runs"](f"{m}_s0")).parent), fair) for m in BASELINES]))
    distill = comp("acsl", ",".join(map(str, SEEDS)), str(Path(p["distill"]).parent),
                   ("--set", "prune.recover.method=distill"), budgets=[exp["budgets"][-1]],
                   out_dir=f"{runs}/kd", dataset=f"{exp['label']}_distill")  # own run folders: finetune's are kept
    out.append(("distillation vs fine-tuning", [(distill, lam_of("acsl"))]))
    merge = []
    sweep_files = [p["sweep"](m) for m in GAMMA_METHODS + ("depgraph",)]
    merge.append([PY, "benchmarks/lambda_sweep.py", exp["config"], *base, "--checkpoint", p["dense"], "--budget", mid,
                  "--dataset", exp["label"], "--results", RESULTS] + sum((["--merge", f] for f in sweep_files), []))
    names = [f"{m}_s{s}" for s in SEEDS for m in GAMMA_METHODS + ("depgraph", "scratch-plan", "modelopt-fastnas")]
    names += [f"{m}_s0" for m in BASELINES]
    for n in names:
        merge.append([PY, "benchmarks/compression.py", exp["config"], *base, "--dataset", exp["label"],
                      "--results", RESULTS, "--merge", p["runs"](n)])
    merge.append([PY, "benchmarks/compression.py", exp["config"], *base, "--dataset", f"{exp['label']}_distill",
                  "--results", RESULTS, "--merge", p["distill"]])
    out.append(("merge into benchmarks/results", merge))
    return out


def finished_lams(sweep_json: str | Path, method: str) -> list[float]:
    """The lambdas a finished sweep ran without error (grid and edge extensions), sorted; a diverged one is left
    out, since the sparsity phase, and so its divergence, does not depend on the budget."""
    return sorted({float(r["lam"]) for r in read_sweep(sweep_json, method)["runs"]
                   if r.get("method") == method and not r.get("error")})


def lam_per_budget_steps(name: str, dry: bool = False) -> list[tuple[str, list]]:
    """`protocol.py EXP --lam-per-budget`, after the main protocol: a lambda chosen on val at every budget.

    The main protocol sweeps lambda at the middle budget and uses it at every budget. Here each other budget gets
    its own val sweep (of the lambdas that ran at the middle budget, its edge extensions included and a diverged one
    left out; the phase does not depend on the budget, so its cached checkpoints are reused and only selection and
    recovery run). Seeds run at a budget's own lambda only where it differs from the middle one (in their own run
    folders: the middle-lambda runs and the plans scratch-plan read are kept), and scratch-plan follows ACSL's
    changed plans. Everything is merged
    into compression_<label>_lam-per-budget_<model>.json, where the middle-lambda runs fill the unchanged cells.
    `dry` prints every command without reading any sweep."""
    from toolchain.prune.select import parse_budget

    exp = EXPERIMENTS[name]
    p = paths(exp)
    label, runs = exp["label"], exp.get("out_dir", RUNS)
    others = [b for b in exp["budgets"] if b != middle_budget(exp)]
    tag = lambda b: parse_budget(b).tag()  # noqa: E731  the run-folder tag, e.g. params0.5
    pb_runs = f"{runs}/lam_per_budget"
    methods = GAMMA_METHODS + ("depgraph",)
    sweep = lambda m, b: f"{RUNS}/{label}/sweep_{m}_{tag(b)}/lambda_sweep_{label}_{exp['model']}.json"  # noqa: E731
    res = lambda n, b: f"{RUNS}/{label}/res_{n}_{tag(b)}/compression_{label}_{exp['model']}.json"  # noqa: E731
    lam = (lambda f, m: float("nan")) if dry else chosen_lambda
    exists = (lambda f: True) if dry else (lambda f: (REPO / f).is_file())

    def lams(method):  # every lambda the middle budget's sweep finished (the plain grid in a dry run)
        grid = exp.get("depgraph_lams", DEPGRAPH_LAMS) if method == "depgraph" else exp["lams"]
        if dry:
            return lambda: ["--lams", grid]
        return lambda: ["--lams", ",".join(f"{v:g}" for v in finished_lams(p["sweep"](method), method))]

    def changed(method, budget, extra):  # the command's extra arguments, or None where the lambda did not change
        def more():
            here, there = lam(sweep(method, budget), method), lam(p["sweep"](method), method)
            return None if here == there else extra(here)
        return more

    sweep_base = [PY, "benchmarks/lambda_sweep.py", exp["config"], *run_opts(exp, runs), "--checkpoint", p["dense"]]
    sweeps = [(sweep_base + ["--budget", b, "--methods", m, "--dataset", label,
                             "--results", str(Path(sweep(m, b)).parent)], lams(m)) for b in others for m in methods]

    def comp(method, seed, budget):
        return [PY, "benchmarks/compression.py", exp["config"], *run_opts(exp, pb_runs), "--checkpoint", p["dense"],
                "--budgets", budget, "--methods", method, "--seeds", str(seed), "--modelopt-divisor", "4",
                "--dataset", label, "--results", str(Path(res(f"{method}_s{seed}", budget)).parent)]

    seeds = [(comp(m, s, b), changed(m, b, lambda v: ["--set", f"prune.sparsity.lam={v:g}"]))
             for s in SEEDS for m in methods for b in others]
    scratch = [(comp("scratch-plan", s, b), changed("acsl", b, lambda v: [])) for s in SEEDS for b in others]
    dataset = f"{label}_lam-per-budget"
    merge = [sweep_base + ["--budget", b, "--dataset", f"{label}_{tag(b)}", "--results", RESULTS]
             + sum((["--merge", sweep(m, b)] for m in methods), []) for b in others]
    base = [PY, "benchmarks/compression.py", exp["config"], *run_opts(exp, runs), "--dataset", dataset,
            "--results", RESULTS]
    own = [res(f"{m}_s{s}", b) for s in SEEDS for m in methods + ("scratch-plan",) for b in others]
    merge += [(base + ["--merge", f], (lambda f=f: [] if exists(f) else None)) for f in own]  # first: they win
    names = [f"{m}_s{s}" for s in SEEDS for m in methods + ("scratch-plan", "modelopt-fastnas")]
    # the middle-lambda runs fill the other cells; one the main protocol lacks (ModelOpt ran one seed before session
    # 10) is left out, and the table's seeds column shows it
    merge += [(base + ["--merge", p["runs"](n)], (lambda f=p["runs"](n): [] if exists(f) else None)) for n in names]
    return [("lambda at the other budgets", sweeps), ("seeds where a budget's lambda changed", seeds),
            ("scratch-plan where ACSL's plan changed", scratch), ("merge the lambda-per-budget table", merge)]


def render(cmd) -> list[str] | None:
    """A command with its lazily read arguments (a (command, extra) pair: the chosen lambda, the lambdas to sweep)
    filled in, or as is; None where `extra` says the command is not needed (the lambda did not change)."""
    if isinstance(cmd, tuple):
        base, extra = cmd
        more = extra()
        return None if more is None else base + more
    return cmd


def finished_only(plan: list[tuple[str, list]]) -> list[tuple[str, list]]:
    """`--merge-only`: the plan's merge steps, each command keeping only the --merge files that exist (the runs
    finished so far), so the tables show what is done while the rest still runs or after a run cut short. Merging
    again later is safe: a merge adds only the runs (method, budget, seed) the table lacks. A command none of whose
    files exists renders as None (skipped)."""
    def keep(cmd):
        def extra():
            full = render(cmd)
            if full is None:
                return None
            out, have, i = [], False, 0
            while i < len(full):
                if full[i] == "--merge":
                    if (REPO / full[i + 1]).is_file():
                        out += full[i:i + 2]
                        have = True
                    i += 2
                else:
                    out.append(full[i])
                    i += 1
            return out if have else None
        return [], extra
    return [(title, [keep(c) for c in cmds]) for title, cmds in plan if title.startswith("merge")]


def shell_line(cmd: list[str]) -> tuple[list[str], str]:
    """A plan command made runnable (PY -> this interpreter) and its quoted line for logs."""
    cmd = [sys.executable if a == PY else a for a in cmd]
    return cmd, "$ " + " ".join(shlex.quote(a) for a in cmd)


def describe(cmd: list[str]) -> str:
    """A command in a few words for progress lines: script, method(s), seed(s), budget(s)."""
    words = [Path(cmd[1]).stem]
    for flag in ("--methods", "--seeds", "--budgets", "--budget", "--merge"):
        if flag in cmd:
            words.append(f"{flag[2:]} {cmd[cmd.index(flag) + 1]}")
    return ", ".join(words)


def run_parallel(plan: list[tuple[str, list]], jobs: int, log_dir: Path, poll_s: float = 2.0) -> int:
    """Run a plan's commands `jobs` at a time with 1 thread each (OMP_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE).

    A command starts once every step it needs (NEEDS, else every earlier step) has finished, so independent steps
    overlap; its lazily read arguments (a chosen lambda) are filled in at that moment. Each command writes its own
    log in `log_dir`; a progress line is printed as each one starts and ends. After a failure nothing new starts,
    the running commands finish, and the exit code is the failed one's (rerun: finished runs are kept)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    titles = [title for title, _ in plan]
    left = {title: len(cmds) for title, cmds in plan}
    queue = [(n, *item) for n, item in enumerate((t, c) for t, cmds in plan for c in cmds)]
    total, done, failed = len(queue), 0, 0
    running: dict = {}  # Popen -> (title, words, log file, start time)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")

    def ready(title):
        needs = NEEDS.get(title, titles[:titles.index(title)])
        busy = title.startswith("merge") and any(t == title for t, *_ in running.values())
        return not busy and all(left.get(n, 0) == 0 for n in needs)

    while queue or running:
        while not failed and len(running) < jobs:
            item = next((q for q in queue if ready(q[1])), None)
            if item is None:
                break
            queue.remove(item)
            n, title, cmd = item
            try:
                cmd = render(cmd)
            except SystemExit as e:  # a sweep it reads failed or is missing
                print(f"[protocol] {title}: {e}", file=sys.stderr, flush=True)
                failed = 2
                break
            if cmd is None:
                left[title] -= 1
                done += 1
                continue
            words = describe(cmd)
            log = log_dir / f"{n:03d}_{Path(cmd[1]).stem}.log"
            cmd, line = shell_line(cmd)
            with open(log, "w") as fh:
                fh.write(line + "\n")
                fh.flush()
                proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
            running[proc] = (title, words, log, time.monotonic())
            print(f"[protocol] start  {title}: {words} (log {log})", flush=True)
        for proc in [p for p in running if p.poll() is not None]:
            title, words, log, t0 = running.pop(proc)
            left[title] -= 1
            done += 1
            mins = (time.monotonic() - t0) / 60
            state = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log})"
            print(f"[protocol] {done}/{total} {state}  {title}: {words}, {mins:.1f} min", flush=True)
            if proc.returncode and not failed:
                failed = proc.returncode
        if failed and not running:
            break
        if not running and queue and not any(ready(q[1]) for q in queue):
            raise RuntimeError(f"protocol: no step of {sorted({q[1] for q in queue})} can start (NEEDS names a later step?)")
        if running:
            time.sleep(poll_s)
    if failed:
        print("protocol: a command failed; fix it and rerun the same command: finished runs are kept",
              file=sys.stderr)
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--lam-per-budget", action="store_true",
                    help="after the protocol: a lambda chosen on val at every budget, not only the middle one")
    ap.add_argument("--merge-only", action="store_true",
                    help="only merge the runs finished so far into benchmarks/results (the rest are named as skipped)")
    ap.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N commands at a time, 1 thread each, as their steps' inputs become ready (default 1)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.dry_run and argv is None:  # `protocol.py cifar --dry-run | head` ends quietly, as other command-line tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.lam_per_budget:
        plan = lam_per_budget_steps(args.experiment, dry=args.dry_run)
    else:
        plan = steps(args.experiment, lam=(lambda f, m: float("nan")) if args.dry_run else chosen_lambda)
    skipped = ("(skipped: this budget's lambda is the middle budget's; its runs fill the cell)" if args.lam_per_budget
               else "(skipped: the dense model is trained and on record)")
    if args.merge_only:
        plan, skipped = finished_only(plan), "(skipped: none of its runs has finished)"
    if args.jobs > 1 and not args.dry_run and not args.merge_only:
        exp = EXPERIMENTS[args.experiment]
        kind = "lam_per_budget" if args.lam_per_budget else "main"
        return run_parallel(plan, args.jobs, REPO / RUNS / "logs" / f"{exp['label']}_{kind}")
    for title, commands in plan:
        print(f"# {title}", flush=True)
        for cmd in commands:
            cmd = render(cmd)
            if cmd is None:
                print(skipped, flush=True)
                continue
            if args.dry_run:
                line = " ".join(shlex.quote(a) for a in cmd)
                print(line.replace("prune.sparsity.lam=nan", "prune.sparsity.lam=CHOSEN_ON_VAL"))
                continue
            cmd, line = shell_line(cmd)
            print(line, flush=True)
            code = subprocess.call(cmd, cwd=REPO)
            if code:
                print(f"protocol: step '{title}' failed (exit {code}); fix it and rerun: finished runs are kept",
                      file=sys.stderr)
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
