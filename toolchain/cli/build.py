"""`acsl build CONFIG --onnx M.onnx --target T [--precision fp32|fp16|int8] [--out DIR]`."""
from __future__ import annotations

from toolchain.cli.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("build", help="build an engine for a target (ONNX Runtime or TensorRT)")
    add_config_args(p)
    p.add_argument("--onnx", required=True, help="ONNX model from `acsl export`")
    p.add_argument("--target", help="target name (see `acsl targets`) or path to a target YAML (default: deploy.target)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="default: the target's default precision")
    p.add_argument("--dla-core", type=int, help="TensorRT: build for this DLA core (GPU fallback on)")
    p.add_argument("--no-gate", action="store_true", help="INT8: skip the accuracy gate (not recommended)")
    p.add_argument("--eval-images", type=int, help="INT8 gate: evaluate only the first N val images")
    p.add_argument("--ignore-lint", action="store_true", help="build even if the graph lint reports errors")
    p.add_argument("--out", help="output folder (default: RUN_DIR/build/TARGET-PRECISION)")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.build import build

    from toolchain.errors import ToolchainError

    if args.eval_images is not None and args.eval_images < 1:  # -1 made the INT8 gate pass on 0 images
        raise ToolchainError(f"--eval-images must be at least 1, got {args.eval_images}")
    if args.dla_core is not None and args.dla_core < 0:
        raise ToolchainError(f"--dla-core must be 0 or more (a DLA core index), got {args.dla_core}")
    cfg = config_from_args(args)
    options = {"gate": not args.no_gate, "ignore_lint": args.ignore_lint,
               "eval_images": args.eval_images or cfg.deploy.eval_images}
    if args.dla_core is not None:
        options["dla_core"] = args.dla_core
    result = build(cfg, args.onnx, args.target or cfg.deploy.target, args.precision, args.out, **options)
    print(f"record: {result.record_path}")
    return 0
