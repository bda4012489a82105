"""`acsl eval CONFIG --checkpoint C [--split test]`: metrics of a checkpoint on a split."""
from __future__ import annotations

import json

from toolchain.cli.common import add_config_args, config_from_args
from toolchain.errors import ToolchainError


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) from acsl train / prune")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.data import describe_source
    from toolchain.models.complexity import model_summary
    from toolchain.train.checkpoint import load_model
    from toolchain.train.evaluate import evaluate
    from toolchain.train.metrics import primary_metric

    if args.max_images is not None and args.max_images < 1:  # 0 images would print a metric of 0.000
        raise ToolchainError(f"--max-images must be at least 1, got {args.max_images}")
    cfg = config_from_args(args)
    model, _ = load_model(args.checkpoint, cfg)
    print(f"data: {describe_source(cfg)}")
    metrics = evaluate(model, cfg, args.split, max_images=args.max_images, progress=True)
    name, _ = primary_metric(cfg.task)
    summary = model_summary(model, cfg.data.input_size)
    if args.json:
        print(json.dumps({"split": args.split, **metrics, **summary}, indent=2))
    else:
        others = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and k != name)
        print(f"{args.split}: {name} {metrics[name]:.3f}" + (f" ({others})" if others else "") +
              f" on {metrics['images']} images; {summary['params'] / 1e6:.3f} M params")
    return 0
