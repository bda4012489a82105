"""Memory: host resident set size from /proc, GPU memory where a backend can tell, file sizes.

Peak RSS over the idle process: `PeakRSS` records the RSS before the engine is loaded, resets the
kernel's high-water mark (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0) and reads `VmHWM` after
the run; where the reset is refused, a background thread samples `VmRSS` instead.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")


def _status_kib(field: str, status_text: Optional[str] = None) -> Optional[int]:
    text = status_text if status_text is not None else (_STATUS.read_text() if _STATUS.exists() else "")
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return None


def rss_bytes() -> Optional[int]:
    """Current resident set size of this process (None where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> Optional[int]:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc malloc_trim), so RSS is a clean baseline."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is merely less clean
        pass


class PeakRSS:
    """Context manager: `.idle_bytes`, `.peak_bytes`, `.delta_bytes`, `.method` after exit."""

    def __init__(self, sample_interval_s: float = 0.005):
        self.sample_interval_s = sample_interval_s
        self.idle_bytes: Optional[int] = None
        self.peak_bytes: Optional[int] = None
        self.method = "unavailable"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sampled_peak = 0

    def __enter__(self) -> "PeakRSS":
        release_freed_memory()  # else an engine reuses what an earlier one freed and its delta reads ~0
        self.idle_bytes = rss_bytes()
        if self.idle_bytes is None:
            return self
        if reset_peak_rss():
            self.method = "VmHWM after clear_refs reset"
        else:
            self.method = "VmRSS sampled every 5 ms"
            self._sampled_peak = self.idle_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            now = rss_bytes() or 0
            self._sampled_peak = max(self._sampled_peak, now)

    def __exit__(self, *exc) -> None:
        if self.idle_bytes is None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._sampled_peak, rss_bytes() or 0)
        else:
            self.peak_bytes = peak_rss_bytes()

    @property
    def delta_bytes(self) -> Optional[int]:
        if self.idle_bytes is None or self.peak_bytes is None:
            return None
        return max(0, self.peak_bytes - self.idle_bytes)

    def as_dict(self) -> dict:
        return {"host_idle_rss_bytes": self.idle_bytes, "host_peak_rss_bytes": self.peak_bytes,
                "host_peak_rss_delta_bytes": self.delta_bytes, "host_rss_method": self.method}


def gpu_memory() -> Optional[dict]:
    """GPU memory in use on device 0 via torch (None without CUDA)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"gpu_used_bytes": int(total - free), "gpu_total_bytes": int(total),
            "torch_max_allocated_bytes": int(torch.cuda.max_memory_allocated())}


def file_size_bytes(path) -> Optional[int]:
    p = Path(path)
    return p.stat().st_size if p.is_file() else None
