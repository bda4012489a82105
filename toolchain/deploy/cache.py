"""Stage cache for `acsl deploy`: each stage is keyed by a hash of its inputs.

key = sha256(stage name, the config section(s) it reads, the sha256 of every upstream artifact,
the code version of the packages it runs). A stage folder holds:

- `attempt.json`: the key of the attempt in progress (written before the stage runs);
- the stage's artifacts (each written atomically by its own module);
- `done.json`: written LAST, atomically, listing every artifact with its sha256.

A stage is reused only when `done.json` exists, its key equals the new key and every listed
artifact still has its recorded sha256. Otherwise it reruns: with the same key (a killed run) the
folder is kept so the stage may resume from its own complete checkpoints; with a different key the
folder is cleared first. Later stages see the new artifacts' hashes in their keys, so they rerun too.

`RunLock` makes one run folder belong to one `acsl deploy` at a time: a second one waits (saying
which pid holds the folder) or, with `wait=False`, fails in one line. The lock is an flock on
`<run folder>/.lock`, so the kernel releases it when its holder dies, `kill -9` included.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from toolchain import __version__
from toolchain.errors import ToolchainError
from toolchain.utils.io import WriteError, read_json, sha256_file, sha256_json, write_json

DONE, ATTEMPT = "done.json", "attempt.json"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def code_version(*packages: str) -> str:
    """Hash of the toolchain version and the .py sources of the named subpackages (e.g. "train")."""
    h = hashlib.sha256(__version__.encode())
    for pkg in sorted(packages):
        root = _PACKAGE_ROOT / pkg
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
        for f in files:
            if f.is_file():
                h.update(f.relative_to(_PACKAGE_ROOT).as_posix().encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config: Any, upstream: dict[str, str], code: str) -> str:
    return sha256_json({"stage": stage, "config": config, "upstream": upstream, "code": code})


@dataclass
class StageRecord:
    name: str
    key: str
    folder: Path
    artifacts: dict[str, Path]
    sha256: dict[str, str]
    summary: dict = field(default_factory=dict)
    reused: bool = False
    seconds: float = 0.0


class StageCache:
    """`cache.run(name, config, upstream, code, fn)`; fn(folder, resume) -> (artifacts, summary)."""

    def __init__(self, root, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log

    def folder(self, name: str) -> Path:
        return self.root / name

    def lookup(self, name: str, key: str) -> Optional[StageRecord]:
        folder = self.folder(name)
        done = folder / DONE
        if not done.is_file():
            return None
        try:
            rec = read_json(done)
        except (ValueError, OSError):
            return None
        if rec.get("key") != key:
            return None
        artifacts, digests = {}, {}
        for art, info in rec.get("artifacts", {}).items():
            path = folder / info["path"]
            if not path.is_file() or sha256_file(path) != info["sha256"]:
                return None
            artifacts[art], digests[art] = path, info["sha256"]
        return StageRecord(name, key, folder, artifacts, digests, rec.get("summary", {}), True, rec.get("seconds", 0.0))

    def run(self, name: str, config: Any, upstream: dict[str, str], code: str,
            fn: Callable[[Path, bool], tuple[dict[str, Path], dict]]) -> StageRecord:
        key = stage_key(name, config, upstream, code)
        cached = self.lookup(name, key)
        if cached is not None:
            self.log(f"[{time.strftime('%H:%M:%S')}] {name}: skipped (inputs unchanged, artifacts verified)")
            return cached
        folder = self.folder(name)
        resume = self._prepare(folder, key)
        self.log(f"[{time.strftime('%H:%M:%S')}] {name}: {'resuming' if resume else 'started'}")
        start = time.perf_counter()
        artifacts, summary = fn(folder, resume)
        seconds = time.perf_counter() - start
        digests = {a: sha256_file(p) for a, p in artifacts.items()}
        write_json(folder / DONE, {
            "stage": name, "key": key, "upstream": upstream, "code": code, "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary,
            "artifacts": {a: {"path": Path(p).resolve().relative_to(folder.resolve()).as_posix(), "sha256": digests[a]}
                          for a, p in artifacts.items()},
        })
        self.log(f"[{time.strftime('%H:%M:%S')}] {name}: finished in {seconds:.1f} s")
        return StageRecord(name, key, folder, {a: Path(p) for a, p in artifacts.items()}, digests, summary,
                           False, seconds)

    @staticmethod
    def _prepare(folder: Path, key: str) -> bool:
        """Remove a stale done-marker; keep the folder only for a retry of the same inputs."""
        attempt = folder / ATTEMPT
        same = False
        if attempt.is_file():
            try:
                same = read_json(attempt).get("key") == key
            except (ValueError, OSError):
                same = False
        if not same and folder.exists():
            shutil.rmtree(folder)
        (folder / DONE).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(attempt, {"key": key, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return same and any(p.name not in (ATTEMPT,) for p in folder.iterdir())


# -- one deploy per run folder ---------------------------------------------------------------------
LOCK = ".lock"


class RunLock:
    """`with RunLock(run_dir):` holds the run folder exclusively (see the module docstring)."""

    def __init__(self, folder, *, wait: bool = True, log: Optional[Callable[[str], None]] = None):
        self.folder = Path(folder)
        self.wait = wait
        self.log = log or (lambda line: print(line, flush=True))  # seen at once, also through a pipe
        self._fd: Optional[int] = None

    def holder(self) -> str:
        """Who holds the lock, as the holder wrote it: 'pid N (command, since T)'."""
        try:
            info = json.loads((self.folder / LOCK).read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        if not info.get("pid"):
            return "another process (pid not recorded yet)"
        return f"pid {info['pid']} (`{info.get('command', '?')}`, since {info.get('started', '?')})"

    def __enter__(self) -> "RunLock":
        path = self.folder / LOCK
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WriteError(err, self.folder) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            if not self.wait:
                os.close(fd)
                raise ToolchainError(f"{self.folder} is in use by {holder}; wait for it to finish, stop it, or "
                                     "use another run folder (name: in the config)") from None
            self.log(f"waiting for {holder}, which is using {self.folder} (Ctrl-C to stop waiting)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self.log(f"{self.folder} is free now; continuing")
        except OSError as err:  # a file system without flock (some network mounts): run unlocked
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            self.log(f"warning: cannot lock {self.folder} on this file system; do not run two deploys in it at once")
        me = {"pid": os.getpid(), "command": " ".join(os.path.basename(a) if i == 0 else a
                                                      for i, a in enumerate(sys.argv)),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me, sort_keys=True).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
