"""Every command in README.md runs as written (in a copy of the tree, in order, like a new user).

The README's ```bash blocks are read line by line; each `acsl`, `make`, `python` or `torchrun` line is
run from the root of a fresh copy of the working tree (runs/ and deploy/ start empty; ../shared is
linked beside it as in a checkout), and must exit 0. The ```python blocks run after the commands
(they embed the bundle the commands made). The only lines not run are listed in NOT_RUN with the
reason; a line in the README that the parser does not recognise fails the test, so a new example
cannot slip past it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNERS = ("acsl ", "make ", "python ", "torchrun ")
NOT_RUN = {
    # the install block: `make` does exactly this into .venv before every other command (CI runs it)
    "python3 -m venv .venv && . .venv/bin/activate": "install step (what `make` does; CI runs it)",
    "pip install torch==2.13.0": "install step (what `make` does; CI runs it)",
    "pip install -e '.[dev]'": "install step (what `make` does; CI runs it)",
    "make test": "this test is part of `make test`",
}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def strip_comment(line: str) -> str:
    """The command without a trailing `# comment` (a '#' inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def readme_commands(text: str) -> tuple[list[str], list[str]]:
    """(commands to run, python snippets) in README order; raises on an unrecognised line."""
    commands, snippets = [], []
    for lang, body in readme_blocks(text):
        if lang == "python":
            snippets.append(body)
            continue
        pending = ""
        for raw in body.splitlines():
            line = strip_comment(raw)
            if not line:
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line in NOT_RUN:
                continue
            if not line.startswith(RUNNERS):
                raise AssertionError(f"README line not recognised as a command to test: {raw!r}")
            commands.append(line)
    return commands, snippets


def copy_checkout(src: Path, dst: Path) -> None:
    """Copy what a fresh clone of `src` would hold: tracked files plus untracked ones git does not ignore. A
    working tree also holds ignored run folders (benchmarks/.runs: gigabytes, and files that a benchmark running
    beside the tests renames mid-copy); outside git, fall back to a copy that skips the known ones."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "deploy", "__pycache__",
                                                                ".pytest_cache", "*.egg-info", ".benchcache", ".runs"))
        return
    for name in filter(None, listed.decode().split("\0")):
        source = src / name
        if source.is_file():  # a tracked file deleted in the working tree is absent from a clone of it too
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)


def test_copy_checkout_skips_ignored_run_folders(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("needs git")
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "notes.md").write_text("untracked, not ignored\n")
    (src / ".gitignore").write_text("/benchmarks/.runs/\n")
    (src / "benchmarks" / ".runs" / "big").mkdir(parents=True)
    (src / "benchmarks" / ".runs" / "big" / "model.pt").write_bytes(b"0" * 10)
    subprocess.run(["git", "init", "-q"], cwd=src, check=True)
    subprocess.run(["git", "add", "pkg/mod.py", ".gitignore"], cwd=src, check=True)
    copy_checkout(src, dst)
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == [".gitignore", "notes.md", "pkg/mod.py"]


def test_readme_parses_into_commands():
    commands, snippets = readme_commands((REPO / "README.md").read_text())
    assert commands[:2] == ["make deploy", "make test"] or commands[0] == "make deploy"
    assert any(c.startswith("acsl ") for c in commands) and snippets


@pytest.mark.slow
def test_every_readme_example_runs_as_written(tmp_path):
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "acsl").exists() or shutil.which("make") is None:
        pytest.skip(f"needs make and a virtual environment with `acsl` installed ({venv})")
    copy = tmp_path / "repo"
    copy_checkout(REPO, copy)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    commands, snippets = readme_commands((copy / "README.md").read_text())
    for command in commands:
        if command.startswith("make "):  # this venv, taken as installed
            command += f" VENV={venv} -o {venv}/.installed"
        proc = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    for snippet in snippets:
        proc = subprocess.run([sys.executable, "-c", snippet], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"README python example failed:\n{snippet}\n{proc.stderr[-2000:]}"
