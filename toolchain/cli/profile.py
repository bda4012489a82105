"""`acsl profile --bundle DIR | --engine E --target T [--batch 1,4] [--runs N] [--warmup-s S] [--json OUT]`.

Warm-up by time, N timed runs, trtexec-style summary per batch size; memory, cost, roofline
estimate for the target, and the top-10 layers. With --bundle the accuracy is measured through the
engine too when --config is given (the eval split of that config's data).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from toolchain.artifacts.kinds import ONNX, TENSORRT_ENGINE, is_kind
from toolchain.errors import ToolchainError


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="latency / memory / cost / roofline of a bundle or engine",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="a deploy bundle folder (deploy/<target>)")
    src.add_argument("--engine", help="an ONNX model or TensorRT engine")
    p.add_argument("--target", help="target name (default: the bundle's target; required with --engine)")
    p.add_argument("--precision", help="which of the bundle's precisions (default: the manifest's default)")
    p.add_argument("--expect-manifest-sha256", help="with --bundle: refuse a bundle whose manifest.json has another "
                                                    "sha256 (as load(..., expect_manifest_sha256=) does)")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default: the target's)")
    p.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds (default 1.0)")
    p.add_argument("--config", help="experiment YAML: also measure accuracy on its eval split")
    p.add_argument("--json", dest="json_out", help="write the full record to this JSON file")
    p.set_defaults(func=run)


def _batches(text, target) -> list[int]:
    if not text:
        return list(target.profile_batch_sizes)
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ToolchainError(f"--batch must look like 1,4 (got {text})") from None
    if not out or min(out) < 1:
        raise ToolchainError(f"--batch sizes must be >= 1 (got {text})")
    return out


def _runner_factory(path: Path, target):
    if is_kind(path, TENSORRT_ENGINE):
        from toolchain.runtime.trt_runner import TrtRunner

        return lambda: TrtRunner(path, cuda_graph=True).load()
    from toolchain.runtime import OrtRunner

    return lambda: OrtRunner(path, providers=list(target.onnxruntime.providers),
                             threads=target.onnxruntime.intra_op_threads).load()


def _bundle_runner(args, load_target):
    """The same verification and artifact choice as `toolchain.runtime.load` (every path inside the
    bundle, every artifact checksummed, the manifest checked against the ONNX metadata)."""
    from toolchain.artifacts.bundle import bundle_path, verify_bundle_pinned
    from toolchain.runtime.bundle import _pick_artifact, ort_runner_for

    bundle = Path(args.bundle)
    manifest, args.manifest_sha256 = verify_bundle_pinned(bundle, args.expect_manifest_sha256)
    precision, chosen = _pick_artifact(manifest, args.precision, bundle)
    artifact = chosen[0]
    path = bundle_path(bundle, artifact["file"], "artifact")
    target_name = args.target or (manifest.get("target") or {}).get("name")
    if not target_name:
        raise ToolchainError(f"bundle {bundle} names no target; pass --target (see `acsl targets`)")
    target = load_target(target_name)
    variant_onnx = f"{manifest.get('deployed_variant', 'slim')}{ONNX.suffix}"
    onnx_for_cost = bundle_path(bundle, variant_onnx) if variant_onnx in manifest["files"] else None
    if artifact["kind"] == ONNX.name:
        def make_runner():
            return ort_runner_for(bundle, manifest, [artifact], list(target.onnxruntime.providers),
                                  target.onnxruntime.intra_op_threads)[0]
    else:
        from toolchain.artifacts.sidecar import sidecar_path

        side = sidecar_path(artifact["file"]).as_posix()
        if side not in manifest["files"]:
            raise ToolchainError(f"bundle {bundle}: the engine sidecar {side} is not listed (checksummed) in "
                                 "manifest.json; refused: rebuild the bundle with `acsl deploy`")
        make_runner = _runner_factory(path, target)
    return make_runner, path, precision, target, onnx_for_cost


def run(args: argparse.Namespace) -> int:
    from toolchain.profile.profiler import profile_engine
    from toolchain.runtime.stats import format_trtexec
    from toolchain.targets import load_target

    precision, onnx_for_cost = "fp32", None
    make_runner = None
    if args.bundle:
        make_runner, path, precision, target, onnx_for_cost = _bundle_runner(args, load_target)
    else:
        if args.expect_manifest_sha256:
            raise ToolchainError("--expect-manifest-sha256 only applies to --bundle")
        if not args.target:
            raise ToolchainError("--engine needs --target (e.g. --target cpu); see `acsl targets`")
        path, target = Path(args.engine), load_target(args.target)
        precision = args.precision or "fp32"
        onnx_for_cost = path if is_kind(path, ONNX) else None
    if not path.is_file():
        raise ToolchainError(f"model not found: {path}")
    accuracy_fn = None
    if args.config:
        from toolchain.config import load_config
        from toolchain.runtime import predict_fn
        from toolchain.train.evaluate import evaluate
        from toolchain.train.metrics import primary_metric

        cfg = load_config(args.config)
        metric, _ = primary_metric(cfg.task)

        def accuracy_fn(runner):
            res = evaluate(predict_fn(runner), cfg, "val", max_images=cfg.deploy.eval_images)
            return {"metric": metric, "value": float(res[metric]), "images": res.get("images"), "split": "val"}

    record = profile_engine(make_runner or _runner_factory(path, target), model_file=path,
                            batches=_batches(args.batch, target),
                            runs=args.runs, warmup_s=args.warmup_s, onnx_path=onnx_for_cost, target=target,
                            precision=precision, accuracy_fn=accuracy_fn)
    if args.bundle:
        record["bundle"] = {"path": str(args.bundle), "manifest_sha256": args.manifest_sha256}
    print(f"{path} on {record['measured_on']} ({record['backend']}; CUDA graph: {record['cuda_graph']['note']})")
    for batch, stats in record["latency"].items():
        print(f"batch {batch}: {stats['error']}" if "error" in stats else format_trtexec(stats))
    mem = record["memory"]
    if mem.get("host_peak_rss_delta_bytes") is not None:
        print(f"host peak RSS over idle: {mem['host_peak_rss_delta_bytes'] / 2**20:.1f} MiB; "
              f"model file {record['model_file_bytes'] / 2**20:.2f} MiB")
    if "accuracy" in record:
        print(f"accuracy ({record['accuracy']['split']}): {record['accuracy']['metric']} {record['accuracy']['value']:.4f}")
    roof = record.get("roofline")
    if roof and roof.get("available"):
        print(f"roofline floor on {target.name}: {roof['floor_ms']:.4f} ms ({roof['bound']}-bound) - ESTIMATE")
    for layer in (record.get("layers_top10") or {}).get("layers", []):
        print(f"  {layer['percent']:5.1f}%  {layer['mean_ms']:.4f} ms  {layer['op']:<10} {layer['name']}")
    if args.json_out:
        from toolchain.utils.io import write_json

        write_json(args.json_out, record)
        print(f"record: {args.json_out}")
    return 0
