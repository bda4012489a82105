"""`acsl deploy`: train (dense) -> ACSL prune -> recover -> export -> build -> profile -> bundle.

Every stage runs through `StageCache` (see cache.py): finished stages whose inputs did not change
are skipped, a changed input reruns that stage and every later one, and a killed run resumes from
complete artifacts only. Stages shared by every target (train, prune, export) live in
`<run_dir>/stages/`; target-specific ones (build, profile) in `<run_dir>/stages/<target>/`.
The bundle goes to `<deploy.out_dir>/<target>/` (or --out) and is written atomically.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from toolchain.artifacts.bundle import write_bundle
from toolchain.artifacts.kinds import BUILD_SCRIPT, ONNX, TENSORRT_ENGINE, kind_of
from toolchain.artifacts.sidecar import sidecar_path
from toolchain.deploy import adapters, stages
from toolchain.deploy.cache import StageCache, StageRecord, code_version
from toolchain.errors import ToolchainError
from toolchain.models.registry import display_name
from toolchain.utils.io import atomic_path, read_json, sha256_json, write_json

VARIANTS = ("dense", "slim")  # shipped in the bundle (toolchain.artifacts.bundle.VARIANTS)
COMPARED = "slim_latency"  # deploy.latency_variant: built and profiled next to slim, reported, not shipped


@dataclass
class DeployResult:
    bundle: Path
    report_html: Path
    report_json: Path
    stages: dict[str, StageRecord]
    seconds: float


def _section(cfg, *names: str) -> dict:
    d = cfg.model_dump(mode="json")
    if "model" in names:  # a user model is keyed by its architecture + class source, not its path (issue 9)
        from toolchain.models.contract import model_identity

        d["model"] = model_identity(cfg)
    return {n: d[n] for n in names}


def run_deploy(cfg, target_name: str, *, checkpoint: Optional[str] = None, out_dir: Optional[str] = None,
               runs: int = 50, warmup_s: float = 0.5, log: Callable[[str], None] = print) -> DeployResult:
    from toolchain.targets import load_target

    target = load_target(target_name)
    started = time.perf_counter()
    root = cfg.run_dir() / "stages"
    cache, tcache = StageCache(root, log), StageCache(root / target.name, log)
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and not ckpt.is_file():
        raise ToolchainError(f"--checkpoint {ckpt} not found; pass a dense checkpoint from `acsl train` or omit it")
    log(f"deploy {cfg.name} -> {target.name} ({target.description}); stages in {root}")
    done: dict[str, StageRecord] = {}

    upstream = {"checkpoint": _sha(ckpt)} if ckpt else {}
    done["train"] = cache.run("train", _section(cfg, "model", "data", "train"), upstream,
                              code_version("models", "data", "train", "deploy/stages.py"),
                              lambda f, r: stages.train_dense(cfg, f, r, ckpt, log))
    dense_ckpt = done["train"].artifacts["checkpoint"]
    done["prune"] = cache.run("prune", _section(cfg, "model", "data", "train", "prune"),
                              {"dense": done["train"].sha256["checkpoint"]}, code_version("prune", "train", "models", "deploy/stages.py", "deploy/adapters.py"),
                              lambda f, r: stages.prune_and_recover(cfg, dense_ckpt, f, r, log))
    checkpoints = {"dense": dense_ckpt, "slim": done["prune"].artifacts["checkpoint"]}
    if cfg.deploy.latency_variant:
        done["prune_latency"] = cache.run(
            "prune_latency", {**_section(cfg, "model", "data", "train", "prune"), "target": target.name,
                              "latency_variant": cfg.deploy.latency_variant},
            {"dense": done["train"].sha256["checkpoint"], "slim": done["prune"].sha256["checkpoint"]},
            code_version("prune", "train", "models", "profile", "deploy/stages.py", "deploy/adapters.py"),
            lambda f, r: stages.prune_latency_variant(cfg, dense_ckpt, done["prune"].artifacts["checkpoint"],
                                                      done["prune"].summary.get("kept") or {}, f, r, log))
        checkpoints[COMPARED] = done["prune_latency"].artifacts["checkpoint"]
    done["export"] = cache.run("export", _section(cfg, "export"),
                               {v: _stage_of(done, v).sha256["checkpoint"] for v in checkpoints},
                               code_version("export", "deploy/stages.py"),
                               lambda f, r: stages.export_variants(cfg, checkpoints, f, target.name, log))
    onnx = {v: done["export"].artifacts[v] for v in checkpoints}
    target_spec = target.model_dump(mode="json", exclude={"source"})
    done["build"] = tcache.run("build", {**_section(cfg, "quantize", "deploy"), "target": target_spec},
                               {v: done["export"].sha256[v] for v in onnx},
                               code_version("build", "calibration", "deploy/adapters.py"),
                               lambda f, r: _build_stage(cfg, target, onnx, f, log))
    done["profile"] = tcache.run("profile", {**_section(cfg, "deploy", "data"), "target": target_spec,
                                             "runs": runs, "warmup_s": warmup_s},
                                 dict(done["build"].sha256), code_version("profile", "runtime"),
                                 lambda f, r: _profile_stage(cfg, target, onnx, done["build"], f, runs, warmup_s, log))
    bundle_dir = Path(out_dir) if out_dir else Path(cfg.deploy.out_dir) / target.name
    bundle = _bundle_stage(cfg, target, done, onnx, bundle_dir, log)
    seconds = time.perf_counter() - started
    log(f"deploy finished in {seconds:.0f} s: bundle {bundle}")
    log(f"report: {bundle / 'report.html'} (also report.md, report.json)")
    return DeployResult(bundle, bundle / "report.html", bundle / "report.json", done, seconds)


def _stage_of(done: dict, variant: str) -> StageRecord:
    return done[{"dense": "train", "slim": "prune", COMPARED: "prune_latency"}[variant]]


def _sha(path: Path) -> str:
    from toolchain.utils.io import sha256_file

    return sha256_file(path)


# -- build -----------------------------------------------------------------------------------------
def _build_stage(cfg, target, onnx: dict[str, Path], folder: Path, log):
    artifacts, rows = {}, {}
    for variant in onnx:
        for precision in target.precisions:
            name = f"{variant}-{precision}"
            log(f"  build {name} for {target.name}")
            row = adapters.build_precision(cfg, onnx[variant], target, precision, folder / name, log)
            if row["artifact"] is not None:
                artifacts[name] = _inside(Path(row["artifact"]), folder / name)
            for extra_name, path in row["extra_files"].items():
                artifacts[f"{name}/{extra_name}"] = Path(path)
            rows[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items() if k != "extra_files"}
            rows[name]["extra_files"] = sorted(row["extra_files"])
            if row["status"] != "ok":
                log(f"  {name}: {row['status']}: {row['reason']}")
    if not artifacts:
        raise ToolchainError(f"no variant could be built for {target.name}; see the reasons above")
    return artifacts, {"rows": rows}


def _inside(path: Path, folder: Path) -> Path:
    """A stage owns its artifacts: copy a file produced elsewhere (e.g. the FP32 ONNX) into its folder."""
    if folder.resolve() in path.resolve().parents:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / path.name) as tmp:
        shutil.copyfile(path, tmp)
    return folder / path.name


# -- profile ---------------------------------------------------------------------------------------
def _profile_stage(cfg, target, onnx: dict[str, Path], build: StageRecord, folder: Path, runs, warmup_s, log):
    from toolchain.profile.profiler import profile_engine
    from toolchain.runtime import OrtRunner, predict_fn
    from toolchain.train.evaluate import evaluate
    from toolchain.train.metrics import primary_metric

    metric, _ = primary_metric(cfg.task)
    providers = list(target.onnxruntime.providers)
    threads = target.onnxruntime.intra_op_threads

    def accuracy(runner) -> dict:
        split = cfg.deploy.eval_split
        result = evaluate(predict_fn(runner), cfg, split, max_images=cfg.deploy.eval_images)
        return {"metric": metric, "value": float(result[metric]), "images": result.get("images"), "split": split}

    profiles: dict = {}
    for name, row in build.summary["rows"].items():
        variant, precision = name.split("-", 1)
        artifact = build.artifacts.get(name)
        if row["status"] != "ok" or artifact is None or row["kind"] not in (ONNX.name, TENSORRT_ENGINE.name):
            profiles[name] = None if row["kind"] != "build-script" else _estimate_only(onnx[variant], target, precision)
            continue
        if row["kind"] == TENSORRT_ENGINE.name:
            why = _engine_not_runnable(artifact, target)
            if why:  # built (e.g. TensorRT-RTX ahead of time, no GPU here): say so, estimate only
                profiles[name] = {**_estimate_only(onnx[variant], target, precision), "not_measured": why}
                profiles[name]["roofline"]["efficiency_note"] = f"no measurement: engine built here, {why}"
                log(f"  {name}: built, {why}")
                continue
            make = lambda a=artifact: _trt_runner(a)  # noqa: E731
        else:
            make = lambda a=artifact: OrtRunner(a, providers=providers, threads=threads).load()  # noqa: E731
        log(f"  profile {name} ({runs} runs, warm-up {warmup_s} s)")
        cost_onnx = artifact if precision == "fp32" and row["kind"] == ONNX.name else onnx[variant]
        profiles[name] = profile_engine(make,
                                        model_file=artifact, batches=target.profile_batch_sizes, runs=runs,
                                        warmup_s=warmup_s, onnx_path=cost_onnx,
                                        target=target, precision=precision, accuracy_fn=accuracy)
    if target.backend != "onnxruntime":  # host reference: the FP32 ONNX measured on this machine
        for variant in onnx:
            log(f"  profile {variant}-fp32 on this host with ONNX Runtime CPU (reference, not the target)")
            profiles[f"{variant}-fp32-host"] = profile_engine(
                lambda v=variant: OrtRunner(onnx[v]).load(), model_file=onnx[variant], batches=[1], runs=runs,
                warmup_s=warmup_s, onnx_path=onnx[variant], target=None, precision="fp32", accuracy_fn=accuracy)
    out = write_json(folder / "profiles.json", profiles)
    return {"profiles": out}, {"profiled": sorted(k for k, v in profiles.items() if v)}


def _trt_runner(engine: Path):
    from toolchain.runtime.trt_runner import TrtRunner

    return TrtRunner(engine).load()


def _engine_not_runnable(engine: Path, target) -> Optional[str]:
    """None when the engine loads here (a GPU of its architecture, its TensorRT); else why it is not measured."""
    from toolchain.errors import ToolchainError as _Err

    try:
        _trt_runner(engine).close()
        return None
    except _Err as err:
        needs = "an RTX GPU" if target.tensorrt_flavour == "tensorrt-rtx" else f"the {target.name}"
        detail = str(err).split(";")[0].split(": ")[-1]
        return f"not measured here (needs {needs}; {detail})"


def _estimate_only(onnx_path: Path, target, precision: str) -> dict:
    """For an engine that can only be built on the device: roofline estimate, nothing measured."""
    from toolchain.profile.cost import onnx_cost
    from toolchain.profile.profiler import _datasheet
    from toolchain.profile.roofline import roofline_floor

    cost = onnx_cost(onnx_path)
    peak, bandwidth, source = _datasheet(target, precision)
    roof = roofline_floor(cost["macs"], cost["bytes_moved"], peak, bandwidth, source=source)
    roof["target"] = target.name
    roof["efficiency_note"] = "no measurement: the engine is built and measured on the device"
    return {"estimate_only": True, "roofline": roof,
            "cost": {k: cost[k] for k in ("params", "macs", "bytes_moved")}}


# -- report + bundle -------------------------------------------------------------------------------
def build_report(cfg, target, done: dict[str, StageRecord], onnx: dict[str, Path]) -> dict:
    from toolchain.profile.cost import compare_layers, onnx_cost
    from toolchain.report.schema import failed_row, new_report, variant_row
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.provenance import git_commit, machine, versions

    metric, higher = primary_metric(cfg.task)
    here = machine()
    profiles = read_json(done["profile"].artifacts["profiles"])
    on_target = target.backend == "onnxruntime" and target.name == "cpu"
    from toolchain.profile.jetson import is_jetson

    on_target = on_target or (target.jetson and is_jetson())
    notes = [f"stage {k}: {'reused' if r.reused else 'ran'} ({r.seconds:.1f} s)" for k, r in done.items()]
    built_here = [n for n, r in done["build"].summary["rows"].items() if r.get("kind") == TENSORRT_ENGINE.name
                  and r.get("status") == "ok" and (profiles.get(n) or {}).get("not_measured")]
    if built_here:
        notes.insert(0, f"{len(built_here)} TensorRT engine(s) were built here by {target.tensorrt_flavour} but not "
                        f"measured: this machine cannot run them (they need "
                        f"{'an RTX GPU' if target.tensorrt_flavour == 'tensorrt-rtx' else 'the ' + target.name}). "
                        "Their rows say 'built'; latency numbers are roofline estimates.")
    elif not on_target:
        notes.insert(0, f"This run was not on a {target.name}: engines are built and measured there with "
                        f"`make deploy TARGET={target.name}` (or build_engine.sh in this bundle). "
                        "Rows marked 'host reference' were measured on this machine; roofline numbers are estimates.")
    report = new_report(
        experiment={"name": cfg.name, "task": cfg.task, "model": display_name(cfg.model.name), "width": cfg.model.width,
                    "config_sha256": sha256_json(cfg.model_dump(mode="json", exclude={"source", "profile"}))},
        target={"name": target.name, "description": target.description, "backend": target.backend},
        machine=here, on_target_device=on_target, provenance={"git_commit": git_commit(), "versions": versions()},
        metric={"name": metric, "higher_is_better": higher, "split": cfg.deploy.eval_split}, notes=notes)
    for name, row in done["build"].summary["rows"].items():
        variant, precision = name.split("-", 1)
        prof = profiles.get(name)
        artifact = done["build"].artifacts.get(name)
        file = _bundle_name(name, artifact) if artifact else None
        size = artifact.stat().st_size if artifact else None
        if prof and not prof.get("estimate_only"):
            acc = prof.get("accuracy", {}).get("value")
            report["variants"].append(variant_row(name, variant, precision, profile=prof, file=file, size_bytes=size,
                                                  accuracy=acc, accuracy_metric=metric))
        elif row["status"] == "ok" and artifact is not None:  # built, nothing could run it here
            why = (prof or {}).get("not_measured") or "not measured here"
            r = failed_row(name, variant, precision, why, status="built", file=file, size_bytes=size)
            if prof and prof.get("estimate_only"):
                r["estimate"] = prof["roofline"]
            report["variants"].append(r)
        else:
            status = "skipped" if row["status"] in ("not-built", "skipped") else "failed"
            r = failed_row(name, variant, precision, row["reason"] or f"{row['status']} (no reason recorded)",
                           status=status, file=file, size_bytes=size)
            if prof and prof.get("estimate_only"):
                r["estimate"] = prof["roofline"]
            report["variants"].append(r)
    for name, prof in profiles.items():
        if name.endswith("-host") and prof:
            variant = name.split("-", 1)[0]
            row = variant_row(f"{variant}-fp32 (host reference)", variant, "fp32", profile=prof, file=f"{variant}.onnx",
                              size_bytes=onnx[variant].stat().st_size,
                              accuracy=prof.get("accuracy", {}).get("value"), accuracy_metric=metric)
            report["variants"].append(row)
    costs = {v: onnx_cost(path) for v, path in onnx.items()}
    report["layers_before_after"] = compare_layers(costs["dense"], costs["slim"])
    report["realisation"] = latency_realisation(report["variants"], {v: c["macs"] for v, c in costs.items()})
    report["pytorch_metrics"] = {v: _stage_of(done, v).summary.get("metric") for v in onnx}
    if COMPARED in onnx:
        report["latency_variant"] = latency_variant_record(cfg, done)
        lv = report["latency_variant"]
        report["notes"].append(
            f"{COMPARED}: the same {done['prune'].summary['method']} prune with the latency budget {lv['budget']} "
            f"({lv['budget_source']}); predicted {_ms(lv['predicted_ms'])} ms, measured {_ms(lv['measured_ms'])} ms "
            f"(ONNX Runtime CPU, {lv['threads']} thread(s), while pruning, timed against dense in the latency "
            f"table's ms). It is built and profiled here for "
            f"comparison and not shipped: to ship it, set prune.budget: {lv['budget']} and deploy again.")
    return report


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def latency_variant_record(cfg, done: dict) -> dict:
    """What the slim_latency variant was pruned to, and its predicted vs measured latency while pruning."""
    summary = done["prune_latency"].summary
    lat = summary.get("latency") or {}
    how = summary.get("budget_source") or {}
    slim_lat = (done["prune"].summary.get("latency") or {})
    return {"budget": summary["latency_budget"], "budget_source": how.get("source"),
            "slim_plan_predicted_ms": how.get("slim_predicted_ms", slim_lat.get("predicted_ms")),
            "slim_plan_measured_ms": how.get("slim_measured_ms", slim_lat.get("measured_ms")),
            "calibration": lat.get("calibration"),
            "dense_predicted_ms": lat.get("dense_predicted_ms"), "dense_measured_ms": lat.get("dense_measured_ms"),
            "predicted_ms": lat.get("predicted_ms"), "measured_ms": lat.get("measured_ms"),
            "threads": lat.get("threads"), "target": lat.get("target"),
            "fraction_removed": summary.get("fraction_removed"), "val": summary.get("metric")}


def latency_realisation(variants: list[dict], macs: dict[str, float]) -> list[dict]:
    """Per pruned model (slim, slim_latency) and precision where it and dense were both measured: MACs ratio,
    measured speed-up and realisation = speed-up / MACs ratio (1.0: every MAC removed became time saved)."""
    measured = {(r["model"], r["precision"]): r["latency_median_ms"] for r in variants
                if r["status"] == "ok" and r.get("latency_median_ms") and "host reference" not in r["variant"]}
    rows = []
    for model in (m for m in macs if m != "dense"):
        macs_ratio = macs["dense"] / macs[model] if macs.get(model) else None
        for precision in ("fp32", "fp16", "int8"):
            dense, slim = measured.get(("dense", precision)), measured.get((model, precision))
            if dense and slim and macs_ratio:
                speedup = dense / slim
                rows.append({"model": model, "precision": precision, "dense_ms": dense, "slim_ms": slim,
                             "macs_ratio": round(macs_ratio, 3), "speedup": round(speedup, 3),
                             "realisation": round(speedup / macs_ratio, 3)})
    return rows


def _bundle_name(name: str, artifact: Path) -> str:
    kind = kind_of(artifact)
    if kind is TENSORRT_ENGINE:  # next to its sidecar (<name>/model.engine.json), as TrtRunner needs
        return f"{name}/{artifact.name}"
    return f"{name}{kind.suffix}" if kind is not None else f"{name}{''.join(artifact.suffixes[-1:])}"


def manifest_for(cfg, target, done, onnx) -> tuple[dict, dict[str, Path]]:
    """The manifest (without checksums) and the files to copy into the bundle."""
    from toolchain.train.checkpoint import load_checkpoint
    from toolchain.utils.provenance import git_commit, versions

    files: dict[str, Path] = {f"{v}.onnx": onnx[v] for v in VARIANTS}
    artifacts, device_builds = [], []
    for name, row in done["build"].summary["rows"].items():
        variant, precision = name.split("-", 1)
        if variant not in VARIANTS:  # compared in the report, not shipped
            continue
        artifact = done["build"].artifacts.get(name)
        if artifact is None and row.get("kind") == BUILD_SCRIPT.name and "build_engine.sh" in row.get("extra_files", []):
            # the engine build_engine.sh writes on the device (engines are tied to the device's TensorRT)
            engine = f"{name}/model{TENSORRT_ENGINE.suffix}"
            device_builds.append({"file": engine, "sidecar": sidecar_path(engine).as_posix(),
                                  "build_script": f"{name}/build_engine.sh", "kind": TENSORRT_ENGINE.name,
                                  "variant": variant, "precision": precision})
        if artifact is not None:
            bname = _bundle_name(name, artifact)
            files[bname] = artifact
            artifacts.append({"file": bname, "kind": row["kind"], "variant": variant, "precision": precision})
            if row["kind"] == TENSORRT_ENGINE.name:  # the ONNX it was built from: ONNX Runtime's fallback, same precision
                source = (row.get("record") or {}).get("engine_onnx")
                key = f"{name}/{source}"
                fallback = key if key in done["build"].artifacts else (
                    f"{variant}.onnx" if precision == "fp32" else None)
                if fallback:
                    artifacts.append({"file": fallback, "kind": ONNX.name, "variant": variant, "precision": precision})
        for extra in row.get("extra_files", []):
            key = f"{name}/{extra}"
            if key in done["build"].artifacts:
                files[f"{name}/{extra}"] = done["build"].artifacts[key]
    slim_ckpt = load_checkpoint(done["prune"].artifacts["checkpoint"])
    built = {a["precision"] for a in artifacts if a["variant"] == "slim"}
    on_device = {d["precision"] for d in device_builds if d["variant"] == "slim"}
    default = target.default_precision if target.default_precision in built | on_device else (
        "fp32" if "fp32" in built else sorted(built)[0] if built else None)
    decoding = {"segmentation": "argmax over the class axis of B x K x H x W logits -> class map",
                "counting": f"density map B x 1 x H/{cfg.data.density_stride} x W/{cfg.data.density_stride}; "
                            "count = sum of the map",
                "classification": "softmax over B x K logits -> top-k classes"}[cfg.task]
    h, w = cfg.data.input_size
    manifest = {
        "model": {"name": display_name(cfg.model.name), "width": cfg.model.width, "experiment": cfg.name},
        "task": cfg.task,
        "classes": list(cfg.data.class_names) or [str(i) for i in range(cfg.data.num_classes)],
        "input": {"name": "input", "shape": [1, 3, h, w], "layout": "NCHW", "dtype": "float32", "color": "RGB"},
        "preprocessing": cfg.preprocessing(),
        "mean": list(cfg.data.mean), "std": list(cfg.data.std),
        "output": {"name": "output", "decoding": decoding},
        "target": {"name": target.name, "backend": target.backend, "precisions": list(target.precisions)},
        "precisions": sorted(built), "default_precision": default, "deployed_variant": "slim",
        "artifacts": artifacts,
        "device_builds": device_builds,
        "channel_plan": slim_ckpt.get("channel_plan"),
        "versions": versions(), "git_commit": git_commit(),  # no timestamp: same inputs, same manifest
    }
    return manifest, files


def _bundle_stage(cfg, target, done, onnx, bundle_dir: Path, log) -> Path:
    from toolchain.artifacts.bundle import verify_bundle
    from toolchain.report.render import write_report

    key = sha256_json({"stages": {k: r.key for k, r in done.items()}, "code": code_version("deploy", "report")})
    if (bundle_dir / "manifest.json").is_file():
        try:
            if verify_bundle(bundle_dir).get("stage_key") == key:
                log(f"[{time.strftime('%H:%M:%S')}] bundle: skipped (up to date, every checksum verified)")
                return bundle_dir
        except ToolchainError as err:
            log(f"  existing bundle is not valid ({err}); rewriting it")
    log(f"[{time.strftime('%H:%M:%S')}] bundle: started")
    report = build_report(cfg, target, done, onnx)
    manifest, files = manifest_for(cfg, target, done, onnx)
    manifest["stage_key"] = key

    # write_report puts report.json/.md/.html and the PNGs next to the path it is given
    # (measured, so run-dependent: listed in measurements.json, not in the manifest)
    from toolchain.utils.provenance import machine

    measurements = {"report.json": lambda path: write_report(report, path.parent)}
    write_bundle(bundle_dir, files, manifest, measurements=measurements,
                 measured={"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()})
    log(f"[{time.strftime('%H:%M:%S')}] bundle: finished ({len(files)} model files + reports + manifest)")
    return bundle_dir
