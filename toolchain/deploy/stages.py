"""The deploy stages, each a thin call into the module that owns the work.

Every function takes the stage folder (and whether to resume inside it) and returns
`(artifacts: {name: path}, summary: dict)` for `StageCache.run`. Stage-internal failures of one
variant (an INT8 gate that fails, an engine that cannot be built here) become summary rows with a
reason; only errors that leave nothing to deploy propagate.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from toolchain.errors import ToolchainError

Log = Callable[[str], None]


# -- 1. dense training ---------------------------------------------------------------------------
def train_dense(cfg, folder: Path, resume: bool, checkpoint: Optional[Path], log: Log):
    from toolchain.train.checkpoint import load_model

    out = folder / "dense.pt"
    if checkpoint is not None:
        model, ckpt = load_model(checkpoint, cfg)  # one-line error when it does not fit the config
        if ckpt.get("channel_plan"):
            raise ToolchainError(f"--checkpoint {checkpoint} is already pruned (it has a channel plan); "
                                 "deploy starts from a dense checkpoint")
        shutil.copyfile(checkpoint, out)
        log(f"  using the given dense checkpoint {checkpoint}")
        return {"checkpoint": out}, {"source": str(checkpoint), "metric": ckpt.get("metric")}
    from toolchain.train.dense import train_dense as train

    result = train(cfg, folder, resume=resume)  # seeded before the model is built: reproducible
    if result.best_path is None:
        raise ToolchainError("dense training produced no checkpoint; check train.epochs and the data")
    shutil.copyfile(result.best_path, out)
    return {"checkpoint": out}, {"metric": result.best_metric, "metric_name": result.metric_name,
                                 "epochs": result.epochs, "wall_s": result.wall_s}


# -- 2+3. ACSL prune to the budget, recover -------------------------------------------------------
def prune_and_recover(cfg, dense_checkpoint: Path, folder: Path, resume: bool, log: Log):
    from toolchain.deploy.adapters import prune_pipeline

    slim_path, summary = prune_pipeline(cfg, dense_checkpoint, folder, log=log)  # sparsity runs are cached by run_prune
    out = folder / "slim.pt"
    if Path(slim_path).resolve() != out.resolve():
        shutil.copyfile(slim_path, out)
    return {"checkpoint": out}, summary


# -- 2b. optional: the same prune to a latency budget (deploy.latency_variant), for comparison ---------
def prune_latency_variant(cfg, dense_checkpoint: Path, slim_checkpoint: Path, slim_kept: dict, folder: Path,
                          resume: bool, log: Log):
    from toolchain.config import config_from_dict, config_to_dict, deep_merge
    from toolchain.deploy.adapters import latency_variant_budget, prune_pipeline

    budget, how = latency_variant_budget(cfg, dense_checkpoint, slim_checkpoint, slim_kept, log)
    log(f"  slim_latency: pruning to {budget} on {cfg.deploy.target} ({how['source']})")
    lat_cfg = config_from_dict(deep_merge(config_to_dict(cfg), {"prune": {"budget": budget}}))
    slim_path, summary = prune_pipeline(lat_cfg, dense_checkpoint, folder, log=log)  # sparsity run reused
    out = folder / "slim_latency.pt"
    shutil.copyfile(slim_path, out)
    return {"checkpoint": out}, {**summary, "latency_budget": budget, "budget_source": how}


# -- 4. export ----------------------------------------------------------------------------------
def export_variants(cfg, checkpoints: dict[str, Path], folder: Path, target_name: str, log: Log):
    from toolchain.export import export_checkpoint

    artifacts, summary = {}, {}
    for variant, ckpt in checkpoints.items():
        result = export_checkpoint(cfg, ckpt, out=folder / f"{variant}.onnx", target=target_name, log=log)
        artifacts[variant] = result.onnx_path
        artifacts[f"{variant}-record"] = result.record_path
        summary[variant] = {"parity": result.parity.summary(), "size_bytes": result.record["size_bytes"],
                            "simplifier": result.record["simplifier_ran"]}
    return artifacts, summary
