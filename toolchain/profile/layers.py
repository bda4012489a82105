"""Per-layer time: ONNX Runtime profiling JSON and TensorRT layer profiles, top-k layers.

ONNX Runtime (`SessionOptions.enable_profiling`) writes a Chrome trace: node events have
`cat == "Node"`, `name == "<node>_kernel_time"`, `dur` in microseconds, `args.op_name`.
TensorRT (trtexec `--exportProfile`, or our IProfiler) gives `[{"count": N}, {"name", "timeMs",
"averageMs", "percentage"}, ...]`.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from toolchain.errors import ToolchainError


def _load(path_or_obj):
    if isinstance(path_or_obj, (str, Path)):
        try:
            return json.loads(Path(path_or_obj).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ToolchainError(f"cannot read profiling JSON {path_or_obj}: {err}") from None
    return path_or_obj


def ort_top_layers(profile, k: int = 10) -> list[dict]:
    """Top-k nodes by total kernel time from an ONNX Runtime profile (path or parsed list)."""
    events = _load(profile)
    total_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    ops: dict[str, str] = {}
    for ev in events:
        if not isinstance(ev, dict) or ev.get("cat") != "Node":
            continue
        name = ev.get("name", "")
        if not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        total_us[node] += float(ev.get("dur", 0))
        calls[node] += 1
        ops[node] = ev.get("args", {}).get("op_name", "?")
    return _top(total_us, calls, ops, k, unit_scale=1e-3)


def trt_top_layers(profile, k: int = 10) -> list[dict]:
    """Top-k layers from a TensorRT layer profile (trtexec --exportProfile format)."""
    entries = _load(profile)
    total_ms: dict[str, float] = {}
    calls: dict[str, int] = {}
    count = 1
    for e in entries:
        if "count" in e and "name" not in e:
            count = int(e["count"]) or 1
            continue
        if "name" not in e:
            continue
        total_ms[e["name"]] = float(e.get("timeMs", e.get("averageMs", 0.0) * count))
        calls[e["name"]] = count
    return _top(total_ms, calls, {n: "TensorRT layer" for n in total_ms}, k, unit_scale=1.0)


def _top(total, calls, ops, k, unit_scale) -> list[dict]:
    grand = sum(total.values()) or 1.0
    ranked = sorted(total.items(), key=lambda kv: kv[1], reverse=True)[:k]
    return [{"name": name, "op": ops.get(name, "?"), "mean_ms": t * unit_scale / max(calls[name], 1),
             "total_ms": t * unit_scale, "percent": 100.0 * t / grand} for name, t in ranked]
