"""Deployment targets: one YAML file per device in `targets/`, validated into a `Target`.

A target says which backend builds the engine (ONNX Runtime or TensorRT), which precisions it
supports, builder settings (workspace, DLA core, TensorRT version range, input shape policy,
calibration) and datasheet figures used for roofline estimates (never measurements).

Users add a device by dropping a YAML file into `targets/` or by passing a path to a YAML file
wherever a target name is accepted. A file may be an alias (`alias_of: other-target`).
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from toolchain.errors import ToolchainError

_CC = re.compile(r"\d+\.\d+")
TARGETS_DIR = Path(__file__).resolve().parents[1] / "targets"
Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionRange(_Strict):
    """Inclusive TensorRT version range, e.g. min "8.5", max "10.3" (max "10.x" means any 10)."""
    min: str
    max: str

    def contains(self, version: str) -> bool:
        return _version_key(self.min) <= _version_key(version) <= _version_key(self.max, upper=True)


class BatchRange(_Strict):
    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "BatchRange":
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch needs min <= opt <= max (got {self.min}, {self.opt}, {self.max})")
        return self


class ScaleRange(_Strict):
    min: float = Field(1.0, gt=0)
    max: float = Field(1.0, gt=0)


class InputShapePolicy(_Strict):
    """static: the config's input size, batch 1; dynamic: optimisation profile over these ranges."""
    policy: Literal["static", "dynamic"] = "static"
    batch: BatchRange = Field(default_factory=BatchRange)
    hw_scale: ScaleRange = Field(default_factory=ScaleRange, description="H/W range as multiples of the config size")


class CalibrationSettings(_Strict):
    """INT8 calibration on this device. The Q/DQ set itself follows the experiment's `quantize:`
    section (images, seed, method); `images` here overrides the count for this target only."""
    images: Optional[int] = Field(None, ge=1, description="None: cfg.quantize.calib_images")
    implicit_method: Literal["entropy", "minmax"] = Field(
        "entropy", description="TensorRT implicit calibrator: IInt8EntropyCalibrator2 or IInt8MinMaxCalibrator")
    batch_size: int = Field(8, ge=1, description="images per calibration batch fed to TensorRT")
    implicit: bool = Field(False, description="TensorRT < 11 / DLA: build INT8 with a calibration cache, not Q/DQ")


class OrtSettings(_Strict):
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    intra_op_threads: Optional[int] = Field(None, ge=1)
    providers: list[Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]] = Field(
        default_factory=lambda: ["CPUExecutionProvider"])


class PeakFlops(_Strict):
    fp32: Optional[float] = None
    fp16: Optional[float] = None
    int8: Optional[float] = None


class Datasheet(_Strict):
    """Vendor datasheet figures (dense), for roofline estimates only."""
    source: Literal["datasheet"] = "datasheet"
    note: str = ""
    peak_flops: PeakFlops = Field(default_factory=PeakFlops, description="FLOP/s (OP/s for int8)")
    memory_bandwidth: Optional[float] = Field(None, description="bytes/s")


