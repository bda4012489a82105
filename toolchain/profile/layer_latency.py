"""Per-layer latency tables for latency-budget pruning (issue 11; HALP, NetAdapt).

Every convolution of a model is measured on the target's runner, as a one-conv (+ ReLU) ONNX graph at its
deployed input size and precision, at a grid of input x output widths (depthwise: one width). The model's
latency at any kept widths is predicted as `scale x sum over convs of the interpolated table`, where
`scale = measured dense model / table sum at dense widths` absorbs what the tables leave out (layout
reorders, pooling, upsampling, unpooling). Tables are cached as JSON by target + machine + model.

Runners: ONNX Runtime (targets with backend onnxruntime; FP32). A TensorRT target needs its table measured
on the device with the TensorRT runner: `build_latency_table` raises a one-line error until then.

    table = build_latency_table(graph, load_target("cpu"), cache_dir="runs/latency_tables")
    model_ms = LatencyModel(graph, table)          # callable: kept widths per group -> predicted ms
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from toolchain.errors import ToolchainError

TABLE_VERSION = 1


@dataclass(frozen=True)
class ConvSpec:
    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    depthwise: bool
    input_hw: tuple[int, int]

    def as_dict(self) -> dict:
        return {"name": self.name, "in": self.in_channels, "out": self.out_channels, "kernel": list(self.kernel),
                "stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation),
                "depthwise": self.depthwise, "input_hw": list(self.input_hw)}


def conv_specs(model: nn.Module, input_size: tuple[int, int]) -> list[ConvSpec]:
    """Every nn.Conv2d of `model` (plain or depthwise) with the spatial size of its input at `input_size`."""
    from toolchain.models.complexity import probe_forward

    shapes: dict[str, tuple[int, int]] = {}
    probe_forward(model, {module: (lambda mod, inputs, output, name=name: shapes.__setitem__(name, tuple(inputs[0].shape[-2:])))
                          for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}, input_size)
    specs = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or name not in shapes:
            continue
        if m.groups not in (1, m.in_channels) or (m.groups > 1 and m.in_channels != m.out_channels):
            raise ToolchainError(f"layer '{name}': grouped convolutions other than depthwise are not supported by the "
                                 "latency table; use a params or flops budget")
        if isinstance(m.padding, str):
            raise ToolchainError(f"layer '{name}': string padding is not supported by the latency table")
        hw = (int(shapes[name][0]), int(shapes[name][1]))
        specs.append(ConvSpec(name, m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride),
                              tuple(m.padding), tuple(m.dilation), m.groups > 1, hw))
    return specs


def width_grid(channels: int, points: int, round_to: int = 1) -> list[int]:
    """`points` widths from channels/points to channels (rounded to `round_to`, at least 1), ascending."""
    values = set()
    for k in range(1, points + 1):
        w = max(1, int(round(channels * k / points)))
        if round_to > 1:
            w = min(channels, max(round_to, int(round(w / round_to)) * round_to))
        values.add(w)
    values.add(channels)
    return sorted(values)


def _conv_onnx(spec: ConvSpec, cin: int, cout: int) -> bytes:
    """A one-conv + ReLU ONNX model (FP32, random weights) for width cin -> cout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    group = cin if spec.depthwise else 1
    if spec.depthwise:
        cout = cin
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((cout, cin // group, *spec.kernel)).astype(np.float32) * 0.1
    bias = np.zeros(cout, np.float32)
    h, w = spec.input_hw
    conv = helper.make_node("Conv", ["input", "W", "B"], ["conv"], kernel_shape=list(spec.kernel),
                            strides=list(spec.stride), pads=[spec.padding[0], spec.padding[1]] * 2,
                            dilations=list(spec.dilation), group=group)
    relu = helper.make_node("Relu", ["conv"], ["output"])
    graph = helper.make_graph([conv, relu], "conv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_session(model_bytes_or_path, threads: Optional[int]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    source = model_bytes_or_path if isinstance(model_bytes_or_path, bytes) else str(model_bytes_or_path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def time_session(session, shape: Sequence[int], runs: int, warmup: int = 2) -> float:
    """Median ms of `runs` single-image inferences after `warmup` calls."""
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples))


def ort_conv_ms(spec: ConvSpec, cin: int, cout: int, *, threads: Optional[int] = 1, runs: int = 10) -> float:
    session = ort_session(_conv_onnx(spec, cin, cout), threads)
    return time_session(session, (1, cin, *spec.input_hw), runs)


_ISA_KEY = {"AVX-512": "avx512", "AVX2": "avx2", "no AVX2": "base"}  # the key's spelling of provenance's ISA names


def machine_id() -> str:
    """CPU model + ISA + core count: tables measured on one machine are not reused on another."""
    from toolchain.utils.provenance import cpu_model

    name, isa = cpu_model()
    return f"{name} {_ISA_KEY[isa]} {os.cpu_count()}cpu"



class LatencyTable:
    """Measured ms per conv over a width grid; `lookup(name, cin, cout)` interpolates (bilinear; linear to 0
    below the grid)."""

    def __init__(self, data: dict):
        self.data = data
        self.layers = {entry["name"]: entry for entry in data["layers"]}

    def lookup(self, name: str, cin: float, cout: float) -> float:
        entry = self.layers[name]
        if entry["depthwise"]:
            return _interp1(entry["in_grid"], entry["ms"][0], min(cin, cout))
        ms = np.asarray(entry["ms"], dtype=float)  # [in index][out index]
        rows = [_interp1(entry["out_grid"], list(ms[i]), cout) for i in range(len(entry["in_grid"]))]
        return _interp1(entry["in_grid"], rows, cin)

    @property
    def dense_model_ms(self) -> float:
        return float(self.data["dense_model_ms"])


def _interp1(grid: Sequence[int], values: Sequence[float], x: float) -> float:
    grid, values = list(grid), list(values)
    if len(grid) == 1:
        return float(values[0]) * (x / grid[0] if x < grid[0] else 1.0)
    if x < grid[0]:
        return float(values[0]) * max(x, 0.0) / grid[0]
    return float(np.interp(x, grid, values))


def _table_key(target_name: str, precision: str, machine: str, threads, specs: list[ConvSpec], points: int,
               round_to: int, model_key: str) -> str:
    from toolchain.utils.io import sha256_json

    return sha256_json({"v": TABLE_VERSION, "target": target_name, "precision": precision, "machine": machine,
                        "threads": threads, "points": points, "round_to": round_to, "model": model_key,
                        "layers": [s.as_dict() for s in specs]})[:16]


def build_latency_table(graph, target, *, precision: Optional[str] = None, cache_dir: str | Path,
                        points: int = 4, round_to: int = 1, threads: Optional[int] = None, runs: int = 10,
                        measure: Optional[Callable[[ConvSpec, int, int], float]] = None,
                        dense_ms: Optional[Callable[[nn.Module], float]] = None, log=print) -> LatencyTable:
    """The latency table of `graph.model` on `target` (cached in `cache_dir`; measured when absent).

    `measure(spec, cin, cout) -> ms` and `dense_ms(model) -> ms` replace the ONNX Runtime timings (tests).
    Threads: `threads`, else the target's onnxruntime.intra_op_threads, else 1.
    """
    precision = precision or target.default_precision
    if measure is None and target.backend != "onnxruntime":
        raise ToolchainError(f"target '{target.name}' builds with {target.backend}: its latency table must be measured "
                             "on the device with the TensorRT runner, which this toolchain does not do yet; use a "
                             "params or flops budget, or an onnxruntime target")
    if measure is None and precision != "fp32":
        raise ToolchainError(f"latency tables are measured in fp32 on ONNX Runtime, not {precision}; use the "
                             "target's fp32 (prune.round_to: target:fp32) or a params/flops budget")
    threads = threads or target.onnxruntime.intra_op_threads or 1
    model = graph.model
    specs = conv_specs(model, graph.input_size)
    prunable_in, prunable_out = _prunable_dims(graph)
    model_key = type(model).__name__ + ":" + ",".join(f"{s.name}:{s.in_channels}x{s.out_channels}" for s in specs)
    machine = machine_id() if measure is None else "injected"
    key = _table_key(target.name, precision, machine, threads, specs, points, round_to, model_key)
    path = Path(cache_dir) / f"{target.name}_{precision}_{key}.json"
    if path.is_file():
        return LatencyTable(json.loads(path.read_text(encoding="utf-8")))
    measure = measure or (lambda spec, cin, cout: ort_conv_ms(spec, cin, cout, threads=threads, runs=runs))
    t0 = time.time()
    layers = []
    for spec in specs:
        in_grid = width_grid(spec.in_channels, points, round_to) if spec.name in prunable_in else [spec.in_channels]
        out_grid = width_grid(spec.out_channels, points, round_to) if spec.name in prunable_out else [spec.out_channels]
        if spec.depthwise:
            grid = sorted(set(in_grid) | set(out_grid))  # one width: in = out = groups
            layers.append({**spec.as_dict(), "in_grid": grid, "out_grid": None,
                           "ms": [[measure(spec, c, c) for c in grid]]})
            continue
        ms = [[measure(spec, cin, cout) for cout in out_grid] for cin in in_grid]
        layers.append({**spec.as_dict(), "in_grid": in_grid, "out_grid": out_grid, "ms": ms})
    dense = (dense_ms or (lambda m: model_ms(m, graph.input_size, threads=threads, runs=max(runs, 10))))(model)
    data = {"version": TABLE_VERSION, "target": target.name, "precision": precision, "machine": machine,
            "threads": threads, "points": points, "round_to": round_to, "input_size": list(graph.input_size),
            "model": type(model).__name__, "dense_model_ms": dense, "layers": layers,
            "measure_s": round(time.time() - t0, 1)}
    from toolchain.utils.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    if log:
        log(f"latency table: {len(layers)} convs on {target.name} ({machine}, {threads} thread(s)) in "
            f"{data['measure_s']} s -> {path}")
    return LatencyTable(data)


def _prunable_dims(graph) -> tuple[set, set]:
    ins, outs = set(), set()
    for group in graph.groups:
        for slot in group.layers:
            (outs if slot.dim == "out" else ins).add(slot.name)
    return ins, outs


def onnx_bytes(model: nn.Module, input_size: tuple[int, int]) -> bytes:
    """`model` exported to ONNX opset 17 in memory, batch 1 (its train/eval mode is restored)."""
    import io
    import warnings

    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(1, 3, *input_size), buf, input_names=["input"],
                              output_names=["output"], opset_version=17, dynamo=False)
    finally:
        model.train(was_training)
    return buf.getvalue()


