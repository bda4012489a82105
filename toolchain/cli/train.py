"""`acsl train CONFIG`: train the dense model and keep the best-on-val checkpoint."""
from __future__ import annotations

from pathlib import Path

from toolchain.cli.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("train", help="train a dense model (best-on-val checkpoint kept, resumable)")
    add_config_args(p)
    p.add_argument("--out", help="run folder (default: <out_dir>/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete epoch")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.data import describe_source
    from toolchain.models.complexity import model_summary
    from toolchain.train import distributed as dist_utils
    from toolchain.train.checkpoint import load_model
    from toolchain.train.evaluate import evaluate
    from toolchain.train.dense import build_seeded_model, train_dense
    from toolchain.train.metrics import primary_metric
    from toolchain.train.plateau import describe as describe_plateau
    from toolchain.train.plateau import plateau_check
    from toolchain.utils.io import write_json
    from toolchain.utils.provenance import git_commit, machine, versions

    from toolchain.utils.io import remove_stale_partials

    cfg = config_from_args(args)
    run_dir = Path(args.out) if args.out else cfg.run_dir()
    for path in remove_stale_partials(run_dir):
        print(f"removed {path}, left behind by a run that no longer exists")
    model = build_seeded_model(cfg)  # the initial weights depend only on the config's seed
    summary = model_summary(model, cfg.data.input_size)
    if dist_utils.is_main():
        print(f"data: {describe_source(cfg)}")
        print(f"model: {cfg.model.name} width {cfg.model.width}: {summary['params'] / 1e6:.3f} M params, "
              f"{summary['macs'] / 1e9:.3f} GMACs at {cfg.data.input_size[0]}x{cfg.data.input_size[1]}")
    result = train_dense(cfg, run_dir, resume=args.resume, model=model)
    main_rank = dist_utils.is_main()
    dist_utils.shutdown()  # under torchrun, rank 0 evaluates alone from here on
    if not main_rank:
        return 0
    best_model, _ = load_model(result.best_path, cfg)
    test = evaluate(best_model, cfg, "test") if _has_split(cfg, "test") else None
    record = {
        "stage": "train", "config": cfg.source, "profile": cfg.profile, "data": describe_source(cfg),
        "model": cfg.model.name, "width": cfg.model.width, "input_size": list(cfg.data.input_size),
        "params": summary["params"], "macs": summary["macs"], "metric": result.metric_name,
        "val": result.best_metric, "best_epoch": result.best_epoch, "test": test, "epochs": result.epochs,
        "train_images_per_s": result.train_images_per_s, "wall_s": result.wall_s, "checkpoint": str(result.best_path),
        "machine": machine(), "versions": versions(), "git_commit": git_commit(),
    }
    try:
        record["plateau"] = plateau_check(result.history, result.metric_name, primary_metric(cfg.task)[1])
    except ValueError:  # fewer than 2 evaluated epochs: nothing to judge
        record["plateau"] = None
    write_json(run_dir / "train_record.json", record)
    test_s = f", test {result.metric_name} {test[result.metric_name]:.3f}" if test else ""
    print(f"best val {result.metric_name} {result.best_metric:.3f} at epoch {result.best_epoch}{test_s}")
    if record["plateau"]:
        print(describe_plateau(record["plateau"], result.metric_name))
    print(f"checkpoint: {result.best_path}")
    return 0


def _has_split(cfg, split: str) -> bool:
    from toolchain.data import build_dataset

    try:
        return len(build_dataset(cfg, split, train=False)) > 0
    except Exception:  # noqa: BLE001 - a missing optional split just means no test numbers
        return False
