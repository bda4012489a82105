"""Arguments every config-driven subcommand shares (CONFIG, --profile, --data, --set), and the
one-line messages the CLI prints for an interrupt (the exact command that resumes) and for a failed
write (disk full, read-only folder)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from toolchain.config import ExperimentConfig, load_config, parse_dotted_overrides
from toolchain.utils.io import describe_write_error  # noqa: F401 - cli/__init__.main reports failed writes


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


# -- interrupts ----------------------------------------------------------------------------------------
def program() -> str:
    """How the user invoked the CLI: the `acsl` script as typed, or `python -m toolchain`."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("acsl")
    if prog.name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m toolchain"
    return shlex.quote(str(prog)) if prog.name == "acsl" else "acsl"


def resume_command(argv: list[str], has_resume: bool) -> str:
    """The exact command that continues an interrupted run (adds --resume where the command has it)."""
    args = list(argv)
    if has_resume and "--resume" not in args:
        args.append("--resume")
    line = " ".join([program(), *(shlex.quote(a) for a in args)])
    if os.environ.get("MAKELEVEL"):
        line += " (or the same `make` command again)"
    return line
