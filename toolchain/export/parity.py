"""Numerical parity between the PyTorch model and its ONNX export (run through ONNX Runtime CPU).

Definitions (all computed per input set, the worst set decides):
- relative error = max|onnx - torch| / max(max|torch|, 1e-6): the largest absolute deviation
  scaled by the output's dynamic range, so it is meaningful for logits and for tiny densities
  alike (an elementwise ratio explodes where torch is near zero). FP32 must stay <= 1e-4.
- segmentation: judged on what users see, the fraction of pixels whose argmax class agrees (>= 99.9%),
  plus a logit tolerance that a discontinuous op cannot trip by chance: the 90th percentile over
  pixels of the per-pixel relative error (max over classes) must be <= 1e-4. SegNet's argmax
  unpooling (and any max/sign/ReLU kink) is discontinuous: a value within float32 rounding of a
  tie lands on different sides in torch and ONNX Runtime and moves whole values in a few local
  regions (measured: max relative error 7e-2 with 100% argmax agreement). A wrong export (an op
  with other semantics, a lost precision, a swapped channel) moves nearly every pixel, so the
  percentile still catches it; the max is reported, not judged.
- counting: per image |count_onnx - count_torch| / max(|count_torch|, 1), <= 0.1% (a count is
  the density map's sum; below one head the error is taken as absolute).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

from toolchain.errors import ToolchainError

REL_TOL_FP32 = 1e-4
ARGMAX_AGREEMENT_MIN = 0.999
SEG_PIXEL_QUANTILE = 0.9
COUNT_REL_TOL = 1e-3
_EPS = 1e-6


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), _EPS))


def pixel_error_quantile(got: np.ndarray, ref: np.ndarray, q: float = SEG_PIXEL_QUANTILE) -> float:
    """q-quantile over pixels of max-over-classes |got - ref|, scaled like relative_error (N x K x H x W)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    per_pixel = np.max(np.abs(got - ref), axis=1) / max(float(np.max(np.abs(ref))), _EPS)
    return float(np.quantile(per_pixel, q))


def argmax_agreement(got: np.ndarray, ref: np.ndarray, axis: int = 1) -> float:
    return float(np.mean(np.argmax(got, axis=axis) == np.argmax(ref, axis=axis)))


def count_error(got: np.ndarray, ref: np.ndarray) -> float:
    n = ref.shape[0]
    c_got = np.asarray(got, dtype=np.float64).reshape(n, -1).sum(1)
    c_ref = np.asarray(ref, dtype=np.float64).reshape(n, -1).sum(1)
    return float(np.max(np.abs(c_got - c_ref) / np.maximum(np.abs(c_ref), 1.0)))


@dataclass
class InputParity:
    name: str                                  # "random" or "real"
    shape: list
    relative_error: float
    max_abs_error: float
    argmax_agreement: Optional[float] = None
    count_error: Optional[float] = None
    pixel_error_q90: Optional[float] = None    # segmentation: the judged logit statistic
    failures: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    task: str
    tolerance: dict
    results: list[InputParity]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(not r.failures for r in self.results)

    @property
    def worst(self) -> InputParity:
        failing = [r for r in self.results if r.failures] or self.results
        return max(failing, key=lambda r: r.relative_error)

    def summary(self) -> str:
        parts = []
        for r in self.results:
            extra = ""
            if r.pixel_error_q90 is not None:
                extra += f" (p90 pixel {r.pixel_error_q90:.2e})"
            if r.argmax_agreement is not None:
                extra += f", argmax agreement {r.argmax_agreement:.4%}"
            if r.count_error is not None:
                extra += f", count error {r.count_error:.2e}"
            parts.append(f"{r.name} {tuple(r.shape)}: rel err {r.relative_error:.2e}{extra}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "task": self.task, "tolerance": self.tolerance,
                "results": [asdict(r) for r in self.results], "notes": self.notes}


def compare(name: str, got: np.ndarray, ref: np.ndarray, task: str, rel_tol: float = REL_TOL_FP32) -> InputParity:
    rel = relative_error(got, ref)
    result = InputParity(name, list(ref.shape), rel,
                         float(np.max(np.abs(got.astype(np.float64) - ref))) if got.shape == ref.shape else float("inf"))
    if got.shape != ref.shape:
        result.failures.append(f"output shape {list(got.shape)} != torch {list(ref.shape)}")
        return result
    if task == "segmentation" and ref.ndim == 4:
        result.pixel_error_q90 = pixel_error_quantile(got, ref)
        if result.pixel_error_q90 > rel_tol:
            result.failures.append(f"90th-percentile pixel relative error {result.pixel_error_q90:.3e} > {rel_tol:.0e}")
    elif rel > rel_tol:
        result.failures.append(f"relative error {rel:.3e} > {rel_tol:.0e}")
    if task == "segmentation":
        result.argmax_agreement = argmax_agreement(got, ref)
        if result.argmax_agreement < ARGMAX_AGREEMENT_MIN:
            result.failures.append(f"argmax agreement {result.argmax_agreement:.4%} < {ARGMAX_AGREEMENT_MIN:.1%}")
    elif task == "counting":
        result.count_error = count_error(got, ref)
        if result.count_error > COUNT_REL_TOL:
            result.failures.append(f"count error {result.count_error:.3e} > {COUNT_REL_TOL:.0e}")
    elif task == "classification":
        result.argmax_agreement = argmax_agreement(got, ref)
    return result


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()


def check_parity(model: torch.nn.Module, onnx_path, inputs: dict[str, np.ndarray], task: str,
                 rel_tol: float = REL_TOL_FP32, notes: Optional[list[str]] = None) -> ParityReport:
    """Run each named input batch through torch and through ONNX Runtime CPU and compare."""
    from toolchain.runtime.base import predict_fn
    from toolchain.runtime.ort_runner import OrtRunner

    results = []
    with OrtRunner(onnx_path, ["CPUExecutionProvider"]) as runner:
        predict = predict_fn(runner)
        for name, batch in inputs.items():
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            results.append(compare(name, predict(batch), torch_outputs(model, batch), task, rel_tol))
    tolerance = {"relative_error": rel_tol if task != "segmentation" else None,
                 "pixel_error_q90": rel_tol if task == "segmentation" else None, "argmax_agreement_min": ARGMAX_AGREEMENT_MIN if task == "segmentation"
                 else None, "count_error": COUNT_REL_TOL if task == "counting" else None}
    return ParityReport(task, tolerance, results, list(notes or []))


def require_parity(report: ParityReport, what: str) -> None:
    if not report.passed:
        worst = report.worst
        raise ToolchainError(f"parity check failed for {what}: worst tensor 'output' on {worst.name} input "
                             f"{tuple(worst.shape)}: {'; '.join(worst.failures)} (max abs error "
                             f"{worst.max_abs_error:.3e}); the ONNX was not written")
