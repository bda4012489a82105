"""The `acsl prune` stages: sparsity learning -> selection -> physical removal -> recovery.

Each stage writes its artifact and a JSON record under the run folder (atomically):

    <run>/records/sparsity.json  select.json  slim.json  recover.json   and  <run>/prune_record.json
    <run>/plan.json  slim.pt (the recovered slim model: the one to export; zoo name + channel_plan + state dict)
    <run>/slim_before_recovery.pt (right after surgery, before recovery: for analysis, not for export)

A record holds what was removed per layer, params/MACs before and after (toolchain.models.complexity),
the val metric after the stage and the time taken. The sparsity-learning checkpoint is cached under
`<out_dir>/<name>/sparsity/<method>-<key>/sparse.pt`, keyed by method + sparsity hyperparameters +
training settings + the dense checkpoint's sha256, so one sparsity run serves several budgets.
"""
from __future__ import annotations

import copy
import resource
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.prune.methods import Method, get_method
from toolchain.prune.select import Budget, parse_budget
from toolchain.utils.io import sha256_file, sha256_json, write_json


def _summary(model: nn.Module, cfg) -> dict:
    from toolchain.models.complexity import model_summary

    return model_summary(model, tuple(cfg.data.input_size))


def _val(model: nn.Module, cfg, split: str = "val") -> Optional[float]:
    from toolchain.train.evaluate import evaluate
    from toolchain.train.metrics import primary_metric

    name, _ = primary_metric(cfg.task)
    return float(evaluate(model, cfg, split)[name])


