"""Profile one deployed engine: latency per batch size, memory, cost, roofline, per-layer time.

`profile_engine` takes a *factory* that loads a runner (toolchain.runtime's Runner interface:
`infer(feed) -> dict`, `input_names`, `input_shapes`, `backend`, `close()`), so the host RSS
delta covers loading the engine as well as running it. Every number carries where it came from:
`measured_on` (this machine) or `kind: estimate`.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

from toolchain.errors import ToolchainError
from toolchain.profile import jetson
from toolchain.profile.cost import onnx_cost
from toolchain.profile.latency import measure_latency
from toolchain.profile.layers import ort_top_layers
from toolchain.profile.memory import PeakRSS, file_size_bytes, gpu_memory
from toolchain.profile.roofline import efficiency, roofline_floor
from toolchain.utils.provenance import machine


def _input_shape(runner, batch: int) -> tuple[str, tuple[int, ...]]:
    name = runner.input_names[0]
    shape = list(runner.input_shapes[name])
    static_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    if static_batch is not None and static_batch != batch:
        raise ToolchainError(f"engine has a static batch of {static_batch}; batch {batch} needs an engine "
                             "exported with export.dynamic: [batch]")
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape[1:]]
    if any(d is None for d in dims):
        raise ToolchainError(f"engine input '{name}' has dynamic spatial dims {shape}; profile needs a fixed size")
    return name, (batch, *dims)


def cuda_graph_note(runner) -> dict:
    """Whether the backend replays a CUDA graph (runners expose `cuda_graph`; CPU backends cannot)."""
    used = bool(getattr(runner, "cuda_graph", False))
    backend = getattr(runner, "backend", "?")
    if used:
        return {"used": True, "note": f"{backend} replays a captured CUDA graph"}
    if "cpu" in str(getattr(runner, "providers", backend)).lower() or backend in ("onnxruntime",):
        return {"used": False, "note": f"not available: {backend} on CPU has no CUDA graphs"}
    return {"used": False, "note": f"not used by the {backend} runner"}


def latency_by_batch(runner, batches: Sequence[int], runs: int, warmup_s: float, seed: int = 0) -> dict:
    """{"1": stats, "4": stats or {"error": reason}} for one loaded runner."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for batch in batches:
        try:
            name, shape = _input_shape(runner, batch)
        except ToolchainError as err:
            out[str(batch)] = {"error": str(err)}
            continue
        feed = {name: rng.standard_normal(shape).astype(np.float32)}
        sync = getattr(runner, "synchronize", None)
        stats = measure_latency(lambda: runner.infer(feed), runs=runs, warmup_s=warmup_s, batch=batch,
                                synchronize=sync if callable(sync) else None)
        out[str(batch)] = stats
    return out


def ort_layer_profile(onnx_path, input_shape: Sequence[int], runs: int = 10, k: int = 10,
                      threads: Optional[int] = None) -> list[dict]:
    """Separate profiling run with ONNX Runtime's Chrome-trace profiler; top-k nodes by time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="acsl-ortprof-") as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.zeros(tuple(input_shape), np.float32)}
        for _ in range(runs):
            sess.run(None, feed)
        trace = sess.end_profiling()
        return ort_top_layers(trace, k=k)


def profile_engine(make_runner: Callable[[], object], *, model_file, batches: Sequence[int] = (1,),
                   runs: int = 100, warmup_s: float = 1.0, onnx_path=None, target=None,
                   precision: str = "fp32", accuracy_fn: Optional[Callable[[object], dict]] = None,
                   layer_profile: bool = True) -> dict:
    """Everything the report needs about one engine, as a JSON-ready dict."""
    where = machine()
    record: dict = {"measured_on": where, "precision": precision, "model_file": str(model_file),
                    "model_file_bytes": file_size_bytes(model_file), "jetson": jetson.jetson_info()}
    t0 = time.perf_counter()
    sampler = jetson.TegrastatsSampler()
    with PeakRSS() as rss, sampler:
        runner = make_runner()
        try:
            record["backend"] = getattr(runner, "backend", "?")
            record["cuda_graph"] = cuda_graph_note(runner)
            record["latency"] = latency_by_batch(runner, batches, runs, warmup_s)
            record["memory"] = {"gpu": gpu_memory(),
                                "engine_device_memory_bytes": getattr(runner, "device_memory_bytes", None)}
            if accuracy_fn is not None:
                record["accuracy"] = {**accuracy_fn(runner), "measured_on": where,
                                      "through": f"{record['backend']} engine"}
            layer_times = getattr(runner, "layer_times", None)
            if layer_profile and callable(layer_times):
                record["layers_top10"] = {"source": "TensorRT layer profile", "layers": layer_times()[:10]}
        finally:
            runner.close()
    record["memory"].update(rss.as_dict())
    record["tegrastats"] = sampler.summary()
    if onnx_path is not None:
        _add_cost(record, onnx_path, target, precision, batches)
        if layer_profile and "layers_top10" not in record and record.get("backend") == "onnxruntime":
            first_ok = next((b for b, s in record["latency"].items() if "error" not in s), None)
            if first_ok is not None:
                shape = _input_shape_from_onnx(onnx_path, int(first_ok))
                record["layers_top10"] = {"source": "ONNX Runtime profiling JSON (separate run, CPU provider)",
                                          "layers": ort_layer_profile(onnx_path, shape)}
    record["profile_seconds"] = time.perf_counter() - t0
    return record


def _input_shape_from_onnx(onnx_path, batch: int) -> tuple[int, ...]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (batch, *[int(d.dim_value) for d in dims[1:]])


def _add_cost(record: dict, onnx_path, target, precision: str, batches) -> None:
    cost = onnx_cost(onnx_path)
    record["cost"] = {k: cost[k] for k in ("params", "macs", "bytes_moved", "bytes_moved_note")}
    peak, bandwidth, source = _datasheet(target, precision)
    first = next((b for b, s in record["latency"].items() if "error" not in s), None)
    batch = int(first) if first else 1
    roof = roofline_floor(cost["macs"], cost["bytes_moved"], peak, bandwidth, batch=batch, source=source)
    roof["target"] = getattr(target, "name", None)
    if roof["available"] and first is not None:
        measured = record["latency"][first]["median_ms"]
        same_device = bool(record["jetson"].get("is_jetson")) or getattr(target, "name", "") == "cpu"
        roof["efficiency"] = efficiency(roof["floor_ms"], measured) if same_device else None
        if not same_device:
            roof["efficiency_note"] = "not computed: latency was measured on a different machine than the target"
    record["roofline"] = roof


def _datasheet(target, precision: str):
    sheet = getattr(target, "datasheet", None)
    if sheet is None:
        return None, None, "none"
    get = (lambda k: sheet.get(k)) if isinstance(sheet, dict) else (lambda k: getattr(sheet, k, None))
    peaks = get("peak_flops") or {}
    peak_for = (lambda k: peaks.get(k)) if isinstance(peaks, dict) else (lambda k: getattr(peaks, k, None))
    peak = peak_for(precision) or peak_for("fp32")
    return peak, get("memory_bandwidth"), get("source") or "datasheet"
