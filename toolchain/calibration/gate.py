"""The INT8 accuracy gate (MLPerf style) with measured per-layer fallback.

1. FP32 and INT8 (Q/DQ) are evaluated through `train.evaluate` with an ONNX Runtime CPU predict
   function on the val split: INT8 must keep >= gate x the FP32 metric (for lower-is-better
   metrics such as MAE: be at most (1 - gate) worse).
2. If it fails, each compute node's sensitivity is *measured*: the drop in output error (normalised
   MSE against FP32 on calibration images) when only that node is kept in FP32.
3. The most sensitive nodes are excluded from quantization one at a time (re-evaluating the gate
   each time) up to `quantize.max_fallback_nodes`. If the gate still fails, INT8 is rejected and
   the caller keeps FP16/FP32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolchain.calibration.calib_set import CalibrationSet
from toolchain.calibration.qdq import compute_nodes, quantize_qdq

SENSITIVITY_IMAGES = 8


@dataclass
class GateStep:
    excluded: list[str]
    int8_metric: float
    passed: bool


@dataclass
class GateResult:
    metric: str
    higher_is_better: bool
    gate: float
    fp32_metric: float
    int8_metric: float
    passed: bool
    int8_onnx: Optional[str]              # the accepted Q/DQ model (None when the gate failed)
    excluded_nodes: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    steps: list[GateStep] = field(default_factory=list)
    split: str = "val"
    images: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED (INT8 rejected, keeping higher precision)"
        kept = f"; kept in FP32: {', '.join(self.excluded_nodes)}" if self.excluded_nodes else ""
        return (f"INT8 gate {verdict}: {self.metric} FP32 {self.fp32_metric:.4f} vs INT8 {self.int8_metric:.4f} "
                f"(needs {'>=' if self.higher_is_better else '<='} {self.threshold():.4f}){kept}")

    def threshold(self) -> float:
        return gate_threshold(self.fp32_metric, self.gate, self.higher_is_better)


def gate_threshold(fp32: float, gate: float, higher_is_better: bool) -> float:
    return fp32 * gate if higher_is_better else fp32 * (2.0 - gate)


def passes_gate(int8: float, fp32: float, gate: float, higher_is_better: bool) -> bool:
    limit = gate_threshold(fp32, gate, higher_is_better)
    return int8 >= limit - 1e-12 if higher_is_better else int8 <= limit + 1e-12


def ort_metric(cfg, onnx_path: str | Path, split: str, max_images: Optional[int]) -> tuple[float, dict]:
    """The primary metric of an ONNX model on `split`, through ONNX Runtime CPU and `train.evaluate`."""
    from toolchain.runtime.base import predict_fn
    from toolchain.runtime.ort_runner import OrtRunner
    from toolchain.train.evaluate import evaluate
    from toolchain.train.metrics import primary_metric

    name, _ = primary_metric(cfg.task)
    with OrtRunner(onnx_path, ["CPUExecutionProvider"]) as runner:
        metrics = evaluate(predict_fn(runner), cfg, split, max_images=max_images)
    return float(metrics[name]), metrics


def _outputs(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    from toolchain.runtime.base import predict_fn
    from toolchain.runtime.ort_runner import OrtRunner

    with OrtRunner(onnx_path, ["CPUExecutionProvider"]) as runner:
        return predict_fn(runner)(images)


def output_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Normalised MSE: mean((got - ref)^2) / mean(ref^2)."""
    ref64 = ref.astype(np.float64)
    return float(np.mean((got.astype(np.float64) - ref64) ** 2) / max(float(np.mean(ref64 ** 2)), 1e-12))


