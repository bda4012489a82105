"""Profiling: latency statistics (trtexec wording), memory, cost and roofline, Jetson telemetry.

Public entry points:
- `toolchain.runtime.stats.latency_stats(samples_ms, batch)` (it ships with the runtime) and
  `latency.measure_latency(infer, ...)`;
- `memory.PeakRSS`, `memory.gpu_memory()`;
- `cost.onnx_cost(path)` (params, MACs, bytes moved per layer) and `roofline.roofline_floor(...)`;
- `jetson.parse_tegrastats_line(line)`, `jetson.TegrastatsSampler`, `jetson.power_mode()`;
- `layers.ort_top_layers(profile_json)`, `layers.trt_top_layers(profile_json)`;
- `profiler.profile_predictor(...)`: everything above for one engine, as one JSON-ready dict.
"""
