"""`acsl export`: a (dense or slim) checkpoint -> verified, simplified, annotated ONNX.

Steps: torch.onnx.export (the TorchScript exporter, `dynamo=False`: robust for these CNNs and
gives stable node names) -> onnx.checker + shape inference -> simplify (onnxsim, onnxslim
fallback) -> metadata -> parity against torch through ONNX Runtime CPU on random and real
inputs -> graph lint for the config's deploy target. The ONNX is renamed into place only after
parity passes; `M.onnx.json` records what was done.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from toolchain.errors import ToolchainError
from toolchain.export.lint import LintReport, lint_onnx
from toolchain.export.metadata import build_metadata, channel_plan_hash, model_geometry, set_metadata
from toolchain.export.onnx_io import INPUT_NAME, OUTPUT_NAME, io_signature
from toolchain.export.parity import ParityReport, check_parity, require_parity
from toolchain.export.simplify import simplify_model
from toolchain.models.registry import display_name
from toolchain.utils.io import atomic_path, sha256_file, write_json
from toolchain.utils.provenance import git_commit, versions

DYNAMIC_CHOICES = ("batch", "hw")


@dataclass
class ExportResult:
    onnx_path: Path
    record_path: Path
    record: dict
    parity: ParityReport
    lint: Optional[LintReport] = None
    notes: list[str] = field(default_factory=list)


def dynamic_axes(dynamic: Sequence[str]) -> dict:
    unknown = [d for d in dynamic if d not in DYNAMIC_CHOICES]
    if unknown:
        raise ToolchainError(f"--dynamic accepts {', '.join(DYNAMIC_CHOICES)} (comma separated); got {unknown}")
    axes: dict[int, str] = {}
    if "batch" in dynamic:
        axes[0] = "batch"
    if "hw" in dynamic:
        axes[2], axes[3] = "height", "width"
    if not axes:
        return {}
    out_axes = {0: "batch"} if "batch" in dynamic else {}
    if "hw" in dynamic:
        out_axes.update({2: "out_height", 3: "out_width"})
    return {INPUT_NAME: axes, OUTPUT_NAME: out_axes}


def torch_to_onnx_bytes(model: torch.nn.Module, input_size: tuple[int, int], opset: int,
                        dynamic: Sequence[str] = ()) -> bytes:
    top = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    if not MIN_OPSET <= int(opset) <= top:
        raise ToolchainError(f"opset {opset} is outside what the exporter supports ({MIN_OPSET}..{top}); "
                             f"use e.g. --opset 17")
    model = model.eval().cpu()
    dummy = torch.randn(1, 3, *input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice and tracer warnings
        try:
            torch.onnx.export(model, (dummy,), buffer, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes(dynamic) or None,
                              do_constant_folding=True, dynamo=False)
        except (RuntimeError, TypeError, ValueError, torch.onnx.errors.OnnxExporterError) as err:
            why = (str(err).splitlines() or [type(err).__name__])[0].split(" [Caused by")[0]
            why = why.split(" Please feel free")[0][:200]
            raise ToolchainError(f"torch.onnx.export failed at opset {opset}: {why} (try another --opset)") from None
    return buffer.getvalue()


MIN_OPSET = 11  # as export.opset in the config


@contextlib.contextmanager
def _quiet_stdout():
    """The TorchScript exporter writes the whole IR graph to C++ stdout when it fails (hundreds of
    lines): send file descriptor 1 to /dev/null while it runs."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to redirect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def check_and_infer(model):
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ToolchainError(f"exported ONNX is invalid: {str(err).splitlines()[0]}") from None


