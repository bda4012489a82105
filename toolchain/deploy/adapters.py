"""Bridges from the deploy pipeline to other stages' public entry points.

`prune_pipeline` calls `toolchain.prune.pipeline` when it exists; until then (and as a fallback
for older checkouts) it runs the same steps from the prune package's public pieces: sparsity
learning with the method's regulariser -> saliency -> budgeted selection -> Torch-Pruning surgery
-> recovery fine-tuning, all through `train.fit`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

Log = Callable[[str], None]


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def prune_pipeline(cfg, dense_checkpoint: Path, folder: Path, *, resume: bool, log: Log) -> tuple[Path, dict]:
    """ACSL-prune the dense checkpoint to cfg.prune.budget and recover; returns (slim checkpoint, summary)."""
    pipeline = _module("toolchain.prune.pipeline")
    if pipeline is not None and hasattr(pipeline, "run_prune"):
        final = pipeline.run_prune(cfg, dense_checkpoint, out=folder, evaluate_test=False)
        summary = {"method": final["method"], "budget": final["budget"], "recover": final["recover"],
                   "metric": final["val"], "metric_name": final["metric"],
                   "fraction_removed": final["fraction_removed"], "params_after": final["after"].get("params"),
                   "macs_after": final["after"].get("macs")}
        log(f"  pruned {final['fraction_removed'][final['budget']['kind']]:.1%} of {final['budget']['kind']}, "
            f"recovered ({final['recover']}): val {final['metric']} {final['val']:.4f}")
        return Path(final["checkpoint"]), summary
    return _prune_from_parts(cfg, dense_checkpoint, folder, resume=resume, log=log)


def _prune_from_parts(cfg, dense_checkpoint: Path, folder: Path, *, resume: bool, log: Log) -> tuple[Path, dict]:
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.importance import channel_saliency
    from toolchain.prune.methods import get_method
    from toolchain.prune.select import CostModel, parse_budget, select_channels
    from toolchain.prune.sparsity import make_regulariser
    from toolchain.prune.surgery import prune_model
    from toolchain.train.checkpoint import load_model
    from toolchain.train.trainer import fit

    method = get_method(cfg.prune.method)
    budget = parse_budget(cfg.prune.budget)
    model, _ = load_model(dense_checkpoint, cfg)
    summary: dict = {"method": method.name, "budget": budget.as_dict(), "via": "deploy adapter (prune parts)"}
    if method.sparsity and cfg.prune.sparsity.epochs > 0:
        graph = build_pruning_graph(model, tuple(cfg.data.input_size))
        reg = make_regulariser(method.sparsity, graph, cfg.prune.sparsity, seed=cfg.prune.seed).attach()
        try:
            res = fit(cfg, model, folder / "sparsity", epochs=cfg.prune.sparsity.epochs,
                      lr=cfg.prune.sparsity.lr or cfg.train.lr, after_backward=reg.after_backward,
                      resume=resume, stage="sparsity")
        finally:
            reg.detach()
        summary["sparsity"] = {"metric": res.best_metric, **reg.describe()}
        model, _ = load_model(res.last_path or res.best_path, cfg)
    graph = build_pruning_graph(model, tuple(cfg.data.input_size))
    cost = CostModel(graph)
    selection = select_channels(graph, channel_saliency(method.saliency, graph, cfg.prune.seed), budget,
                                cost.cost_fn(budget.kind), min_channels=cfg.prune.min_channels,
                                min_fraction=cfg.prune.min_fraction, round_to=cfg.prune.round_to)
    slim_model, plan, error = prune_model(graph, selection.removed)
    summary["selection"] = {"fraction_removed": selection.fraction_removed, "kept": selection.kept,
                            "equivalence_rel_error": error}
    log(f"  pruned {selection.fraction_removed:.1%} of {budget.kind} (budget {budget.value:g})")
    rec = cfg.prune.recover
    if rec.method == "none" or rec.epochs == 0:
        from toolchain.train.checkpoint import save_checkpoint

        summary["recover"] = {"skipped": "prune.recover.method is none or epochs is 0"}
        return save_checkpoint(folder / "slim-unrecovered.pt", slim_model, cfg, channel_plan=plan), summary
    res = fit(cfg, slim_model, folder / "recover", epochs=rec.epochs, lr=rec.lr or cfg.train.lr / 10,
              resume=resume, stage="recover", extra_checkpoint={"channel_plan": plan})
    summary.update({"metric": res.best_metric, "metric_name": res.metric_name, "recover_epochs": res.epochs})
    return Path(res.best_path), summary


# -- build ----------------------------------------------------------------------------------------
def build_precision(cfg, onnx_path: Path, target, precision: str, folder: Path, log: Log) -> dict:
    """Build one precision of one ONNX for `target`.

    Returns {"status", "reason", "kind" ("onnx" | "tensorrt-engine" | "build-script"), "artifact",
    "extra_files": {bundle_name: path}, "record"}. Uses `toolchain.build.build` (and the calibration
    package's INT8 gate) where they exist; for ONNX Runtime targets a fallback quantises with
    `onnxruntime.quantization.quantize_static` (Q/DQ, symmetric, per-channel) and gates it here.
    """
    build_pkg = _module("toolchain.build")
    if build_pkg is not None and hasattr(build_pkg, "build"):
        return _build_with_builder(build_pkg, cfg, onnx_path, target, precision, folder, log)
    if target.backend != "onnxruntime":
        return {"status": "skipped", "reason": "the TensorRT builder (toolchain.build) is not available in this "
                "checkout", "kind": None, "artifact": None, "extra_files": {}, "record": {}}
    if precision == "fp32":
        return {"status": "ok", "reason": None, "kind": "onnx", "artifact": onnx_path, "extra_files": {},
                "record": {"builder": "ONNX Runtime runs the ONNX directly"}}
    if precision == "int8":
        return _ort_int8_fallback(cfg, onnx_path, folder, log)
    return {"status": "skipped", "reason": f"{precision} is not supported by ONNX Runtime CPU", "kind": None,
            "artifact": None, "extra_files": {}, "record": {}}


def _build_with_builder(build_pkg, cfg, onnx_path, target, precision, folder, log) -> dict:
    from toolchain.errors import ToolchainError

    try:
        result = build_pkg.build(cfg, onnx_path, target, precision=precision, out_dir=folder)
    except ToolchainError as err:
        return {"status": "failed", "reason": str(err), "kind": None, "artifact": None, "extra_files": {},
                "record": {}}
    record = dict(result.record or {})
    artifact = Path(result.artifact) if result.artifact else None
    extra = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and _bundle_worthy(p, artifact)}
    status = record.get("status", "ok")
    if not getattr(result, "engine_built", True) and target.backend == "tensorrt":
        return {"status": "not-built", "kind": "build-script",
                "reason": record.get("reason") or "TensorRT is not installed here: run build_engine.sh on the device",
                "artifact": None, "extra_files": extra, "record": record}
    kind = "tensorrt-engine" if artifact is not None and artifact.suffix in (".engine", ".plan") else "onnx"
    built = record.get("precision")
    if built and built != precision:  # e.g. INT8 rejected by the accuracy gate: not an INT8 variant at all
        gate = (record.get("int8") or {}).get("gate") or {}
        if gate:
            kept = len(gate.get("excluded_nodes") or [])
            why = (f"INT8 failed the accuracy gate on {gate['split']}: {gate['metric']} {gate['int8_metric']:.2f} vs "
                   f"FP32 {gate['fp32_metric']:.2f}, needs {gate['gate']:g}x" +
                   (f", even with {kept} most sensitive nodes kept in FP32" if kept else ""))
        else:
            why = "; ".join(record.get("notes", [])) or f"built {built} instead"
        return {"status": "failed", "reason": f"{why}; the {built} variant is deployed instead",
                "kind": kind, "artifact": None, "extra_files": extra, "record": record}
    return {"status": status if status in ("ok", "failed", "skipped") else "ok", "reason": record.get("reason"),
            "kind": kind, "artifact": artifact, "extra_files": extra, "record": record}


_BUNDLE_NAMES = ("build.json", "build_engine.sh", "trtexec.txt", "ort_calibration_ranges.json", "calibration_set.json")
_BUNDLE_SUFFIXES = (".qdq.onnx", ".cache", ".engine.json", ".plan.json")


def _bundle_worthy(path: Path, artifact) -> bool:
    """Build outputs a bundle carries: record, Q/DQ ONNX, calibration cache, scripts, engine sidecar."""
    if artifact is not None and path.resolve() == Path(artifact).resolve():
        return False
    return path.name in _BUNDLE_NAMES or path.name.endswith(_BUNDLE_SUFFIXES)


def _ort_int8_fallback(cfg, onnx_path: Path, folder: Path, log: Log) -> dict:
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from toolchain.data import calibration_arrays

    images = calibration_arrays(cfg, cfg.quantize.calib_images, cfg.quantize.calib_seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(images)

        def get_next(self):
            nxt = next(self._it, None)
            return None if nxt is None else {"input": nxt[None].astype(np.float32)}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.quantize.method]
    out = Path(folder) / f"{Path(onnx_path).stem}.int8.qdq.onnx"
    from toolchain.utils.io import atomic_path

    with atomic_path(out) as tmp:
        quantize_static(str(onnx_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    gate = int8_gate(cfg, onnx_path, out)
    log(f"  INT8 gate: {gate['summary']}")
    status = "ok" if gate["passed"] else "failed"
    return {"status": status, "reason": None if gate["passed"] else f"INT8 gate failed: {gate['summary']}",
            "kind": "onnx", "artifact": out if gate["passed"] else None, "extra_files": {},
            "record": {"builder": "onnxruntime.quantization.quantize_static (QDQ, symmetric, per-channel)",
                       "calib_images": len(images), "gate": gate}}


def int8_gate(cfg, fp32_onnx: Path, int8_onnx: Path) -> dict:
    """INT8 must keep at least cfg.quantize.gate of the FP32 metric (evaluated through ONNX Runtime)."""
    from toolchain.runtime import OrtRunner, predict_fn
    from toolchain.train.evaluate import evaluate
    from toolchain.train.metrics import primary_metric

    name, higher = primary_metric(cfg.task)
    scores = {}
    for label, path in (("fp32", fp32_onnx), ("int8", int8_onnx)):
        with OrtRunner(path) as runner:
            scores[label] = float(evaluate(predict_fn(runner), cfg, "val", max_images=cfg.deploy.eval_images)[name])
    keep = cfg.quantize.gate
    if higher:
        passed = scores["int8"] >= keep * scores["fp32"]
    else:
        passed = scores["int8"] <= scores["fp32"] / keep
    return {"metric": name, "fp32": scores["fp32"], "int8": scores["int8"], "gate": keep, "passed": passed,
            "summary": f"{name} fp32 {scores['fp32']:.4f} -> int8 {scores['int8']:.4f} "
                       f"({'pass' if passed else 'FAIL'}, gate keeps {keep:.0%})"}
