"""Checkpoints: state dicts plus config and preprocessing, loadable with `weights_only=True`.

A checkpoint holds only tensors, numbers, strings, lists and dicts (no pickled modules, no numpy
arrays). A slim (pruned) checkpoint also carries `channel_plan`; the model is rebuilt from the zoo
name + plan, then the state dict is loaded.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from toolchain.config import ExperimentConfig, config_from_dict, config_to_dict
from toolchain.errors import ToolchainError
from toolchain.utils.io import atomic_torch_save

FORMAT = "acsl-checkpoint/1"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(path: str | Path, model: nn.Module, cfg: ExperimentConfig, **extra: Any) -> Path:
    from toolchain.models.contract import architecture_id

    model = unwrap(model)
    state = {
        "architecture": architecture_id(model),  # the checkpoint's identity (class + state-dict shapes), not the name
        "format": FORMAT,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config_to_dict(cfg),
        "preprocessing": cfg.preprocessing(),
        "model_name": cfg.model.name,
        "width": cfg.model.width,
        "num_classes": cfg.data.num_classes,
        "task": cfg.task,
    }
    state.update(extra)
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"checkpoint not found: {path} (train one with `acsl train CONFIG`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ToolchainError(f"{path} is not a readable checkpoint: not a torch file, or it holds pickled objects "
                             "that safe (weights_only) loading refuses; use a checkpoint written by acsl") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:  # OSError: EINVAL when cut short
        why = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:100]
        raise ToolchainError(f"{path} is not a readable checkpoint (truncated or corrupt: {why}); "
                             "retrain or pick another file") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ToolchainError(f"{path} is not an acsl checkpoint (no 'model_state'); checkpoints come from `acsl train`")
    return ckpt


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(state: dict, path: str | Path) -> None:
    """A checkpoint with NaN/inf weights (a diverged run) is a one-line error, not a silent metric."""
    bad = non_finite_tensors(state)
    if bad:
        raise ToolchainError(f"{path} has NaN/inf values in {len(bad)} of {len(state)} tensors (e.g. '{bad[0]}'): "
                             "it comes from a diverged run; retrain with a lower learning rate or use an earlier "
                             "checkpoint")


def _describe_mismatch(model: nn.Module, state: dict) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if shape:
        parts.append(f"shape differences (checkpoint vs model) {shape[:3]}{' ...' if len(shape) > 3 else ''}")
    return "; ".join(parts) or None


def load_model(path: str | Path, cfg: ExperimentConfig | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint holds (dense, or slim via its channel plan) and load its weights.

    With `cfg`, the checkpoint must match the config's model; a mismatch is a one-line error that
    names the differing keys.
    """
    from toolchain.models import build_from_config
    from toolchain.models.contract import architecture_id

    ckpt = load_checkpoint(path)
    claimed = None  # the checkpoint names another model: fine when the architecture is the same (a moved file)
    if cfg is None:
        cfg = config_from_dict(ckpt["config"])
    else:
        name, width = ckpt.get("model_name"), ckpt.get("width")
        if name is not None and (name != cfg.model.name or abs(float(width) - cfg.model.width) > 1e-9):
            claimed = (f"{path} holds model '{name}' at width {width} but the config asks for "
                       f"'{cfg.model.name}' at width {cfg.model.width}; use a matching checkpoint or config")
    model = build_from_config(cfg)
    plan = ckpt.get("channel_plan")
    if plan:
        from toolchain.prune.plan import apply_channel_plan

        try:
            apply_channel_plan(model, plan)
        except ToolchainError:
            if claimed:
                raise ToolchainError(claimed) from None
            raise
    problem = _describe_mismatch(model, ckpt["model_state"])
    if claimed and (problem or ckpt.get("architecture", architecture_id(model)) != architecture_id(model)):
        raise ToolchainError(claimed)
    if problem:
        raise ToolchainError(f"{path} does not fit model '{cfg.model.name}' (width {cfg.model.width}): {problem}")
    check_finite(ckpt["model_state"], path)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, ckpt
