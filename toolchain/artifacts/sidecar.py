"""The JSON sidecar written next to every serialized TensorRT engine, and the load-time check.

An engine only loads on the TensorRT version and GPU architecture it was built with. The sidecar
records those (plus precision, shapes, DLA core, the ONNX it came from and the engine's own
sha256) so a mismatched or corrupt engine is a one-line error saying to rebuild on the device,
not a crash inside TensorRT.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from toolchain import __version__
from toolchain.artifacts.trt_compat import parse_version
from toolchain.errors import ToolchainError
from toolchain.utils.io import sha256_file, write_json

SIDECAR_FORMAT = "acsl-trt-engine/1"
REQUIRED_KEYS = ("format", "tensorrt_version", "gpu_name", "compute_capability", "precision", "input_shapes",
                 "dla_core", "onnx_sha256", "engine_sha256", "target")


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def make_sidecar(*, engine_path: Path, tensorrt_version: str, gpu: Optional[dict], precision: str,
                 input_shapes: dict, dla_core: Optional[int], onnx_sha256: str, target: str,
                 extra: Optional[dict] = None) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": tensorrt_version,
        "gpu_name": (gpu or {}).get("name", "unknown"),
        "compute_capability": (gpu or {}).get("compute_capability", "unknown"),
        "precision": precision,
        "input_shapes": input_shapes,
        "dla_core": dla_core,
        "onnx_sha256": onnx_sha256,
        "engine_sha256": sha256_file(engine_path),
        "target": target,
        "toolchain_version": __version__,
        **(extra or {}),
    }


def write_sidecar(engine_path: str | Path, sidecar: dict) -> Path:
    return write_json(sidecar_path(engine_path), sidecar)


def read_sidecar(engine_path: str | Path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ToolchainError(f"engine {engine_path} has no sidecar {path.name}: rebuild it with `acsl build` "
                             "(or build_engine.sh) on the device")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ToolchainError(f"engine sidecar {path} is corrupt (not JSON): rebuild the engine on the device") from None
    missing = [k for k in REQUIRED_KEYS if k not in data] if isinstance(data, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ToolchainError(f"engine sidecar {path} lacks {', '.join(missing)}: rebuild the engine on the device")
    return data


def verify_engine_file(engine_path: str | Path, sidecar: dict) -> None:
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise ToolchainError(f"engine not found: {engine_path}")
    if sha256_file(engine_path) != sidecar["engine_sha256"]:
        raise ToolchainError(f"engine {engine_path} does not match its sidecar checksum (corrupt or replaced): "
                             "rebuild it on the device")


def check_engine_compatible(sidecar: dict, tensorrt_version: str, gpu: Optional[dict],
                            flavour: str = "tensorrt") -> list[str]:
    """Raise a one-line ToolchainError if this machine cannot load the engine; return soft warnings.

    `compute_capability` may list several ("8.6,8.9": a TensorRT-RTX ahead-of-time build)."""
    problems = []
    built = sidecar["tensorrt_version"]
    built_flavour = sidecar.get("tensorrt_flavour", "tensorrt")
    if built_flavour != flavour:
        problems.append(f"{built_flavour} {built} (this machine has {flavour} {tensorrt_version})")
    else:
        try:
            built_version = parse_version(str(built))
        except ValueError:  # an edited or corrupt sidecar: one line, not a ValueError traceback
            raise ToolchainError(f"engine sidecar says tensorrt_version {built!r}, which is not a version: the sidecar "
                                 "is corrupt; rebuild the engine on the device") from None
        if built_version != parse_version(tensorrt_version):
            problems.append(f"TensorRT {built} (this machine has {tensorrt_version})")
    here_cc = (gpu or {}).get("compute_capability")
    built_ccs = [c.strip() for c in str(sidecar["compute_capability"]).split(",")]
    if here_cc is None:
        problems.append(f"a GPU of compute capability {sidecar['compute_capability']} (no GPU found here)")
    elif "unknown" not in built_ccs and here_cc not in built_ccs:
        problems.append(f"{sidecar['gpu_name']} (compute capability {sidecar['compute_capability']}; this GPU is "
                        f"{(gpu or {}).get('name')} with {here_cc})")
    if problems:
        raise ToolchainError(f"engine was built for {' and '.join(problems)}; engines are not portable: rebuild it "
                             "on this device with `acsl build` or the build_engine.sh next to it")
    warnings = []
    if "unknown" in built_ccs:  # not recorded at build time: it may be another architecture
        warnings.append(f"engine sidecar does not record the GPU architecture it was built for; if it fails to load "
                        f"on this GPU (compute capability {here_cc}), rebuild it here")
    if gpu and sidecar["gpu_name"] not in ("unknown", gpu.get("name")):
        warnings.append(f"engine was tuned on {sidecar['gpu_name']}, running on {gpu.get('name')} (same architecture)")
    return warnings
