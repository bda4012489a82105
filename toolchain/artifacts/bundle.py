"""Deploy bundles: a folder with the ONNX/engines, calibration cache, reports and `manifest.json`.

A bundle is assembled in a hidden temporary folder next to its destination; `manifest.json`
(which lists the sha256 of every other file) and `manifest.sha256` (the sha256 of manifest.json,
`sha256sum -c` format) are written last, then the folder is renamed into place. An interrupted or
failed write (disk full included) therefore never leaves a folder that looks like a valid bundle.

`verify_bundle` is the one check every consumer uses (`toolchain.runtime.load`, `acsl profile
--bundle`, the deploy pipeline's reuse test). It refuses, in one line:

- a manifest edited after writing (`manifest.sha256`), or not the one an app pinned
  (`expect_manifest_sha256=`, see `manifest_sha256()`);
- a path in `files` or in `artifacts` that is not a plain relative path inside the bundle (no
  absolute paths, no `..`, no symlink resolving outside the folder);
- a file whose sha256 differs from the manifest, and an artifact that is not listed (checksummed);
- a manifest whose behaviour-changing fields (task, classes, preprocessing, input shape/layout,
  decoding, channel plan, precision) disagree with the `metadata_props` and graph of the
  checksummed ONNX models: those are the source of truth, written at export.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from toolchain.artifacts.kinds import BUNDLE_MODEL_KINDS, ONNX
from toolchain.errors import ToolchainError
from toolchain.utils.io import json_bytes, sha256_file, sha256_json

BUNDLE_FORMAT = "acsl-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest.sha256"
# Measurements (latency reports, plots) vary from run to run by nature: they are listed, with their
# sha256, in measurements.json, not in the manifest, so the same inputs give the same manifest
# (and the same manifest.sha256 to pin) on every deploy.
MEASUREMENTS = "measurements.json"
RESERVED = (MANIFEST, MANIFEST_SHA256, MEASUREMENTS)
ARTIFACT_KINDS = tuple(kind.name for kind in BUNDLE_MODEL_KINDS)  # artifacts[].kind: toolchain.artifacts.kinds
VARIANTS = ("slim", "dense")  # slim: the manifest's channel_plan applied; dense: no plan
DECODING_WORD = {"segmentation": "argmax", "counting": "density", "classification": "softmax"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
_REBUILD = "rebuild the bundle with `acsl deploy`"


def channel_plan_hash(plan: Optional[Any]) -> str:
    """What `channel_plan_sha256` says in the ONNX metadata and what verify_bundle expects of the
    manifest's channel plan: the sha256 of the plan's canonical JSON, "dense" for no plan."""
    return sha256_json(plan) if plan else "dense"


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


def manifest_bytes(manifest: dict) -> bytes:
    """The exact bytes written as manifest.json (sorted keys, so equal manifests hash equal)."""
    return json_bytes(manifest)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(dest, files: dict[str, Path], manifest: dict,
                 writers: Optional[dict[str, Callable[[Path], None]]] = None,
                 measurements: Optional[dict[str, Callable[[Path], None]]] = None,
                 measured: Optional[dict] = None) -> Path:
    """Assemble a bundle at `dest` atomically.

    `files` maps bundle-relative names to source files (copied); `writers` maps names to callables
    that write that file given its path (scripts). Every such file's sha256 goes into
    `manifest["files"]`; every `manifest["artifacts"][i]["file"]` must be one of those files. The
    manifest must be deterministic (no timestamps, no host facts): the same inputs give the same bytes.
    `measurements` are writers of run-dependent files (reports, plots): everything they write goes
    into `measurements.json` (sha256 per file, plus the `measured` dict: when and where), never into
    the manifest. The manifest and its own sha256 (`manifest.sha256`) are written last and the
    folder renamed over `dest`.
    """
    dest = Path(dest)
    names = [_safe_name(n) for n in list(files) + list(writers or {})]
    for art in manifest.get("artifacts") or []:
        if not isinstance(art, dict) or _safe_name(str(art.get("file", ""))) not in names:
            raise ValueError(f"bundle artifact {art!r} is not one of the bundle's files")
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
        listed = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.is_symlink())
        manifest = {**manifest, "format": BUNDLE_FORMAT,
                    "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in listed}}
        if measurements:
            for name, write in measurements.items():
                target = tmp / _safe_name(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                write(target)
            extra = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()
                           and p.relative_to(tmp).as_posix() not in manifest["files"])
            record = {**(measured or {}), "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in extra}}
            _write_synced(tmp / MEASUREMENTS, manifest_bytes(record))
        data = manifest_bytes(manifest)
        _write_synced(tmp / MANIFEST, data)
        _write_synced(tmp / MANIFEST_SHA256, f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n".encode())
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
    p = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or p.is_absolute() or ".." in p.parts
            or p.as_posix() != name or name in RESERVED):
        raise ValueError(f"bad bundle file name: {name!r}")
    return name


# -- verification --------------------------------------------------------------------------------
def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bundle_path(bundle_dir, name: Any, what: str = "file") -> Path:
    """The real path of bundle member `name`, refusing anything that is not a plain relative path
    that stays inside the bundle once symlinks are resolved."""
    bundle_dir = Path(bundle_dir)
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ToolchainError(f"bundle {bundle_dir}: {what} {_short(name)} is not a valid relative path; {_REBUILD}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or pure.as_posix() != name:
        raise ToolchainError(f"bundle {bundle_dir}: {what} {name!r} is not a plain path inside the bundle "
                             f"(absolute, '..' or not normalised); refused: {_REBUILD}")
    root = Path(os.path.realpath(bundle_dir))
    real = Path(os.path.realpath(root / name))
    if real == root or root not in real.parents:
        raise ToolchainError(f"bundle {bundle_dir}: {what} {name!r} resolves outside the bundle (a symlink to "
                             f"{real}); refused: copy the real files into the bundle or {_REBUILD}")
    return real


def manifest_sha256(bundle_dir) -> str:
    """sha256 of the bundle's manifest.json: pin it in an app with `load(..., expect_manifest_sha256=)`."""
    return hashlib.sha256(bundle_path(bundle_dir, MANIFEST).read_bytes()).hexdigest()


