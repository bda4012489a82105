"""Bridges from the deploy pipeline to the prune and build stages' public entry points.

`prune_pipeline` runs `toolchain.prune.pipeline.run_prune` to the config's budget; `build_precision`
runs `toolchain.build.build` for one precision and turns its result into a report row (an INT8 model
the accuracy gate rejected becomes a failed row, never an FP32 model labelled INT8).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from toolchain.artifacts.kinds import BUILD_SCRIPT, CALIBRATION_CACHE, ENGINE_SIDECAR, ONNX, kind_of

Log = Callable[[str], None]


def prune_pipeline(cfg, dense_checkpoint: Path, folder: Path, *, log: Log) -> tuple[Path, dict]:
    """ACSL-prune the dense checkpoint to cfg.prune.budget and recover; returns (slim checkpoint, summary)."""
    from toolchain.prune.pipeline import run_prune

    final = run_prune(cfg, dense_checkpoint, out=folder, evaluate_test=False)
    summary = {"method": final["method"], "budget": final["budget"], "recover": final["recover"],
               "metric": final["val"], "metric_name": final["metric"],
               "fraction_removed": final["fraction_removed"], "params_after": final["after"].get("params"),
               "macs_after": final["after"].get("macs"),
               "kept": {g["root"]: g["kept"] for g in final["stages"]["select"]["groups"]},
               "latency": final["stages"]["select"].get("latency")}
    kind = final["budget"]["kind"]
    removed = final["fraction_removed"]
    what = (f"{removed['flops']:.1%} of MACs (predicted {summary['latency']['predicted_ms']:.4f} ms)"
            if kind == "latency" else f"{removed[kind]:.1%} of {kind}")
    log(f"  pruned {what}, recovered ({final['recover']}): val {final['metric']} {final['val']:.4f}")
    return Path(final["checkpoint"]), summary


def latency_variant_budget(cfg, dense_checkpoint: Path, slim_checkpoint: Path, kept: dict, log: Log) -> tuple[str, dict]:
    """The latency budget of the deploy's `slim_latency` variant (deploy.latency_variant) and how it was set.

    'match': the measured latency of the prune.budget slim model (ONNX Runtime CPU, the latency table's
    threads, timed against dense, in the table's ms), so the two slim models are compared at equal measured
    latency; its predicted latency on the
    table (from the plan's `kept` widths per group root) is recorded next to it. 'latency=Tms': that budget."""
    from toolchain.errors import ToolchainError
    from toolchain.profile.layer_latency import LatencyModel, build_latency_table, relative_ms
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.select import resolve_round_to
    from toolchain.targets import load_target
    from toolchain.train.checkpoint import load_model

    wanted = cfg.deploy.latency_variant
    if wanted != "match":
        return wanted, {"source": "deploy.latency_variant"}
    model, _ = load_model(dense_checkpoint, cfg)
    graph = build_pruning_graph(model, tuple(cfg.data.input_size))
    round_to, _ = resolve_round_to(cfg.prune.round_to, cfg.deploy.target)
    table = build_latency_table(graph, load_target(cfg.deploy.target), round_to=round_to,
                                cache_dir=Path(cfg.out_dir) / "latency_tables", log=log)
    latency = LatencyModel(graph, table)
    missing = [g.root for g in graph.groups if g.root not in kept]
    if missing:
        raise ToolchainError(f"deploy.latency_variant 'match': the slim plan has no width for group {missing[0]} "
                             "(the prune stage was made by another version); rerun with a fresh run folder")
    predicted = latency([kept[g.root] for g in graph.groups])
    slim, _ = load_model(slim_checkpoint, cfg)
    # timed against dense in alternating rounds and expressed in the table's ms, as latency plans are measured
    ratio, _, _ = relative_ms(model, slim, tuple(cfg.data.input_size), threads=table.data["threads"])
    measured = ratio * table.dense_model_ms
    log(f"  slim plan ({cfg.prune.budget}): measured {ratio:.3f} x dense = {measured:.4f} ms, predicted "
        f"{predicted:.4f} ms on {cfg.deploy.target} (dense {table.dense_model_ms:.4f} ms); "
        f"slim_latency gets latency={measured:.4f}ms")
    return f"latency={measured:.4f}ms", {"source": f"match: measured latency of the {cfg.prune.budget} slim model",
                                         "slim_measured_ms": measured, "slim_predicted_ms": predicted,
                                         "dense_predicted_ms": latency(latency.sizes)}


# -- build ----------------------------------------------------------------------------------------
def build_precision(cfg, onnx_path: Path, target, precision: str, folder: Path, log: Log) -> dict:
    """Build one precision of one ONNX for `target`.

    Returns {"status", "reason", "kind" ("onnx" | "tensorrt-engine" | "build-script"), "artifact",
    "extra_files": {bundle_name: path}, "record"}.
    """
    import toolchain.build as build_pkg

    return _build_with_builder(build_pkg, cfg, onnx_path, target, precision, folder, log)


def _build_with_builder(build_pkg, cfg, onnx_path, target, precision, folder, log) -> dict:
    from toolchain.errors import ToolchainError

    try:
        result = build_pkg.build(cfg, onnx_path, target, precision=precision, out_dir=folder)
    except ToolchainError as err:
        return {"status": "failed", "reason": str(err), "kind": None, "artifact": None, "extra_files": {},
                "record": {}}
    record = dict(result.record or {})
    artifact = Path(result.artifact) if result.artifact else None
    extra = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and _bundle_worthy(p, artifact)}
    status = record.get("status", "ok")
    if not getattr(result, "engine_built", True) and target.backend == "tensorrt":
        return {"status": "not-built", "kind": BUILD_SCRIPT.name,
                "reason": record.get("reason") or (
                    f"engine not built here ({target.tensorrt_flavour} is not installed): `bash "
                    f"{Path(folder).name}/build_engine.sh` builds it on the {target.name}, where it is measured"),
                "artifact": None, "extra_files": extra, "record": record}
    kind = (kind_of(artifact) or ONNX).name if artifact is not None else ONNX.name
    built = record.get("precision")
    if built and built != precision:  # e.g. INT8 rejected by the accuracy gate: not an INT8 variant at all
        gate = (record.get("int8") or {}).get("gate") or {}
        if gate:
            kept = len(gate.get("excluded_nodes") or [])
            why = (f"INT8 failed the accuracy gate on {gate['split']}: {gate['metric']} {gate['int8_metric']:.2f} vs "
                   f"FP32 {gate['fp32_metric']:.2f}, needs {gate['gate']:g}x" +
                   (f", even with {kept} most sensitive nodes kept in FP32" if kept else ""))
        else:
            why = "; ".join(record.get("notes", [])) or f"built {built} instead"
        return {"status": "failed", "reason": f"{why}; the {built} variant is deployed instead",
                "kind": kind, "artifact": None, "extra_files": extra, "record": record}
    return {"status": status if status in ("ok", "failed", "skipped") else "ok", "reason": record.get("reason"),
            "kind": kind, "artifact": artifact, "extra_files": extra, "record": record}


_BUNDLE_NAMES = ("build.json", "build_engine.sh", "trtexec.txt", "ort_calibration_ranges.json", "calibration_set.json")
# the Q/DQ and FP16 ONNX an engine is built from, the INT8 calibration cache, the engine's sidecar
_BUNDLE_SUFFIXES = (".qdq.onnx", ".fp16.onnx", *CALIBRATION_CACHE.suffixes, *ENGINE_SIDECAR.suffixes)


def _bundle_worthy(path: Path, artifact) -> bool:
    """Build outputs a bundle carries: record, Q/DQ ONNX, calibration cache, scripts, engine sidecar."""
    if artifact is not None and path.resolve() == Path(artifact).resolve():
        return False
    return path.name in _BUNDLE_NAMES or path.name.endswith(_BUNDLE_SUFFIXES)
