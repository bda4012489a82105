"""Parameter and multiply-accumulate (MAC) counts.

MACs are counted with forward hooks on Conv2d, ConvTranspose2d and Linear, reading every shape
from the tensors that actually flow, so a model whose layers were physically slimmed is counted as
it is. Counts are for one image:
- Conv2d: output elements x (in_channels / groups) x kh x kw;
- ConvTranspose2d: input elements x (out_channels / groups) x kh x kw;
- Linear: output elements x in_features.
Other layers (BN, pooling, activations, interpolation) are not counted. The model may live on the
meta device (`with torch.device("meta"): model = ...`): counting then costs no compute.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), shared parameters counted once."""
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    batch = output.shape[0] if output.dim() > 1 else 1
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        return output.numel() // batch * per_output
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        per_input = (module.out_channels // module.groups) * kh * kw
        return inputs[0].numel() // batch * per_input
    if isinstance(module, nn.Linear):
        return output.numel() // batch * module.in_features
    return 0


def _input_parameter(model: nn.Module) -> torch.Tensor | None:
    return next(model.parameters(), None)


def probe_forward(model: nn.Module, hooks: dict[nn.Module, callable], input_size: tuple[int, int],
                  in_channels: int = 3) -> None:
    """One forward pass on a zero `in_channels x H x W` image in eval mode, without gradients, with
    `hooks` (module -> forward hook) registered only for its duration; the training mode is restored."""
    reference = _input_parameter(model)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *(int(v) for v in input_size), device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def count_macs(model: nn.Module, input_size: tuple[int, int] = (224, 224), in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one `in_channels x H x W` image.

    Runs the model once in eval mode without gradients (its training mode is restored).
    """
    height, width = (int(v) for v in input_size)
    multiple = getattr(model, "input_multiple", 1) or 1
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ToolchainError(f"{type(model).__name__} needs an input height and width that are positive "
                             f"multiples of {multiple}, got {height}x{width}; choose another input size")
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, inputs, output)

    probe_forward(model, {m: hook for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))},
                  (height, width), in_channels)
    return int(total)


def model_summary(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> dict:
    """{"params": int, "macs": int} for one image of `input_size`."""
    return {"params": count_params(model), "macs": count_macs(model, input_size, in_channels)}
