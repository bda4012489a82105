"""NVIDIA ModelOpt FastNAS pruning as a peer method (`modelopt-fastnas`), run and checked like ours.

A user who does not pick this toolchain picks NVIDIA's own: `modelopt.torch.prune` in FastNAS mode
(a FLOPs/params-constrained channel search with hardware-friendly channel multiples, then
fine-tuning). This module runs exactly that search on one of our models and hands back a physically
slim model that the rest of the toolchain treats like any of ours:

- the budget is ours (`params=F` / `flops=F`, F the fraction *removed*), given to ModelOpt the way it
  expresses budgets: `{"params"|"flops": "<100 (1 - F)>%"}` of the original (its FLOPs are torchprofile's
  2 x MACs, the same convolution/linear count as toolchain.models.complexity);
- its score function is the task's val metric (mIoU, -MAE, top-1) on a fixed, seeded subset of the val
  split (`score_images`); BatchNorm statistics are recalibrated by ModelOpt on `calib_batches` seeded
  batches of the train split before every score;
- its channel multiple is ModelOpt's `channel_divisor` (default 32, `MODELOPT_DEFAULT_DIVISOR`) and is
  recorded next to ours (`prune.round_to`);
- the searched, exported module is rebuilt as *our* zoo model + a channel plan (plan.py) + its state
  dict: our channel groups (Torch-Pruning) are cut to the widths ModelOpt chose, every layer's shape is
  checked against ModelOpt's module, the weights are loaded strictly and the rebuilt model must compute
  what ModelOpt's module computes (relative error <= 1e-5). The plan's kept indices are positional
  (ModelOpt sorts channels by importance before slicing, so its weights are already in kept order).
  The result is a standard slim checkpoint: `acsl export`, `acsl build`, `acsl deploy` take it;
- then the same recovery (toolchain.prune.recover, cfg.prune.recover) and the same val/test metrics as
  every other method, and an ONNX export with parity (toolchain.export) of the recovered model.

Installed as an optional extra (`pip install -e '.[modelopt]'` then `pip install --no-deps
nvidia-modelopt==0.47.0 torchprofile==0.0.4`, or `make modelopt`): with dependencies, torchprofile pulls
torchvision, which replaces a CPU torch by a CUDA build. Imported lazily; a missing package is a
MissingDependency naming that command. docs/MODELOPT.md has the details.
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from toolchain.errors import MissingDependency, ToolchainError

METHOD = "modelopt-fastnas"
MODELOPT_VERSION = "0.47.0"
TORCHPROFILE_VERSION = "0.0.4"
MODELOPT_DEFAULT_DIVISOR = 32  # FastNAS's channel_divisor / feature_divisor default (modelopt 0.47)
SCORE_IMAGES = 256             # val images the score function reads (fixed, seeded subset)
CALIB_BATCHES = 8              # train batches ModelOpt recalibrates BatchNorm on before each score
REBUILD_RTOL = 1e-5
INSTALL = (f"pip install -e '.[modelopt]' && pip install --no-deps nvidia-modelopt=={MODELOPT_VERSION} "
           f"torchprofile=={TORCHPROFILE_VERSION}")


def require_modelopt():
    """Import `modelopt.torch.prune` (and check torchprofile); MissingDependency / one-line error otherwise."""
    try:
        with _quiet():
            import modelopt
            import modelopt.torch.prune as mtp
    except ImportError as err:
        missing = getattr(err, "name", None) or "nvidia-modelopt"
        package = "nvidia-modelopt" if missing.split(".")[0] == "modelopt" else missing
        raise MissingDependency(package, f"the {METHOD} pruning method", INSTALL) from None
    try:
        import torchprofile.profile as profile
    except ImportError:
        raise MissingDependency("torchprofile", f"the {METHOD} pruning method (ModelOpt counts FLOPs with it)",
                                INSTALL) from None
    if not hasattr(profile, "handlers"):
        raise ToolchainError(f"ModelOpt {modelopt.__version__} cannot count FLOPs with the installed torchprofile "
                             f"(no 'torchprofile.profile.handlers'); run `pip install --no-deps "
                             f"torchprofile=={TORCHPROFILE_VERSION}`")
    return mtp, modelopt.__version__


@contextlib.contextmanager
def _quiet(log_path: Optional[Path] = None):
    """Send ModelOpt's prints, progress bars and warnings to `log_path` (or nowhere)."""
    import io
    import warnings

    stream = open(log_path, "a") if log_path else io.StringIO()
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield stream
    finally:
        stream.close()


