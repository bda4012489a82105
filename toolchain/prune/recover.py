"""Recovery of a slim model: fine-tuning, or distillation from the dense teacher (ACSL.md section 1).

Distillation loss, with T = kd_temperature and alpha = kd_weight:
- segmentation: L_task + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) per pixel, mean over
  valid pixels (target != data.ignore_index);
- counting: L_task + alpha * MSE(density_s, density_t), reduced like the task loss (sum over pixels,
  mean over the batch) so the two terms share a scale (choice);
- classification: L_task + alpha * T^2 * KL over the logits (batch mean);
- optional feature term (feature_weight > 0): MSE between the teacher's and the student's input to the
  first output layer, the student's mapped through a trained 1x1 conv adapter (widths differ after pruning).
`--recover auto` runs both with the same epochs from the same slim weights and keeps the better on val.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.errors import ToolchainError
from toolchain.prune.groups import output_layers

ADAPTER_NAME = "kd_feature_adapter"
RECOVER_METHODS = ("finetune", "distill", "auto", "none")


def kd_pixel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) over dim 1, per pixel (or per sample), mean over valid positions."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    if valid is not None:
        valid = valid.to(per_position.dtype)
        return (per_position * valid).sum() / valid.sum().clamp_min(1.0)
    return per_position.mean()


def distill_term(cfg, student_out: torch.Tensor, teacher_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r = cfg.prune.recover
    if cfg.task == "counting":
        return r.kd_weight * F.mse_loss(student_out, teacher_out, reduction="sum") / student_out.shape[0]
    valid = (targets != cfg.data.ignore_index) if cfg.task == "segmentation" else None
    return r.kd_weight * r.kd_temperature ** 2 * kd_pixel_kl(student_out, teacher_out, r.kd_temperature, valid)


class _FeatureTap:
    """Captures the input of a model's first output layer."""

    def __init__(self, model: nn.Module):
        self.value: Optional[torch.Tensor] = None
        self.handle = output_layers(model)[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        self.value = inputs[0]

    def remove(self):
        self.handle.remove()


def make_distill_loss(cfg, student: nn.Module, teacher: nn.Module) -> tuple[Callable, Callable[[], None]]:
    """fit()'s loss_fn for distillation, and a cleanup function (removes hooks and the adapter)."""
    from toolchain.train.losses import task_loss

    criterion = task_loss(cfg)
    teacher.eval()
    feature_weight = cfg.prune.recover.feature_weight
    taps = None
    if feature_weight > 0:
        taps = (_FeatureTap(student), _FeatureTap(teacher))
        c_s = output_layers(student)[0].weight.shape[1]
        c_t = output_layers(teacher)[0].weight.shape[1]
        param = next(student.parameters())
        student.add_module(ADAPTER_NAME, nn.Conv2d(c_s, c_t, 1, bias=False).to(param.device))

    def loss_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = model(images)
        with torch.no_grad():
            t_out = teacher(images)
        loss = criterion(out, targets) + distill_term(cfg, out, t_out.to(out.dtype), targets)
        if taps is not None:
            adapter = getattr(model, ADAPTER_NAME)
            feat_s = adapter(taps[0].value)
            loss = loss + feature_weight * F.mse_loss(feat_s, taps[1].value.detach())
        return loss

    def cleanup() -> None:
        if taps is not None:
            for tap in taps:
                tap.remove()
            if hasattr(student, ADAPTER_NAME):
                delattr(student, ADAPTER_NAME)
    return loss_fn, cleanup


def _load_best(model: nn.Module, best_path: Optional[Path]) -> None:
    from toolchain.train.checkpoint import load_checkpoint

    if best_path is None or not Path(best_path).is_file():
        return
    state = {k: v for k, v in load_checkpoint(best_path)["model_state"].items() if not k.startswith(ADAPTER_NAME)}
    model.load_state_dict(state)


def _run(cfg, model: nn.Module, plan: dict, teacher: nn.Module, run_dir: Path, mode: str, epochs: int,
         lr: float) -> tuple[nn.Module, Optional[float], dict]:
    from toolchain.train.trainer import fit

    cleanup = lambda: None  # noqa: E731
    loss_fn = None
    if mode == "distill":
        loss_fn, cleanup = make_distill_loss(cfg, model, teacher)
    try:
        result = fit(cfg, model, run_dir, epochs=epochs, lr=lr, loss_fn=loss_fn, stage=f"recover_{mode}",
                     teacher=teacher if mode == "distill" else None, extra_checkpoint={"channel_plan": plan},
                     resume_same_run=True)  # an interrupted recovery resumes; a stale run of another plan never
    finally:
        cleanup()
    _load_best(model, result.best_path)
    info = {"val": result.best_metric, "best_epoch": result.best_epoch, "epochs": epochs, "wall_s": result.wall_s,
            "history": result.history}
    return model, result.best_metric, info


def recover(cfg, slim_model: nn.Module, plan: dict, teacher: Optional[nn.Module], run_dir: str | Path,
            method: str, epochs: Optional[int] = None, lr: Optional[float] = None) -> tuple[nn.Module, dict]:
    """Recover `slim_model` by `method` (finetune | distill | auto | none); returns (model, record)."""
    from toolchain.train.metrics import is_better

    if method not in RECOVER_METHODS:
        raise ToolchainError(f"unknown recovery '{method}' (valid: {', '.join(RECOVER_METHODS)})")
    r = cfg.prune.recover
    epochs = r.epochs if epochs is None else epochs
    lr = lr if lr is not None else (r.lr if r.lr is not None else cfg.train.lr / 10)
    if method == "none" or epochs == 0:
        return slim_model, {"method": "none", "epochs": 0}
    if method in ("distill", "auto") and teacher is None:
        raise ToolchainError("distillation needs the dense teacher model")
    modes = ["finetune", "distill"] if method == "auto" else [method]
    candidates = {}
    for mode in modes:
        start = copy.deepcopy(slim_model) if len(modes) > 1 else slim_model
        candidates[mode] = _run(cfg, start, plan, teacher, Path(run_dir), mode, epochs, lr)
    chosen = modes[0]
    for mode in modes[1:]:
        if is_better(cfg.task, candidates[mode][1], candidates[chosen][1]):
            chosen = mode
    record = {"method": method, "chosen": chosen, "epochs": epochs, "lr": lr,
              "scores_val": {mode: c[1] for mode, c in candidates.items()},
              "runs": {mode: c[2] for mode, c in candidates.items()}}
    return candidates[chosen][0], record
