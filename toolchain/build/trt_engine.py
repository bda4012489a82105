"""Building a TensorRT engine through the Python API, one code path for TensorRT 8.5 to 10.x.

Builder -> network (EXPLICIT_BATCH below 10) -> OnnxParser (errors reported with their node) ->
builder config (workspace pool, timing cache reused across builds, optimisation profile,
FP16 / INT8 flags, implicit calibrator, DLA with GPU fallback, optimisation level where 8.6+) ->
build_serialized_network -> engine written atomically + sidecar JSON.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from toolchain.build.sidecar import make_sidecar, write_sidecar
from toolchain.build.trt_compat import detect_gpu, import_tensorrt, network_flags, precision_flags_supported
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


def parser_errors(parser) -> str:
    """All parser errors, each with its node, on one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else ""
        where = f"node '{node}'" if node else f"node #{err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        parts.append(f"{where}{' (' + op + ')' if op else ''}: {err.desc()}")
    return "; ".join(parts) or "unknown parser error"


def _configure(trt, builder, network, req: EngineRequest):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_mib) << 20)
    if hasattr(config, "builder_optimization_level"):  # TensorRT 8.6+
        config.builder_optimization_level = 3
    cache_bytes = req.timing_cache.read_bytes() if req.timing_cache and req.timing_cache.exists() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=True)

    profile = builder.create_optimization_profile()
    profile.set_shape(req.input_name, req.profile["min"], req.profile["opt"], req.profile["max"])
    config.add_optimization_profile(profile)

    flags_ok = precision_flags_supported(trt.__version__)
    if req.precision in ("fp16", "int8") and flags_ok:
        config.set_flag(trt.BuilderFlag.FP16)
    if req.precision == "int8" and flags_ok:
        config.set_flag(trt.BuilderFlag.INT8)
        if req.calibrator is not None and not req.explicit_int8:
            config.int8_calibrator = req.calibrator
            config.set_calibration_profile(profile)
    if req.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(req.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def build_engine(req: EngineRequest, log=print) -> dict:
    """Build and write the engine + sidecar; returns the sidecar dict."""
    trt = import_tensorrt("building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    if req.explicit_int8 and not precision_flags_supported(trt.__version__):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(req.onnx_path)):
        raise ToolchainError(f"TensorRT {trt.__version__} cannot parse {req.onnx_path.name}: {parser_errors(parser)}")
    config = _configure(trt, builder, network, req)
    log(f"building TensorRT {trt.__version__} engine ({req.precision}"
        f"{', DLA core ' + str(req.dla_core) if req.dla_core is not None else ''}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ToolchainError(f"TensorRT failed to build an engine from {req.onnx_path.name} (see the builder log "
                             "above; on Orin Nano try a smaller workspace_mib or tighter shape ranges)")
    atomic_write_bytes(req.engine_path, bytes(serialized))
    if req.timing_cache is not None:
        atomic_write_bytes(req.timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = make_sidecar(engine_path=req.engine_path, tensorrt_version=trt.__version__, gpu=detect_gpu(),
                           precision=req.precision, input_shapes={req.input_name: req.profile},
                           dla_core=req.dla_core, onnx_sha256=req.onnx_sha256 or sha256_file(req.onnx_path),
                           target=req.target,
                           extra={"explicit_int8": req.explicit_int8, "built_by": "acsl build"})
    write_sidecar(req.engine_path, sidecar)
    return sidecar
