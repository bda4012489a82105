"""Experiment configuration: one YAML file per experiment, validated into typed objects.

A config may carry `profiles:` (e.g. `quick` for 2 CPU cores, `full` for a GPU); each profile is a
partial config deep-merged over the base before validation. A typo'd key or a wrong type is a
one-line ToolchainError naming the key and, for typos, the nearest valid key.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic import PositiveInt

from toolchain.errors import ToolchainError

Task = Literal["segmentation", "counting", "classification"]


# Limits that catch absurd values before anything is allocated (a width of 1e9 would otherwise reach
# the allocator; an input side of 1e6 pixels the first batch).
MAX_WIDTH = 16.0
MAX_INPUT_SIDE = 8192
Side = Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)]


class _Strict(BaseModel):
    # allow_inf_nan=False: `--set train.lr=.inf` or `.nan` is a one-line error when the config loads
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    name: str = Field(description="zoo name (see `acsl models`) or path/to/file.py:factory")
    width: float = Field(1.0, gt=0, le=MAX_WIDTH, description=f"channel width multiplier (at most {MAX_WIDTH:g})")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra factory arguments")


class AugmentConfig(_Strict):
    hflip: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    crop: bool = True


class DataConfig(_Strict):
    kind: Literal["camvid", "shanghaitech", "image_folder", "synthetic"]
    root: Optional[str] = Field(None, description="dataset folder; relative paths resolve from the config's folder")
    input_size: tuple[Side, Side] = Field(description=f"(height, width) the network sees, each 1..{MAX_INPUT_SIDE}")
    num_classes: int = Field(1, ge=1)
    class_names: list[str] = Field(default_factory=list)
    ignore_index: int = 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="val carved out of train where no val split exists")
    split_seed: int = 0
    density_sigma: float = Field(4.0, gt=0, description="Gaussian sigma (pixels of the input) per head")
    density_stride: int = Field(8, ge=1, description="counting: the model's output stride; maps are sum-pooled to it")
    max_images: Optional[int] = Field(None, ge=1, description="cap images per split (quick runs)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    eval_every: int = Field(1, ge=1)
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads")


class SparsityConfig(_Strict):
    """Hyperparameters of the sparsity-learning phase (defaults from docs ACSL.md)."""
    epochs: int = Field(5, ge=0)
    lam: float = Field(1e-4, ge=0, description="global L1 strength lambda")
    refresh_every: int = Field(10, ge=1, description="ACSL: recompute the affinity matrix every k iterations")
    ema_momentum: float = Field(0.9, ge=0, lt=1)
    clip: tuple[float, float] = Field((0.1, 10.0), description="strength clip range, multiples of lambda")
    max_positions: int = Field(4096, ge=16, description="spatial positions sampled per batch for the affinity")
    lr: Optional[float] = Field(None, gt=0, description="learning rate during sparsity learning (default: train.lr)")
    mode: Literal["proximal", "subgradient"] = Field(
        "proximal", description="proximal: gamma <- sign(gamma) max(|gamma| - lr_t lambda_c, 0) after each optimiser "
        "step (docs/SPARSITY.md); subgradient: lambda_c sign(gamma) added to the gradient (washed out by Adam)")
    keep_floor: bool = Field(True, description="proximal: never shrink the max(min_channels, min_fraction x C) largest "
                             "gammas of a layer (selection keeps them anyway), so no layer is zeroed whole")
    with_beta: bool = Field(True, description="proximal: shrink (gamma, beta) of a channel together (group soft-threshold), "
                            "so a zeroed channel outputs exactly 0 and removing it is lossless; false: gamma only")


class RecoverConfig(_Strict):
    method: Literal["finetune", "distill", "auto", "none"] = "finetune"
    epochs: int = Field(5, ge=0)
    lr: Optional[float] = Field(None, gt=0, description="default: train.lr / 10")
    kd_temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(1.0, ge=0, description="alpha")
    feature_weight: float = Field(0.0, ge=0, description="weight of the optional feature term")


class PruneConfig(_Strict):
    method: str = "acsl"
    budget: str = Field("params=0.5", description="params=F or flops=F: fraction removed; or latency=Tms on deploy.target")
    min_channels: int = Field(8, ge=1)
    min_fraction: float = Field(0.1, ge=0, le=1)
    round_to: PositiveInt | Literal["target", "target:fp32", "target:fp16", "target:int8"] = Field(
        1, description="round kept widths to a multiple; 'target' (or 'target:int8'): the channel_multiple of "
        "deploy.target for its default (or the named) precision")
    group_reduction: Literal["mean", "max", "sum"] = Field(
        "mean", description="gamma saliency over a group's BNs: mean|max of per-BN-normalised |gamma|, "
        "or sum of raw |gamma| (before issue 11; never prunes multi-BN groups)")
    seed: int = 0
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)


class ExportConfig(_Strict):
    opset: int = Field(17, ge=11)
    dynamic: list[Literal["batch", "hw"]] = Field(default_factory=list)
    simplify: Literal["onnxsim", "onnxslim", "none"] = "onnxsim"


class QuantizeConfig(_Strict):
    calib_images: int = Field(64, ge=1)
    calib_seed: int = 0
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    gate: float = Field(0.99, gt=0, le=1, description="INT8 keeps at least this fraction of the FP32 metric")
    max_fallback_nodes: int = Field(16, ge=0)


class DeployConfig(_Strict):
    target: str = "cpu"
    out_dir: str = "deploy"
    eval_split: Literal["val", "test"] = Field("test", description="split the deployed engines are scored on "
                                               "(the INT8 gate always uses val)")
    eval_images: Optional[int] = Field(None, ge=1, description="cap eval images for engine accuracy")
    latency_variant: Optional[str] = Field(
        None, description="also prune the dense model to a latency budget on this target and profile it next to "
        "slim (variant 'slim_latency': report table, realisation, Pareto plot; compared, not shipped): 'match' = "
        "the measured latency of the prune.budget slim model, or latency=Tms. Needs an onnxruntime target")

    @field_validator("latency_variant")
    @classmethod
    def _check_latency_variant(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v != "match":
            from toolchain.prune.select import parse_budget

            try:
                kind = parse_budget(v).kind
            except ToolchainError:
                raise ValueError("must be 'match' or latency=Tms, e.g. latency=12ms") from None
            if kind != "latency":
                raise ValueError("must be 'match' or latency=Tms (a params/flops budget belongs in prune.budget)")
        return v


class ExperimentConfig(_Strict):
    name: str
    task: Task
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    out_dir: str = Field("runs", description="where runs write checkpoints and records")
    profile: Optional[str] = Field(None, description="the profile applied (set by the loader)")
    source: Optional[str] = Field(None, description="the YAML file this came from (set by the loader)")

    @model_validator(mode="after")
    def _check_task(self) -> "ExperimentConfig":
        if self.task in ("segmentation", "classification") and self.data.num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2 for {self.task}")
        if self.data.class_names and len(self.data.class_names) != self.data.num_classes:
            raise ValueError(
                f"data.class_names has {len(self.data.class_names)} names but data.num_classes is {self.data.num_classes}")
        return self

    # -- helpers -------------------------------------------------------------------------------
    def data_root(self) -> Optional[Path]:
        """The dataset folder, resolved relative to the config file (or cwd)."""
        if self.data.root is None:
            return None
        root = Path(self.data.root).expanduser()
        if not root.is_absolute() and self.source:
            candidate = (Path(self.source).parent / root)
            if candidate.exists() or not root.exists():
                root = candidate
        return root.resolve()

    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def preprocessing(self) -> dict[str, Any]:
        """What deployment must reproduce exactly."""
        return {
            "input_size": list(self.data.input_size),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "layout": "NCHW",
            "color": "RGB",
            "scale": 1 / 255.0,
            "resize": "bilinear",
        }


# ---------------------------------------------------------------------------------------------
def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
        if getattr(model, "__origin__", None) is not None:  # Optional[...]
            args = [a for a in model.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
            model = args[0] if args else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _one_line(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    loc = tuple(str(p) for p in e["loc"])
    key = ".".join(loc)
    if e["type"] == "extra_forbidden":
        model = _model_at(tuple(e["loc"]))
        valid = list(model.model_fields) if model else []
        near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f" (did you mean '{'.'.join(loc[:-1] + (near[0],))}'?)" if near else (
            f" (valid keys: {', '.join(valid)})" if valid else "")
        return f"{where}: unknown key '{key}'{hint}"
    if e["type"] == "missing":
        return f"{where}: missing required key '{key}'"
    got = e.get("input")
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    msg = e["msg"].replace("Value error, ", "")
    return f"{where}: '{key}' {msg[0].lower() + msg[1:]} (got {got_s})" if key else f"{where}: {msg}"


def validate_config(raw: dict, where: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ToolchainError(_one_line(err, where)) from None


def load_config(path: str | Path, profile: str | None = None, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply a profile and overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"config file not found: {path} (configs live in configs/*.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ToolchainError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                             "save the config as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ToolchainError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    if not isinstance(raw, dict):
        raise ToolchainError(f"{path}: a config must be a YAML mapping of sections (name, task, model, data, ...)")
    profiles = raw.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            avail = ", ".join(profiles) or "none defined"
            raise ToolchainError(f"{path}: no profile '{profile}' (available: {avail})")
        raw = deep_merge(raw, profiles[profile])
        raw["profile"] = profile
    if overrides:
        raw = deep_merge(raw, overrides)
    raw["source"] = str(path.resolve())
    return validate_config(raw, where=str(path))


def config_to_dict(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")


def config_from_dict(d: dict) -> ExperimentConfig:
    return validate_config(d, where="config stored in checkpoint")


def parse_dotted_overrides(items: list[str]) -> dict:
    """`train.epochs=3` style overrides from the command line (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ToolchainError(f"override '{item}' must look like key.sub=value, e.g. train.epochs=3")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out
