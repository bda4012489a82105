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


# -- output paths ----------------------------------------------------------------------------------------
FOLDER_OUTS = ("train", "prune", "build", "deploy")  # commands whose --out is a folder (export's is a file)


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (so nothing below it can be created)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_args(args: argparse.Namespace) -> None:
    """Refuse an --out / --json that cannot be written, or whose writing would replace something that is not
    the command's own output, before any work starts (one line; nothing created)."""
    from toolchain.errors import ToolchainError

    command = getattr(args, "command", None)
    outs = []
    if getattr(args, "out", None) and command in FOLDER_OUTS + ("export",):
        outs.append(("--out", Path(args.out).expanduser(), command in FOLDER_OUTS))
    if getattr(args, "json_out", None):
        outs.append(("--json", Path(args.json_out).expanduser(), False))
    for flag, path, folder in outs:
        blocker = _file_above(path)
        if blocker is not None:
            raise ToolchainError(f"{flag} {path} cannot be created: {blocker} is a file, not a folder; "
                                 "pick another path")
        if folder and path.exists() and not path.is_dir():
            raise ToolchainError(f"{flag} {path} is a file; {command} writes a folder there: pick a folder path")
        if not folder and path.is_dir():
            raise ToolchainError(f"{flag} {path} is a folder; pass a file path inside it, e.g. "
                                 f"{path / ('model.onnx' if flag == '--out' else 'out.json')}")
        if (command == "deploy" and path.is_dir() and any(path.iterdir())
                and not (path / "manifest.json").is_file()):
            raise ToolchainError(f"{flag} {path} is a folder with other files in it, not a bundle; deploy replaces "
                                 "its bundle folder as a whole: pass a new or empty folder")
