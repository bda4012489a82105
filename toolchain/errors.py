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
