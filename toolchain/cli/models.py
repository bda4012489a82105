"""`acsl models`: list the model zoo with task, parameters and GMACs at an input size, or check one
model's contract before any training (`acsl models --check file.py:factory` or `--check CONFIG.yaml`).

Models are built on the meta device, so listing the whole zoo at width 1.0 costs no compute.
"""
from __future__ import annotations

import argparse
import re

import torch

from toolchain.errors import ToolchainError
from toolchain.models import create_model, list_models
from toolchain.models.complexity import count_macs, count_params
from toolchain.models.registry import model_task

# The size each task is usually trained at here (H, W) and its default class count.
NATURAL_INPUT_SIZE = {"segmentation": (240, 320), "counting": (288, 384), "classification": (32, 32)}
DEFAULT_NUM_CLASSES = {"segmentation": 11, "counting": 1, "classification": 10}
TASKS = ("segmentation", "counting", "classification")
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
    parser.add_argument("--width", type=float, default=None, help="width multiplier (default 1.0)")
    check = parser.add_argument_group("contract check (one model, before any training)")
    check.add_argument("--check", metavar="MODEL", default=None,
                       help="check a model's whole contract: path/to/file.py:factory, a zoo name, or a config YAML "
                            "(then its model, task, classes and input size are used; the file resolves from the "
                            "config's folder)")
    check.add_argument("--task", choices=TASKS, default=None,
                       help="the task the model is for (default: the model's `task` attribute, or the config's)")
    check.add_argument("--input", default=None, metavar="HxW",
                       help="input size to check at, e.g. 240x320 (default: the config's, else the task's natural size)")
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


def _parse_hw(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text or "")
    if not match or min(int(match[1]), int(match[2])) <= 0:
        raise ToolchainError(f"--input must look like HxW with positive integers, e.g. 240x320 (got '{text}')")
    return int(match[1]), int(match[2])


def check_model(args: argparse.Namespace) -> int:
    """`acsl models --check`: print one line per finding; exit 2 when any is an error."""
    from toolchain.models.contract import check_contract
    from toolchain.models.registry import config_dir, display_name

    spec, base_dir, kwargs = args.check, None, {}
    task, size, classes, width = args.task, None, args.num_classes, args.width
    if spec.endswith((".yaml", ".yml")):
        from toolchain.config import load_config

        cfg = load_config(spec)
        if task and task != cfg.task:
            raise ToolchainError(f"--task {task} disagrees with the config's task '{cfg.task}'; drop --task")
        spec, base_dir, kwargs, task = cfg.model.name, config_dir(cfg), dict(cfg.model.kwargs), cfg.task
        size, classes = tuple(cfg.data.input_size), classes or cfg.data.num_classes
        width = width if width is not None else cfg.model.width
    width = 1.0 if width is None else width
    if width <= 0:
        raise ToolchainError(f"--width must be positive, got {width:g}")
    if args.input:
        size = _parse_hw(args.input)
    elif args.input_size:
        size = tuple(args.input_size)
    probe_task = task
    if probe_task is None and not any(c in spec for c in ("/", ".py")):
        probe_task = model_task(spec)
    size = size or NATURAL_INPUT_SIZE.get(probe_task or "segmentation")
    classes = classes or DEFAULT_NUM_CLASSES.get(probe_task or "segmentation")
    if min(size) <= 0:
        raise ToolchainError(f"the input size must be positive, got {size[0]}x{size[1]}")

    def build():
        return create_model(spec, classes, width=width, base_dir=base_dir, **kwargs)

    print(f"checking {display_name(spec)} (width {width:g}, {classes} classes) at {size[0]}x{size[1]}")
    findings = check_contract(build, task=task, input_size=size, num_classes=classes)
    for finding in findings:
        print(finding.line())
    errors = sum(f.level == "error" for f in findings)
    notes = sum(f.level == "note" for f in findings)
    if errors:
        print(f"contract: {errors} problem(s); fix them before training (docs/USER_MODELS.md)")
        return 2
    print(f"contract: ok ({len(findings)} checks, {notes} inferred or noted); ready for acsl train / prune / export")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.check:
        return check_model(args)
    if args.task or args.input:
        raise ToolchainError("--task and --input go with --check MODEL (listing the zoo takes --input-size H W)")
    args.width = 1.0 if args.width is None else args.width
    rows = zoo_rows(args.input_size, args.num_classes, args.width)
    print(format_table(rows))
    print(f"\nwidth {args.width:g}; MACs for one image; add your own model as path/to/file.py:factory in a config")
    return 0
