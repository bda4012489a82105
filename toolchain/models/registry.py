"""Model registry: configs name models by string (timm-style).

Zoo models register with `@register_model("name")`. Users add their own without touching the
package by naming `path/to/file.py:factory` in a config. A factory has the signature
`factory(num_classes: int, width: float = 1.0, **kwargs) -> nn.Module`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import torch.nn as nn

from toolchain.errors import ToolchainError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(name: str, task: str):
    """Decorator adding a factory to the zoo under `name` for `task`."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model '{name}' registered twice")
        _REGISTRY[name] = fn
        _TASKS[name] = task
        return fn
    return deco


def list_models() -> list[str]:
    _load_zoo()
    return sorted(_REGISTRY)


def model_task(name: str) -> str | None:
    _load_zoo()
    return _TASKS.get(name)


def _load_zoo() -> None:
    import toolchain.models  # noqa: F401  (importing the package registers the zoo)


def _load_user_factory(spec: str) -> Callable[..., nn.Module]:
    file, _, attr = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ToolchainError(f"model file not found: {file} (use path/to/file.py:factory)")
    mod_spec = importlib.util.spec_from_file_location(f"user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ToolchainError(f"{file} has no callable '{attr}' (use path/to/file.py:factory)")
    return fn


def create_model(name: str, num_classes: int, width: float = 1.0, **kwargs) -> nn.Module:
    """Build a zoo model (or a user factory `file.py:factory`)."""
    _load_zoo()
    if ".py:" in name:
        fn = _load_user_factory(name)
    else:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise ToolchainError(f"unknown model '{name}': the zoo has {', '.join(sorted(_REGISTRY))} "
                                 "(or name path/to/file.py:factory)")
    try:
        model = fn(num_classes=num_classes, width=width, **kwargs)
    except TypeError as err:
        raise ToolchainError(f"model '{name}' does not accept these arguments: {err}") from None
    return model


def build_from_config(cfg) -> nn.Module:
    """Build the model an ExperimentConfig names."""
    return create_model(cfg.model.name, num_classes=cfg.data.num_classes, width=cfg.model.width, **cfg.model.kwargs)
