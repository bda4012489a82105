"""Atomic file writes, checksums and small JSON helpers.

Every artifact the toolchain writes goes through these: write to a temporary file in the same
folder, fsync, then rename, so an interrupted run never leaves a half-written file that looks valid.

A temporary file is named `.<name>.<pid>.<random>.tmp`, so one left behind by a killed process
(`kill -9`) is recognised and removed by `remove_stale_partials` on the next run. A write that fails
because the disk is full or the folder is read-only raises `WriteError`: a one-line ToolchainError
(and an OSError with the original errno) naming the nearest folder that exists.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from toolchain.errors import ToolchainError

WRITE_ERRORS = {
    _errno.ENOSPC: "the disk is full (no space left on device)",
    _errno.EDQUOT: "the disk quota is exceeded",
    _errno.EROFS: "the folder is on a read-only file system",
    _errno.EACCES: "permission denied (the folder is not writable)",
    _errno.EPERM: "operation not permitted (the folder is not writable)",
}


def existing_folder(path) -> Path:
    """The nearest folder of `path` (itself or a parent) that exists, so messages name real paths."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path("/")


def describe_write_error(err: OSError, path=None) -> str | None:
    """One line for a failed write (disk full, read-only or unwritable folder), or None for other errors."""
    why = WRITE_ERRORS.get(err.errno)
    if why is None:
        return None
    target = path or err.filename
    where = f" while writing into {existing_folder(target)}" if target else ""
    fix = ("free some space and rerun" if err.errno in (_errno.ENOSPC, _errno.EDQUOT)
           else "make it writable or pick another output folder (--out, out_dir)")
    return f"{why}{where}; {fix} (finished artifacts are kept and reused)"


WRITE_ERRNOS = set(WRITE_ERRORS)
_STALE_TMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")          # .<name>.<pid>.<random>.tmp
_STALE_DIR = re.compile(r"^\..+\.(?:partial|old)-(\d+)$")       # .<bundle>.partial-<pid> / .old-<pid>


class WriteError(ToolchainError, OSError):
    """A write failed for a reason the user can fix (disk full, read-only folder); one line."""

    def __init__(self, err: OSError, path: str | os.PathLike):
        self.message = describe_write_error(err, path) or f"could not write {path}: {err.strerror}"
        OSError.__init__(self, err.errno, self.message)

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`, else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise WriteError(err, path.parent) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(err, OSError) and not isinstance(err, WriteError) and err.errno in WRITE_ERRNOS:
            raise WriteError(err, path.parent) from None
        raise


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def remove_stale_partials(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete temporary files and `.partial-<pid>`/`.old-<pid>` folders whose process is gone.

    Only names this module and the bundle writer create are touched, and only when the pid in
    the name is not a running process. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    for p in sorted(entries, key=lambda q: len(q.parts)):
        match = (_STALE_DIR if p.is_dir() else _STALE_TMP).match(p.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any) -> bytes:
    """The canonical JSON bytes every record is written as (indented, sorted keys: equal objects, equal bytes)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a full
    disk as a RuntimeError without errno, a plain write reports ENOSPC (see WriteError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()