def measure_sensitivity(fp32_onnx: Path, calib: CalibrationSet, method: str, work_dir: Path,
                        candidates: list[str], progress: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Per node: how much the INT8 output error drops when only that node stays FP32 (largest first)."""
    from tqdm import tqdm

    images = calib.arrays[:SENSITIVITY_IMAGES]
    reference = _outputs(fp32_onnx, images)
    probe = work_dir / "sensitivity_probe.onnx"
    quantize_qdq(fp32_onnx, probe, calib, method, cache_dir=work_dir)
    base_error = output_error(_outputs(probe, images), reference)
    rows = []
    for node in tqdm(candidates, desc="INT8 sensitivity", disable=None, leave=False):
        quantize_qdq(fp32_onnx, probe, calib, method, nodes_to_exclude=[node], cache_dir=work_dir)
        error = output_error(_outputs(probe, images), reference)
        rows.append({"node": node, "error_without": error, "gain": base_error - error})
    probe.unlink(missing_ok=True)
    progress(f"measured INT8 sensitivity of {len(rows)} nodes (all-INT8 output error {base_error:.3e})")
    return sorted(rows, key=lambda r: r["gain"], reverse=True)


def run_int8_gate(cfg, fp32_onnx: str | Path, out_dir: str | Path, calib: CalibrationSet, *,
                  method: Optional[str] = None, gate: Optional[float] = None, max_fallback: Optional[int] = None,
                  split: str = "val", max_images: Optional[int] = None, log=print) -> GateResult:
    """Quantize `fp32_onnx`, gate it on `split`, fall back layer by layer; writes `model.int8.qdq.onnx`."""
    from toolchain.train.metrics import primary_metric

    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    method = method or cfg.quantize.method
    gate = cfg.quantize.gate if gate is None else gate
    max_fallback = cfg.quantize.max_fallback_nodes if max_fallback is None else max_fallback
    metric_name, higher = primary_metric(cfg.task)
    int8_path = out_dir / "model.int8.qdq.onnx"
    cache_dir = out_dir / "calibration"

    fp32_value, fp32_metrics = ort_metric(cfg, fp32_onnx, split, max_images)
    first = quantize_qdq(fp32_onnx, int8_path, calib, method, cache_dir=cache_dir)
    notes = [first["note"]] if first["note"] else []
    int8_value, _ = ort_metric(cfg, int8_path, split, max_images)
    result = GateResult(metric_name, higher, gate, fp32_value, int8_value,
                        passes_gate(int8_value, fp32_value, gate, higher), str(int8_path), split=split,
                        images=fp32_metrics.get("images"), notes=notes)
    result.steps.append(GateStep([], int8_value, result.passed))
    if result.passed or max_fallback == 0:
        return _finish(result, int8_path, log)

    log(f"INT8 {metric_name} {int8_value:.4f} misses the gate ({gate:.3g} x FP32 {fp32_value:.4f}); "
        "measuring per-node sensitivity for fallback")
    ranking = measure_sensitivity(fp32_onnx, calib, method, cache_dir, compute_nodes(fp32_onnx), log)
    result.sensitivity = ranking
    excluded: list[str] = []
    for row in ranking[:max_fallback]:
        excluded.append(row["node"])
        quantize_qdq(fp32_onnx, int8_path, calib, method, nodes_to_exclude=excluded, cache_dir=cache_dir)
        value, _ = ort_metric(cfg, int8_path, split, max_images)
        passed = passes_gate(value, fp32_value, gate, higher)
        result.steps.append(GateStep(list(excluded), value, passed))
        log(f"  FP32 fallback for {row['node']}: INT8 {metric_name} {value:.4f}{' -> passes' if passed else ''}")
        result.int8_metric, result.excluded_nodes, result.passed = value, list(excluded), passed
        if passed:
            break
    return _finish(result, int8_path, log)


def _finish(result: GateResult, int8_path: Path, log) -> GateResult:
    if not result.passed:
        result.int8_onnx = None
        result.notes.append(f"INT8 could not pass the gate with {len(result.excluded_nodes)} node(s) in FP32; "
                            "the INT8 model is kept for inspection but not deployed")
        rejected = int8_path.with_name("model.int8.rejected.onnx")
        if int8_path.exists():
            int8_path.replace(rejected)
    log(result.summary())
    return result
