"""Compare two runners output by output, Polygraphy-style (`polygraphy run --onnxrt --trt` checks
`|a - b| <= atol + rtol * |b|` element-wise and reports the worst element).

Tolerances depend on the precision of the candidate: `atol` is relative to the reference output's
peak magnitude (random-weight and trained models have very different output scales), `rtol` is
element-wise. Used by `acsl compare A B` (torch checkpoint / ONNX / engine) and by `acsl build`
(FP16 ONNX vs FP32 ONNX on ONNX Runtime before the FP16 engine is built; engine vs ONNX where an
engine can run).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolchain.errors import ToolchainError

# precision -> (atol as a fraction of max |reference|, rtol)
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (3e-2, 2e-2), "int8": (1e-1, 1e-1)}


@dataclass
class TensorDiff:
    name: str
    shape: list
    max_abs: float
    max_rel: float
    peak_ref: float
    atol: float
    rtol: float
    violations: int
    worst_index: list
    worst_values: list          # [candidate, reference] at worst_index
    passed: bool
    error_stat: str = "elementwise"   # or "mean": Polygraphy's --check-error-stat
    mean_abs: float = 0.0

    def format(self) -> str:
        verdict = "ok" if self.passed else f"FAILED ({self.violations} element(s) out of tolerance)"
        if self.error_stat == "mean":
            verdict = (f"mean |diff| {self.mean_abs:.3e}: " + ("ok" if self.passed else "FAILED") +
                       f" ({self.violations} element(s) outside the element-wise tolerance)")
        return (f"{self.name} {tuple(self.shape)}: max |diff| {self.max_abs:.3e} (peak |ref| {self.peak_ref:.3e}), "
                f"max rel {self.max_rel:.3e}; worst at index {tuple(self.worst_index)}: {self.worst_values[0]:.6g} vs "
                f"{self.worst_values[1]:.6g}; tolerance atol {self.atol:.3e} + rtol {self.rtol:g}: {verdict}")


@dataclass
class Comparison:
    precision: str
    tensors: list[TensorDiff] = field(default_factory=list)
    inputs: int = 0

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    def worst(self) -> TensorDiff:
        return max(self.tensors, key=lambda t: (not t.passed, t.max_abs / max(t.atol, 1e-30)))

    def summary(self) -> str:
        w = self.worst()
        return f"{'match' if self.passed else 'MISMATCH'} at {self.precision} tolerance: {w.format()}"

    def to_dict(self) -> dict:
        return {"precision": self.precision, "passed": self.passed, "inputs": self.inputs,
                "tensors": [asdict(t) for t in self.tensors], "summary": self.summary()}


def tolerances(precision: str, atol: Optional[float] = None, rtol: Optional[float] = None) -> tuple[float, float]:
    if precision not in TOLERANCES:
        raise ToolchainError(f"unknown precision '{precision}' for a comparison; use one of {', '.join(TOLERANCES)}")
    a, r = TOLERANCES[precision]
    return (a if atol is None else atol), (r if rtol is None else rtol)


def compare_arrays(name: str, got: np.ndarray, ref: np.ndarray, precision: str, atol: Optional[float] = None,
                   rtol: Optional[float] = None, error_stat: str = "elementwise") -> TensorDiff:
    """`elementwise`: every element within atol + rtol * |ref|; `mean`: the mean |diff| within
    atol + rtol * mean |ref| (a few outliers allowed, as Polygraphy's --check-error-stat mean)."""
    if error_stat not in ("elementwise", "mean"):
        raise ToolchainError(f"error_stat must be elementwise or mean (got {error_stat})")
    a_frac, r = tolerances(precision, atol, rtol)
    got64, ref64 = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got64.shape != ref64.shape:
        raise ToolchainError(f"output '{name}' has shape {got64.shape} vs {ref64.shape}: the two models do not "
                             "compute the same thing (different input size, classes or export)")
    peak = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    a = a_frac * max(peak, 1e-12)
    diff = np.abs(got64 - ref64)
    if not np.all(np.isfinite(got64)):
        diff = np.where(np.isfinite(got64), diff, np.inf)
    excess = diff - (a + r * np.abs(ref64))
    flat = int(np.argmax(excess)) if excess.size else 0
    index = [int(i) for i in np.unravel_index(flat, excess.shape)] if excess.size else []
    rel = diff / np.maximum(np.abs(ref64), 1e-12 + a)
    violations = int(np.sum(excess > 0))
    mean_abs = float(diff.mean()) if diff.size else 0.0
    if error_stat == "mean":
        passed = bool(np.isfinite(mean_abs)) and mean_abs <= a + r * float(np.mean(np.abs(ref64)) if ref64.size else 0)
    else:
        passed = violations == 0
    return TensorDiff(name, list(got64.shape), float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), peak, a, r,
                      violations, index, [float(got64.flat[flat]), float(ref64.flat[flat])] if excess.size else [0, 0],
                      passed, error_stat, mean_abs)


def compare_outputs(got: dict, ref: dict, precision: str, atol: Optional[float] = None,
                    rtol: Optional[float] = None, error_stat: str = "elementwise") -> Comparison:
    """Compare every output the reference has (matched by name, else by order)."""
    result = Comparison(precision)
    got_items = list(got.items())
    for i, (name, value) in enumerate(ref.items()):
        other = got.get(name, got_items[i][1] if i < len(got_items) else None)
        if other is None:
            raise ToolchainError(f"the compared model has no output '{name}'")
        result.tensors.append(compare_arrays(name, other, value, precision, atol, rtol, error_stat))
    return result


def compare_runners(candidate, reference, inputs: list[dict], precision: str, atol: Optional[float] = None,
                    rtol: Optional[float] = None, error_stat: str = "elementwise") -> Comparison:
    """Run both (loaded) runners on every feed; outputs are concatenated along the batch axis per name."""
    got: dict[str, list] = {}
    ref: dict[str, list] = {}
    for feed in inputs:
        for store, runner in ((got, candidate), (ref, reference)):
            for k, v in runner.infer(feed).items():
                store.setdefault(k, []).append(np.asarray(v))
    result = compare_outputs({k: np.concatenate(v) for k, v in got.items()},
                             {k: np.concatenate(v) for k, v in ref.items()}, precision, atol, rtol, error_stat)
    result.inputs = len(inputs)
    return result


def random_feeds(input_name: str, shape: list, n: int = 2, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{input_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def compare_onnx_files(candidate: Path, reference: Path, precision: str, shape: list, input_name: str = "input",
                       n: int = 2, log: Callable[[str], None] = lambda s: None,
                       error_stat: str = "elementwise") -> Comparison:
    """Two ONNX files on ONNX Runtime CPU with the same random inputs."""
    from toolchain.runtime.ort_runner import OrtRunner

    with OrtRunner(candidate, ["CPUExecutionProvider"]) as cand, OrtRunner(reference, ["CPUExecutionProvider"]) as ref:
        result = compare_runners(cand, ref, random_feeds(input_name, shape, n), precision, error_stat=error_stat)
    log(f"compare {Path(candidate).name} vs {Path(reference).name}: {result.summary()}")
    return result