def _hash_file(path: Path, keep: bool) -> tuple[str, Optional[bytes]]:
    if keep:
        data = path.read_bytes()
        return hashlib.sha256(data).hexdigest(), data
    return sha256_file(path), None


def read_verified(bundle_dir, manifest: dict, name: str) -> bytes:
    """The bytes of bundle member `name`, checked against the manifest right now (so the bytes a
    runner loads are the bytes that were verified, even if the file changes after verify_bundle)."""
    files = manifest.get("files") or {}
    if name not in files:
        raise ToolchainError(f"bundle {bundle_dir}: {name!r} is not listed (checksummed) in {MANIFEST}; refused: "
                             f"{_REBUILD}")
    data = bundle_path(bundle_dir, name).read_bytes()
    if hashlib.sha256(data).hexdigest() != files[name]:
        raise ToolchainError(f"bundle file {name} in {bundle_dir} does not match its manifest checksum "
                             "(altered or corrupt); copy the whole folder again or rerun `acsl deploy`")
    return data


def verify_bundle(bundle_dir, expect_manifest_sha256: Optional[str] = None) -> dict:
    """Check the manifest (its own sha256, an optional pin, every path, every file's sha256, every
    artifact listed, the behaviour-changing fields against the checksummed ONNX models); return the
    manifest or raise a one-line ToolchainError."""
    return verify_bundle_pinned(bundle_dir, expect_manifest_sha256)[0]


