"""TensorRT version detection and the few API differences between 8.5 and 10.x.

One code path for TensorRT 8.5 to 10.x: the name-based tensor API. What differs is feature-detected
here: the EXPLICIT_BATCH network flag (required below 10, gone from 10 on), the builder optimisation
level (8.6+), strongly typed networks (9+), and implicit INT8 calibration (deprecated in 10.1).
`tensorrt` itself is imported lazily; nothing in this module needs it to be installed except
`import_tensorrt`.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from toolchain.errors import MissingDependency

INSTALL_HINT = ("on Jetson it ships with JetPack (python3-libnvinfer); on a desktop use NVIDIA's "
                "tensorrt wheels or the TensorRT tarball")


def import_tensorrt(purpose: str = "building or running a TensorRT engine"):
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional heavy dependency
    except ImportError:
        raise MissingDependency("tensorrt", purpose, install=INSTALL_HINT) from None
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except MissingDependency:
        return False
    return True


def parse_version(version: str) -> tuple[int, int, int]:
    """'8.6.1.6' -> (8, 6, 1); '10.3.0' -> (10, 3, 0)."""
    numbers = [int(n) for n in re.findall(r"\d+", str(version))[:3]]
    if not numbers:
        raise ValueError(f"not a version: {version!r}")
    while len(numbers) < 3:
        numbers.append(0)
    return tuple(numbers)  # type: ignore[return-value]


def network_flags(trt: Any) -> int:
    """EXPLICIT_BATCH below TensorRT 10 (where it is mandatory for ONNX), 0 from 10 on."""
    major = parse_version(trt.__version__)[0]
    if major >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def supports_strongly_typed(trt: Any) -> bool:
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def implicit_int8_supported(version: str) -> bool:
    """Implicit calibration exists up to 10.x (deprecated since 10.1) and is gone in 11."""
    return parse_version(version)[0] < 11


def precision_flags_supported(version: str) -> bool:
    """The FP16/INT8 builder flags are gone in TensorRT 11 (strongly typed networks instead)."""
    return parse_version(version)[0] < 11


def detect_gpu() -> Optional[dict]:
    """{'name', 'compute_capability'} of GPU 0 via torch, cuda-python or pycuda; None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
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
