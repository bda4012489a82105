"""The `trtexec` command equivalent to a build, and `build_engine.sh`, which builds the same engine
(and its sidecar) on a device where only JetPack is installed.

The script finds its ONNX by sha256 (next to it, else one folder up: a deploy bundle keeps the FP32
ONNX at its top level as `<variant>.onnx` and the FP16 / Q/DQ ONNX in the variant folder), so it
runs unchanged in the build folder and in the bundle. It computes the TensorRT version from the
`trtexec` banner when the Python module is absent (8.x: v8601 -> 8.6.1; 10+: v100300 -> 10.3.0).
"""
from __future__ import annotations

import shlex
from typing import Optional

from toolchain.build.shapes import is_static, shape_text

TRT_NUMBER_TO_VERSION_SH = r'''trt_version_from_number() {  # NV_TENSORRT_VERSION: 8601 -> 8.6.1, 100300 -> 10.3.0
  local n="$1"
  if [ "$n" -ge 100000 ]; then echo "$((n / 10000)).$((n / 100 % 100)).$((n % 100))"
  else echo "$((n / 1000)).$((n / 100 % 10)).$((n % 100))"; fi
}'''


def trtexec_args(*, onnx: str, engine: str, precision: str, workspace_mib: int, profile: dict,
                 input_name: str = "input", dla_core: Optional[int] = None, calib_cache: Optional[str] = None,
                 timing_cache: str = "timing.cache", strongly_typed: bool = False) -> list[str]:
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", f"--memPoolSize=workspace:{workspace_mib}",
            f"--timingCacheFile={timing_cache}"]
    if strongly_typed:
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]  # FP16 lets layers kept out of INT8 avoid FP32
        if calib_cache:
            args.append(f"--calib={calib_cache}")
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    if not is_static(profile):
        for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            args.append(f"{flag}={input_name}:{shape_text(profile[key])}")
    return args


def trtexec_command(**kwargs) -> str:
    return " ".join(shlex.quote(a) for a in trtexec_args(**kwargs))


