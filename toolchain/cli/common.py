"""Arguments every config-driven subcommand shares: CONFIG, --profile, --data, --set."""
from __future__ import annotations

import argparse
from pathlib import Path

from toolchain.config import ExperimentConfig, load_config, parse_dotted_overrides


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("--profile", help="config profile to apply, e.g. quick (2 CPU cores) or full (GPU)")
    parser.add_argument("--data", help="dataset folder; overrides data.root in the config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    overrides = parse_dotted_overrides(args.overrides)
    if not args.data:
        return load_config(args.config, profile=args.profile, overrides=overrides)
    root = Path(args.data).expanduser().resolve()  # relative to where the user stands, not to the config
    overrides.setdefault("data", {})["root"] = str(root)
    cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    if cfg.data.kind == "synthetic":  # a real folder given to a demo config: the real loader is used
        from toolchain.data.layout import real_data_overrides

        overrides["data"] = {**real_data_overrides(root, cfg.task), **overrides["data"]}
        cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    return cfg
