"""The training loop shared by dense training, sparsity learning and recovery.

`fit()` trains with SGD/AdamW, warm-up + poly/cosine schedule (per iteration), mixed precision on
CUDA, a progress bar with loss and throughput; evaluates on val each epoch, keeps the best-on-val
checkpoint, and writes `last.pt` atomically after every epoch so that `resume=True` continues
exactly (model, optimizer, scheduler, RNG states, history). Ctrl-C mid-epoch leaves the last
complete `last.pt` valid. With `resume_same_run=True` it resumes only a `last.pt` written by the same
run (same config, starting weights, epochs, learning rate and extra checkpoint entries such as a channel
plan) and starts over otherwise, for folders that may hold a stale run of other settings.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from toolchain.errors import ToolchainError
from toolchain.train import distributed as dist_utils
from toolchain.train.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint, unwrap
from toolchain.train.evaluate import evaluate
from toolchain.train.losses import task_loss
from toolchain.train.metrics import is_better, primary_metric
from toolchain.utils.io import write_json


class NonFiniteLoss(ToolchainError):
    """The loss became NaN/inf; the last complete checkpoint is kept."""


@dataclass
class FitResult:
    best_metric: Optional[float]
    best_epoch: int
    metric_name: str
    history: list = field(default_factory=list)
    best_path: Optional[Path] = None
    last_path: Optional[Path] = None
    train_images_per_s: float = 0.0
    wall_s: float = 0.0
    epochs: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def make_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.momentum > 0)


def make_schedule(optimizer, cfg, total_steps: int, steps_per_epoch: int):
    t = cfg.train
    warmup = int(t.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if t.schedule == "poly":
            return (1 - progress) ** t.poly_power
        if t.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_loader(cfg, epoch_sampler_seed: int):
    from toolchain.data import build_dataset

    dataset = build_dataset(cfg, "train", train=True)
    if len(dataset) == 0:
        raise ToolchainError("the train split is empty; check data.root and the split files")
    sampler = dist_utils.EpochSampler(len(dataset), shuffle=True, seed=epoch_sampler_seed)
    per_rank = len(sampler)
    drop_last = per_rank >= cfg.train.batch_size and per_rank % cfg.train.batch_size == 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                                         num_workers=cfg.train.num_workers, drop_last=drop_last,
                                         persistent_workers=cfg.train.num_workers > 0)
    return dataset, sampler, loader


_RESUME_KEYS = ("model_state", "optimizer", "scheduler", "rng", "epoch", "history")


def _resumable(last_path: Path, stage: str) -> Optional[dict]:
    """The last-epoch checkpoint to resume from, or None to start the stage from scratch.

    A truncated, corrupt or incomplete one (a disk that filled up, a copy cut short) or one with
    NaN/inf weights is moved aside to `<name>.bad` with a message, so the stage restarts instead of
    failing the same way on every rerun.
    """
    if not last_path.is_file():
        return None
    try:
        try:
            ckpt = load_checkpoint(last_path)
        except ToolchainError:
            raise ToolchainError("it is truncated or corrupt") from None
        missing = [k for k in _RESUME_KEYS if k not in ckpt]
        if missing:
            raise ToolchainError(f"it lacks {', '.join(missing)}")
        if non_finite_tensors(ckpt["model_state"]):
            raise ToolchainError("its weights contain NaN/inf")
    except ToolchainError as err:
        bad = last_path.with_name(last_path.name + ".bad")
        with contextlib.suppress(FileNotFoundError):  # another rank moved it first
            last_path.replace(bad)
        if dist_utils.is_main():
            print(f"[{stage}] cannot resume from {last_path.name} ({err}); moved it to {bad} and restarting "
                  f"this stage from scratch", flush=True)
        return None
    return ckpt


def run_key(cfg, model: nn.Module, stage: str, epochs: int, lr: float, extra: dict) -> str:
    """What makes two runs of a stage the same run: config (less train.threads, which does not change the
    result), the weights it starts from, epochs, learning rate and the extra checkpoint entries. sha256 hex."""
    from toolchain.config import config_to_dict

    config = config_to_dict(cfg)
    config.get("train", {}).pop("threads", None)
    text = json.dumps({"config": config, "stage": stage, "epochs": epochs, "lr": lr, "extra": extra},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode())
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fit(cfg, model: nn.Module, run_dir: str | Path, *, epochs: int | None = None, lr: float | None = None,
        loss_fn: Callable | None = None, after_backward: Callable | None = None, resume: bool = False,
        stage: str = "dense", teacher: nn.Module | None = None, extra_checkpoint: dict | None = None,
        step_callback: Callable | None = None, after_step: Callable | None = None,
        resume_same_run: bool = False) -> FitResult:
    """Train `model` on cfg's data; see the module docstring.

    loss_fn(model, images, targets) overrides the task loss (distillation); after_backward(model, step)
    runs between backward and the optimizer step (sparsity learning); after_step(model, step, lr) runs right
    after the optimizer step with that step's learning rate (proximal sparsity); step_callback(step) runs after
    each optimizer step (tests use it to simulate an interrupt). extra_checkpoint is stored in every
    checkpoint (e.g. the channel plan of a slim model). resume_same_run=True resumes only a last.pt of the
    same run_key() (resume=True is implied) and otherwise starts the stage over with a message.
    """
    distributed = dist_utils.init_from_env()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = Path(run_dir)
    epochs = epochs if epochs is not None else cfg.train.epochs
    lr = lr if lr is not None else cfg.train.lr
    if not (math.isfinite(lr) and lr > 0):
        raise ToolchainError(f"the {stage} learning rate is {lr}; it must be a positive finite number "
                             "(set train.lr, prune.sparsity.lr or prune.recover.lr)")
    seed_everything(cfg.train.seed + dist_utils.rank())
    device = dist_utils.device()
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    dataset, sampler, loader = _train_loader(cfg, cfg.train.seed)
    if len(loader) == 0:
        raise ToolchainError(f"the train split has {len(dataset)} images, fewer than train.batch_size="
                             f"{cfg.train.batch_size}; lower the batch size")
    optimizer = make_optimizer(model, cfg, lr)
    scheduler = make_schedule(optimizer, cfg, epochs * len(loader), len(loader))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion = task_loss(cfg)
    metric_name, _ = primary_metric(cfg.task)
    last_path, best_path = run_dir / f"{stage}_last.pt", run_dir / f"{stage}_best.pt"
    extra = dict(extra_checkpoint or {})
    key = run_key(cfg, model, stage, epochs, lr, extra) if resume_same_run else None  # only a guarded resume reads it

    start_epoch, history, best, best_epoch = 0, [], None, -1
    ckpt = _resumable(last_path, stage) if resume or resume_same_run else None
    if ckpt is not None and resume_same_run and ckpt.get("run_key") != key:
        if dist_utils.is_main():
            print(f"[{stage}] {last_path.name} was written by a run of other settings; starting this stage over",
                  flush=True)
        ckpt = None
    if ckpt is not None:
        try:  # a checkpoint of another width / model / optimizer than the config's: one line, not a torch dump
            unwrap(model).load_state_dict(ckpt["model_state"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:2])[:200]
            raise ToolchainError(f"cannot resume from {last_path}: it was written for another model or optimizer "
                                 f"than the config's ({detail}); rerun without --resume to start this stage over, "
                                 "or pass another --out") from None
        if "scaler" in ckpt and use_amp:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        best, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch", -1)
        if dist_utils.is_main():
            print(f"[{stage}] resuming from {last_path} at epoch {start_epoch + 1}/{epochs}")
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model

    t_start, images_seen, train_time = time.time(), 0, 0.0
    step = start_epoch * len(loader)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        train_model.train()
        bar = tqdm(loader, desc=f"[{stage}] epoch {epoch + 1}/{epochs}", disable=None if dist_utils.is_main() else True,
                   leave=False, dynamic_ncols=True)
        t_epoch, loss_sum, n_batches, epoch_images = time.time(), 0.0, 0, 0
        for images, targets in bar:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(train_model, images, targets) if loss_fn else criterion(train_model(images), targets)
            if not torch.isfinite(loss):
                kept = (f"the last complete checkpoint is kept at {last_path}" if last_path.is_file()
                        else "no checkpoint was written")
                raise NonFiniteLoss(f"the {stage} loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                                    f"{kept}; lower the learning rate (lr {lr:g})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if after_backward is not None:
                scaler.unscale_(optimizer)
                after_backward(unwrap(train_model), step)
            scaler.step(optimizer)
            if after_step is not None:
                after_step(unwrap(train_model), step, optimizer.param_groups[0]["lr"])
            scaler.update()
            scheduler.step()
            step += 1
            loss_sum += loss.item()
            n_batches += 1
            epoch_images += images.shape[0]
            elapsed = max(time.time() - t_epoch, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}", img_s=f"{epoch_images * dist_utils.world_size() / elapsed:.1f}")
            if step_callback is not None:
                step_callback(step)
        epoch_time = time.time() - t_epoch
        train_time += epoch_time
        images_seen += epoch_images * dist_utils.world_size()
        record = {"epoch": epoch + 1, "loss": loss_sum / max(n_batches, 1), "lr": scheduler.get_last_lr()[0],
                  "epoch_s": round(epoch_time, 3), "images_per_s": round(epoch_images * dist_utils.world_size() / epoch_time, 2)}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs:
            val = evaluate(unwrap(train_model), cfg, "val")
            record["val"] = {k: v for k, v in val.items() if k != "per_class_iou"}
            value = val[metric_name]
            if is_better(cfg.task, value, best):
                best, best_epoch = value, epoch + 1
                if dist_utils.is_main():
                    save_checkpoint(best_path, train_model, cfg, epoch=epoch, stage=stage, metric={metric_name: value},
                                    best_metric=best, **extra)
        history.append(record)
        if dist_utils.is_main():
            val_s = f", val {metric_name} {record['val'][metric_name]:.3f}" if "val" in record else ""
            print(f"[{stage}] epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}{val_s}, "
                  f"{record['images_per_s']:.1f} img/s, {epoch_time:.1f} s", flush=True)
            save_checkpoint(last_path, train_model, cfg, epoch=epoch, stage=stage, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=_rng_state(),
                            history=history, best_metric=best, best_epoch=best_epoch, run_key=key, **extra)
        dist_utils.barrier()

    result = FitResult(best_metric=best, best_epoch=best_epoch, metric_name=metric_name, history=history,
                       best_path=best_path if best_path.is_file() else None, last_path=last_path,
                       train_images_per_s=round(images_seen / train_time, 2) if train_time else 0.0,
                       wall_s=round(time.time() - t_start, 2), epochs=epochs)
    if dist_utils.is_main():
        write_json(run_dir / f"{stage}_history.json", {"stage": stage, "metric": metric_name, "best": best,
                                                       "best_epoch": best_epoch, "history": history})
    return result
