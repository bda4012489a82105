"""Metadata stored in the ONNX `metadata_props`: what a deployment needs to feed the model right.

`input_multiple` and `output_stride` come from the model (its attributes, or probed with forward
passes when it declares none: `model_geometry`), never a default that could be wrong. A user model
is recorded by its file name (`file.py:factory`): no folder of the machine that exported it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from toolchain import __version__
from toolchain.artifacts.bundle import channel_plan_hash  # noqa: F401  (the contract lives with the bundle)
from toolchain.utils.provenance import git_commit


def model_geometry(model, input_size) -> dict:
    """{"input_multiple", "output_stride"} of a model: declared attributes, probed where absent."""
    from toolchain.models.contract import model_geometry as geometry

    return geometry(model, tuple(input_size))


def build_metadata(cfg, *, model_name: Optional[str] = None, channel_plan: Optional[Any] = None,
                   output_stride: Optional[int] = None, input_multiple: int = 1) -> dict[str, str]:
    """String key/values (JSON for structured ones) written into the ONNX model."""
    from toolchain.models.registry import display_name

    return {
        "model_name": display_name(model_name or cfg.model.name),
        "model_width": str(cfg.model.width),
        "task": cfg.task,
        "num_classes": str(cfg.data.num_classes),
        "class_names": json.dumps(list(cfg.data.class_names)),
        "mean": json.dumps(list(cfg.data.mean)),
        "std": json.dumps(list(cfg.data.std)),
        "preprocessing": json.dumps(cfg.preprocessing(), sort_keys=True),
        "input_layout": "NCHW",
        "output_stride": json.dumps(output_stride),
        "input_multiple": str(int(input_multiple or 1)),
        "channel_plan_sha256": channel_plan_hash(channel_plan),
        "experiment": cfg.name,
        "toolchain_version": __version__,
        "git_commit": git_commit(),
    }


def set_metadata(model, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)


def read_onnx_metadata(model_or_path) -> dict[str, str]:
    if isinstance(model_or_path, (str, Path)):
        from toolchain.export.onnx_io import load_onnx

        model_or_path = load_onnx(model_or_path)
    return {p.key: p.value for p in model_or_path.metadata_props}
