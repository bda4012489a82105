"""Latency statistics in trtexec's wording: min / max / mean / median / p90 / p95 / p99 / std, throughput.

Percentiles use the nearest-rank definition (the smallest sample with at least p% of the samples
at or below it), so every reported percentile is a latency that was actually measured. `std` is
the population standard deviation. Throughput is inferences (queries) per second over the timed
runs' total time, and images per second = queries per second x batch.
"""
from __future__ import annotations

import math
from typing import Sequence

from toolchain.errors import ToolchainError

PERCENTILES = (90, 95, 99)


def percentile_nearest_rank(sorted_samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0 < p <= 100) of already sorted samples, nearest-rank method."""
    if not sorted_samples:
        raise ValueError("no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    rank = math.ceil(p / 100.0 * len(sorted_samples))
    return float(sorted_samples[max(rank, 1) - 1])


def median(sorted_samples: Sequence[float]) -> float:
    n = len(sorted_samples)
    mid = n // 2
    if n % 2:
        return float(sorted_samples[mid])
    return (float(sorted_samples[mid - 1]) + float(sorted_samples[mid])) / 2.0


def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> dict:
    """Summary of per-inference latencies in milliseconds (one entry per timed run)."""
    if len(samples_ms) == 0:
        raise ToolchainError("no timed runs to summarise; use --runs 1 or more")
    if batch < 1:
        raise ToolchainError(f"batch must be >= 1, got {batch}")
    ordered = sorted(float(s) for s in samples_ms)
    n = len(ordered)
    mean = sum(ordered) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in ordered) / n)
    total_s = sum(ordered) / 1000.0
    qps = n / total_s if total_s > 0 else float("inf")
    out = {
        "runs": n,
        "batch": batch,
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "mean_ms": mean,
        "median_ms": median(ordered),
    }
    for p in PERCENTILES:
        out[f"p{p}_ms"] = percentile_nearest_rank(ordered, p)
    out["std_ms"] = std
    out["throughput_qps"] = qps
    out["throughput_ips"] = qps * batch
    return out


def format_trtexec(stats: dict, label: str = "Latency") -> str:
    """Two lines the way trtexec prints its performance summary."""
    pct = ", ".join(f"percentile({p}%) = {stats[f'p{p}_ms']:.4g} ms" for p in PERCENTILES)
    return (f"Throughput: {stats['throughput_qps']:.4g} qps (batch {stats['batch']}, "
            f"{stats['throughput_ips']:.4g} images/s)\n"
            f"{label}: min = {stats['min_ms']:.4g} ms, max = {stats['max_ms']:.4g} ms, "
            f"mean = {stats['mean_ms']:.4g} ms, median = {stats['median_ms']:.4g} ms, {pct}, "
            f"std = {stats['std_ms']:.4g} ms ({stats['runs']} runs)")