def verify_bundle_pinned(bundle_dir, expect_manifest_sha256: Optional[str] = None) -> tuple[dict, str]:
    """`verify_bundle`, also returning the sha256 of the manifest.json bytes that were verified."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        what = (f"{bundle_dir} is a file, not a bundle folder" if bundle_dir.exists()
                else f"bundle not found: {bundle_dir}")
        raise ToolchainError(f"{what} (create one with `make deploy TARGET=...`)")
    if not (bundle_dir / MANIFEST).is_file():
        raise ToolchainError(f"{bundle_dir} has no {MANIFEST}: it is not a bundle or its writing was interrupted; "
                             "rerun `acsl deploy`")
    manifest_path = bundle_path(bundle_dir, MANIFEST)
    raw = manifest_path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if expect_manifest_sha256 is not None:
        pin = str(expect_manifest_sha256).strip().lower()
        if not _HEX64.match(pin):
            raise ToolchainError(f"expect_manifest_sha256 must be 64 hex digits (got "
                                 f"{_short(expect_manifest_sha256)}); get it with `sha256sum {manifest_path}`")
        if pin != digest:
            raise ToolchainError(f"bundle {bundle_dir} is not the pinned one: manifest.json sha256 {digest[:16]}... "
                                 f"!= expected {pin[:16]}...; deploy the pinned bundle or update the pin")
    if not (bundle_dir / MANIFEST_SHA256).is_file():
        raise ToolchainError(f"{bundle_dir} has no {MANIFEST_SHA256} (written by this toolchain since the manifest is "
                             f"checksummed); {_REBUILD}")
    recorded = bundle_path(bundle_dir, MANIFEST_SHA256).read_bytes()[:200].decode("ascii", "replace").split()
    if not recorded or recorded[0].lower() != digest:
        raise ToolchainError(f"{manifest_path} was edited after the bundle was written (its sha256 does not match "
                             f"{MANIFEST_SHA256}); {_REBUILD}")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ToolchainError(f"{manifest_path} is corrupt (not JSON); rerun `acsl deploy` to rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise ToolchainError(f"{manifest_path} is not an {BUNDLE_FORMAT} manifest; rebuild the bundle with this toolchain")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ToolchainError(f"{manifest_path} lists no files; rebuild the bundle with `acsl deploy`")
    artifacts = _artifacts(bundle_dir, manifest)
    keep = _models_to_check(manifest, artifacts)
    models: dict[str, dict] = {}
    for name, expected in files.items():
        if name in RESERVED:
            raise ToolchainError(f"bundle {bundle_dir}: {MANIFEST} lists {name} as a file; refused: {_REBUILD}")
        path = bundle_path(bundle_dir, name)
        if not isinstance(expected, str) or not _HEX64.match(expected):
            raise ToolchainError(f"bundle {bundle_dir}: the checksum of {name} in {MANIFEST} is not a sha256 "
                                 f"({_short(expected)}); {_REBUILD}")
        if not path.is_file():
            raise ToolchainError(f"bundle {bundle_dir} is missing {name} (listed in the manifest); "
                                 "copy the whole folder again or rerun `acsl deploy`")
        got, data = _hash_file(path, name in keep)
        if got != expected:
            raise ToolchainError(f"bundle file {name} in {bundle_dir} does not match its manifest checksum "
                                 "(altered or corrupt); copy the whole folder again or rerun `acsl deploy`")
        if data is not None:  # parsed now and dropped, so only one model's bytes are held at a time
            models[name] = _model_facts(bundle_dir, name, data)
    _cross_check(bundle_dir, manifest, artifacts, models)
    return manifest, digest


def _artifacts(bundle_dir: Path, manifest: dict) -> list[dict]:
    files = manifest["files"]
    artifacts = manifest.get("artifacts", [])
    if not isinstance(artifacts, list):
        raise ToolchainError(f"bundle {bundle_dir}: 'artifacts' in {MANIFEST} is not a list; {_REBUILD}")
    for field in ("deployed_variant", "default_precision"):
        if manifest.get(field) is not None and not isinstance(manifest[field], str):
            raise ToolchainError(f"bundle {bundle_dir}: '{field}' in {MANIFEST} is not a string; {_REBUILD}")
    for art in artifacts:
        if not isinstance(art, dict) or not all(isinstance(art.get(k), str) for k in ("file", "kind", "precision",
                                                                                      "variant")):
            raise ToolchainError(f"bundle {bundle_dir}: artifact {_short(art)} needs string file, kind, precision and "
                                 f"variant; {_REBUILD}")
        bundle_path(bundle_dir, art["file"], "artifact")
        if art["file"] not in files:
            raise ToolchainError(f"bundle {bundle_dir}: artifact {art['file']!r} is not listed (checksummed) in "
                                 f"{MANIFEST}; refused: {_REBUILD}")
        if art["variant"] not in VARIANTS:
            raise ToolchainError(f"bundle {bundle_dir}: artifact {art['file']!r} has unknown variant "
                                 f"{art['variant']!r} (expected slim or dense); {_REBUILD}")
        if art["kind"] not in ARTIFACT_KINDS:
            raise ToolchainError(f"bundle {bundle_dir}: artifact {art['file']!r} has unknown kind {art['kind']!r} "
                                 f"(expected one of {', '.join(ARTIFACT_KINDS)}); {_REBUILD}")
    builds = manifest.get("device_builds", [])
    if not isinstance(builds, list) or not all(isinstance(b, dict) for b in builds):
        raise ToolchainError(f"bundle {bundle_dir}: 'device_builds' in {MANIFEST} is not a list of tables; {_REBUILD}")
    for build in builds:  # engines built on the device later: never loaded from here, but no path may escape
        for key in ("file", "sidecar", "build_script"):
            if key in build:
                bundle_path(bundle_dir, build[key], f"device build {key}")
    return artifacts


def _models_to_check(manifest: dict, artifacts: list[dict]) -> set[str]:
    """The ONNX files whose metadata the manifest must agree with: every ONNX artifact and the
    deployed variant's exported ONNX (the only reference for engine-only bundles)."""
    names = {a["file"] for a in artifacts if a["kind"] == ONNX.name}
    exported = f"{manifest.get('deployed_variant', 'slim')}{ONNX.suffix}"
    if exported in manifest["files"]:
        names.add(exported)
    return names


