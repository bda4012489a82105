"""Roofline estimate of the latency floor on a target from its datasheet FLOP/s and bandwidth.

floor = max(2 x MACs / peak FLOP/s, bytes moved / bandwidth). Always labelled an estimate: it
ignores kernel launch overheads, caches, fusion and clocks. Measured efficiency = floor / measured.
"""
from __future__ import annotations

from typing import Optional


def roofline_floor(macs: int, bytes_moved: int, peak_flops: Optional[float],
                   bandwidth_bytes_s: Optional[float], batch: int = 1, source: str = "datasheet") -> dict:
    """Latency floor (ms) for one batch; `macs` and `bytes_moved` are per image."""
    if not peak_flops or not bandwidth_bytes_s:
        return {"kind": "estimate", "available": False,
                "reason": "the target file gives no peak FLOP/s and memory bandwidth"}
    flops = 2.0 * macs * batch
    moved = float(bytes_moved) * batch
    compute_ms = flops / peak_flops * 1000.0
    memory_ms = moved / bandwidth_bytes_s * 1000.0
    return {
        "kind": "estimate",
        "available": True,
        "source": source,
        "batch": batch,
        "peak_flops": peak_flops,
        "bandwidth_bytes_s": bandwidth_bytes_s,
        "compute_ms": compute_ms,
        "memory_ms": memory_ms,
        "floor_ms": max(compute_ms, memory_ms),
        "bound": "compute" if compute_ms >= memory_ms else "memory",
        "arithmetic_intensity_flop_per_byte": flops / moved if moved else None,
    }


def efficiency(floor_ms: Optional[float], measured_ms: Optional[float]) -> Optional[float]:
    """Fraction of the roofline floor achieved (1.0 = at the floor); None without both numbers."""
    if not floor_ms or not measured_ms:
        return None
    return floor_ms / measured_ms