def model_ms(model: nn.Module, input_size: tuple[int, int], *, threads: Optional[int] = 1, runs: int = 20) -> float:
    """Median ONNX Runtime CPU ms of `model` (exported to opset 17 in memory), batch 1."""
    return time_session(ort_session(onnx_bytes(model, input_size), threads), (1, 3, *input_size), runs, warmup=3)


def relative_ms(reference: nn.Module, model: nn.Module, input_size: tuple[int, int], *, threads: Optional[int] = 1,
                rounds: int = 7, runs: int = 15) -> tuple[float, float, float]:
    """(median of per-round ms ratios model / reference, model ms, reference ms): the two timed in alternating
    rounds, so load from other processes slows both alike and the ratio stays meaningful on a busy host."""
    shape = (1, 3, *input_size)
    sessions = [ort_session(onnx_bytes(m, input_size), threads) for m in (reference, model)]
    for s in sessions:
        time_session(s, shape, runs=1, warmup=3)
    ref_ms, model_ms_, ratios = [], [], []
    for _ in range(rounds):
        r = time_session(sessions[0], shape, runs, warmup=1)
        m = time_session(sessions[1], shape, runs, warmup=1)
        ref_ms.append(r)
        model_ms_.append(m)
        ratios.append(m / r)
    return float(np.median(ratios)), float(np.median(model_ms_)), float(np.median(ref_ms))