def _fail(bundle_dir: Path, name: str, field: str, in_manifest: Any, in_model: Any) -> None:
    raise ToolchainError(f"bundle {bundle_dir}: manifest {field} {_short(in_manifest)} does not match the checksummed "
                         f"model {name} ({_short(in_model)}); the manifest was edited or mixed from another bundle: "
                         f"{_REBUILD}")


def _disagree(bundle_dir: Path, field: str, value: Any, other: str) -> None:
    raise ToolchainError(f"bundle {bundle_dir}: manifest {field} {_short(value)} disagrees with its {other}; the "
                         f"manifest was edited: {_REBUILD}")


def _static_dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _model_facts(bundle_dir: Path, name: str, data: bytes) -> dict:
    """What the cross-check needs from one ONNX model: metadata, input/output dims, quantized or not."""
    import onnx
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ToolchainError(f"bundle {bundle_dir}: {name} is not a valid ONNX model; {_REBUILD}") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    return {"meta": {p.key: p.value for p in proto.metadata_props},
            "inputs": [_static_dims(i) for i in inputs],
            "outputs": [_static_dims(o) for o in proto.graph.output],
            "quantized": any(node.op_type in _QUANT_OPS for node in proto.graph.node)}


def _cross_check(bundle_dir: Path, manifest: dict, artifacts: list[dict], models: dict[str, dict]) -> None:
    if not models:
        raise ToolchainError(f"bundle {bundle_dir} has no checksummed ONNX model to check {MANIFEST} against "
                             f"(neither an ONNX artifact nor {manifest.get('deployed_variant', 'slim')}.onnx); "
                             f"{_REBUILD}")
    task = manifest.get("task")
    if task not in DECODING_WORD:
        raise ToolchainError(f"bundle {bundle_dir}: task {_short(task)} in {MANIFEST} is not one of "
                             f"{', '.join(DECODING_WORD)}; {_REBUILD}")
    classes, pre = manifest.get("classes"), manifest.get("preprocessing")
    if not isinstance(classes, list) or not isinstance(pre, dict):
        raise ToolchainError(f"bundle {bundle_dir}: {MANIFEST} lacks a classes list or a preprocessing table; "
                             f"{_REBUILD}")
    size = pre.get("input_size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ToolchainError(f"bundle {bundle_dir}: preprocessing.input_size {_short(size)} is not [H, W]; {_REBUILD}")
    deployed = manifest.get("deployed_variant", "slim")
    if deployed not in VARIANTS:
        raise ToolchainError(f"bundle {bundle_dir}: deployed_variant {_short(deployed)} is not slim or dense; "
                             f"{_REBUILD}")
    variants_of: dict[str, set] = {f"{v}{ONNX.suffix}": {v} for v in VARIANTS}
    precisions_of: dict[str, set] = {}
    for art in artifacts:  # one file may be named by several artifacts: each claim is checked
        variants_of.setdefault(art["file"], set()).add(art["variant"])
        if art["kind"] == ONNX.name:
            precisions_of.setdefault(art["file"], set()).add(art["precision"])
    plan_hash = channel_plan_hash(manifest.get("channel_plan"))

    for name, facts in sorted(models.items()):
        meta = facts["meta"]
        if "task" not in meta or "preprocessing" not in meta:
            raise ToolchainError(f"bundle {bundle_dir}: {name} carries no toolchain metadata (task, classes, "
                                 f"preprocessing), so {MANIFEST} cannot be checked against it; {_REBUILD}")
        if meta["task"] != task:
            _fail(bundle_dir, name, "task", task, meta["task"])
        try:
            names = json.loads(meta.get("class_names", "[]"))
            num = int(meta.get("num_classes", len(names)))
            model_pre = json.loads(meta["preprocessing"])
        except ValueError:
            raise ToolchainError(f"bundle {bundle_dir}: the metadata of {name} is corrupt; {_REBUILD}") from None
        expected_classes = list(names) or [str(i) for i in range(num)]
        if classes != expected_classes:
            _fail(bundle_dir, name, "classes", classes, expected_classes)
        if pre != model_pre:
            diff = sorted(k for k in set(pre) | set(model_pre) if pre.get(k) != model_pre.get(k))
            _fail(bundle_dir, name, f"preprocessing.{diff[0]}", pre.get(diff[0]), model_pre.get(diff[0]))
        if "input_layout" in meta and meta["input_layout"] != pre.get("layout"):
            _fail(bundle_dir, name, "preprocessing.layout", pre.get("layout"), meta["input_layout"])
        model_info = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
        if "name" in model_info and "model_name" in meta and model_info["name"] != meta["model_name"]:
            _fail(bundle_dir, name, "model.name", model_info["name"], meta["model_name"])
        for variant in sorted(variants_of.get(name, {deployed})):
            want_plan = plan_hash if variant == "slim" else "dense"
            if meta.get("channel_plan_sha256", want_plan) != want_plan:
                _fail(bundle_dir, name, f"variant {variant!r} (channel plan sha256)", want_plan[:16],
                      str(meta.get("channel_plan_sha256"))[:16])
        quantized = facts["quantized"]
        for precision in sorted(precisions_of.get(name, ())):
            if quantized != (precision == "int8"):
                _fail(bundle_dir, name, f"precision of {name}", precision,
                      "quantized" if quantized else "not quantized")
        _check_graph_shapes(bundle_dir, name, facts, task, size, len(classes))
    for key in ("mean", "std"):  # the top-level copies must not disagree with what the runtime uses
        if key in manifest and manifest[key] != pre.get(key):
            _disagree(bundle_dir, key, manifest[key], f"preprocessing.{key} {_short(pre.get(key))}")
    inp = manifest.get("input") or {}
    if not isinstance(inp, dict):
        raise ToolchainError(f"bundle {bundle_dir}: 'input' in {MANIFEST} is not a table; {_REBUILD}")
    shape = inp.get("shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 4 or shape[1:] != [3, *size]):
        _disagree(bundle_dir, "input.shape", shape, f"preprocessing.input_size {size}")
    for key in ("layout", "color"):
        if key in inp and inp[key] != pre.get(key):
            _disagree(bundle_dir, f"input.{key}", inp[key], f"preprocessing.{key} {_short(pre.get(key))}")
    decoding = (manifest.get("output") or {}).get("decoding") if isinstance(manifest.get("output"), dict) else None
    if decoding is not None and DECODING_WORD[task] not in str(decoding):
        _disagree(bundle_dir, "output.decoding", decoding, f"task {task!r} (decoded by {DECODING_WORD[task]})")


def _check_graph_shapes(bundle_dir: Path, name: str, facts: dict, task: str, size: list, num_classes: int) -> None:
    if len(facts["inputs"]) != 1 or not facts["outputs"]:
        raise ToolchainError(f"bundle {bundle_dir}: {name} must have one image input and an output "
                             f"(has {len(facts['inputs'])} inputs); {_REBUILD}")
    dims = facts["inputs"][0]
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], [3, *size])):
        _fail(bundle_dir, name, "input shape", ["N", 3, *size], dims)
    out = facts["outputs"][0]
    if len(out) >= 2 and out[1] not in (None, num_classes):  # B x K (x H x W); counting: K density maps
        _fail(bundle_dir, name, "number of classes", num_classes, f"{out[1]} output channels")
    if out and len(out) != (2 if task == "classification" else 4):  # (no shape recorded: nothing to check)
        _fail(bundle_dir, name, "task", task, f"an output of rank {len(out)}")
