"""User-facing errors.

A ToolchainError is a user mistake or an unmet precondition: the CLI prints its message as a
single line (no traceback) and exits with status 2. The message must say what was wrong and what
to do about it.
"""


class ToolchainError(Exception):
    """An error caused by user input or environment, reported as one line."""


class MissingDependency(ToolchainError):
    """An optional package is not installed."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        cmd = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the '{package}' package, which is not installed: run `{cmd}`")
        self.package = package


def script_main(main, name: str) -> int:
    """Run a script's `main()` (benchmarks/*.py): a ToolchainError is printed as one line, `<name>: error: ...`,
    exit 2, as the CLI does."""
    import sys

    try:
        return main()
    except ToolchainError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
