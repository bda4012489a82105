"""`acsl build`: ONNX -> an engine for a target (ONNX Runtime or TensorRT), FP32 / FP16 / INT8.

Every build folder is self-contained: the FP32 ONNX it started from, the INT8 artifacts
(calibration set, Q/DQ model, calibration caches), the engine or optimised model, and
`build.json`. TensorRT targets always also get `trtexec.txt` and `build_engine.sh`; without
the target's TensorRT flavour installed (`tensorrt`, or `tensorrt_rtx` for desktop-rtx) the engine
itself is left to that script on the device. FP16 on TensorRT is also written as an FP16 ONNX
(checked against the FP32 ONNX), which strongly typed builders (TensorRT 11, TensorRT-RTX) build.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toolchain.build.shapes import optimisation_profile
from toolchain.artifacts.trt_compat import tensorrt_available
from toolchain.build.trtexec import build_script, trtexec_command
from toolchain.errors import ToolchainError
from toolchain.utils.io import atomic_write_text, sha256_file, write_json
from toolchain.utils.provenance import git_commit, versions


@dataclass
class BuildResult:
    artifact: Optional[Path]            # engine / optimised ONNX to run (None: engine left to build_engine.sh)
    record: dict
    record_path: Path
    engine_built: bool
    notes: list[str] = field(default_factory=list)


def default_build_dir(cfg, target: str, precision: str) -> Path:
    return cfg.run_dir() / "build" / f"{target}-{precision}"


def _prepare(cfg, onnx_path: Path, target, out_dir: Path, ignore_lint: bool, log):
    from toolchain.export.lint import lint_onnx
    from toolchain.export.metadata import read_onnx_metadata
    from toolchain.export.onnx_io import check_onnx_matches_config, load_onnx

    proto = load_onnx(onnx_path)
    signature = check_onnx_matches_config(proto, cfg, where=str(onnx_path))
    lint = lint_onnx(proto, target)
    log(lint.format())
    if lint.errors and not ignore_lint:
        first = lint.errors[0]
        raise ToolchainError(f"target '{target.name}' cannot run {onnx_path.name}: {first.op_type} (node "
                             f"'{first.node}') {first.message}; change the model or build for --target cpu "
                             "(or pass --ignore-lint to try anyway)")
    out_dir.mkdir(parents=True, exist_ok=True)
    local = out_dir / "model.onnx"
    if onnx_path.resolve() != local.resolve():
        shutil.copyfile(onnx_path, out_dir / ".model.onnx.tmp")
        (out_dir / ".model.onnx.tmp").replace(local)
    meta = read_onnx_metadata(proto)
    return local, signature, lint, meta


def _int8(cfg, fp32_onnx: Path, target, out_dir: Path, gate: bool, eval_images: Optional[int], log) -> dict:
    from toolchain.calibration.calib_set import calibration_set
    from toolchain.calibration.gate import run_int8_gate
    from toolchain.calibration.qdq import quantize_qdq

    calib = calibration_set(cfg, n=target.calibration.images)
    calib.save(out_dir / "calibration")
    log(f"calibration set: {calib.count} train images (seed {calib.seed}) -> {out_dir / 'calibration'}")
    if gate:
        result = run_int8_gate(cfg, fp32_onnx, out_dir, calib, max_images=eval_images, log=log)
        return {"calib": calib, "gate": result.to_dict(), "qdq": result.int8_onnx, "passed": result.passed}
    info = quantize_qdq(fp32_onnx, out_dir / "model.int8.qdq.onnx", calib, cfg.quantize.method,
                        cache_dir=out_dir / "calibration")
    log("INT8 accuracy gate skipped by request (--no-gate)")
    return {"calib": calib, "gate": None, "qdq": str(info["path"]), "passed": True}


# -- ONNX Runtime ----------------------------------------------------------------------------------
def ort_providers(target, precision: str, out_dir: Path) -> list:
    """Providers in the target's order with their options (filtered by availability at load)."""
    providers = []
    for name in target.onnxruntime.providers:
        if name == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": precision in ("fp16", "int8"), "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(out_dir / "trt_ep_cache"), "trt_timing_cache_enable": True,
                    "trt_max_workspace_size": int(target.workspace_mib) << 20}
            if target.dla_core is not None:
                opts.update({"trt_dla_enable": True, "trt_dla_core": int(target.dla_core)})
            providers.append((name, opts))
        else:
            providers.append((name, {}))
    return providers


