"""Model registry: configs name models by string (timm-style).

Zoo models register with `@register_model("name")`. Users add their own without touching the
package by naming `path/to/file.py:factory` in a config (docs/USER_MODELS.md). A factory has the
signature `factory(num_classes: int, width: float = 1.0, **kwargs) -> nn.Module`.

A user path in a config resolves like `data.root`: relative to the config file's folder (falling
back to the working directory only when the file is there and not next to the config). Check a
user model's whole contract before training with `acsl models --check file.py:factory`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Optional

import torch.nn as nn

from toolchain.errors import ToolchainError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}
# resolved file -> (mtime_ns, module): one module object per file version, so classes stay identical.
_USER_MODULES: dict[Path, tuple[int, object]] = {}


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


# -- user models ----------------------------------------------------------------------------------
def is_user_spec(name: str) -> bool:
    """True for `path/to/file.py:factory` (and for a bare `file.py`, so it gets a helpful error)."""
    return ".py:" in name or name.endswith(".py")


def split_user_spec(spec: str) -> tuple[str, str]:
    file, sep, attr = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not attr.isidentifier():
        raise ToolchainError(f"model '{spec}' must look like path/to/file.py:factory (the file and the name of "
                             "its factory function, joined by ':')")
    return file, attr


def display_name(name: str) -> str:
    """The model name to record in artifacts: a user spec keeps only its file name (`file.py:factory`),
    so no machine's folder layout is embedded; zoo names are unchanged."""
    if ".py:" not in name:
        return name
    file, _, attr = name.rpartition(":")
    return f"{Path(file).name}:{attr}"


def config_dir(cfg) -> Optional[Path]:
    """The folder of the YAML a config was loaded from (None for configs built in code)."""
    source = getattr(cfg, "source", None)
    return Path(source).resolve().parent if source else None


def resolve_user_file(file: str, base_dir: Optional[str | Path] = None) -> Path:
    """The model file of a spec, resolved like data.root: relative to `base_dir` (the config's folder)
    first, the working directory only when the file is there and not under `base_dir`."""
    path = Path(file).expanduser()
    if path.is_absolute():
        candidates = [path]
    elif base_dir is not None:
        candidates = [Path(base_dir) / path, Path.cwd() / path]
    else:
        candidates = [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    where = " or ".join(str(c.parent.resolve()) for c in dict.fromkeys(candidates))
    hint = " (relative paths resolve from the config file's folder)" if base_dir is not None else ""
    raise ToolchainError(f"model file not found: {file} (looked in {where}){hint}; "
                         "fix model.name (path/to/file.py:factory)")


def _import_user_file(path: Path):
    mtime = path.stat().st_mtime_ns
    cached = _USER_MODULES.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    module_name = f"acsl_user_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ToolchainError(f"{path} cannot be imported as a Python module; name a .py file")
    module = importlib.util.module_from_spec(mod_spec)
    folder = str(path.parent)
    sys.path.insert(0, folder)  # the file may import its neighbours (a backbone module, ...)
    sys.modules[module_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except ToolchainError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as err:  # a user's file: any import-time failure is reported as one line
        sys.modules.pop(module_name, None)
        raise ToolchainError(f"importing {path.name} failed: {type(err).__name__}: "
                             f"{(str(err).strip().splitlines() or [''])[0][:200]}; fix the model file") from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:
            pass
    _USER_MODULES[path] = (mtime, module)
    return module


def load_user_factory(spec: str, base_dir: Optional[str | Path] = None) -> Callable[..., nn.Module]:
    """The factory a `path/to/file.py:factory` spec names."""
    file, attr = split_user_spec(spec)
    path = resolve_user_file(file, base_dir)
    module = _import_user_file(path)
    fn = getattr(module, attr, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ToolchainError(f"{path.name} has no callable '{attr}' (it defines: {', '.join(found) or 'nothing'}); "
                             "use path/to/file.py:factory")
    return fn


def create_model(name: str, num_classes: int, width: float = 1.0, *, base_dir: Optional[str | Path] = None,
                 **kwargs) -> nn.Module:
    """Build a zoo model (or a user factory `file.py:factory`, resolved relative to `base_dir`)."""
    _load_zoo()
    if is_user_spec(name):
        fn = load_user_factory(name, base_dir)
    else:
        fn = _REGISTRY.get(name)
        if fn is None:
            raise ToolchainError(f"unknown model '{name}': the zoo has {', '.join(sorted(_REGISTRY))} "
                                 "(or name path/to/file.py:factory)")
    try:
        model = fn(num_classes=num_classes, width=width, **kwargs)
    except TypeError as err:
        raise ToolchainError(f"model '{display_name(name)}' does not accept these arguments: {err}; a factory takes "
                             "(num_classes, width=1.0, **kwargs) and model.kwargs supplies the rest") from None
    if not isinstance(model, nn.Module):
        raise ToolchainError(f"model '{display_name(name)}' returned {type(model).__name__}, not a torch.nn.Module; "
                             "the factory must return the model")
    return model


def build_from_config(cfg) -> nn.Module:
    """Build the model an ExperimentConfig names (a user file resolves from the config's folder)."""
    model = create_model(cfg.model.name, num_classes=cfg.data.num_classes, width=cfg.model.width,
                         base_dir=config_dir(cfg), **cfg.model.kwargs)
    declared = getattr(model, "task", None)  # a segmentation net under a counting config fails deep in the loss
    if isinstance(declared, str) and declared != cfg.task:
        raise ToolchainError(f"model '{display_name(cfg.model.name)}' is a {declared} model but the config's task is "
                             f"{cfg.task}; use a {cfg.task} model or set task: {declared}")
    return model
