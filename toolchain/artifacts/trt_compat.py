"""What the installed TensorRT can do, detected from its classes (never from its version number).

Flavours this layer knows, each identified by what its API offers:

- TensorRT 8.5 / 8.6: `EXPLICIT_BATCH` network flag (mandatory for ONNX), weak typing with the
  `BuilderFlag.FP16` / `INT8` flags, implicit INT8 calibrators (`IInt8EntropyCalibrator2`,
  `IBuilderConfig.int8_calibrator`), builder optimisation level from 8.6;
- TensorRT 10.x: the precision flags and calibrators (deprecated), plus strongly typed networks;
- TensorRT 11 and TensorRT for RTX 1.x (`import tensorrt_rtx`): strongly typed only; precision comes
  from the ONNX tensor types (an FP16 ONNX, a Q/DQ ONNX), no calibrators, no `EXPLICIT_BATCH`;
  TensorRT-RTX builds ahead of time for listed compute capabilities (`set_compute_capability`), even
  on a machine with no GPU (it logs a CUDA driver error and builds).

`tensorrt` itself is imported lazily; nothing here needs it installed except `import_tensorrt`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from toolchain.errors import MissingDependency

INSTALL_HINT = ("on Jetson it ships with JetPack (python3-libnvinfer); on a desktop use NVIDIA's "
                "tensorrt wheels, or `pip install -e '.[trt]'` for TensorRT for RTX")
# module name -> flavour, in import order: the classic TensorRT first (Jetson, data centre), then RTX
MODULES = (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx"))


def import_tensorrt(purpose: str = "building or running a TensorRT engine", flavour: Optional[str] = None):
    """The installed TensorRT module (`tensorrt`, else `tensorrt_rtx`); `flavour` asks for one of them."""
    import importlib

    for module, name in MODULES:
        if flavour not in (None, name):
            continue
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    wanted = {"tensorrt-rtx": "tensorrt_rtx"}.get(flavour or "", "tensorrt")
    raise MissingDependency(wanted, purpose, install=INSTALL_HINT) from None


def tensorrt_available(flavour: Optional[str] = None) -> bool:
    try:
        import_tensorrt(flavour=flavour)
    except MissingDependency:
        return False
    return True


def flavour_of(trt: Any) -> str:
    name = getattr(trt, "__name__", "tensorrt") or "tensorrt"
    return "tensorrt-rtx" if "rtx" in name else "tensorrt"


def parse_version(version: str) -> tuple[int, int, int]:
    """'8.6.1.6' -> (8, 6, 1); '10.3.0' -> (10, 3, 0)."""
    numbers = [int(n) for n in re.findall(r"\d+", str(version))[:3]]
    if not numbers:
        raise ValueError(f"not a version: {version!r}")
    while len(numbers) < 3:
        numbers.append(0)
    return tuple(numbers)  # type: ignore[return-value]


def version_from_number(number: int) -> str:
    """TensorRT's integer version (NV_TENSORRT_VERSION, `trtexec` banner 'TensorRT v8601') as text:
    major * 1000 + minor * 100 + patch below 10 (8601 -> 8.6.1), major * 10000 + ... from 10 on
    (100300 -> 10.3.0). build_engine.sh does the same arithmetic in bash."""
    number = int(number)
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


@dataclass(frozen=True)
class Capabilities:
    flavour: str                  # "tensorrt" | "tensorrt-rtx"
    version: str
    explicit_batch_flag: bool     # NetworkDefinitionCreationFlag.EXPLICIT_BATCH exists (8.x; deprecated in 10)
    strongly_typed: bool          # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists (9+, 11, RTX)
    precision_flags: bool         # BuilderFlag.FP16 and BuilderFlag.INT8 exist (weak typing; gone in 11 / RTX)
    implicit_int8: bool           # IInt8 calibrator classes + IBuilderConfig.int8_calibrator exist
    optimization_level: bool      # IBuilderConfig.builder_optimization_level (8.6+)
    compute_capabilities: bool    # IBuilderConfig.set_compute_capability (TensorRT-RTX ahead-of-time)
    dla: bool                     # Builder.num_DLA_cores and DeviceType.DLA exist
    timing_cache: bool = True     # timing caches do something (they are deprecated no-ops in TensorRT-RTX)

    def to_dict(self) -> dict:
        return asdict(self)

    def precision_plan(self, precision: str) -> dict:
        """How `precision` is built here: {"onnx": "fp32" | "fp16" | "qdq", "strongly_typed", "flags"}."""
        if precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"unknown precision {precision}")
        onnx = {"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision]
        if self.precision_flags:  # weak typing: FP32 ONNX + FP16 flag; Q/DQ + INT8 (+FP16 for fallback layers)
            flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
            return {"onnx": "fp32" if precision == "fp16" else onnx, "strongly_typed": False, "flags": flags}
        if not self.strongly_typed:
            raise RuntimeError(f"TensorRT {self.version} has neither precision flags nor strongly typed networks")
        return {"onnx": onnx, "strongly_typed": True, "flags": []}


def capabilities(trt: Any) -> Capabilities:
    """Feature-detect the TensorRT module `trt` (real or a test double) by the names it defines."""
    ndcf = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = getattr(trt, "BuilderFlag", None)
    config_cls = getattr(trt, "IBuilderConfig", None)
    builder_cls = getattr(trt, "Builder", None)
    return Capabilities(
        flavour=flavour_of(trt),
        version=str(getattr(trt, "__version__", "0")),
        explicit_batch_flag=hasattr(ndcf, "EXPLICIT_BATCH"),
        strongly_typed=hasattr(ndcf, "STRONGLY_TYPED"),
        precision_flags=hasattr(flags, "FP16") and hasattr(flags, "INT8"),
        implicit_int8=hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(config_cls, "int8_calibrator"),
        optimization_level=hasattr(config_cls, "builder_optimization_level"),
        compute_capabilities=hasattr(config_cls, "set_compute_capability") and hasattr(trt, "ComputeCapability"),
        dla=hasattr(builder_cls, "num_DLA_cores") and hasattr(getattr(trt, "DeviceType", None), "DLA"),
        timing_cache=flavour_of(trt) != "tensorrt-rtx" and hasattr(config_cls, "create_timing_cache"),
    )


def network_flags(trt: Any, strongly_typed: bool = False) -> int:
    """EXPLICIT_BATCH where the flag exists (mandatory for ONNX below 10, a no-op after), plus
    STRONGLY_TYPED when asked; the bit positions come from the module itself."""
    caps = capabilities(trt)
    flags = 0
    if caps.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        if not caps.strongly_typed:
            raise RuntimeError(f"TensorRT {caps.version} has no strongly typed networks")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def supports_strongly_typed(trt: Any) -> bool:
    return capabilities(trt).strongly_typed


def implicit_int8_supported(trt: Any) -> bool:
    """Implicit calibration where the API has it (TensorRT 8.5-10.x), never in TensorRT 11 / RTX."""
    return capabilities(trt).implicit_int8


def precision_flags_supported(trt: Any) -> bool:
    """The FP16/INT8 builder flags (weak typing); gone in TensorRT 11 and TensorRT-RTX."""
    return capabilities(trt).precision_flags


def compute_capability_enum(trt: Any, cc: str):
    """'8.9' -> trt.ComputeCapability.SM89 (TensorRT-RTX); None when this TensorRT has no such member."""
    name = "SM" + str(cc).replace(".", "")
    return getattr(trt.ComputeCapability, name, None)


def detect_gpu() -> Optional[dict]:
    """{'name', 'compute_capability'} of GPU 0 via torch, cuda-python or pycuda; None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - a CUDA torch on a machine without a driver raises here
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        return None
    except Exception:  # noqa: BLE001 - pycuda raises its own error types when no GPU is present
        return None