def build_onnxruntime(cfg, onnx_path: Path, target, precision: str, out_dir: Path, *, gate: bool = True,
                      ignore_lint: bool = False, eval_images: Optional[int] = None, log=print) -> BuildResult:
    from toolchain.runtime.ort_runner import OrtRunner, available_providers, filter_providers, session_options

    started = time.perf_counter()
    fp32, signature, lint, meta = _prepare(cfg, onnx_path, target, out_dir, ignore_lint, log)
    record: dict = {"backend": "onnxruntime", "notes": []}
    source, built_precision = fp32, precision
    if precision == "int8":
        int8 = _int8(cfg, fp32, target, out_dir, gate, eval_images, log)
        record["int8"] = {"gate": int8["gate"], "qdq_onnx": int8["qdq"], "calibration": int8["calib"].manifest()}
        if int8["passed"]:
            source = Path(int8["qdq"])
        else:
            built_precision = "fp32"
            record["notes"].append("INT8 failed the accuracy gate: built FP32 instead")
    optimised = out_dir / ("model.int8.opt.onnx" if source != fp32 else "model.opt.onnx")
    tmp = optimised.with_name("." + optimised.name + ".tmp")
    import onnxruntime as ort

    # A Q/DQ model is saved unoptimised: ORT's basic fusions turn its bias into an INT32 DequantizeLinear that
    # TensorRT's parser refuses, and ONNX Runtime applies the same fusions when it loads the file anyway.
    saved_level = "basic" if source == fp32 else "disable"
    ort.InferenceSession(str(source), session_options(saved_level, optimized_model_path=tmp),
                         providers=["CPUExecutionProvider"])
    tmp.replace(optimised)
    providers = ort_providers(target, built_precision, out_dir)
    kept, skipped = filter_providers(providers, available_providers())
    with OrtRunner(optimised, kept, opt_level=target.onnxruntime.graph_optimization_level,
                   threads=target.onnxruntime.intra_op_threads) as runner:
        declared = list(runner.input_shapes[runner.input_names[0]])
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in declared]
        shape[2:] = [d if isinstance(d, int) and d > 0 else s for d, s in zip(declared[2:], cfg.data.input_size)]
        probes = [shape] + ([[2] + shape[1:]] if not isinstance(declared[0], int) else [])  # a dynamic batch must work
        for probe in probes:
            try:
                runner.infer({runner.input_names[0]: np.zeros(probe, np.float32)})
            except ToolchainError as err:
                raise ToolchainError(f"{onnx_path.name} declares input shape {declared} but does not run at "
                                     f"{probe}: {str(err)[:240]}; re-export it with `acsl export` "
                                     "(--dynamic only if the graph really is)") from None
        used = runner.providers
    record.update({
        "target": target.name, "precision_requested": precision, "precision": built_precision,
        "artifact": optimised.name, "artifact_sha256": sha256_file(optimised), "source_onnx": source.name,
        "onnx_sha256": sha256_file(fp32), "saved_optimization_level": "basic",
        "runtime_optimization_level": target.onnxruntime.graph_optimization_level,
        "intra_op_threads": target.onnxruntime.intra_op_threads,
        "providers_requested": [p[0] for p in providers], "providers_used": used,
        "providers_unavailable": skipped, "provider_options": {p[0]: p[1] for p in providers},
    })
    return _finish(record, cfg, signature, lint, meta, out_dir, optimised, True, started, log)


# -- TensorRT --------------------------------------------------------------------------------------
def _installed_capabilities(flavour: str):
    """Capabilities of the installed TensorRT of this flavour, or None where it is not installed."""
    from toolchain.artifacts.trt_compat import capabilities, import_tensorrt

    if not tensorrt_available(flavour):
        return None
    return capabilities(import_tensorrt(flavour=flavour))