class Target(_Strict):
    name: str
    description: str = ""
    alias_of: Optional[str] = None
    backend: Literal["onnxruntime", "tensorrt"]
    alt_backends: list[str] = Field(default_factory=list)
    precisions: list[Precision]
    default_precision: Precision = "fp32"
    workspace_mib: int = Field(1024, ge=16)
    dla_core: Optional[int] = Field(None, ge=0, description="DLA core to build for; None = GPU only")
    dla_cores: int = Field(0, ge=0, description="how many DLA cores the device has")
    tensorrt: Optional[VersionRange] = None
    tensorrt_flavour: Literal["tensorrt", "tensorrt-rtx"] = Field(
        "tensorrt", description="tensorrt (JetPack / data-centre wheels) or tensorrt-rtx (TensorRT for RTX, "
        "`import tensorrt_rtx`; strongly typed only, builds ahead of time without a GPU)")
    compute_capability: Optional[str] = None
    compute_capabilities: list[str] = Field(
        default_factory=list, description="TensorRT-RTX: GPU architectures the engine is built for, e.g. ['8.9']")
    jetson: bool = False
    input_shapes: InputShapePolicy = Field(default_factory=InputShapePolicy)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    onnxruntime: OrtSettings = Field(default_factory=OrtSettings)
    datasheet: Datasheet = Field(default_factory=Datasheet)
    profile_batch_sizes: list[int] = Field(default_factory=lambda: [1])
    power_modes: list[str] = Field(default_factory=list)
    channel_multiple: dict[Precision, int] = Field(
        default_factory=dict, description="per precision: the channel multiple the kernels want (prune.round_to: "
        "target rounds kept widths to it); a precision not listed means 1")
    source: Optional[str] = Field(None, description="the YAML file (set by the loader)")

    @model_validator(mode="after")
    def _consistent(self) -> "Target":
        if self.default_precision not in self.precisions:
            raise ValueError(f"default_precision '{self.default_precision}' is not in precisions {self.precisions}")
        if self.dla_core is not None and self.dla_core >= self.dla_cores:
            raise ValueError(f"dla_core {self.dla_core} but the device has {self.dla_cores} DLA cores")
        if self.backend == "tensorrt" and self.tensorrt is None:
            raise ValueError("a tensorrt target needs a 'tensorrt: {min, max}' version range")
        bad = [c for c in self.compute_capabilities if not _CC.fullmatch(str(c))]
        if bad:
            raise ValueError(f"compute_capabilities must look like '8.9' (got {', '.join(map(str, bad))})")
        if self.compute_capabilities and self.tensorrt_flavour != "tensorrt-rtx":
            raise ValueError("compute_capabilities (ahead-of-time architectures) need tensorrt_flavour: tensorrt-rtx")
        if self.tensorrt_flavour == "tensorrt-rtx" and self.dla_core is not None:
            raise ValueError("TensorRT-RTX has no DLA: set dla_core: null")
        if any(m < 1 for m in self.channel_multiple.values()):
            raise ValueError(f"channel_multiple values must be >= 1 (got {self.channel_multiple})")
        return self

    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def require_precision(self, precision: str) -> None:
        if not self.supports(precision):
            raise ToolchainError(f"target '{self.name}' does not support {precision} (it supports "
                                 f"{', '.join(self.precisions)}); pick one of those with --precision")


def _version_key(version: str, upper: bool = False) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        if piece in ("x", "*"):
            parts.append(10**6 if upper else 0)
        elif piece.isdigit():
            parts.append(int(piece))
        else:
            digits = "".join(c for c in piece if c.isdigit())
            parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(10**6 if upper else 0)
    return tuple(parts)


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ToolchainError(f"{path}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ToolchainError(f"{path}: a target file must be a YAML mapping (see targets/cpu.yaml)")
    return raw


def _validate(raw: dict, path: Path) -> Target:
    try:
        return Target.model_validate({**raw, "source": str(path)})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "(file)"
        raise ToolchainError(f"{path}: target key '{key}': {e['msg'].replace('Value error, ', '')}") from None


def target_names(directory: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_target(name_or_path: str | Path, directory: Path = TARGETS_DIR, _seen: tuple = ()) -> Target:
    """A target by name (targets/NAME.yaml) or by path to a YAML file; aliases are followed."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) and path.is_file()):
        path = Path(directory) / f"{text}.yaml"
        if not path.is_file():
            names = target_names(directory)
            near = difflib.get_close_matches(text, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ToolchainError(f"unknown target '{text}'{hint}: valid targets are {', '.join(names)} "
                                 "(or pass a path to a target YAML)")
    raw = _read_yaml(path)
    alias = raw.get("alias_of")
    if alias and set(raw) <= {"name", "alias_of", "description"}:
        if alias in _seen:
            raise ToolchainError(f"{path}: alias loop through '{alias}'")
        base = load_target(alias, directory, _seen + (raw.get("name", path.stem),))
        return base.model_copy(update={"name": raw.get("name", path.stem), "alias_of": alias,
                                       "description": raw.get("description") or base.description})
    return _validate(raw, path)


def list_targets(directory: Path = TARGETS_DIR) -> list[Target]:
    return [load_target(n, directory) for n in target_names(directory)]


def format_targets_table(targets: list[Target]) -> str:
    rows = [("name", "backend", "precisions", "DLA", "TensorRT", "cc", "description")]
    for t in targets:
        trt = f"{t.tensorrt.min}-{t.tensorrt.max}" if t.tensorrt else "-"
        trt = f"RTX {trt}" if t.tensorrt and t.tensorrt_flavour == "tensorrt-rtx" else trt
        name = f"{t.name} -> {t.alias_of}" if t.alias_of else t.name
        dla = "-" if t.dla_core is None else str(t.dla_core)
        cc = t.compute_capability or ",".join(t.compute_capabilities) or "-"
        rows.append((name, t.backend, ",".join(t.precisions), dla, trt, cc, t.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows)
