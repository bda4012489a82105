"""`acsl export CONFIG --checkpoint C [--opset 17] [--dynamic batch,hw] [--simplify onnxsim|onnxslim|none]`."""
from __future__ import annotations

from toolchain.cli.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX with parity checked against torch")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="dense or slim checkpoint (.pt)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: export.opset in the config, 17)")
    p.add_argument("--dynamic", help="comma-separated dynamic dimensions: batch, hw (default: static)")
    p.add_argument("--simplify", choices=["onnxsim", "onnxslim", "none"],
                   help="simplifier (default onnxsim, onnxslim as fallback)")
    p.add_argument("--target", help="lint the graph for this target (default: deploy.target)")
    p.add_argument("--real-images", type=int, default=2, help="val images used for the parity check (0: random only)")
    p.add_argument("--out", help="output .onnx path (default: RUN_DIR/export/CHECKPOINT.onnx)")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.export import export_checkpoint

    from toolchain.errors import ToolchainError

    if args.real_images < 0:
        raise ToolchainError(f"--real-images must be 0 (random inputs only) or more, got {args.real_images}")
    cfg = config_from_args(args)
    from toolchain.targets import load_target

    load_target(args.target or cfg.deploy.target)  # an unknown target fails before the .onnx is written
    dynamic = [d.strip() for d in args.dynamic.split(",") if d.strip()] if args.dynamic is not None else None
    result = export_checkpoint(cfg, args.checkpoint, out=args.out, opset=args.opset, dynamic=dynamic,
                               simplify=args.simplify, target=args.target, real_images=args.real_images)
    print(f"record: {result.record_path}")
    return 0
