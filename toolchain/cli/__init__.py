"""The `acsl` command. Each subcommand lives in its own module under toolchain/cli/ and
provides `register(subparsers)`, which adds its parser with `set_defaults(func=run)`.

User mistakes raise ToolchainError and are printed as one line (exit 2); Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from toolchain import __version__
from toolchain.errors import ToolchainError

# Order is the order shown in --help: the pipeline, stage by stage.
COMMANDS = ["models", "data", "train", "eval", "prune", "export", "targets", "build", "compare", "profile", "deploy",
            "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acsl", description="ACSL edge-deployment toolchain: "
                                     "train -> prune -> recover -> export -> build -> profile -> deploy")
    parser.add_argument("--version", action="version", version=f"acsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"toolchain.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"toolchain.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        from toolchain.cli.common import check_output_args

        check_output_args(args)
        return int(args.func(args) or 0)
    except ToolchainError as err:
        print(f"acsl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only folder: one line naming a folder that exists
        from toolchain.cli.common import describe_write_error

        line = describe_write_error(err)
        if line is None:
            raise
        print(f"acsl {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from toolchain.cli.common import resume_command

        print(f"acsl {args.command}: interrupted; completed artifacts are kept; to continue run: "
              f"{resume_command(argv, hasattr(args, 'resume'))}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