def build_script(*, onnx: str, engine: str, precision: str, workspace_mib: int, profile: dict,
                 target: str, onnx_sha256: str, compute_capability: Optional[str], input_name: str = "input",
                 dla_core: Optional[int] = None, calib_cache: Optional[str] = None,
                 legacy_onnx_sha256: Optional[str] = None, typed_onnx: Optional[str] = None,
                 typed_onnx_sha256: Optional[str] = None, flavour: str = "tensorrt") -> str:
    """A bash script: runs trtexec (strongly typed on TensorRT >= 11 / TensorRT-RTX) and writes the sidecar.

    `onnx` / `legacy_onnx_sha256`: the file for the weakly typed build (FP32 ONNX + --fp16, or the Q/DQ
    ONNX + --int8); `typed_onnx` / `typed_onnx_sha256`: the file for the strongly typed build (FP16
    ONNX, Q/DQ ONNX, FP32 ONNX). `onnx_sha256` is the FP32 ONNX the engine stands for (sidecar)."""
    legacy_sha = legacy_onnx_sha256 or onnx_sha256
    typed_onnx, typed_sha = typed_onnx or onnx, typed_onnx_sha256 or legacy_sha
    common = dict(engine=engine, precision=precision, workspace_mib=workspace_mib, profile=profile,
                  input_name=input_name, dla_core=dla_core, calib_cache=calib_cache)
    legacy = " ".join(shlex.quote(a) for a in trtexec_args(onnx=onnx, **common)[2:])
    typed = " ".join(shlex.quote(a) for a in trtexec_args(onnx=typed_onnx, **common, strongly_typed=True)[2:])
    shapes = {"min": profile["min"], "opt": profile["opt"], "max": profile["max"]}
    rtx = flavour == "tensorrt-rtx"
    module = "tensorrt_rtx" if rtx else "tensorrt"
    binary = "tensorrt_rtx" if rtx else "trtexec"
    sidecar_py = (
        "import json, sys, hashlib, time\n"
        "engine, trt_version, gpu, cc, typed, onnx_file = sys.argv[1:7]\n"
        "digest = hashlib.sha256(open(engine, 'rb').read()).hexdigest()\n"
        "onnx_digest = hashlib.sha256(open(onnx_file, 'rb').read()).hexdigest()\n"
        f"side = {{'format': 'acsl-trt-engine/1', 'tensorrt_version': trt_version, 'gpu_name': gpu,\n"
        f"        'compute_capability': cc, 'precision': {precision!r}, 'input_shapes': {{{input_name!r}: {shapes!r}}},\n"
        f"        'dla_core': {dla_core!r}, 'onnx_sha256': {onnx_sha256!r}, 'engine_sha256': digest,\n"
        f"        'engine_onnx_sha256': onnx_digest, 'strongly_typed': typed == '1',\n"
        f"        'tensorrt_flavour': {flavour!r}, 'explicit_int8': {precision == 'int8' and not calib_cache!r},\n"
        f"        'target': {target!r}, 'built_by': 'build_engine.sh', 'built_at': time.strftime('%Y-%m-%dT%H:%M:%S')}}\n"
        "open(engine + '.json', 'w').write(json.dumps(side, indent=2, sort_keys=True) + '\\n')\n"
    )
    typed_test = 'true' if rtx else '[ "$TRT_NUM" -ge 110000 ]'
    return f"""#!/usr/bin/env bash
# Builds {engine} for target '{target}' ({precision}) with {binary}, on the device that will run it
# (engines are tied to the TensorRT version and GPU). Needs only JetPack / TensorRT.
# Generated by `acsl build`; the same settings as the Python builder. Runs in the build folder or in
# a deploy bundle's variant folder: the ONNX is found by its sha256, here or one folder up.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v {binary} || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "{binary} not found: install TensorRT (JetPack) or set TRTEXEC=/path/to/{binary}" >&2; exit 1
fi
find_onnx() {{  # $1: file name, $2: sha256 -> the path of the file with that content
  local f
  for f in "$1" ./*.onnx ../*.onnx; do
    [ -f "$f" ] || continue
    if [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$2" ]; then echo "$f"; return 0; fi
  done
  echo "error: no ONNX with sha256 $2 ($1) next to $(pwd)/build_engine.sh or one folder up; copy $1 from the acsl build folder" >&2
  return 1
}}
{TRT_NUMBER_TO_VERSION_SH}
TRT_NUM="$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT[-A-Za-z]* v[0-9]*' | head -1 | grep -o '[0-9]*$' || true)"
TRT_NUM="${{TRT_NUM:-0}}"
if {typed_test}; then
  # TensorRT 11 / TensorRT-RTX have no precision flags nor implicit calibration: the ONNX carries the precision
  ONNX="$(find_onnx {shlex.quote(typed_onnx)} {typed_sha})"; TYPED=1
  "$TRTEXEC" --onnx="$ONNX" {typed}
else
  ONNX="$(find_onnx {shlex.quote(onnx)} {legacy_sha})"; TYPED=0
  "$TRTEXEC" --onnx="$ONNX" {legacy}
fi
TRT_VERSION="$(python3 -c 'import {module}; print({module}.__version__)' 2>/dev/null || trt_version_from_number "$TRT_NUM")"
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
GPU_NAME="${{GPU_NAME:-$(tr -d '\\0' 2>/dev/null < /proc/device-tree/model || echo unknown)}}"
CC="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)"
CC="${{CC:-{compute_capability or 'unknown'}}}"
python3 - {shlex.quote(engine)} "$TRT_VERSION" "$GPU_NAME" "$CC" "$TYPED" "$ONNX" <<'PY'
{sidecar_py}PY
echo "built {engine} (+ {engine}.json) from $ONNX with TensorRT $TRT_VERSION on $GPU_NAME"
"""
