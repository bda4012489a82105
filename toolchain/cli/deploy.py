"""`acsl deploy CONFIG --target T [--data PATH] [--checkpoint C] [--profile P] [--out DIR]`.

Runs the cached, resumable pipeline (toolchain/deploy/pipeline.py) and prints where the report is.
`--data` pointing at a real dataset folder while the config uses the built-in synthetic demo data
switches to that dataset, taking its data settings from the reference config of the same kind
(e.g. configs/camvid_segnet.yaml); a folder of another task is a one-line error.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from toolchain.config import load_config, parse_dotted_overrides
from toolchain.errors import ToolchainError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def register(subparsers) -> None:
    p = subparsers.add_parser("deploy", help="train -> prune -> recover -> export -> build -> profile -> bundle",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment YAML (default flow: configs/demo.yaml)")
    p.add_argument("--target", required=True, help="device target, see `acsl targets` (e.g. cpu, jetson-orin-nx-16gb)")
    p.add_argument("--data", help="dataset folder (overrides data.root)")
    p.add_argument("--checkpoint", help="a trained dense checkpoint: skips dense training")
    p.add_argument("--profile", help="config profile to apply (quick, full)")
    p.add_argument("--out", help="bundle folder (default: <deploy.out_dir>/<target>)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant (default 50)")
    p.add_argument("--warmup-s", type=float, default=0.5, help="warm-up seconds per variant (default 0.5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3")
    p.set_defaults(func=run)


def data_overrides(config_path: str, data: str) -> dict:
    """Config overrides for --data: the folder's dataset kind must fit the config's task."""
    from toolchain.data import KIND_TASK
    from toolchain.data.layout import detect_layout

    root = Path(data).expanduser()
    if not root.is_dir():
        raise ToolchainError(f"--data {data}: folder not found; the real datasets are in ../shared/data")
    raw = yaml.safe_load(Path(config_path).read_text()) if Path(config_path).is_file() else {}
    task, kind = (raw or {}).get("task"), ((raw or {}).get("data") or {}).get("kind")
    found = detect_layout(root)
    if found is None:
        raise ToolchainError(f"--data {data} does not look like any supported dataset (CamVid, ShanghaiTech, "
                             "image folders); check the path")
    if task and KIND_TASK[found] != task:
        raise ToolchainError(f"--data {data} is a {KIND_TASK[found]} dataset ({found}) but {config_path} is a "
                             f"{task} config; use a {KIND_TASK[found]} config or a {task} dataset")
    if kind not in (None, "synthetic"):
        return {"data": {"root": str(root.resolve())}}
    reference = next((p for p in sorted(CONFIG_DIR.glob("*.yaml"))
                      if ((yaml.safe_load(p.read_text()) or {}).get("data") or {}).get("kind") == found), None)
    if reference is None:
        raise ToolchainError(f"no reference config in {CONFIG_DIR} for {found} data; set data.kind in {config_path}")
    ref_data = dict(yaml.safe_load(reference.read_text())["data"])
    ref_data["root"] = str(root.resolve())
    print(f"--data is a {found} folder: using the data settings of {reference.name}")
    return {"data": ref_data}


def run(args: argparse.Namespace) -> int:
    from toolchain.deploy.pipeline import run_deploy

    overrides = parse_dotted_overrides(args.overrides)
    if args.data:
        from toolchain.config import deep_merge

        overrides = deep_merge(data_overrides(args.config, args.data), overrides)
    cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    if args.runs < 1 or args.warmup_s < 0:
        raise ToolchainError("--runs must be >= 1 and --warmup-s >= 0")
    from toolchain.data import describe_source

    print(f"data: {describe_source(cfg)}")
    result = run_deploy(cfg, args.target, checkpoint=args.checkpoint, out_dir=args.out, runs=args.runs,
                        warmup_s=args.warmup_s)
    print(f"\nbundle:  {result.bundle}\nreport:  {result.report_html}\n         {result.report_json}")
    return 0
