"""Where an artifact came from: versions, git commit, machine."""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from toolchain import __version__


@lru_cache(maxsize=1)
def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """(CPU model name, widest vector ISA: "AVX-512" / "AVX2" / "no AVX2"), from /proc/cpuinfo where there is one.

    Two CPUs of one architecture can train the same config to different weights (other oneDNN kernels, other
    rounding), so results name the model, not just "x86_64"."""
    name, flags = "", set()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return name, isa


def machine() -> str:
    import os

    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores"
    except ImportError:
        pass
    name, isa = cpu_model()
    return f"{platform.system()} {name} ({isa}), {os.cpu_count()} CPU cores, no GPU"


def versions() -> dict[str, str]:
    out = {"toolchain": __version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "torch_pruning", "tensorrt", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - optional packages may fail to import in many ways
            continue
    return out