def build_tensorrt(cfg, onnx_path: Path, target, precision: str, out_dir: Path, *, gate: bool = True,
                   ignore_lint: bool = False, dla_core: Optional[int] = None, eval_images: Optional[int] = None,
                   log=print) -> BuildResult:
    started = time.perf_counter()
    fp32, signature, lint, meta = _prepare(cfg, onnx_path, target, out_dir, ignore_lint, log)
    dla_core = target.dla_core if dla_core is None else dla_core
    if dla_core is not None and dla_core >= target.dla_cores:
        raise ToolchainError(f"target '{target.name}' has {target.dla_cores} DLA core(s); --dla-core {dla_core} "
                             "does not exist")
    input_info = signature["inputs"][0]
    profile = optimisation_profile(input_info["shape"], cfg.data.input_size, target,
                                   int(meta.get("input_multiple", 1) or 1))
    flavour = target.tensorrt_flavour
    caps = _installed_capabilities(flavour)
    record: dict = {"backend": "tensorrt", "notes": [], "profile": profile, "dla_core": dla_core,
                    "tensorrt_flavour": flavour, "tensorrt": caps.to_dict() if caps else None}
    built_precision, calib_cache, explicit, qdq = precision, None, False, None
    implicit = target.calibration.implicit or dla_core is not None
    if implicit and caps is not None and not caps.implicit_int8:
        record["notes"].append(f"{caps.flavour} {caps.version} has no implicit INT8 calibration: INT8 is built "
                               "from the Q/DQ ONNX here")
        implicit = False
    if precision == "int8":
        int8 = _int8(cfg, fp32, target, out_dir, gate, eval_images, log)
        record["int8"] = {"gate": int8["gate"], "qdq_onnx": int8["qdq"], "calibration": int8["calib"].manifest(),
                          "mode": "implicit (calibration cache)" if implicit else "explicit (Q/DQ)"}
        if not int8["passed"]:
            built_precision = "fp16" if target.supports("fp16") else "fp32"
            record["notes"].append(f"INT8 failed the accuracy gate: building {built_precision} instead")
        elif implicit:
            calib_cache = out_dir / "calibration" / "trt_calibration.cache"
        else:
            qdq, explicit = Path(int8["qdq"]), True
            _lint_qdq(qdq, target)
    fp16_onnx = None
    if built_precision == "fp16":  # strongly typed builds (TensorRT >= 11, RTX, build_engine.sh there) need it
        fp16_onnx = out_dir / "model.fp16.onnx"
        shape = [d if isinstance(d, int) and d > 0 else o for d, o in zip(input_info["shape"], profile["opt"])]
        record["fp16_check"] = _fp16_onnx(fp32, fp16_onnx, shape, input_info["name"], log)
        record["fp16_onnx"] = fp16_onnx.name
    files = {"fp32": fp32, "fp16": fp16_onnx or fp32, "qdq": qdq or fp32}
    legacy_onnx = qdq or fp32                    # weak typing: FP32 ONNX + flags, or the Q/DQ ONNX + INT8
    typed_onnx = files[{"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[built_precision]]
    engine = out_dir / "model.engine"
    common = dict(onnx=legacy_onnx.name, engine=engine.name, precision=built_precision,
                  workspace_mib=target.workspace_mib, profile=profile, input_name=input_info["name"],
                  dla_core=dla_core, calib_cache=str(calib_cache.relative_to(out_dir)) if calib_cache else None)
    command = trtexec_command(**common, strongly_typed=flavour == "tensorrt-rtx")
    atomic_write_text(out_dir / "trtexec.txt", command + "\n")
    script = out_dir / "build_engine.sh"
    ccs = ",".join(target.compute_capabilities) or None
    atomic_write_text(script, build_script(**common, target=target.name, onnx_sha256=sha256_file(fp32),
                                           compute_capability=target.compute_capability or ccs,
                                           legacy_onnx_sha256=sha256_file(legacy_onnx), typed_onnx=typed_onnx.name,
                                           typed_onnx_sha256=sha256_file(typed_onnx), flavour=flavour))
    script.chmod(0o755)
    if calib_cache is not None:
        record["notes"].append("implicit INT8: the calibration cache is produced by the Python builder on the "
                               "device (`acsl build` there); trtexec --calib reuses it")
    record.update({"target": target.name, "precision_requested": precision, "precision": built_precision,
                   "explicit_int8": explicit, "onnx_sha256": sha256_file(fp32),
                   "trtexec": command, "build_script": script.name, "workspace_mib": target.workspace_mib,
                   "engine_onnx_weakly_typed": legacy_onnx.name, "engine_onnx_strongly_typed": typed_onnx.name})
    if caps is None:
        module = "tensorrt_rtx" if flavour == "tensorrt-rtx" else "tensorrt"
        msg = (f"{flavour} is not installed here (no `{module}` module): wrote the ONNX, INT8 artifacts and {script}; "
               f"build the engine where it is installed (run `bash {script.name}` on the {target.name})")
        record["engine_onnx"] = typed_onnx.name
        record["notes"].append(msg)
        return _finish(record, cfg, signature, lint, meta, out_dir, None, False, started, log)
    plan = caps.precision_plan(built_precision)
    engine_onnx = {"fp32": fp32, "fp16": files["fp16"], "qdq": files["qdq"]}[plan["onnx"]]
    if plan["onnx"] == "fp32" and built_precision == "int8" and qdq is not None:
        engine_onnx = qdq
    record["engine_onnx"] = engine_onnx.name
    sidecar = _build_engine_here(cfg, out_dir, engine, engine_onnx, built_precision, target, profile,
                                 input_info["name"], dla_core, calib_cache, explicit, fp32, log)
    record["sidecar"] = sidecar
    record["engine_check"] = _engine_check(engine, engine_onnx, built_precision, profile, input_info["name"], log)
    return _finish(record, cfg, signature, lint, meta, out_dir, engine, True, started, log)


def _lint_qdq(qdq: Path, target) -> None:
    """The Q/DQ ONNX TensorRT will build must be one its parser accepts (checked before the device sees it)."""
    from toolchain.export.lint import lint_onnx

    errors = lint_onnx(qdq, target).errors
    if errors:
        first = errors[0]
        raise ToolchainError(f"TensorRT cannot parse the INT8 model {qdq.name}: {first.op_type} (node '{first.node}') "
                             f"{first.message}")


def _fp16_onnx(fp32: Path, out: Path, shape: list, input_name: str, log) -> dict:
    from toolchain.build.fp16 import fp16_onnx_checked

    return fp16_onnx_checked(fp32, out, shape, input_name, log=log)


def _engine_check(engine: Path, onnx_path: Path, precision: str, profile: dict, input_name: str, log) -> dict:
    """The engine against the ONNX it was built from (ONNX Runtime CPU), where the engine can run here."""
    from toolchain.build.compare import compare_runners, random_feeds
    from toolchain.runtime.ort_runner import OrtRunner
    from toolchain.runtime.trt_runner import TrtRunner

    try:
        runner = TrtRunner(engine).load()
    except ToolchainError as err:
        note = f"not run here ({str(err).split(';')[0]})"
        return {"ran": False, "note": note}
    try:
        with OrtRunner(onnx_path, ["CPUExecutionProvider"]) as ref:
            result = compare_runners(runner, ref, random_feeds(input_name, profile["opt"]), precision)
    finally:
        runner.close()
    log(f"engine vs {onnx_path.name}: {result.summary()}")
    return {"ran": True, **result.to_dict()}


def _build_engine_here(cfg, out_dir, engine, engine_onnx, precision, target, profile, input_name, dla_core,
                       calib_cache, explicit, fp32, log) -> dict:
    from toolchain.build.trt_engine import EngineRequest, build_engine

    calibrator, cuda = None, None
    if precision == "int8" and calib_cache is not None:
        from toolchain.artifacts.trt_compat import import_tensorrt
        from toolchain.calibration.calib_set import cache_key
        from toolchain.calibration.trt_calibrator import (CalibrationBatcher, CalibrationCache,
                                                          make_trt_calibrator)
        from toolchain.runtime.trt_runner import cuda_memory_backend

        arrays = np.load(out_dir / "calibration" / "calibration_set.npy")
        batch = profile["opt"][0]
        cache = CalibrationCache(calib_cache, cache_key(sha256_file(fp32), _calib_like(arrays, cfg),
                                                        target.calibration.implicit_method, batch=batch))
        cuda = cuda_memory_backend()
        device = {}

        def to_device(host: np.ndarray) -> int:
            if "buf" not in device:
                device["buf"] = cuda.malloc(host.nbytes)
            cuda.htod(device["buf"], host)
            cuda.synchronize()
            return cuda.pointer(device["buf"])

        trt = import_tensorrt("implicit INT8 calibration", flavour=target.tensorrt_flavour)
        calibrator = make_trt_calibrator(trt, CalibrationBatcher(arrays, batch), cache,
                                         target.calibration.implicit_method, to_device, input_name)
        log(cache.note or "calibrating")
    req = EngineRequest(onnx_path=engine_onnx, engine_path=engine, precision=precision,
                        workspace_mib=target.workspace_mib, profile=profile, target=target.name,
                        input_name=input_name, dla_core=dla_core, timing_cache=out_dir.parent / "timing.cache",
                        calibrator=calibrator, explicit_int8=explicit, onnx_sha256=sha256_file(fp32),
                        compute_capabilities=list(target.compute_capabilities), flavour=target.tensorrt_flavour)
    return build_engine(req, log)


def _calib_like(arrays: np.ndarray, cfg):
    from toolchain.calibration.calib_set import CalibrationSet

    return CalibrationSet(arrays, cfg.quantize.calib_seed, cfg.preprocessing())


def _finish(record: dict, cfg, signature, lint, meta, out_dir: Path, artifact: Optional[Path], built: bool,
            started: float, log) -> BuildResult:
    record.update({"experiment": cfg.name, "model": meta.get("model_name", cfg.model.name), **signature,
                   "lint": lint.to_dict(), "engine_built": built, "artifact": artifact.name if artifact else None,
                   "git_commit": git_commit(), "versions": versions()})
    path = write_json(out_dir / "build.json", record)  # deterministic: it ships in the bundle
    record["seconds"] = round(time.perf_counter() - started, 2)  # reported, never written into a checksummed file
    if built and artifact is not None:
        log(f"built {artifact} ({record['precision']}) for target '{record['target']}'")
    for note in record["notes"]:
        log(f"note: {note}")
    return BuildResult(artifact, json.loads(json.dumps(record, default=str)), path, built, list(record["notes"]))


def build(cfg, onnx_path: str | Path, target, precision: Optional[str] = None, out_dir: Optional[str | Path] = None,
          **options) -> BuildResult:
    """Build `onnx_path` for `target` (a name, path or Target) at `precision` (default: the target's)."""
    from toolchain.targets import Target, load_target

    target = target if isinstance(target, Target) else load_target(target)
    precision = precision or target.default_precision
    target.require_precision(precision)
    out_dir = Path(out_dir) if out_dir else default_build_dir(cfg, target.name, precision)
    builder = build_tensorrt if target.backend == "tensorrt" else build_onnxruntime
    if target.backend != "tensorrt":
        options.pop("dla_core", None)
    before = _listing(out_dir)
    try:
        return builder(cfg, Path(onnx_path), target, precision, out_dir, **options)
    except BaseException as err:
        _remove_new(out_dir, before)  # a failed build leaves nothing behind
        if isinstance(err, ToolchainError) or type(err).__module__.split(".")[0] not in BACKEND_MODULES:
            raise
        # an ONNX Runtime / TensorRT failure on a user's file: one line
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ToolchainError(f"{Path(onnx_path).name}: {type(err).__name__} while building for '{target.name}': "
                             f"{first[:300]}; re-export it with `acsl export` and this config") from None


BACKEND_MODULES = ("onnxruntime", "onnx", "tensorrt", "tensorrt_rtx")


def _listing(folder: Path) -> Optional[set]:
    """Every path under `folder` (None when it does not exist yet)."""
    return set(folder.rglob("*")) if folder.exists() else None


def _remove_new(folder: Path, before: Optional[set]) -> None:
    """A failed build leaves nothing behind: remove what it created under `folder` (the folder too if new)."""
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if not folder.exists():
        return
    for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