def _peak_memory_mb() -> dict:
    out = {"cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def sparsity_key(cfg, method: Method, dense_sha256: str) -> str:
    """Cache key of a sparsity-learning run: method + hyperparameters + training settings + dense weights."""
    t = cfg.train
    return sha256_json({
        "method": method.name, "sparsity": cfg.prune.sparsity.model_dump(mode="json"), "dense": dense_sha256,
        "train": {"batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum,
                  "weight_decay": t.weight_decay, "schedule": t.schedule, "seed": t.seed},
        "data": cfg.data.model_dump(mode="json"), "prune_seed": cfg.prune.seed,
    })[:16]


def sparsity_stage(cfg, model: nn.Module, method: Method, dense_sha256: str) -> tuple[nn.Module, dict]:
    """Run (or reuse) the sparsity-learning phase of `method` on `model`; returns (model, record)."""
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.sparsity import SparsityDiverged, make_regulariser
    from toolchain.train.checkpoint import load_model, save_checkpoint
    from toolchain.train.trainer import NonFiniteLoss, fit

    s = cfg.prune.sparsity
    key = sparsity_key(cfg, method, dense_sha256)
    run_dir = cfg.run_dir() / "sparsity" / f"{method.name}-{key}"
    artifact = run_dir / "sparse.pt"
    record_path = run_dir / "sparsity_record.json"
    if artifact.is_file() and record_path.is_file():
        sparse, _ = load_model(artifact, cfg)
        from toolchain.utils.io import read_json

        record = read_json(record_path)
        record["reused"] = True
        return sparse, record
    t0 = time.time()
    graph = build_pruning_graph(model, tuple(cfg.data.input_size))
    from toolchain.prune.select import resolve_round_to  # prune.round_to may name the target's multiple
    prune_cfg = cfg.prune.model_copy(update={"round_to": resolve_round_to(cfg.prune.round_to, cfg.deploy.target)[0]})
    regulariser = make_regulariser(method.sparsity, graph, s, seed=cfg.prune.seed, prune_cfg=prune_cfg).attach()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        result = fit(cfg, model, run_dir, epochs=s.epochs, lr=s.lr or cfg.train.lr,
                     after_backward=regulariser.after_backward, after_step=regulariser.after_step,
                     stage="sparsity", resume=True)
    except (NonFiniteLoss, SparsityDiverged) as err:
        raise ToolchainError(
            f"{method.name} sparsity learning diverged ({str(err).split(';')[0]}); "
            + (f"the last good checkpoint is kept at {run_dir / 'sparsity_last.pt'}; "
               if (run_dir / "sparsity_last.pt").is_file() else "no sparsity checkpoint was written; ")
            + f"lower prune.sparsity.lam (now {s.lam:g}) or prune.sparsity.lr") from None
    finally:
        regulariser.detach()
    record = {
        "stage": "sparsity", "method": method.name, "key": key, "hyperparameters": s.model_dump(mode="json"),
        "dense_sha256": dense_sha256, "epochs": s.epochs, "val": result.best_metric if s.epochs else None,
        "val_last": result.history[-1].get("val") if result.history else None,
        "epoch_s": [h.get("epoch_s") for h in result.history], "memory": _peak_memory_mb(),
        "strengths": regulariser.describe(), "wall_s": round(time.time() - t0, 2), "reused": False,
        "checkpoint": str(artifact),
    }
    save_checkpoint(artifact, model, cfg, stage="sparsity", epoch=s.epochs)
    write_json(record_path, record)
    return model, record


def removed_per_layer(plan: dict) -> dict:
    from toolchain.prune.plan import plan_summary

    return {name: {"out": v["out"], "kept_out": v["kept_out"], "removed_out": v["out"] - v["kept_out"]}
            for name, v in plan_summary(plan).items() if v["out"] != v["kept_out"]}


def select_and_slim(cfg, model: nn.Module, method: Method, budget: Budget) -> tuple[nn.Module, dict, dict, dict]:
    """Selection + surgery on `model` (in place). Returns (slim model, plan, select record, slim record)."""
    from toolchain.models.contract import output_layer_names
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.importance import channel_saliency
    from toolchain.prune.select import CostModel, budget_cost, latency_report, resolve_round_to, select_channels
    from toolchain.prune.surgery import prune_model

    p = cfg.prune
    t0 = time.time()
    graph = build_pruning_graph(model, tuple(cfg.data.input_size))
    cost = CostModel(graph)
    saliency = channel_saliency(method.saliency, graph, seed=p.seed, group_reduction=p.group_reduction)
    round_to, round_record = resolve_round_to(p.round_to, cfg.deploy.target)
    cost_fn, saliency, latency = budget_cost(cfg, graph, cost, budget, saliency, round_to)
    selection = select_channels(graph, saliency, budget, cost_fn, min_channels=p.min_channels,
                                min_fraction=p.min_fraction, round_to=round_to)
    if latency is not None:  # measure the plan, recalibrate the table's prediction, select again
        reselect = lambda: select_channels(graph, saliency, budget, cost_fn, min_channels=p.min_channels,  # noqa: E731
                                           min_fraction=p.min_fraction, round_to=round_to)
        selection = calibrated_latency_selection(model, graph, selection, reselect, cost_fn, budget, latency)
    select_record = {
        "stage": "select", "method": method.name, "saliency": method.saliency, "budget": budget.as_dict(),
        "group_reduction": p.group_reduction if method.saliency == "bn-scale" else None,
        "output_layers": dict(zip(("names", "traced"), output_layer_names(model, tuple(cfg.data.input_size)))),
        "groups": [{"root": g.root, "channels": g.size, "kept": k, "bns": [s.name for s in g.bns]}
                   for g, k in zip(graph.groups, selection.kept)],
        "estimated_fraction_removed": selection.fraction_removed, "min_channels": p.min_channels,
        "min_fraction": p.min_fraction, "round_to": round_to, "round_to_source": round_record["source"],
        "latency": latency,
        "wall_s": round(time.time() - t0, 2),
    }
    t1 = time.time()
    slim, plan, error = prune_model(graph, selection.removed, verify=True)
    latency_report(latency, selection)
    slim_record = {"stage": "slim", "removed_per_layer": removed_per_layer(plan), "equivalence_rel_error": error,
                   "wall_s": round(time.time() - t1, 2)}
    return slim, plan, select_record, slim_record


LATENCY_CALIBRATION_STEPS = 3
LATENCY_TOLERANCE = 0.05


def calibrated_latency_selection(model: nn.Module, graph, selection, reselect, latency_model, budget: Budget,
                                 record: dict):
    """A latency plan checked against the clock: slim a copy of `model` to the selection and time it against
    the dense model in alternating rounds (ONNX Runtime, the table's threads); its latency is that ratio x the
    table's dense ms, so a busy host slows both alike. While it misses the budget by more than
    LATENCY_TOLERANCE, refit the prediction (`LatencyModel.calibrate`: through the dense point and this
    measurement, then through the last two measured plans, a secant) and select again (at most
    LATENCY_CALIBRATION_STEPS measurements; NetAdapt-style measured feedback). Keeps the measured plan nearest
    the budget from below. Each step is recorded in record["calibration"], the kept one in
    record["calibration_chosen"]."""
    from toolchain.profile.layer_latency import relative_ms
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.surgery import prune_model

    steps = record.setdefault("calibration", [])
    dense_ms = latency_model.table.dense_model_ms
    tried: list[tuple[float, object]] = []  # (measured ms, selection)
    for step in range(LATENCY_CALIBRATION_STEPS):
        trial = copy.deepcopy(model)
        trial_slim, _, _ = prune_model(build_pruning_graph(trial, graph.input_size), selection.removed, verify=False)
        ratio, plan_now, dense_now = relative_ms(model, trial_slim, tuple(graph.input_size), threads=record["threads"])
        measured = ratio * dense_ms
        steps.append({"predicted_ms": selection.cost_after, "measured_ms": measured, "ratio_to_dense": ratio,
                      "plan_ms_now": plan_now, "dense_ms_now": dense_now})
        print(f"[select] latency plan {step + 1}: predicted {selection.cost_after:.4f} ms, measured {ratio:.3f} x "
              f"dense = {measured:.4f} ms (budget {budget.value:g} ms; now {plan_now:.3f} vs dense {dense_now:.3f} ms)",
              flush=True)
        tried.append((measured, selection))
        if abs(measured - budget.value) <= LATENCY_TOLERANCE * budget.value or step + 1 == LATENCY_CALIBRATION_STEPS:
            break
        # secant: through the last two measured plans once there are two (closer to the budget than dense)
        previous = (tried[-2][1].kept, tried[-2][0]) if len(tried) > 1 else None
        if not (latency_model.calibrate(selection.kept, measured, previous)
                or (previous is not None and latency_model.calibrate(selection.kept, measured))):
            break
        try:
            selection = reselect()
        except ToolchainError as err:
            raise ToolchainError(f"{err} (after timing {len(tried)} plan(s) against the dense model: "
                                 + ", ".join(f"{m:.3g} ms" for m, _ in tried) + ")") from None
    # the measured plan closest to the budget from below (within the tolerance); else the fastest one
    fits = [t for t in tried if t[0] <= budget.value * (1 + LATENCY_TOLERANCE)]
    measured, chosen = max(fits, key=lambda t: t[0]) if fits else min(tried, key=lambda t: t[0])
    record["calibration_chosen"] = next(i for i, t in enumerate(tried) if t[1] is chosen)
    return chosen


def prune_run_dir(cfg, method: str, budget: Budget, out: Optional[str | Path] = None) -> Path:
    return Path(out) if out else cfg.run_dir() / "prune" / f"{method}_{budget.tag()}"


def fraction_removed(before: dict, after: dict) -> dict:
    """{"params", "flops"}: the fraction of the dense model's parameters / MACs a slim model removed."""
    return {"params": 1 - after["params"] / before["params"], "flops": 1 - after["macs"] / before["macs"]}


def recover_and_save(cfg, slim: nn.Module, plan: dict, teacher: nn.Module, run_dir: Path, recover_method: str,
                     metric_name: str) -> tuple[nn.Module, dict]:
    """Recover the slim model, record it (records/recover.json) and save it as <run>/slim.pt, the model to export."""
    from toolchain.prune.recover import recover
    from toolchain.train.checkpoint import save_checkpoint

    t_rec = time.time()
    recovered, record = recover(cfg, slim, plan, teacher, run_dir, recover_method)
    record.update({"stage": "recover", "val": _val(recovered, cfg), "wall_s": round(time.time() - t_rec, 2)})
    write_json(run_dir / "records" / "recover.json", record)
    save_checkpoint(run_dir / "slim.pt", recovered, cfg, stage="pruned", channel_plan=plan,
                    metric={metric_name: record["val"]})
    return recovered, record


def metric_on_test(model: nn.Module, cfg) -> Optional[float]:
    """The primary metric on the test split, or None when the dataset has no test split."""
    try:
        return _val(model, cfg, "test")
    except ToolchainError:
        return None


def run_prune(cfg, checkpoint: str | Path, *, method: Optional[str] = None, budget: Optional[str] = None,
              recover_method: Optional[str] = None, out: Optional[str | Path] = None,
              evaluate_test: bool = True) -> dict:
    """The whole `acsl prune` flow; returns the final record (also written to <run>/prune_record.json)."""
    from toolchain.prune.recover import RECOVER_METHODS
    from toolchain.train.checkpoint import load_model, save_checkpoint
    from toolchain.train.metrics import primary_metric

    m = get_method(method or cfg.prune.method)
    b = parse_budget(budget or cfg.prune.budget)
    recover_method = recover_method or cfg.prune.recover.method
    if recover_method not in RECOVER_METHODS:
        raise ToolchainError(f"unknown recovery '{recover_method}' (valid: {', '.join(RECOVER_METHODS)})")
    run_dir = prune_run_dir(cfg, m.name, b, out)
    records = run_dir / "records"
    t_start = time.time()
    torch.manual_seed(cfg.prune.seed)

    dense, _ = load_model(checkpoint, cfg)  # raises a one-line error when the architecture does not match
    dense_sha = sha256_file(checkpoint)
    before = _summary(dense, cfg)
    metric_name, higher = primary_metric(cfg.task)
    dense_val = _val(dense, cfg)
    teacher = copy.deepcopy(dense).eval()
    model = dense

    sparsity_record = None
    if m.sparsity and cfg.prune.sparsity.epochs > 0:
        model, sparsity_record = sparsity_stage(cfg, model, m, dense_sha)
        sparsity_record = dict(sparsity_record, val_after=_val(model, cfg))
        write_json(records / "sparsity.json", sparsity_record)

    model = model.cpu()
    from toolchain.prune.diagnostics import dead_channels, format_diagnostic, gamma_stats, prunable_gammas, \
        slim_diagnostic, write_gamma_histogram

    gammas = prunable_gammas(model, cfg.data.input_size)  # what selection ranks (diagnostic, issue 12)
    slim, plan, select_record, slim_record = select_and_slim(cfg, model, m, b)
    after = _summary(slim, cfg)
    removed = fraction_removed(before, after)
    select_record["fraction_removed"] = removed.get(b.kind)
    write_json(records / "select.json", select_record)
    write_json(run_dir / "plan.json", plan)
    save_checkpoint(run_dir / "slim_before_recovery.pt", slim, cfg, stage="slim", channel_plan=plan)
    slim_record.update({"before": before, "after": after, "fraction_removed": removed, "val": _val(slim, cfg)})
    write_json(records / "slim.json", slim_record)
    strengths = (sparsity_record or {}).get("strengths") or {}
    histogram = write_gamma_histogram(
        gammas, run_dir / "gamma_hist.png", title=f"{m.name} {b.tag()}: |gamma| "
        + (f"after {strengths.get('mode', '')} sparsity, lam {strengths.get('lam', 0):g}" if sparsity_record else "(dense)"))
    diagnostic = slim_diagnostic(
        gamma_stats(gammas), metric=metric_name, higher_is_better=higher, val_dense=dense_val,
        val_after_sparsity=sparsity_record["val_after"] if sparsity_record else None, val_after_slim=slim_record["val"],
        histogram=histogram.name if histogram else None, sparsity=strengths or None,
        dead_kept=dead_channels(slim, cfg.data.input_size))
    print(format_diagnostic(diagnostic, m.name), flush=True)

    recovered, recover_record = recover_and_save(cfg, slim, plan, teacher, run_dir, recover_method, metric_name)
    diagnostic["val_after_recovery"] = recover_record["val"]
    test = metric_on_test(recovered, cfg) if evaluate_test else None
    final = {
        "stage": "prune", "method": m.name, "budget": b.as_dict(), "recover": recover_record.get("chosen", "none"),
        "metric": metric_name, "higher_is_better": higher, "dense": {**before, "val": dense_val},
        "after": after, "fraction_removed": removed, "val": recover_record["val"], "test": test,
        "stages": {"sparsity": sparsity_record, "select": select_record, "slim": slim_record,
                   "recover": recover_record},
        "sparsity_epochs": sparsity_record["epochs"] if sparsity_record else 0,
        "recover_epochs": recover_record.get("epochs", 0), "diagnostic": diagnostic,
        "checkpoint": str(run_dir / "slim.pt"),
        "dense_checkpoint": str(checkpoint), "wall_s": round(time.time() - t_start, 2),
    }
    write_json(run_dir / "prune_record.json", final)
    return final