class LatencyModel:
    """Predicted model latency (ms) as a function of the kept width of every group of `graph`."""

    def __init__(self, graph, table: LatencyTable):
        from toolchain.prune.select import CostModel

        self.graph = graph
        self.table = table
        self.cost = CostModel(graph)
        self.sizes = [g.size for g in graph.groups]
        self.names = [n for n in table.layers if n in self.cost._layers]
        self.dense_table_ms = self._table_sum([0] * len(self.sizes))
        self.scale = table.dense_model_ms / self.dense_table_ms if self.dense_table_ms > 0 else 1.0
        self.offset = 0.0  # ms the table cannot see (unpooling, resizes, reorders): set by `calibrate`

    def _table_sum(self, removed: Sequence[int]) -> float:
        total = 0.0
        for name in self.names:
            out, inp, _ = self.cost._layer_dims(self.cost._layers[name], removed)
            total += self.table.lookup(name, inp, out)
        return total

    def table_ms(self, kept: Sequence[int]) -> float:
        """The table's sum over the prunable convs at these widths (uncalibrated)."""
        return self._table_sum([s - k for s, k in zip(self.sizes, kept)])

    def __call__(self, kept: Sequence[int]) -> float:
        return self.scale * self.table_ms(kept) + self.offset

    def calibrate(self, kept: Sequence[int], measured_ms: float,
                  reference: Optional[tuple[Sequence[int], float]] = None) -> bool:
        """Fit predicted = scale x table + offset through two measured points: a pruned model (`kept`,
        `measured_ms`) and `reference` (another measured plan's (kept, ms); default: the dense model).

        The first prediction scales every op with the convs; ops outside the table (SegNet's unpooling,
        resizes, layout reorders) shrink less, so an aggressive plan measures slower than predicted.
        Returns False (model unchanged) when the two points give no usable (positive) slope."""
        t_ref, m_ref = (self.dense_table_ms, self.table.dense_model_ms) if reference is None else (
            self.table_ms(reference[0]), reference[1])
        t_slim = self.table_ms(kept)
        if abs(t_ref - t_slim) <= 1e-9 * self.dense_table_ms or (m_ref - measured_ms) / (t_ref - t_slim) <= 0:
            return False
        self.scale = (m_ref - measured_ms) / (t_ref - t_slim)
        self.offset = m_ref - self.scale * t_ref
        return True

    def per_channel_gain(self) -> list[float]:
        """Predicted ms saved per channel when a quarter of one group is removed (the others dense)."""
        dense = self(self.sizes)
        gains = []
        for i, size in enumerate(self.sizes):
            step = max(1, size // 4)
            kept = list(self.sizes)
            kept[i] = size - step
            gains.append(max(dense - self(kept), 0.0) / step)
        return gains
