"""`acsl deploy CONFIG --target T [--data PATH] [--checkpoint C] [--profile P] [--out DIR] [--no-wait]`.

Runs the cached, resumable pipeline (toolchain/deploy/pipeline.py) and prints where the report is.
`--data` pointing at a real dataset folder while the config uses the built-in synthetic demo data
switches to that dataset, taking its data settings from the reference config of the same kind
(e.g. configs/camvid_segnet.yaml); a folder of another task is a one-line error.

One deploy at a time per run folder: a second `acsl deploy` (or `make deploy`) of the same config
waits for the first, naming its pid (`--no-wait`: fail at once instead). Temporary files and
`.partial-<pid>` bundle folders left by a killed run are removed first. An interrupted deploy is
continued by rerunning the same command (finished stages are reused; `--resume` says so explicitly).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from toolchain.cli.common import add_config_args, config_from_args
from toolchain.errors import ToolchainError


def register(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="train -> prune -> recover -> export -> build -> profile -> bundle",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--target", required=True, help="device target, see `acsl targets` (e.g. cpu, jetson-orin-nx-16gb)")
    p.add_argument("--checkpoint", help="a trained dense checkpoint: skips dense training")
    p.add_argument("--out", help="bundle folder (default: <deploy.out_dir>/<target>)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant (default 50)")
    p.add_argument("--warmup-s", type=float, default=0.5, help="warm-up seconds per variant (default 0.5)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (what every rerun does: finished stages are reused)")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once when another deploy is using the run folder (default: wait for it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from toolchain.deploy.cache import RunLock
    from toolchain.deploy.pipeline import run_deploy
    from toolchain.targets import load_target
    from toolchain.utils.io import remove_stale_partials

    cfg = config_from_args(args)
    if args.runs < 1 or args.warmup_s < 0:
        raise ToolchainError("--runs must be >= 1 and --warmup-s >= 0")
    target = load_target(args.target)
    from toolchain.data import uses_synthetic

    if not uses_synthetic(cfg):  # labels of another size, malformed points: one line before the run folder is made
        from toolchain.data.check import check_dataset

        check_dataset(cfg)  # image headers only (about a second for CamVid)
    if args.checkpoint:  # a missing, corrupt, mismatched or NaN checkpoint: one line before the run folder is made
        from toolchain.train.checkpoint import load_model

        load_model(args.checkpoint, cfg)
    bundle_dir = Path(args.out) if args.out else Path(cfg.deploy.out_dir) / target.name
    from toolchain.data import describe_source

    print(f"data: {describe_source(cfg)}")
    with RunLock(cfg.run_dir(), wait=not args.no_wait):
        stale = remove_stale_partials(cfg.run_dir()) + remove_stale_partials(bundle_dir.parent, recursive=False)
        for path in stale:
            print(f"removed {path}, left behind by a run that no longer exists")
        result = run_deploy(cfg, args.target, checkpoint=args.checkpoint, out_dir=args.out, runs=args.runs,
                            warmup_s=args.warmup_s)
    print(f"\nbundle:  {result.bundle}\nreport:  {result.report_html}\n         {result.report_json}")
    return 0
