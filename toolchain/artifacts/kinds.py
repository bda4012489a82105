"""THE table of artifact kinds: every kind of file the toolchain writes for deployment, by suffix.

One row per kind (as Ultralytics keeps one table of export formats): its suffixes, the backend
that runs it, the precisions it can carry, and who loads it. Code asks this table
(`kind_of(path)`, `model_kind(path)`) instead of testing suffixes itself.

| kind              | suffixes              | backend     | precisions       | loaded by                                      |
|-------------------|-----------------------|-------------|------------------|------------------------------------------------|
| onnx              | .onnx                 | onnxruntime | fp32, fp16, int8 | runtime.ort_runner.OrtRunner (load, acsl profile/compare) |
| tensorrt-engine   | .engine, .plan        | tensorrt    | fp32, fp16, int8 | runtime.trt_runner.TrtRunner (needs its sidecar, same TensorRT + GPU) |
| torch-checkpoint  | .pt, .pth             | torch       | fp32             | train.checkpoint.load_model + runtime.torch_runner.TorchRunner (never shipped) |
| engine-sidecar    | .engine.json, .plan.json | -        | -                | artifacts.sidecar.read_sidecar (TrtRunner, before the engine) |
| calibration-cache | .cache                | tensorrt    | int8             | TensorRT's builder (implicit INT8: trt_calibrator, trtexec --calib) |
| build-script      | .sh                   | tensorrt    | -                | bash on the device (build_engine.sh runs trtexec) |
| command           | .txt                  | -           | -                | a person (trtexec.txt: the equivalent trtexec command) |
| checksum          | .sha256               | -           | -                | artifacts.bundle.verify_bundle (manifest.sha256, `sha256sum -c`) |
| record            | .json                 | -           | -                | artifacts.bundle (manifest.json), people (build.json, ranges, reports) |
| report            | .md, .html, .png      | -           | -                | a person (the deploy report and its plots)     |

Suffixes are matched longest first and case-insensitively: `model.engine.json` is a sidecar,
not an engine; `model.int8.qdq.onnx` is ONNX. Only the model kinds that ship (`onnx`,
`tensorrt-engine`) may be named as a bundle manifest's `artifacts[].kind`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Optional, Union

from toolchain.errors import ToolchainError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ArtifactKind:
    name: str                      # as written in a manifest's artifacts[].kind and in report rows
    suffixes: tuple[str, ...]      # lower case, with the dot; the first is the one the toolchain writes
    backend: Optional[str]         # "onnxruntime" | "tensorrt" | "torch" | None (not run by a backend)
    precisions: tuple[str, ...]    # precisions a file of this kind can carry (empty: not a model)
    loaded_by: str                 # who reads it
    is_model: bool = False         # a network a runner executes
    ships: bool = True             # may be in a deploy bundle

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


ONNX = ArtifactKind("onnx", (".onnx",), "onnxruntime", PRECISIONS,
                    "toolchain.runtime.ort_runner.OrtRunner (runtime.load, acsl profile, acsl compare)", is_model=True)
TENSORRT_ENGINE = ArtifactKind("tensorrt-engine", (".engine", ".plan"), "tensorrt", PRECISIONS,
                               "toolchain.runtime.trt_runner.TrtRunner (after its sidecar: same TensorRT and GPU)",
                               is_model=True)
TORCH_CHECKPOINT = ArtifactKind("torch-checkpoint", (".pt", ".pth"), "torch", ("fp32",),
                                "toolchain.train.checkpoint.load_model, run by toolchain.runtime.torch_runner",
                                is_model=True, ships=False)
ENGINE_SIDECAR = ArtifactKind("engine-sidecar", (".engine.json", ".plan.json"), None, (),
                              "toolchain.artifacts.sidecar.read_sidecar (TrtRunner checks it before the engine)")
CALIBRATION_CACHE = ArtifactKind("calibration-cache", (".cache",), "tensorrt", ("int8",),
                                 "TensorRT's builder for implicit INT8 (calibration.trt_calibrator, trtexec --calib)")
BUILD_SCRIPT = ArtifactKind("build-script", (".sh",), "tensorrt", (),
                            "bash on the device: build_engine.sh builds the engine with trtexec")
COMMAND = ArtifactKind("command", (".txt",), None, (), "a person: trtexec.txt, the equivalent trtexec command")
CHECKSUM = ArtifactKind("checksum", (".sha256",), None, (),
                        "toolchain.artifacts.bundle.verify_bundle (manifest.sha256; `sha256sum -c` format)")
RECORD = ArtifactKind("record", (".json",), None, (),
                      "toolchain.artifacts.bundle (manifest.json, measurements.json); people (build.json, "
                      "calibration ranges, report.json)")
REPORT = ArtifactKind("report", (".md", ".html", ".png"), None, (), "a person: the deploy report and its plots")

KINDS: tuple[ArtifactKind, ...] = (ONNX, TENSORRT_ENGINE, TORCH_CHECKPOINT, ENGINE_SIDECAR, CALIBRATION_CACHE,
                                   BUILD_SCRIPT, COMMAND, CHECKSUM, RECORD, REPORT)
MODEL_KINDS = tuple(k for k in KINDS if k.is_model)
# what a bundle manifest's artifacts[].kind may say: the model kinds that ship
BUNDLE_MODEL_KINDS = tuple(k for k in MODEL_KINDS if k.ships)
_BY_SUFFIX = sorted(((s, k) for k in KINDS for s in k.suffixes), key=lambda sk: -len(sk[0]))

PathLike = Union[str, PurePath]


def by_name(name: str) -> ArtifactKind:
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(f"unknown artifact kind {name!r} (known: {', '.join(k.name for k in KINDS)})")


def kind_of(path: PathLike) -> Optional[ArtifactKind]:
    """The row for a file name or path (longest suffix wins); None for a file of no known kind."""
    name = PurePath(str(path)).name.lower()
    for suffix, kind in _BY_SUFFIX:
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind
    return None


def is_kind(path: PathLike, kind: ArtifactKind) -> bool:
    return kind_of(path) is kind


def model_kind(path: PathLike, allowed: tuple[ArtifactKind, ...] = MODEL_KINDS) -> ArtifactKind:
    """The model kind of `path`, or a one-line ToolchainError listing the suffixes accepted."""
    kind = kind_of(path)
    if kind not in allowed:
        accepted = ", ".join(s for k in allowed for s in k.suffixes)
        raise ToolchainError(f"{PurePath(str(path)).name}: not a model file this command runs (got "
                             f"'{''.join(PurePath(str(path)).suffixes[-1:]) or 'no suffix'}'); pass one of {accepted}")
    return kind
