"""Loading an ONNX file with one-line errors, its input/output signature, and the config check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.errors import ToolchainError

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def load_onnx(path: str | Path, load_external_data: bool = True):
    """The ModelProto at `path`; a missing, non-ONNX or truncated file is a one-line ToolchainError."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"ONNX file not found: {path} (create it with `acsl export`)")
    if path.stat().st_size == 0:
        raise ToolchainError(f"{path} is empty: re-run `acsl export`")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as err:
        raise ToolchainError(f"{path} is not a readable ONNX model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'truncated or corrupt'}); "
                             "re-run `acsl export`") from None
    if not model.graph.node or not model.graph.input:
        raise ToolchainError(f"{path} is not a usable ONNX model (no graph nodes or inputs; truncated or not ONNX): "
                             "re-run `acsl export`")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ToolchainError(f"{path} fails the ONNX checker: {str(err).splitlines()[0]}") from None
    return model


def _dims(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def graph_inputs(model) -> list:
    """Real inputs (initializers listed as inputs by old exporters excluded)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def io_signature(model) -> dict[str, Any]:
    return {"inputs": [{"name": i.name, "shape": _dims(i)} for i in graph_inputs(model)],
            "outputs": [{"name": o.name, "shape": _dims(o)} for o in model.graph.output]}


def check_onnx_matches_config(model_or_path, cfg, where: str | None = None) -> dict:
    """Check the ONNX describes the config's model: one NCHW float input named `input` whose H x W fit the
    config, an opset this environment builds, the same model, task and number of classes (metadata and
    output shape); return its signature. Each mismatch is a one-line ToolchainError naming `where`."""
    model = load_onnx(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    where = where or (str(model_or_path) if isinstance(model_or_path, (str, Path)) else "the ONNX model")
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ToolchainError(f"{where} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); the toolchain "
                             f"expects one image input named '{INPUT_NAME}' (export with `acsl export`)")
    inp = inputs[0]
    if inp.name != INPUT_NAME:
        raise ToolchainError(f"{where} has input '{inp.name}' but the toolchain expects '{INPUT_NAME}' "
                             "(export it with `acsl export`)")
    dims = _dims(inp)
    want_h, want_w = cfg.data.input_size
    if len(dims) != 4 or dims[1] not in (3, None):
        raise ToolchainError(f"{where}: input '{inp.name}' has shape {dims}, expected N x 3 x {want_h} x {want_w}")
    for axis, want in ((2, want_h), (3, want_w)):
        got = dims[axis]
        if isinstance(got, int) and got != want:
            raise ToolchainError(f"{where}: input '{inp.name}' has shape {dims} but the config's data.input_size is "
                                 f"{want_h}x{want_w}; re-export with this config or fix data.input_size")
    _check_opset(model, where)
    _check_model_and_classes(model, cfg, where)
    return io_signature(model)


MIN_OPSET = 11


def _check_opset(model, where: str) -> None:
    """The default-domain opset must be one this environment's onnx (and so ONNX Runtime) knows."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not MIN_OPSET <= entry.version <= newest:
            raise ToolchainError(f"{where} uses ONNX opset {entry.version}; this toolchain builds opsets {MIN_OPSET}.."
                                 f"{newest}: re-export it with `acsl export --opset 17`")


def _check_model_and_classes(model, cfg, where: str) -> None:
    """The ONNX's own metadata (written by `acsl export`) and output shape must describe the config's model."""
    from toolchain.models.registry import display_name

    meta = {p.key: p.value for p in model.metadata_props}
    fix = "export it from a checkpoint of this config (`acsl export CONFIG --checkpoint ...`) or build with its own config"
    exported, expected = meta.get("model_name"), display_name(cfg.model.name)
    if exported and exported != expected:
        raise ToolchainError(f"{where} was exported from model '{exported}' but the config's model is '{expected}'; {fix}")
    if meta.get("task") and meta["task"] != cfg.task:
        raise ToolchainError(f"{where} is a {meta['task']} model but the config's task is {cfg.task}; {fix}")
    classes = {int(meta["num_classes"])} if str(meta.get("num_classes", "")).isdigit() else set()
    if cfg.task in ("segmentation", "classification") and len(model.graph.output) == 1:
        out = _dims(model.graph.output[0])
        if len(out) >= 2 and isinstance(out[1], int):
            classes.add(out[1])
    wrong = sorted(k for k in classes if k != cfg.data.num_classes)
    if wrong:
        raise ToolchainError(f"{where} predicts {wrong[0]} classes but the config has data.num_classes="
                             f"{cfg.data.num_classes}; {fix}")
