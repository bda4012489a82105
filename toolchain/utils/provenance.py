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


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores"
    except ImportError:
        pass
    return f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores, no GPU"


def versions() -> dict[str, str]:
    out = {"toolchain": __version__, "python": platform.python_version()}
    for mod in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "torch_pruning", "tensorrt", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - optional packages may fail to import in many ways
            continue
    return out
