"""Building a TensorRT engine through the Python API: one code path for TensorRT 8.5-10.x, 11 and
TensorRT for RTX, choosing by capability (`trt_compat.capabilities`), never by version number.

Builder -> network (EXPLICIT_BATCH where the flag exists; STRONGLY_TYPED where the precision flags are
gone) -> OnnxParser (errors on one line, naming node, op and cause) -> builder config (workspace pool,
timing cache reused across builds, optimisation profile, FP16 / INT8 flags or nothing when strongly
typed, implicit calibrator only where the API has one, DLA (refused where the GPU has none),
compute capabilities for TensorRT-RTX ahead-of-time builds, optimisation level where present) ->
build_serialized_network -> engine written atomically + sidecar JSON.

Precision where the flags are gone is carried by the ONNX itself: `onnx_path` is then the FP16 ONNX
(fp16) or the Q/DQ ONNX (int8); `builder.py` picks the right file from `Capabilities.precision_plan`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from toolchain.artifacts.sidecar import make_sidecar, write_sidecar
from toolchain.artifacts.trt_compat import (capabilities, compute_capability_enum, detect_gpu, import_tensorrt,
                                        network_flags)
from toolchain.errors import ToolchainError
from toolchain.utils.io import atomic_write_bytes, sha256_file


@dataclass
class EngineRequest:
    onnx_path: Path
    engine_path: Path
    precision: str                      # fp32 | fp16 | int8
    workspace_mib: int
    profile: dict                       # {"min", "opt", "max"} for the input
    target: str
    input_name: str = "input"
    dla_core: Optional[int] = None
    timing_cache: Optional[Path] = None
    calibrator: Any = None              # implicit INT8 (None with a Q/DQ model)
    explicit_int8: bool = False         # the ONNX carries Q/DQ nodes
    onnx_sha256: Optional[str] = None   # of the FP32 ONNX the engine stands for
    compute_capabilities: list = field(default_factory=list)  # TensorRT-RTX: ["8.6", "8.9", ...]
    flavour: Optional[str] = None       # "tensorrt" | "tensorrt-rtx" | None (whichever is installed)


_NOISE = re.compile(r"^\[?[A-Za-z]+\.cpp::|cudaError|CUDA driver version|^\s*$")


def _one_line_cause(desc: str) -> str:
    """TensorRT's error text is several lines ('Invalid Node - X', the cause, CUDA noise): keep the cause."""
    lines = [ln.strip() for ln in str(desc).splitlines()]
    useful = [ln for ln in lines if ln and not _NOISE.search(ln)]
    cause = next((ln for ln in useful if not ln.startswith("Invalid Node")), useful[0] if useful else "")
    return re.sub(r"\.?\s*In \w+ at \S+?(?=\)|$)", "", cause).rstrip(" .") or "unknown cause"


def clean_message(msg: str) -> str:
    """One line from a TensorRT log message: no source locations, no internal pass names."""
    line = _one_line_cause(msg)
    line = re.sub(r"\[[\w.]+\.cpp:\d+:?[^\]]*\]\s*", "", line)
    return re.sub(r"\(\s+", "(", line)


