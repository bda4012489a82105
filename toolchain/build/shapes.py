"""Optimisation-profile shapes (min / opt / max) for an ONNX input under a target's shape policy.

A fixed ONNX dimension is kept as is. A dynamic one gets the target's range under the `dynamic`
policy (batch from `input_shapes.batch`, H/W as multiples `hw_scale` of the config size rounded
to the model's input multiple), or the config's static value under the `static` policy.
"""
from __future__ import annotations

import math


def _round_hw(value: float, multiple: int, up: bool) -> int:
    steps = math.ceil(value / multiple) if up else math.floor(value / multiple)
    return max(multiple, int(steps) * multiple)


def optimisation_profile(dims: list, input_size: tuple[int, int], target, input_multiple: int = 1) -> dict:
    """{"min": [...], "opt": [...], "max": [...]} for an N x C x H x W input with possibly symbolic dims."""
    policy = target.input_shapes
    dynamic = policy.policy == "dynamic"
    shapes = {"min": [], "opt": [], "max": []}
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and dim > 0:
            values = (dim, dim, dim)
        elif axis == 0:
            values = (policy.batch.min, policy.batch.opt, policy.batch.max) if dynamic else (1, 1, 1)
        elif axis == 1:
            values = (3, 3, 3)
        else:
            base = input_size[axis - 2]
            if dynamic:
                values = (min(base, _round_hw(base * policy.hw_scale.min, input_multiple, up=True)), base,
                          max(base, _round_hw(base * policy.hw_scale.max, input_multiple, up=False)))
            else:
                values = (base, base, base)
        for key, value in zip(("min", "opt", "max"), values):
            shapes[key].append(int(value))
    return shapes


def is_static(profile: dict) -> bool:
    return profile["min"] == profile["opt"] == profile["max"]


def shape_text(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)
