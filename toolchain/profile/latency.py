"""Timing loops: warm-up by time, then N timed runs, each synchronised with the device.

`measure_latency` works for any zero-argument callable (an ONNX Runtime session call, a TensorRT
execution, a torch forward); pass `synchronize` for asynchronous devices. For torch on CUDA,
`measure_torch_cuda` times with CUDA events and replays a captured CUDA graph when capture works.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from toolchain.errors import ToolchainError
from toolchain.runtime.stats import latency_stats


def warm_up(infer: Callable[[], object], warmup_s: float, synchronize: Optional[Callable[[], None]] = None,
            clock: Callable[[], float] = time.perf_counter) -> int:
    """Call `infer` until `warmup_s` seconds have passed (at least once); return the call count."""
    calls = 0
    start = clock()
    while True:
        infer()
        if synchronize:
            synchronize()
        calls += 1
        if clock() - start >= warmup_s:
            return calls


def measure_latency(infer: Callable[[], object], *, runs: int = 100, warmup_s: float = 1.0, batch: int = 1,
                    synchronize: Optional[Callable[[], None]] = None,
                    clock: Callable[[], float] = time.perf_counter) -> dict:
    """Warm up by time, then time `runs` calls; returns stats plus the raw samples in ms."""
    if runs < 1:
        raise ToolchainError(f"--runs must be >= 1, got {runs}")
    if warmup_s < 0:
        raise ToolchainError(f"--warmup-s must be >= 0, got {warmup_s}")
    warmup_calls = warm_up(infer, warmup_s, synchronize, clock)
    samples = []
    for _ in range(runs):
        t0 = clock()
        infer()
        if synchronize:
            synchronize()
        samples.append((clock() - t0) * 1000.0)
    out = latency_stats(samples, batch)
    out.update({"warmup_s": warmup_s, "warmup_calls": warmup_calls, "samples_ms": samples,
                "timer": "host wall clock (time.perf_counter), synchronised per run"})
    return out


def measure_torch_cuda(model, example, *, runs: int = 100, warmup_s: float = 1.0, use_cuda_graph: bool = True) -> dict:
    """Time a torch module on CUDA with CUDA events; replays a CUDA graph when capture succeeds."""
    import torch

    if not torch.cuda.is_available():
        raise ToolchainError("measure_torch_cuda needs a CUDA GPU; use measure_latency on CPU")
    model = model.eval().cuda()
    example = example.cuda()
    graph_note = "not requested"
    infer: Callable[[], object]
    with torch.inference_mode():
        infer = lambda: model(example)  # noqa: E731
        if use_cuda_graph:
            infer, graph_note = _capture_cuda_graph(model, example)
        warm_up(infer, warmup_s, torch.cuda.synchronize)
        samples = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            infer()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
    out = latency_stats(samples, int(example.shape[0]))
    out.update({"warmup_s": warmup_s, "samples_ms": samples, "timer": "CUDA events (GPU time per run)",
                "cuda_graph": {"used": graph_note == "used", "note": graph_note}})
    return out


def _capture_cuda_graph(model, example):
    import torch

    def eager():
        return model(example)

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(example)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(example)
        return graph.replay, "used"
    except RuntimeError as err:  # capture is refused by some ops; fall back to eager launches
        return eager, f"capture failed, eager launches ({str(err).splitlines()[0][:120]})"
