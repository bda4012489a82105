"""The embedding API robotics code imports:

    from toolchain.runtime import load
    model = load("deploy/jetson-orin-nx-16gb")     # verifies every checksum in manifest.json
    out = model(frame)                              # frame: H x W x 3 uint8 (RGB, or color="BGR" for OpenCV)
    out.class_map / out.count / out.topk            # decoded per the manifest's task
    model.warmup(); model.latency_stats()

Backend choice: a TensorRT engine when the `tensorrt` package is importable and the engine's
sidecar matches this machine; otherwise ONNX Runtime with the best installed provider (TensorRT,
CUDA, then CPU). Preprocessing is exactly `toolchain.data.transforms.preprocess` with the
manifest's preprocessing. One `DeployedModel` per thread is the intended use; calls on a shared
instance are serialised by a lock, so sharing is safe too (just not parallel).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolchain.errors import ToolchainError

ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class Prediction:
    """Decoded output of one frame. `raw` is the network output for this frame (no batch dim)."""
    task: str
    raw: np.ndarray
    class_map: Optional[np.ndarray] = None      # segmentation: H x W int class ids (network resolution)
    density: Optional[np.ndarray] = None        # counting: H/s x W/s density map
    count: Optional[float] = None               # counting: sum of the density map
    topk: list = field(default_factory=list)    # classification: [(class_name, probability), ...]

    def class_names(self, names: Sequence[str]) -> list[str]:
        """Names of the classes present in the class map (segmentation)."""
        if self.class_map is None:
            return []
        return [names[i] if i < len(names) else str(i) for i in np.unique(self.class_map)]


def _pick_artifact(manifest: dict, precision: Optional[str], bundle: Path):
    artifacts = manifest.get("artifacts", [])
    wanted = precision or manifest.get("default_precision", "fp32")
    matches = [a for a in artifacts if a.get("precision") == wanted and a.get("variant", "slim") == manifest.get(
        "deployed_variant", "slim")]
    if not matches and precision is None and "slim.onnx" in manifest.get("files", {}):
        # engines not built yet (bundle made off the device): run the exported FP32 ONNX
        return "fp32", [{"file": "slim.onnx", "kind": "onnx", "variant": "slim", "precision": "fp32"}]
    if not matches:
        have = sorted({a.get("precision") for a in artifacts})
        raise ToolchainError(f"bundle {bundle} has no {wanted} model (it has {', '.join(have) or 'none'}); "
                             f"pass precision= one of those")
    return wanted, matches


def _try_tensorrt(bundle: Path, artifacts: list[dict]) -> tuple[Optional[object], str]:
    engines = [a for a in artifacts if a.get("kind") == "tensorrt-engine"]
    if not engines:
        return None, "no TensorRT engine in the bundle"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None, "the tensorrt package is not installed here"
    from toolchain.runtime.trt_runner import TrtRunner  # present wherever TensorRT is

    engine_path = bundle / engines[0]["file"]
    try:
        return TrtRunner(engine_path).load(), f"TensorRT engine {engines[0]['file']}"
    except ToolchainError as err:  # engine for another device / TensorRT version: say so, use ONNX
        return None, f"TensorRT engine not usable here ({err})"


def _ort_runner(bundle: Path, artifacts: list[dict], providers: Optional[Sequence[str]], threads: Optional[int]):
    from toolchain.runtime.ort_runner import OrtRunner, available_providers

    onnx = [a for a in artifacts if a.get("kind") == "onnx"]
    if not onnx:
        raise ToolchainError(f"bundle {bundle} has no ONNX model for this precision; rebuild it with `acsl deploy`")
    chosen = list(providers) if providers else [p for p in ORT_PROVIDER_PREFERENCE if p in available_providers()]
    runner = OrtRunner(bundle / onnx[0]["file"], providers=chosen, threads=threads).load()
    return runner, f"ONNX Runtime ({', '.join(runner.providers)}) on {onnx[0]['file']}"


class DeployedModel:
    """A verified bundle, loaded on the best available backend. Call it with a frame."""

    def __init__(self, bundle_dir, *, precision: Optional[str] = None, backend: str = "auto",
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None, color: str = "RGB",
                 topk: int = 5, history: int = 1000):
        from toolchain.deploy.bundle import verify_bundle

        self.bundle = Path(bundle_dir)
        self.manifest = verify_bundle(self.bundle)
        if backend not in ("auto", "tensorrt", "onnxruntime"):
            raise ToolchainError(f"backend must be auto, tensorrt or onnxruntime (got {backend})")
        if color not in ("RGB", "BGR"):
            raise ToolchainError(f"color must be RGB or BGR (got {color}); OpenCV frames are BGR")
        self.precision, artifacts = _pick_artifact(self.manifest, precision, self.bundle)
        self.task = self.manifest["task"]
        self.class_names = list(self.manifest.get("classes") or [])
        self.preprocessing = dict(self.manifest["preprocessing"])
        self.color, self.topk_k = color, topk
        self._lock = threading.Lock()
        self._latencies_ms: collections.deque = collections.deque(maxlen=history)
        self.runner, why = None, ""
        if backend in ("auto", "tensorrt"):
            self.runner, why = _try_tensorrt(self.bundle, artifacts)
            if self.runner is None and backend == "tensorrt":
                raise ToolchainError(f"backend='tensorrt' requested but {why}")
        if self.runner is None:
            self.runner, self.backend_description = _ort_runner(self.bundle, artifacts, providers, threads)
            self.fallback_reason = why
        else:
            self.backend_description, self.fallback_reason = why, ""
        self.input_name = self.runner.input_names[0]
        self.output_name = self.runner.output_names[0]

    # -- inference -----------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray, color: Optional[str] = None) -> np.ndarray:
        """Frame (H x W x 3 uint8) -> 1 x 3 x H' x W' float32, exactly as during validation."""
        from toolchain.data.transforms import preprocess

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ToolchainError(f"a frame must be H x W x 3 (got shape {frame.shape})")
        if (color or self.color) == "BGR":
            frame = frame[:, :, ::-1]
        return preprocess(np.ascontiguousarray(frame), self.preprocessing)[None]

    def infer_array(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on an already preprocessed NCHW float32 batch; returns the raw output."""
        with self._lock:
            start = time.perf_counter()
            out = self.runner.infer({self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_name]
            self._latencies_ms.append((time.perf_counter() - start) * 1000.0)
        return out

    def __call__(self, frame: np.ndarray, color: Optional[str] = None) -> Prediction:
        raw = self.infer_array(self.preprocess(frame, color))[0]
        return self.postprocess(raw)

    def postprocess(self, raw: np.ndarray) -> Prediction:
        if self.task == "segmentation":
            return Prediction(self.task, raw, class_map=raw.argmax(axis=0).astype(np.int32))
        if self.task == "counting":
            density = raw[0] if raw.ndim == 3 else raw
            return Prediction(self.task, raw, density=density, count=float(density.sum()))
        logits = raw.astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[: self.topk_k]
        names = self.class_names or [str(i) for i in range(len(probs))]
        return Prediction(self.task, raw, topk=[(names[i], float(probs[i])) for i in order])

    # -- housekeeping --------------------------------------------------------------------------
    def warmup(self, seconds: float = 1.0, min_runs: int = 3) -> int:
        """Run dummy inputs for `seconds` (at least `min_runs`); the timings are then discarded."""
        height, width = self.preprocessing["input_size"]
        dummy = np.zeros((1, 3, height, width), np.float32)
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < seconds:
            self.infer_array(dummy)
            runs += 1
        self._latencies_ms.clear()
        return runs

    def latency_stats(self) -> dict:
        """trtexec-style stats over the calls since load (or the last warmup())."""
        from toolchain.profile.stats import latency_stats

        if not self._latencies_ms:
            raise ToolchainError("no inferences timed yet; call the model on a frame first")
        return latency_stats(list(self._latencies_ms))

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "DeployedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeployedModel({self.bundle}, {self.task}, {self.precision}, {self.backend_description})"


def load(bundle_dir, **kwargs) -> DeployedModel:
    """Verify and load a deploy bundle; see DeployedModel for the options."""
    return DeployedModel(bundle_dir, **kwargs)
