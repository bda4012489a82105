"""Dense training: the one function every caller uses (`acsl train`, `acsl deploy`, the benchmarks).

`train_dense(cfg, run_dir)` seeds every generator from `cfg.train.seed` *before* the model is built,
so the initial weights, the data order and the augmentation depend only on the config: two runs
with the same config give byte-identical checkpoints. Callers differ only in what they do with the
result (the CLI evaluates on test, deploy copies the best checkpoint into its stage folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.nn as nn

from toolchain.train.trainer import FitResult, fit, seed_everything


def build_seeded_model(cfg) -> nn.Module:
    """The config's model with initial weights drawn from `cfg.train.seed` (and nothing else)."""
    from toolchain.models import build_from_config

    seed_everything(cfg.train.seed)
    return build_from_config(cfg)


def train_dense(cfg, run_dir: str | Path, *, resume: bool = False, model: Optional[nn.Module] = None,
                epochs: Optional[int] = None) -> FitResult:
    """Train the config's dense model into `run_dir` (best-on-val + last checkpoints); resumable.

    `model`, when given, must come from `build_seeded_model(cfg)` (the CLI builds it first to print
    its size); otherwise it is built here, seeded.
    """
    if model is None:
        model = build_seeded_model(cfg)
    return fit(cfg, model, run_dir, epochs=epochs, resume=resume, stage="dense")
