"""`acsl models`: list the model zoo with task, parameters and GMACs at an input size.

Models are built on the meta device, so listing the whole zoo at width 1.0 costs no compute.
"""
from __future__ import annotations

import argparse

import torch

from toolchain.errors import ToolchainError
from toolchain.models import create_model, list_models
from toolchain.models.complexity import count_macs, count_params
from toolchain.models.registry import model_task

# The size each task is usually trained at here (H, W) and its default class count.
NATURAL_INPUT_SIZE = {"segmentation": (240, 320), "counting": (288, 384), "classification": (32, 32)}
DEFAULT_NUM_CLASSES = {"segmentation": 11, "counting": 1, "classification": 10}
# Extra rows for zoo models with a structural option besides width.
VARIANTS = {"pspnet": [{}, {"depth": 50}]}


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the model zoo with parameters and GMACs",
                                   description="List every zoo model with its task, parameter count (M) "
                                               "and GMACs for one image.")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="input height and width (default: each task's natural size: segmentation "
                             "240x320, counting 288x384, classification 32x32)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: 11 segmentation, 1 counting, 10 classification)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.set_defaults(func=run)


def zoo_rows(input_size: tuple[int, int] | None, num_classes: int | None, width: float) -> list[dict]:
    """One dict per zoo model (and variant): name, task, input, params, macs."""
    if input_size is not None and min(input_size) <= 0:
        raise ToolchainError(f"--input-size must be two positive integers, got {input_size[0]} {input_size[1]}")
    rows = []
    for name in list_models():
        task = model_task(name)
        size = tuple(input_size) if input_size else NATURAL_INPUT_SIZE[task]
        classes = num_classes if num_classes is not None else DEFAULT_NUM_CLASSES[task]
        for kwargs in VARIANTS.get(name, [{}]):
            with torch.device("meta"):
                model = create_model(name, classes, width=width, **kwargs)
            label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
            multiple = model.input_multiple
            fits = size[0] % multiple == 0 and size[1] % multiple == 0
            rows.append({"model": label, "task": task, "input_size": size, "params": count_params(model),
                         "macs": count_macs(model, size) if fits else None,
                         "note": "" if fits else f"input must be a multiple of {multiple}"})
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["model", "task", "input", "params (M)", "GMACs", "note"]
    body = [[r["model"], r["task"], f"{r['input_size'][0]}x{r['input_size'][1]}", f"{r['params'] / 1e6:.2f}",
             "-" if r["macs"] is None else f"{r['macs'] / 1e9:.3f}", r["note"]] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [cell.rjust(w) if i in (3, 4) else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = zoo_rows(args.input_size, args.num_classes, args.width)
    print(format_table(rows))
    print(f"\nwidth {args.width:g}; MACs for one image; add your own model as path/to/file.py:factory in a config")
    return 0