def modelopt_constraint(budget) -> dict:
    """Our budget (fraction removed) as ModelOpt's constraint (upper bound, percent of the original kept)."""
    return {budget.kind: f"{round((1 - budget.value) * 100, 6):g}%"}


def _seeded_subset(dataset, n: int, seed: int) -> list[int]:
    n = min(int(n), len(dataset))
    if n <= 0:
        raise ToolchainError("the modelopt-fastnas score function needs at least one val image; the val split is empty")
    return sorted(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False).tolist())


def _batches(cfg, split: str, n_images: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, seeded subset of `split` (eval transforms), loaded once into memory as batches."""
    from toolchain.data import build_dataset

    dataset = build_dataset(cfg, split, train=False)
    subset = torch.utils.data.Subset(dataset, _seeded_subset(dataset, n_images, seed))
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.train.batch_size, shuffle=False, num_workers=0)
    return [(images, targets) for images, targets in loader]


def make_score_fn(cfg, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """ModelOpt's score_func: the task's val metric on `batches`, signed so that higher is better."""
    from toolchain.train.metrics import make_metric, primary_metric

    name, higher = primary_metric(cfg.task)

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        metric = make_metric(cfg)
        device = next(model.parameters()).device
        for images, targets in batches:
            metric.update(model(images.to(device)).float().cpu(), targets)
        value = float(metric.compute()[name])
        return value if higher else -value
    return score


def _mode(divisor: int) -> list:
    conv = {"*": {"channel_divisor": int(divisor)}}
    feat = {"*": {"feature_divisor": int(divisor)}}
    return [("fastnas", {"nn.Conv2d": conv, "nn.ConvTranspose2d": conv, "nn.BatchNorm2d": feat, "nn.Linear": feat})]


def fastnas_search(model: nn.Module, cfg, budget, *, divisor: int = MODELOPT_DEFAULT_DIVISOR,
                   score_images: int = SCORE_IMAGES, calib_batches: int = CALIB_BATCHES, seed: Optional[int] = None,
                   search_checkpoint: Optional[Path] = None, log_path: Optional[Path] = None) -> tuple[nn.Module, dict]:
    """`mtp.prune(model, mode="fastnas", ...)` on `model` (modified in place) -> (ModelOpt's slim module, record)."""
    from toolchain.prune.groups import example_inputs

    mtp, version = require_modelopt()
    if int(divisor) < 1:
        raise ToolchainError(f"the ModelOpt channel multiple must be a positive integer, got {divisor}")
    seed = cfg.prune.seed if seed is None else seed
    torch.manual_seed(seed)
    score_batches = _batches(cfg, "val", score_images, seed)
    calib = [images for images, _ in _batches(cfg, "train", calib_batches * cfg.train.batch_size, seed)]
    score = make_score_fn(cfg, score_batches)
    constraint = modelopt_constraint(budget)
    dummy = example_inputs(model, tuple(cfg.data.input_size))
    config = {"data_loader": calib, "collect_func": lambda images: images, "max_iter_data_loader": len(calib),
              "score_func": score, "verbose": False}
    if search_checkpoint is not None:
        Path(search_checkpoint).parent.mkdir(parents=True, exist_ok=True)
        config["checkpoint"] = str(search_checkpoint)
    model = model.cpu().eval()
    t0 = time.time()
    try:
        with _quiet(log_path):
            slim, state = mtp.prune(model, mode=_mode(divisor), constraints=constraint, dummy_input=dummy,
                                    config=config)
    except ToolchainError:
        raise
    except Exception as err:  # noqa: BLE001 - ModelOpt's own failures become one line naming the cause
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if "configurable hyperparameters" in text:
            raise ToolchainError(
                f"ModelOpt FastNAS finds nothing to prune in {type(model).__name__} at channel multiple {divisor}: "
                f"no layer has a width it can cut to a smaller multiple of {divisor}; use a smaller multiple "
                "(--modelopt-divisor 8) or a wider model") from None
        where = f" (log: {log_path})" if log_path else ""
        raise ToolchainError(f"ModelOpt FastNAS failed on {type(model).__name__}: {type(err).__name__}: {text}{where}") from None
    # ModelOpt calibrates BatchNorm before it scores a subnet, but exports the chosen one with the running
    # statistics of whichever subnet it calibrated last (val top-1 10% measured on ResNet-56): recalibrate
    # the chosen one the same way, so its val before recovery is what ModelOpt's score saw
    recalibrate_bn(slim, calib)
    best = state.get("best") or {}
    sensitivity = state.get("sensitivity_map") or {}
    record = {
        "modelopt_version": version, "mode": "fastnas", "constraint": constraint, "channel_multiple": int(divisor),
        "modelopt_default_channel_multiple": MODELOPT_DEFAULT_DIVISOR, "score_images": sum(len(t) for _, t in score_batches),
        "calib_images": sum(len(b) for b in calib), "seed": seed,
        "score": "val " + _score_name(cfg), "original_score": _plain(state.get("original_score")),
        "best_constraints": _plain(best.get("constraints")), "searched_hparams": len(sensitivity),
        "score_evaluations": sum(len(v) for v in sensitivity.values()), "bn_recalibrated": True,
        "wall_s": round(time.time() - t0, 2),
    }
    return slim, record


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """BatchNorm running statistics re-estimated on `batches` as ModelOpt does (cumulative average, train mode)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or not batches:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    device = next(model.parameters()).device
    for images in batches:
        model(images.to(device))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)


def _score_name(cfg) -> str:
    from toolchain.train.metrics import primary_metric

    name, higher = primary_metric(cfg.task)
    return name if higher else f"-{name}"


def _plain(value):
    """JSON-safe copy of ModelOpt's search-state numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def rebuild_as_zoo_model(cfg, searched: nn.Module) -> tuple[nn.Module, dict, float]:
    """ModelOpt's exported module -> (our zoo model slimmed by a channel plan with its weights, plan, rel error).

    Our channel groups are cut to the widths ModelOpt kept (positional indices); every layer's shape must
    then equal ModelOpt's, the state dict loads strictly, and both modules must agree on an example batch.
    """
    from toolchain.models import build_from_config
    from toolchain.prune.groups import build_pruning_graph, example_inputs
    from toolchain.prune.plan import layer_shapes
    from toolchain.prune.surgery import relative_error, slim

    target = layer_shapes(searched)
    graph = build_pruning_graph(build_from_config(cfg), tuple(cfg.data.input_size))
    removed = {}
    for group in graph.groups:
        if group.root not in target:
            raise ToolchainError(f"ModelOpt's pruned model has no layer '{group.root}'; it changed the architecture "
                                 "beyond channel widths, which a channel plan cannot describe")
        kept = target[group.root]["out"]
        if kept < group.size:
            removed[group.index] = list(range(kept, group.size))
    plan = slim(graph, removed)
    model = graph.model
    now = layer_shapes(model)
    differ = [name for name in target if now.get(name) != target[name]]
    if differ:
        name = differ[0]
        raise ToolchainError(f"ModelOpt and our channel groups couple channels differently: ModelOpt made layer "
                             f"'{name}' {target[name]['out']}x{target[name]['in']}, our groups give "
                             f"{now.get(name, {}).get('out')}x{now.get(name, {}).get('in')} ({len(differ)} layers differ)")
    state = searched.state_dict()
    own = model.state_dict()
    if set(state) != set(own):
        extra = sorted(set(state) ^ set(own))[:3]
        raise ToolchainError(f"ModelOpt's pruned model has other tensors than ours (e.g. {extra}); it cannot be "
                             "saved as a slim checkpoint")
    model.load_state_dict(state, strict=True)
    inputs = example_inputs(model, tuple(cfg.data.input_size))
    searched.eval()
    model.eval()
    with torch.no_grad():
        error = relative_error(searched(inputs), model(inputs))
    if not error <= REBUILD_RTOL:
        raise ToolchainError(f"the slim model rebuilt from ModelOpt's widths differs from ModelOpt's own module "
                             f"(relative error {error:.2e} > {REBUILD_RTOL:.0e}); a layer ModelOpt slices is not a "
                             "plain channel cut here")
    plan.update({"source": METHOD, "kept_indices": "positional (ModelOpt sorts channels by importance before slicing)"})
    return model, plan, error


def prune_with_modelopt(model: nn.Module, cfg, budget, **search) -> tuple[nn.Module, dict, dict]:
    """Our dense `model` (copied, not modified) -> (physically slim zoo model, channel plan, record).

    `budget` is ours (`Budget` or "params=F" / "flops=F", F removed); `search` goes to `fastnas_search`
    (divisor, score_images, calib_batches, seed, search_checkpoint, log_path).
    """
    from toolchain.prune.select import parse_budget

    budget = parse_budget(budget) if isinstance(budget, str) else budget
    searched, record = fastnas_search(copy.deepcopy(model).cpu(), cfg, budget, **search)
    slim_model, plan, error = rebuild_as_zoo_model(cfg, searched)
    record["rebuild_rel_error"] = error
    return slim_model, plan, record


def check_slim(cfg, dense: nn.Module, slim_model: nn.Module) -> dict:
    """Our checks of a slim result: params/MACs (complexity.py) and a forward at the deployed input size
    giving the dense model's output shape."""
    from toolchain.models.complexity import model_summary
    from toolchain.prune.groups import example_inputs

    summary = model_summary(slim_model, tuple(cfg.data.input_size))
    inputs = example_inputs(dense, tuple(cfg.data.input_size))
    modes = dense.training, slim_model.training
    dense.eval()
    slim_model.eval()
    with torch.no_grad():
        want, got = tuple(dense(inputs).shape), tuple(slim_model(inputs).shape)
    dense.train(modes[0])
    slim_model.train(modes[1])
    if want != got:
        raise ToolchainError(f"ModelOpt's slim model outputs {got} at {tuple(cfg.data.input_size)}, the dense model "
                             f"{want}; an output layer lost channels")
    return {**summary, "output_shape": list(got), "input_size": list(cfg.data.input_size)}


def run_modelopt_prune(cfg, checkpoint: str | Path, *, budget: Optional[str] = None,
                       recover_method: Optional[str] = None, out: Optional[str | Path] = None,
                       evaluate_test: bool = True, divisor: Optional[int] = None, export_check: bool = True,
                       **search) -> dict:
    """`acsl prune --method modelopt-fastnas`: ModelOpt search -> slim zoo model -> our recovery -> metrics.

    Writes the same artifacts and record layout as toolchain.prune.pipeline.run_prune (records/select.json,
    slim.json, recover.json, plan.json, slim_before_recovery.pt, slim.pt = the recovered model to export,
    prune_record.json), plus modelopt.log (ModelOpt's own output) and slim.onnx (+ .json) when
    `export_check`.
    """
    from toolchain.prune.pipeline import (_summary, _val, fraction_removed, prune_run_dir, recover_and_save,
                                          removed_per_layer, metric_on_test)
    from toolchain.prune.recover import RECOVER_METHODS
    from toolchain.prune.select import parse_budget
    from toolchain.train.checkpoint import load_model, save_checkpoint
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.io import sha256_file, write_json

    require_modelopt()  # fail before loading anything
    b = parse_budget(budget or cfg.prune.budget)
    divisor = MODELOPT_DEFAULT_DIVISOR if divisor is None else int(divisor)
    recover_method = recover_method or cfg.prune.recover.method
    if recover_method not in RECOVER_METHODS:
        raise ToolchainError(f"unknown recovery '{recover_method}' (valid: {', '.join(RECOVER_METHODS)})")
    run_dir = prune_run_dir(cfg, METHOD, b, out)
    records = run_dir / "records"
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(cfg.prune.seed)

    dense, _ = load_model(checkpoint, cfg)
    dense_sha = sha256_file(checkpoint)
    before = _summary(dense, cfg)
    metric_name, higher = primary_metric(cfg.task)
    dense_val = _val(dense, cfg)
    teacher = copy.deepcopy(dense).eval()

    # the sensitivity map depends on the dense weights, score and multiple, not on the budget: cached across budgets
    key = f"{dense_sha[:12]}-d{divisor}-n{search.get('score_images', SCORE_IMAGES)}-c" \
          f"{search.get('calib_batches', CALIB_BATCHES)}-s{cfg.prune.seed}"
    search.setdefault("search_checkpoint", cfg.run_dir() / "modelopt" / f"search-{key}.pth")
    search.setdefault("log_path", run_dir / "modelopt.log")
    slim_model, plan, search_record = prune_with_modelopt(dense, cfg, b, divisor=divisor, **search)
    checks = check_slim(cfg, dense, slim_model)
    after = {"params": checks["params"], "macs": checks["macs"]}
    removed = fraction_removed(before, after)
    select_record = {
        "stage": "select", "method": METHOD, "budget": b.as_dict(), **search_record,
        "our_round_to": cfg.prune.round_to, "fraction_removed": removed[b.kind],
        "budget_met": removed[b.kind] >= b.value - 0.005,
        "groups": [{"root": step["root"], "removed": len(step["removed"])} for step in plan["steps"]],
    }
    write_json(records / "select.json", select_record)
    write_json(run_dir / "plan.json", plan)
    save_checkpoint(run_dir / "slim_before_recovery.pt", slim_model, cfg, stage="slim", channel_plan=plan)
    slim_record = {"stage": "slim", "removed_per_layer": removed_per_layer(plan),
                   "rebuild_rel_error": search_record["rebuild_rel_error"], "before": before, "after": after,
                   "fraction_removed": removed, "forward": checks, "val": _val(slim_model, cfg)}
    write_json(records / "slim.json", slim_record)

    recovered, recover_record = recover_and_save(cfg, slim_model, plan, teacher, run_dir, recover_method, metric_name)
    export = None
    if export_check:
        from toolchain.export.exporter import export_model

        result = export_model(copy.deepcopy(recovered), cfg, run_dir / "slim.onnx", channel_plan=plan,
                              checkpoint=str(run_dir / "slim.pt"), log=None)
        export = {"onnx": str(result.onnx_path), "parity_passed": result.parity.passed,
                  "parity": result.parity.summary()}
    test = metric_on_test(recovered, cfg) if evaluate_test else None
    final = {
        "stage": "prune", "method": METHOD, "budget": b.as_dict(), "recover": recover_record.get("chosen", "none"),
        "metric": metric_name, "higher_is_better": higher, "dense": {**before, "val": dense_val},
        "after": after, "fraction_removed": removed, "val": recover_record["val"], "test": test,
        "stages": {"sparsity": None, "select": select_record, "slim": slim_record, "recover": recover_record},
        "sparsity_epochs": 0, "recover_epochs": recover_record.get("epochs", 0),
        "channel_multiple": divisor, "our_round_to": cfg.prune.round_to, "modelopt": search_record,
        "diagnostic": {"val_after_slim": slim_record["val"], "val_after_recovery": recover_record["val"]},
        "export": export, "checkpoint": str(run_dir / "slim.pt"), "dense_checkpoint": str(checkpoint),
        "wall_s": round(time.time() - t_start, 2),
    }
    write_json(run_dir / "prune_record.json", final)
    return final


# ------------------------------------------------------------------------------ benchmarks/compression.py
def peer_fields(record: dict) -> dict:
    """Extra fields of a compression-benchmark row for a modelopt-fastnas record ({} for our methods)."""
    if record.get("method") != METHOD:
        return {}
    search = record.get("modelopt") or {}
    return {"channel_multiple": record.get("channel_multiple"), "our_round_to": record.get("our_round_to"),
            "modelopt_version": search.get("modelopt_version"), "modelopt_constraint": search.get("constraint"),
            "budget_met": (record["stages"]["select"] or {}).get("budget_met"),
            "search_s": search.get("wall_s"), "score_images": search.get("score_images"),
            "onnx_parity_passed": (record.get("export") or {}).get("parity_passed")}


def peer_notes(result: dict) -> list[str]:
    """Table lines saying what the modelopt-fastnas rows are, their channel multiple next to ours."""
    rows = [r for r in result.get("runs", []) if r.get("method") == METHOD and not r.get("error")]
    if not rows:
        return []
    multiples = sorted({r.get("channel_multiple") for r in rows if r.get("channel_multiple") is not None})
    ours = sorted({r.get("our_round_to") for r in rows if r.get("our_round_to") is not None})
    versions = sorted({r.get("modelopt_version") for r in rows if r.get("modelopt_version")})
    missed = [f"{r['budget']['kind']}={r['budget']['value']:g}" for r in rows if r.get("budget_met") is False]
    text = (f"{METHOD}: NVIDIA ModelOpt FastNAS (nvidia-modelopt {', '.join(versions) or '?'}) searched the widths "
            f"under the budget given as its own constraint (percent of the original params / FLOPs kept), score = "
            f"val metric on a fixed val subset, then the same recovery as every method; channel multiple "
            f"{', '.join(map(str, multiples))} (ModelOpt's default {MODELOPT_DEFAULT_DIVISOR}) vs ours "
            f"(prune.round_to) {', '.join(map(str, ours))}.")
    if missed:
        text += f" ModelOpt's result removed less than asked at {', '.join(missed)}."
    return ["", f"Note: {text}"]
