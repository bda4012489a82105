"""The embedding API robotics code imports:

    from toolchain.runtime import load
    model = load("deploy/jetson-orin-nx-16gb")     # verifies manifest.json and every checksum in it
    out = model(frame)                              # frame: H x W x 3 uint8, RGB
    out = model(frame, bgr=True)                    # ... or BGR as OpenCV delivers it (or load(..., bgr=True))
    out.class_map / out.density / out.count / out.topk   # decoded per the manifest's task, at the frame's size
    model.warmup(); print(model.latency_stats())

Pin a bundle in an app with `load(dir, expect_manifest_sha256="...")` (the `sha256sum` of its
manifest.json, also in its manifest.sha256): any other bundle is refused.

Backend choice: a TensorRT engine when the `tensorrt` package is importable and the engine's
sidecar matches this machine; otherwise ONNX Runtime with the best installed provider (TensorRT,
CUDA, then CPU). ONNX Runtime is given the very bytes whose checksum was verified. Preprocessing is
exactly `toolchain.artifacts.preprocess.preprocess` with the manifest's preprocessing (which load()
checked against the metadata inside the checksummed ONNX). One `DeployedModel` per thread is the
intended use; calls on a shared instance are serialised by a lock, so sharing is safe too (just
not parallel).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolchain.artifacts.kinds import ONNX, TENSORRT_ENGINE
from toolchain.errors import ToolchainError

ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class Prediction:
    """Decoded output of one frame. `raw` is the network output for this frame (no batch dim).

    Maps are at the frame's resolution (`class_map`, `density`); the network-resolution versions
    are `class_map_net` and `density_net`. `count` is the sum of `density_net` (exact; the resized
    `density` is rescaled so that its sum stays close to it).
    """
    task: str
    raw: np.ndarray
    class_map: Optional[np.ndarray] = None      # segmentation: frame H x W int32 class ids (nearest)
    class_map_net: Optional[np.ndarray] = None  # segmentation: network-resolution class ids
    density: Optional[np.ndarray] = None        # counting: frame H x W density (bilinear, per frame pixel)
    density_net: Optional[np.ndarray] = None    # counting: H/s x W/s density map as the network gives it
    count: Optional[float] = None               # counting: sum of the density map
    topk: list = field(default_factory=list)    # classification: [(class_name, probability), ...]

    def class_names(self, names: Sequence[str]) -> list[str]:
        """Names of the classes present in the class map (segmentation)."""
        if self.class_map_net is None and self.class_map is None:
            return []
        ids = np.unique(self.class_map if self.class_map is not None else self.class_map_net)
        return [names[i] if i < len(names) else str(i) for i in ids]


def _pick_artifact(manifest: dict, precision: Optional[str], bundle: Path):
    """The verified artifacts (listed and checksummed: see verify_bundle) for `precision`."""
    if precision is not None and not isinstance(precision, str):
        raise ToolchainError(f"precision must be a string such as 'fp32' or 'int8' (got {precision!r})")
    artifacts = manifest.get("artifacts", [])
    wanted = precision or manifest.get("default_precision") or "fp32"
    variant = manifest.get("deployed_variant", "slim")
    matches = [a for a in artifacts if a["precision"] == wanted and a["variant"] == variant]
    exported = f"{variant}{ONNX.suffix}"
    if not matches and precision is None and exported in manifest["files"]:
        # engines not built yet (bundle made off the device): run the exported FP32 ONNX
        return "fp32", [{"file": exported, "kind": ONNX.name, "variant": variant, "precision": "fp32"}]
    if not matches:
        have = sorted({a["precision"] for a in artifacts if a["variant"] == variant})
        raise ToolchainError(f"bundle {bundle} has no {wanted} model (it has {', '.join(have) or 'none'}); "
                             f"pass precision= one of those")
    return wanted, matches


def _try_tensorrt(bundle: Path, manifest: dict, artifacts: list[dict]) -> tuple[Optional[object], str]:
    from toolchain.artifacts.bundle import bundle_path

    engines = [a for a in artifacts if a["kind"] == TENSORRT_ENGINE.name]
    if not engines:
        return None, "no TensorRT engine in the bundle"
    from toolchain.artifacts.trt_compat import tensorrt_available

    if not tensorrt_available():  # tensorrt, or tensorrt_rtx for TensorRT-RTX engines
        return None, "the tensorrt package is not installed here"
    from toolchain.artifacts.sidecar import sidecar_path
    from toolchain.runtime.trt_runner import TrtRunner  # present wherever TensorRT is

    engine_path = bundle_path(bundle, engines[0]["file"], "artifact")
    side = sidecar_path(engines[0]["file"]).as_posix()
    if (bundle / side).exists() and side not in manifest["files"]:
        # the runner would trust an unverified sidecar (compatibility, DLA core)
        raise ToolchainError(f"bundle {bundle}: the engine sidecar {side} is not listed (checksummed) in "
                             "manifest.json; refused: rebuild the bundle with `acsl deploy`")
    try:
        return TrtRunner(engine_path).load(), f"TensorRT engine {engines[0]['file']}"
    except ToolchainError as err:  # engine for another device / TensorRT version: say so, use ONNX
        return None, f"TensorRT engine not usable here ({err})"


def device_build(manifest: dict, precision: str, bundle: Path) -> Optional[dict]:
    """The manifest's `device_builds` entry for the deployed variant at `precision` whose engine exists
    (written on the device by the variant's build_engine.sh after the bundle was made), or None."""
    from toolchain.artifacts.bundle import bundle_path

    variant = manifest.get("deployed_variant", "slim")
    for build in manifest.get("device_builds") or []:
        if build.get("variant") == variant and build.get("precision") == precision and "file" in build:
            if bundle_path(bundle, build["file"], "device build file").is_file():
                return build
    return None


def _try_device_engine(bundle: Path, manifest: dict, build: dict) -> tuple[Optional[object], str]:
    """A TensorRT runner on an engine build_engine.sh wrote on this device, bound to the bundle.

    The engine is not in the manifest's checksums (it did not exist when the bundle was written), so
    it is trusted only through its sidecar: the sidecar's `engine_onnx_sha256` (the ONNX the script
    built from) must be one of the manifest's checksummed files, and TrtRunner checks the engine's
    bytes against the sidecar's `engine_sha256` and its TensorRT version / GPU against this device.
    """
    from toolchain.artifacts.bundle import bundle_path
    from toolchain.artifacts.sidecar import read_sidecar, sidecar_path
    from toolchain.artifacts.trt_compat import tensorrt_available

    engine = bundle_path(bundle, build["file"], "device build file")
    side = bundle_path(bundle, build.get("sidecar") or sidecar_path(build["file"]).as_posix(), "device build sidecar")
    if side != sidecar_path(engine) or not side.is_file():
        return None, f"device engine {build['file']} has no sidecar next to it: rerun {build.get('build_script')}"
    sidecar = read_sidecar(engine)
    if sidecar.get("engine_onnx_sha256") not in set(manifest["files"].values()):
        raise ToolchainError(f"bundle {bundle}: device engine {build['file']} was not built from an ONNX of this "
                             f"bundle (its sidecar's engine_onnx_sha256 is not a checksum in manifest.json); refused: "
                             f"rerun {build.get('build_script')} on this device")
    if not tensorrt_available():
        return None, "the tensorrt package is not installed here"
    from toolchain.runtime.trt_runner import TrtRunner

    try:
        return (TrtRunner(engine).load(),
                f"TensorRT engine {build['file']} (built on this device by build_engine.sh from a checksummed ONNX)")
    except ToolchainError as err:
        return None, f"TensorRT engine {build['file']} not usable here ({err})"


def ort_runner_for(bundle: Path, manifest: dict, artifacts: list[dict], providers: Optional[Sequence[str]],
                   threads: Optional[int], load: bool = True):
    """An OrtRunner over the verified bytes of the bundle's ONNX artifact (not re-read from disk)."""
    from toolchain.artifacts.bundle import bundle_path, read_verified
    from toolchain.runtime.ort_runner import OrtRunner, available_providers

    onnx = [a for a in artifacts if a["kind"] == ONNX.name]
    if not onnx:
        raise ToolchainError(f"bundle {bundle} has no ONNX model for this precision; rebuild it with `acsl deploy`")
    name = onnx[0]["file"]
    chosen = list(providers) if providers else [p for p in ORT_PROVIDER_PREFERENCE if p in available_providers()]
    runner = OrtRunner(bundle_path(bundle, name, "artifact"), providers=chosen, threads=threads,
                       model_bytes=read_verified(bundle, manifest, name))
    if load:
        runner.load()
    return runner, name


def _color(color, bgr, default: Optional[bool] = None) -> Optional[bool]:
    """True for BGR, False for RGB, `default` when neither is given; refuses anything ambiguous."""
    if bgr is not None and not isinstance(bgr, (bool, np.bool_)):
        raise ToolchainError(f"bgr must be True or False (got {bgr!r})")
    from_color = None
    if color is not None:
        if not isinstance(color, str) or color.upper() not in ("RGB", "BGR"):
            raise ToolchainError(f"color must be RGB or BGR (got {color!r}); OpenCV frames are BGR: pass bgr=True")
        from_color = color.upper() == "BGR"
    if bgr is not None and from_color is not None and bool(bgr) != from_color:
        raise ToolchainError(f"bgr={bool(bgr)} contradicts color={color!r}; pass only bgr=True/False")
    if bgr is not None:
        return bool(bgr)
    return from_color if from_color is not None else default


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ToolchainError(f"a frame must be an H x W x 3 uint8 array (got shape {frame.shape}); convert "
                             "grayscale/RGBA images to 3 channels first")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ToolchainError(f"the frame is empty (shape {frame.shape}); the camera or decoder returned no image")
    if frame.dtype != np.uint8:
        raise ToolchainError(f"a frame must be uint8 pixels 0-255 (got {frame.dtype}); pass the decoded image as is "
                             "(not normalised, not float)")
    return frame


def _resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize with pixel-centre alignment (what bilinear preprocessing used)."""
    (in_h, in_w), (out_h, out_w) = ids.shape, size
    if (in_h, in_w) == (out_h, out_w):
        return ids
    rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / out_h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / out_w).astype(np.int64), in_w - 1)
    return ids[rows[:, None], cols[None, :]]


def _resize_density(density: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a density map, scaled by the area ratio so the sum (the count) is kept."""
    from toolchain.artifacts.preprocess import resize_bilinear

    if density.shape == tuple(size):
        return density.astype(np.float32, copy=False)
    out = resize_bilinear(density.astype(np.float32)[:, :, None], size)[:, :, 0]
    return out * np.float32(density.shape[0] * density.shape[1] / (size[0] * size[1]))


class DeployedModel:
    """A verified bundle, loaded on the best available backend. Call it with a frame.

    `bgr=True` says the frames are BGR (OpenCV); per call, `model(frame, bgr=True)` overrides it.
    `color="RGB"|"BGR"` (any case) is accepted as an older spelling of the same thing.
    `expect_manifest_sha256` pins the bundle: any other manifest.json is refused.
    """

    def __init__(self, bundle_dir, *, precision: Optional[str] = None, backend: str = "auto",
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None, bgr: Optional[bool] = None,
                 color: Optional[str] = None, topk: int = 5, history: int = 1000,
                 expect_manifest_sha256: Optional[str] = None):
        from toolchain.artifacts.bundle import verify_bundle_pinned

        if backend not in ("auto", "tensorrt", "onnxruntime"):
            raise ToolchainError(f"backend must be auto, tensorrt or onnxruntime (got {backend!r})")
        self.bgr = _color(color, bgr, default=False)
        for name, value in (("topk", topk), ("history", history)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ToolchainError(f"{name} must be an integer >= 1 (got {value!r})")
        self.bundle = Path(bundle_dir)
        # manifest_sha256: of the manifest.json bytes verified here; pin it with expect_manifest_sha256=
        self.manifest, self.manifest_sha256 = verify_bundle_pinned(self.bundle, expect_manifest_sha256)
        wanted = precision or self.manifest.get("default_precision") or "fp32"
        variant = self.manifest.get("deployed_variant", "slim")
        listed = any(a.get("precision") == wanted and a.get("variant") == variant
                     for a in self.manifest.get("artifacts", []))
        # an engine build_engine.sh wrote on this device after the bundle was made (not in the checksums)
        on_device = None if listed or backend == "onnxruntime" else device_build(self.manifest, wanted, self.bundle)
        if on_device is None:
            self.precision, artifacts = _pick_artifact(self.manifest, precision, self.bundle)
        self.task = self.manifest["task"]
        self.class_names = list(self.manifest.get("classes") or [])
        self.preprocessing = dict(self.manifest["preprocessing"])
        self.topk_k = topk
        self._lock = threading.Lock()
        self._latencies_ms: collections.deque = collections.deque(maxlen=history)
        self.runner, why = None, ""
        if on_device is not None:
            self.runner, why = _try_device_engine(self.bundle, self.manifest, on_device)
            if self.runner is not None:
                self.precision, artifacts = wanted, []
            else:  # the listed ONNX of that precision (or the exported FP32 one when none is listed)
                try:
                    self.precision, artifacts = _pick_artifact(self.manifest, precision, self.bundle)
                except ToolchainError as err:
                    raise ToolchainError(f"{err}; {why}") from None
        if self.runner is None and backend in ("auto", "tensorrt"):
            found, listed_why = _try_tensorrt(self.bundle, self.manifest, artifacts)
            self.runner, why = found, (why if on_device is not None else listed_why)
            if self.runner is None and backend == "tensorrt":
                raise ToolchainError(f"backend='tensorrt' requested but {why}")
        if self.runner is None:
            self.runner, name = ort_runner_for(self.bundle, self.manifest, artifacts, providers, threads)
            self.backend_description = f"ONNX Runtime ({', '.join(self.runner.providers)}) on {name}"
            self.fallback_reason = why
        else:
            self.backend_description, self.fallback_reason = why, ""
        self.input_name = self.runner.input_names[0]
        self.output_name = self.runner.output_names[0]

    @property
    def color(self) -> str:
        return "BGR" if self.bgr else "RGB"

    # -- inference -----------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray, color: Optional[str] = None, *, bgr: Optional[bool] = None) -> np.ndarray:
        """Frame (H x W x 3 uint8) -> 1 x 3 x H' x W' float32, exactly as during validation."""
        from toolchain.artifacts.preprocess import preprocess

        frame = _check_frame(frame)
        if _color(color, bgr, default=self.bgr):
            frame = frame[:, :, ::-1]
        return preprocess(np.ascontiguousarray(frame), self.preprocessing)[None]

    def infer_array(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on an already preprocessed NCHW float32 batch; returns the raw output."""
        with self._lock:
            start = time.perf_counter()
            out = self.runner.infer({self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_name]
            self._latencies_ms.append((time.perf_counter() - start) * 1000.0)
        return out

    def __call__(self, frame: np.ndarray, color: Optional[str] = None, *, bgr: Optional[bool] = None) -> Prediction:
        frame = _check_frame(frame)
        raw = self.infer_array(self.preprocess(frame, color, bgr=bgr))[0]
        return self.postprocess(raw, frame.shape[:2])

    def postprocess(self, raw: np.ndarray, frame_size: Optional[Sequence[int]] = None) -> Prediction:
        """Decode one frame's raw output; maps are resized to `frame_size` (H, W) when given."""
        size = (int(frame_size[0]), int(frame_size[1])) if frame_size is not None else None
        if self.task == "segmentation":
            net = raw.argmax(axis=0).astype(np.int32)
            full = _resize_nearest(net, size) if size else net
            return Prediction(self.task, raw, class_map=full, class_map_net=net)
        if self.task == "counting":
            net = raw[0] if raw.ndim == 3 else raw
            full = _resize_density(net, size) if size else net
            return Prediction(self.task, raw, density=full, density_net=net, count=float(net.sum()))
        logits = raw.astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)[: self.topk_k]
        names = self.class_names or [str(i) for i in range(len(probs))]
        return Prediction(self.task, raw, topk=[(names[i], float(probs[i])) for i in order])

    # -- housekeeping --------------------------------------------------------------------------
    def _dummy(self) -> np.ndarray:
        height, width = self.preprocessing["input_size"]
        return np.zeros((1, 3, height, width), np.float32)

    def warmup(self, seconds: float = 1.0, min_runs: int = 3) -> int:
        """Run dummy inputs for `seconds` (at least `min_runs`) and discard those timings (they include
        lazy initialisation), so latency_stats() only describes the warm model. Returns the run count."""
        if not isinstance(min_runs, int) or min_runs < 0 or not seconds >= 0:
            raise ToolchainError(f"warmup needs seconds >= 0 and min_runs >= 0 (got {seconds}, {min_runs})")
        dummy = self._dummy()
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < seconds:
            self.infer_array(dummy)
            runs += 1
        with self._lock:
            self._latencies_ms.clear()
        return runs

    def latency_stats(self, runs: int = 50) -> dict:
        """trtexec-style stats (network only, host to host) over the inferences since load() or the
        last warmup(), at most `history` of them. When there are none yet (e.g. right after
        `warmup()`), it first times `runs` inferences on a dummy input of the model's input size, so
        `model.warmup(); print(model.latency_stats())` reports the warm model. The result's `source`
        says which: "calls" or "dummy input"."""
        from toolchain.runtime.stats import latency_stats

        with self._lock:
            samples = list(self._latencies_ms)
        source = "calls"
        if not samples:
            if not isinstance(runs, int) or runs < 1:
                raise ToolchainError(f"latency_stats(runs=) must be an integer >= 1 (got {runs!r})")
            dummy = self._dummy()
            for _ in range(runs + 1):  # the first one may include lazy initialisation: dropped
                self.infer_array(dummy)
            with self._lock:
                samples = list(self._latencies_ms)[-runs:]
            source = "dummy input"
        return {**latency_stats(samples), "source": source}

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "DeployedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeployedModel({self.bundle}, {self.task}, {self.precision}, {self.backend_description})"


def load(bundle_dir, **kwargs) -> DeployedModel:
    """Verify and load a deploy bundle; see DeployedModel for the options (bgr=, precision=,
    backend=, providers=, threads=, topk=, expect_manifest_sha256=)."""
    return DeployedModel(bundle_dir, **kwargs)
