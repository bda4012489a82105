"""Deploy bundles: a folder with the ONNX/engines, calibration cache, reports and `manifest.json`.

A bundle is assembled in a hidden temporary folder next to its destination; `manifest.json`
(which lists the sha256 of every other file) is written last, then the folder is renamed into
place. An interrupted or failed write (disk full included) therefore never leaves a folder that
looks like a valid bundle: without a manifest, or with a file whose checksum does not match,
`verify_bundle` refuses it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from toolchain.errors import ToolchainError
from toolchain.utils.io import read_json, sha256_file, write_json

BUNDLE_FORMAT = "acsl-bundle/1"
MANIFEST = "manifest.json"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bundle(dest, files: dict[str, Path], manifest: dict,
                 writers: Optional[dict[str, Callable[[Path], None]]] = None) -> Path:
    """Assemble a bundle at `dest` atomically.

    `files` maps bundle-relative names to source files (copied); `writers` maps names to callables
    that write that file given its path (reports, scripts). Every file's sha256 goes into
    `manifest["files"]`; the manifest is written last and the folder renamed over `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, src in files.items():
            _copy(Path(src), tmp / _safe_name(name))
        for name, write in (writers or {}).items():
            target = tmp / _safe_name(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        listed = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {**manifest, "format": BUNDLE_FORMAT,
                    "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in listed}}
        write_json(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.replace(old, dest)  # put the previous complete bundle back
        if err.errno == errno.ENOSPC:
            raise ToolchainError(f"disk full while writing the bundle {dest}; nothing was left half-written: "
                                 "free some space and rerun (finished stages are reused)") from None
        raise ToolchainError(f"could not write the bundle {dest}: {err}; nothing was left half-written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _safe_name(name: str) -> str:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name == MANIFEST:
        raise ValueError(f"bad bundle file name: {name}")
    return p.as_posix()


def verify_bundle(bundle_dir) -> dict:
    """Check the manifest and every file's sha256; return the manifest or raise a one-line error."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise ToolchainError(f"bundle not found: {bundle_dir} (create one with `make deploy TARGET=...`)")
    manifest_path = bundle_dir / MANIFEST
    if not manifest_path.is_file():
        raise ToolchainError(f"{bundle_dir} has no {MANIFEST}: it is not a bundle or its writing was interrupted; "
                             "rerun `acsl deploy`")
    try:
        manifest = read_json(manifest_path)
    except (ValueError, UnicodeDecodeError):
        raise ToolchainError(f"{manifest_path} is corrupt (not JSON); rerun `acsl deploy` to rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ToolchainError(f"{manifest_path} is not an {BUNDLE_FORMAT} manifest; rebuild the bundle with this toolchain")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ToolchainError(f"{manifest_path} lists no files; rebuild the bundle with `acsl deploy`")
    for name, digest in files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise ToolchainError(f"bundle {bundle_dir} is missing {name} (listed in the manifest); "
                                 "copy the whole folder again or rerun `acsl deploy`")
        if sha256_file(path) != digest:
            raise ToolchainError(f"bundle file {name} in {bundle_dir} does not match its manifest checksum "
                                 "(altered or corrupt); copy the whole folder again or rerun `acsl deploy`")
    return manifest