def name_unnamed_nodes(model) -> None:
    """Give every node a unique name: lint messages, parser errors and INT8 fallback refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def random_inputs(input_size: tuple[int, int], dynamic: Sequence[str], seed: int = 0) -> np.ndarray:
    batch = 2 if "batch" in dynamic else 1
    return np.random.default_rng(seed).standard_normal((batch, 3, *input_size)).astype(np.float32)


def real_inputs(cfg, n: int = 2) -> tuple[Optional[np.ndarray], str]:
    """A few eval images (preprocessed as at deployment) from the val split, or None and why not."""
    try:
        from toolchain.data import build_dataset

        dataset = build_dataset(cfg, "val", train=False)
        count = min(n, len(dataset))
        if count == 0:
            return None, "real inputs skipped: the val split is empty"
        images = [np.asarray(dataset[i][0], dtype=np.float32) for i in range(count)]
        return np.stack(images), f"real inputs: {count} val images"
    except (ImportError, ToolchainError, OSError) as err:
        return None, f"real inputs skipped: {str(err).splitlines()[0]}"


def _lint_for(cfg, model_proto, target) -> Optional[LintReport]:
    from toolchain.targets import load_target

    target_obj = load_target(target or cfg.deploy.target)
    return lint_onnx(model_proto, target_obj)


def export_model(model: torch.nn.Module, cfg, out: str | Path, *, opset: Optional[int] = None,
                 dynamic: Optional[Sequence[str]] = None, simplify: Optional[str] = None,
                 channel_plan=None, checkpoint: Optional[str] = None, real_images: int = 2,
                 target: Optional[str] = None, log=print) -> ExportResult:
    """Export `model` to `out` with parity proven; options default to the config's `export:` section."""
    import onnx

    opset = opset or cfg.export.opset
    dynamic = list(cfg.export.dynamic if dynamic is None else dynamic)
    simplify = simplify or cfg.export.simplify
    out = Path(out)
    started = time.perf_counter()
    model = model.eval().cpu()

    proto = check_and_infer(onnx.load_from_string(torch_to_onnx_bytes(model, cfg.data.input_size, opset, dynamic)))
    simplified = simplify_model(proto, simplify)
    proto = check_and_infer(simplified.model)
    set_metadata(proto, build_metadata(cfg, channel_plan=channel_plan,
                                       **model_geometry(model, cfg.data.input_size)))  # probed when undeclared
    name_unnamed_nodes(proto)
    proto.producer_name, proto.doc_string = "acsl-toolchain", f"{cfg.name}: {display_name(cfg.model.name)} ({cfg.task})"

    inputs = {"random": random_inputs(cfg.data.input_size, dynamic)}
    real, real_note = real_inputs(cfg, real_images) if real_images else (None, "real inputs skipped by request")
    if real is not None:
        inputs["real"] = real
    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        parity = check_parity(model, tmp, inputs, cfg.task, notes=[real_note] + simplified.notes)
        require_parity(parity, f"{cfg.model.name} -> {out.name}")
    lint = _lint_for(cfg, proto, target)

    record = {
        "onnx": out.name,
        "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size,
        "model": cfg.model.name,
        "task": cfg.task,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "channel_plan_sha256": channel_plan_hash(channel_plan),
        "opset": opset,
        "dynamic": dynamic,
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "simplifier_requested": simplified.requested,
        "simplifier_ran": simplified.ran,
        "simplifier_notes": simplified.notes,
        **io_signature(proto),
        "parity": parity.to_dict(),
        "lint": lint.to_dict() if lint else None,
        "metadata": {p.key: p.value for p in proto.metadata_props},
        "git_commit": git_commit(),
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    record_path = write_json(out.with_name(out.name + ".json"), record)
    if log:
        log(f"exported {out} (opset {opset}, simplifier: {simplified.ran}"
            f"{'; ' + '; '.join(simplified.notes) if simplified.notes else ''})")
        log(f"parity vs torch (ONNX Runtime CPU): {parity.summary()} [{real_note}]")
        if lint:
            log(lint.format())
    return ExportResult(out, record_path, record, parity, lint, simplified.notes)


def default_onnx_path(cfg, checkpoint: str | Path, slim: bool) -> Path:
    return cfg.run_dir() / "export" / f"{Path(checkpoint).stem}{'' if not slim or 'slim' in Path(checkpoint).stem else '-slim'}.onnx"


def export_checkpoint(cfg, checkpoint: str | Path, *, out: Optional[str | Path] = None, **options) -> ExportResult:
    """Load a dense or slim checkpoint (`train.checkpoint.load_model`) and export it."""
    from toolchain.train.checkpoint import load_model

    model, ckpt = load_model(checkpoint, cfg)
    plan = ckpt.get("channel_plan")
    out = Path(out) if out else default_onnx_path(cfg, checkpoint, bool(plan))
    return export_model(model, cfg, out, channel_plan=plan, checkpoint=str(checkpoint), **options)
