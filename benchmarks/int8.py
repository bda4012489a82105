"""FP32 vs INT8 (Q/DQ) on ONNX Runtime CPU for CamVid SegNet: mIoU, model size, CPU latency, gate.

    python benchmarks/int8.py --checkpoint runs/camvid_segnet/dense/best.pt [--config configs/camvid_segnet.yaml]

Exports the checkpoint (parity checked), draws the calibration set from the train split, runs the
accuracy gate on val (per-node fallback if needed), then measures both models on the test split
and times single-image CPU inference. Writes benchmarks/results/int8_camvid_segnet.json and .md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.calibration.calib_set import calibration_set  # noqa: E402
from toolchain.calibration.gate import ort_metric, run_int8_gate  # noqa: E402
from toolchain.config import load_config  # noqa: E402
from toolchain.export import export_checkpoint  # noqa: E402
from toolchain.runtime.ort_runner import OrtRunner  # noqa: E402
from toolchain.utils.io import atomic_write_text, write_json  # noqa: E402
from toolchain.utils.provenance import git_commit, machine, versions  # noqa: E402


def cpu_latency(path: Path, input_size, runs: int, threads) -> dict:
    x = np.random.default_rng(0).standard_normal((1, 3, *input_size)).astype(np.float32)
    times = []
    with OrtRunner(path, ["CPUExecutionProvider"], threads=threads) as runner:
        for _ in range(3):
            runner.infer({"input": x})
        for _ in range(runs):
            runner.infer({"input": x})
            times.append(runner.last_inference_s * 1e3)
    t = np.array(times)
    return {"runs": runs, "warmup": 3, "batch": 1, "threads": threads, "mean_ms": float(t.mean()),
            "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "camvid_segnet.yaml"))
    p.add_argument("--profile", help="config profile (e.g. full for the 240x320 width-1.0 model)")
    p.add_argument("--checkpoint", required=True, help="dense (or slim) CamVid SegNet checkpoint")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, help="cap evaluated images (quick checks)")
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    args = p.parse_args(argv)
    command = "python benchmarks/int8.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    cfg = load_config(args.config, profile=args.profile)
    out = Path(args.out)
    work = REPO / "benchmarks" / ".runs" / "int8_work"  # ONNX + calibration arrays: large, never committed
    started = time.perf_counter()
    exported = export_checkpoint(cfg, args.checkpoint, out=work / "fp32.onnx")
    calib = calibration_set(cfg)
    calib.save(work / "calibration")
    gate = run_int8_gate(cfg, exported.onnx_path, work, calib, max_images=args.max_images)
    int8_path = Path(gate.int8_onnx) if gate.int8_onnx else work / "model.int8.rejected.onnx"
    rows = {}
    for label, path in (("fp32", exported.onnx_path), ("int8", int8_path)):
        _, metrics = ort_metric(cfg, path, args.split, args.max_images)
        rows[label] = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                       "size_bytes": path.stat().st_size,
                       "latency": cpu_latency(path, cfg.data.input_size, args.latency_runs, args.threads)}
    result = {
        "what": "FP32 vs INT8 Q/DQ (ONNX Runtime quantize_static: QDQ, symmetric, per-channel weights) on ORT CPU",
        "config": str(args.config), "profile": args.profile, "checkpoint": str(args.checkpoint),
        "model": cfg.model.name, "width": cfg.model.width, "input_size": list(cfg.data.input_size),
        "split": args.split, "calibration": calib.manifest() | {"method": cfg.quantize.method},
        "fp32": rows["fp32"], "int8": rows["int8"], "gate": gate.to_dict(),
        "miou_ratio": rows["int8"]["miou"] / rows["fp32"]["miou"] if rows["fp32"].get("miou") else None,
        "command": command, "machine": machine(), "git_commit": git_commit(), "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "int8_camvid_segnet.json", result)
    atomic_write_text(out / "int8_camvid_segnet.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    f, q = r["fp32"], r["int8"]
    lines = [f"# INT8 vs FP32: {r['model']} (width {r['width']}, {r['input_size'][0]}x{r['input_size'][1]}), "
             "ONNX Runtime CPU", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}; commit {r['git_commit']}", "",
             f"| precision | mIoU ({r['split']}) | size (MB) | median latency (ms) | p90 (ms) |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in (("FP32", f), ("INT8 (Q/DQ)", q)):
        lines.append(f"| {name} | {row.get('miou', float('nan')):.2f} | {row['size_bytes'] / 1e6:.2f} | "
                     f"{row['latency']['median_ms']:.2f} | {row['latency']['p90_ms']:.2f} |")
    g = r["gate"]
    lines += ["", f"Gate (val, {g['metric']} >= {g['gate']} x FP32): {'passed' if g['passed'] else 'FAILED'}; "
              f"FP32 {g['fp32_metric']:.3f}, INT8 {g['int8_metric']:.3f}; nodes kept in FP32: "
              f"{', '.join(g['excluded_nodes']) or 'none'}.",
              f"Calibration: {r['calibration']['images']} train images, seed {r['calibration']['seed']}, "
              f"{r['calibration']['method']}. Latency: batch 1, {f['latency']['runs']} runs after 3 warm-up."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from toolchain.errors import script_main

    sys.exit(script_main(main, "int8"))