def capture_logger(trt):
    """A TensorRT logger that keeps error messages (for one-line errors) and prints warnings; the
    'CUDA driver version is insufficient' error of a GPU-less TensorRT-RTX build is dropped."""
    import sys

    base = getattr(trt, "ILogger", None)
    if base is None or not hasattr(base, "Severity"):
        return trt.Logger(trt.Logger.WARNING)
    sev = base.Severity

    class _Capture(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if "CUDA driver version is insufficient" in msg or "cudaError 35" in msg:
                return
            if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                self.errors.append(msg)
            elif severity == sev.WARNING:
                print(f"[TensorRT] warning: {msg}", file=sys.stderr)

    return _Capture()


def parser_errors(parser) -> str:
    """All parser errors, each as "node 'NAME' (OP): cause", on one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else ""
        where = f"node '{node}'" if node else f"node #{err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        part = f"{where}{' (' + op + ')' if op else ''}: {_one_line_cause(err.desc())}"
        if part not in parts:
            parts.append(part)
    return "; ".join(parts) or "unknown parser error"


def _check_dla(trt, builder, req: EngineRequest, caps) -> None:
    if req.dla_core is None:
        return
    if not caps.dla:
        raise ToolchainError(f"{caps.flavour} {caps.version} has no DLA support; build without --dla-core "
                             "(or for a Jetson target on the Jetson)")
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if cores <= int(req.dla_core):
        raise ToolchainError(f"DLA core {req.dla_core} requested but this GPU has {cores} DLA core(s); "
                             "build DLA engines on the Jetson itself, or drop --dla-core / dla_core")


def _configure(trt, builder, network, req: EngineRequest, caps, plan: dict):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_mib) << 20)
    if caps.optimization_level:  # TensorRT 8.6+
        config.builder_optimization_level = 3
    if caps.timing_cache and req.timing_cache is not None:
        cache_bytes = req.timing_cache.read_bytes() if req.timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)

    profile = builder.create_optimization_profile()
    profile.set_shape(req.input_name, req.profile["min"], req.profile["opt"], req.profile["max"])
    config.add_optimization_profile(profile)

    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if req.precision == "int8" and req.calibrator is not None and not req.explicit_int8:
        if not caps.implicit_int8:
            raise ToolchainError(f"{caps.flavour} {caps.version} has no implicit INT8 calibration; build INT8 from "
                                 "the Q/DQ ONNX (calibration.implicit: false in the target)")
        config.int8_calibrator = req.calibrator
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    if req.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(req.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if req.compute_capabilities and caps.compute_capabilities:
        members = [(cc, compute_capability_enum(trt, cc)) for cc in req.compute_capabilities]
        unknown = [cc for cc, m in members if m is None]
        if unknown:
            have = [n[2:] for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
            raise ToolchainError(f"{caps.flavour} {caps.version} cannot build for compute capability "
                                 f"{', '.join(unknown)} (it knows SM {', '.join(have)}); fix compute_capabilities "
                                 "in the target")
        config.num_compute_capabilities = len(members)
        for index, (_, member) in enumerate(members):
            config.set_compute_capability(member, index)
    return config


def parse_onnx(trt, onnx_path: Path, strongly_typed: bool, logger=None):
    """(builder, network, parser) with `onnx_path` parsed; a parse failure is a one-line ToolchainError."""
    logger = logger or capture_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, strongly_typed=strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        caps = capabilities(trt)
        raise ToolchainError(f"{caps.flavour} {caps.version} cannot parse {Path(onnx_path).name}: "
                             f"{parser_errors(parser)}")
    return builder, network, parser


def build_engine(req: EngineRequest, log=print) -> dict:
    """Build and write the engine + sidecar; returns the sidecar dict."""
    trt = import_tensorrt("building a TensorRT engine", flavour=req.flavour)
    caps = capabilities(trt)
    plan = caps.precision_plan(req.precision)
    logger = capture_logger(trt)
    builder, network, _parser = parse_onnx(trt, req.onnx_path, plan["strongly_typed"], logger)
    _check_dla(trt, builder, req, caps)
    config = _configure(trt, builder, network, req, caps, plan)
    log(f"building {caps.flavour} {caps.version} engine ({req.precision}"
        f"{', strongly typed' if plan['strongly_typed'] else ''}"
        f"{', DLA core ' + str(req.dla_core) if req.dla_core is not None else ''}) from {req.onnx_path.name} ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = [clean_message(m) for m in getattr(logger, "errors", [])]
        cause = errors[-1] if errors else ("see the builder log above; on Orin Nano try a smaller workspace_mib or "
                                           "tighter shape ranges")
        raise ToolchainError(f"{caps.flavour} {caps.version} could not build an engine from {req.onnx_path.name}: "
                             f"{cause}")
    atomic_write_bytes(req.engine_path, bytes(serialized))
    if caps.timing_cache and req.timing_cache is not None:
        atomic_write_bytes(req.timing_cache, bytes(config.get_timing_cache().serialize()))
    gpu = detect_gpu()
    ccs = list(req.compute_capabilities) if caps.compute_capabilities and req.compute_capabilities else []
    if gpu is None and ccs:  # ahead-of-time build for listed architectures (TensorRT-RTX)
        gpu = {"name": "none (ahead-of-time build)", "compute_capability": ",".join(ccs)}
    sidecar = make_sidecar(engine_path=req.engine_path, tensorrt_version=caps.version, gpu=gpu,
                           precision=req.precision, input_shapes={req.input_name: req.profile},
                           dla_core=req.dla_core, onnx_sha256=req.onnx_sha256 or sha256_file(req.onnx_path),
                           target=req.target,
                           extra={"explicit_int8": req.explicit_int8, "built_by": "acsl build",
                                  "tensorrt_flavour": caps.flavour, "compute_capabilities": ccs,
                                  "strongly_typed": plan["strongly_typed"], "builder_flags": plan["flags"],
                                  "engine_onnx": req.onnx_path.name, "engine_onnx_sha256": sha256_file(req.onnx_path),
                                  "layers": int(network.num_layers)})
    write_sidecar(req.engine_path, sidecar)
    return sidecar
