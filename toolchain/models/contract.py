"""The model contract, checked before any training, and the facts probed when a model leaves them out.

A model the toolchain can train, prune and deploy (zoo or user `file.py:factory`) has:

- `task` ("segmentation" | "counting" | "classification"), an attribute (or given with `--task`);
- `input_multiple`: H and W must be multiples of it; inferred by probing forward passes when absent;
- `output_stride`: input size / output size (1 for segmentation logits, 8 for a density map, None for
  classification); inferred by probing when absent;
- `output_layers()` (optional): the head layers whose output channels are never pruned; when absent
  they are found from the traced graph (the conv / linear layers that produce the model's outputs);
- channel coupling the pruning tracer can follow: Torch-Pruning's DependencyGraph builds, and a
  surgery round-trip on a small random plan reproduces the dense model with those channels zeroed,
  and a model rebuilt from the plan computes what the slimmed one does.

`check_contract(...)` runs all of this and returns one `Finding` per fact (`acsl models --check`).
`architecture_id(model)` is a checkpoint's identity: the model class name and a hash of its
state-dict keys and shapes (not the factory string or file path, so the same model wrapped in
another file loads the same checkpoint).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.utils.io import sha256_json

TASKS = ("segmentation", "counting", "classification")
PROBE_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
_TRACED_ATTR = "_acsl_traced_output_layers"
_ANNOUNCED: set[str] = set()


# -- identity ---------------------------------------------------------------------------------------
def architecture_id(model: nn.Module) -> dict:
    """{"class": class name, "state_sha256": hash of the sorted (key, shape) pairs of the state dict}."""
    model = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    shapes = sorted([key, list(value.shape)] for key, value in model.state_dict().items())
    return {"class": type(model).__name__, "state_sha256": sha256_json(shapes)}


# -- output layers ------------------------------------------------------------------------------------
def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def default_probe_size(model: nn.Module) -> tuple[int, int]:
    multiple = getattr(model, "input_multiple", None)
    multiple = multiple if isinstance(multiple, int) and multiple >= 1 else 32
    side = max(64, multiple * 2)
    return side, side


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def traced_output_layers(model: nn.Module, input_size: Optional[tuple[int, int]] = None,
                         announce: bool = True) -> list[str]:
    """Names of the conv / linear layers that produce the model's outputs, found from the autograd graph.

    Walks back from every output tensor through parameter-free ops, BatchNorm and activations and
    stops at the first Conv / ConvTranspose / Linear on each path: those layers' output channels are
    the output's channels, so they are never pruned. Cached on the model instance.
    """
    cached = getattr(model, _TRACED_ATTR, None)
    if cached is not None:
        return list(cached)
    size = tuple(input_size) if input_size else default_probe_size(model)
    owners: dict[int, str] = {}
    keep_alive: list = []
    handles = []

    def hook(name):
        def fn(module, inputs, output):
            for t in _tensors(output):
                if t.grad_fn is not None:
                    owners[id(t.grad_fn)] = name
                    keep_alive.append(t.grad_fn)
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = torch.randn(2, 3, int(size[0]), int(size[1]), generator=torch.Generator().manual_seed(0))
            outputs = list(_tensors(model(x.to(_device(model)))))
    except Exception as err:  # the user's forward: any failure is a one-line error
        raise ToolchainError(f"{type(model).__name__} failed a forward pass at {size[0]}x{size[1]} while looking for "
                             f"its output layers: {type(err).__name__}: {_first_line(err)}; fix the model or "
                             "define output_layers()") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    found: list[str] = []
    seen: set[int] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        owner = owners.get(id(node))
        if owner is not None:
            if owner not in found:
                found.append(owner)
            continue
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found.sort(key=order.get)
    if not found:
        raise ToolchainError(f"{type(model).__name__} has no output_layers() and no conv / linear layer produces its "
                             "output; define output_layers() returning the head layers")
    object.__setattr__(model, _TRACED_ATTR, tuple(found))
    if announce and type(model).__name__ not in _ANNOUNCED:
        _ANNOUNCED.add(type(model).__name__)
        print(f"note: {type(model).__name__} has no output_layers(); keeping {', '.join(found)} unpruned "
              "(the layers producing its output, found from the traced graph)", file=sys.stderr)
    return found


def output_layer_names(model: nn.Module, input_size: Optional[tuple[int, int]] = None,
                       announce: bool = True) -> tuple[list[str], bool]:
    """(names of the output layers, True when they were found from the traced graph)."""
    getter = getattr(model, "output_layers", None)
    if getter is None:
        return traced_output_layers(model, input_size, announce=announce), True
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(m), "?") for m in getter()], False


# -- geometry probing ---------------------------------------------------------------------------------
def _first_line(err: BaseException) -> str:
    return ((str(err).strip().splitlines() or [type(err).__name__])[0])[:160]


def _odd_multiple(target: int, m: int) -> int:
    """The odd multiple of m nearest `target` (divisible by m, not by 2m)."""
    k = max(0, round((target / m - 1) / 2))
    return m * (2 * k + 1)


def _describe_probes(probes: list) -> str:
    sizes = lambda ps: ", ".join(f"{p.size[0]}x{p.size[1]}" for p in ps)  # noqa: E731
    failed, ran = [p for p in probes if not p.ok], [p for p in probes if p.ok]
    parts = []
    if failed:
        parts.append(f"fails at {sizes(failed)} ({failed[-1].why[:110]})")
    if ran:
        parts.append(f"runs at {sizes(ran)}")
    return "; ".join(parts)


@dataclass
class Probe:
    size: tuple[int, int]
    ok: bool
    output_shape: Optional[tuple[int, ...]] = None
    stride: Optional[int] = None
    why: str = ""


def _forward_probe(model: nn.Module, size: tuple[int, int]) -> Probe:
    try:
        with torch.no_grad():
            x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
            out = model(x.to(_device(model)))
    except Exception as err:  # the user's forward: a failure is a probe result, not a crash
        return Probe(size, False, why=f"{type(err).__name__}: {_first_line(err)}")
    tensors = list(_tensors(out))
    if not tensors:
        return Probe(size, False, why="the model returned no tensor")
    shape = tuple(tensors[0].shape)
    if len(shape) == 2:
        return Probe(size, True, shape, None)
    if len(shape) != 4:
        return Probe(size, False, shape, why=f"output has {len(shape)} dimensions (expected B x C x H x W or B x K)")
    h, w = shape[2], shape[3]
    if h == 0 or w == 0 or size[0] % h or size[1] % w or size[0] // h != size[1] // w:
        return Probe(size, False, shape, why=f"output {h}x{w} is not the input {size[0]}x{size[1]} divided by one "
                                             "integer stride")
    return Probe(size, True, shape, size[0] // h)


def probe_geometry(model: nn.Module, input_size: tuple[int, int]) -> dict:
    """Infer input_multiple and output_stride with forward passes (eval mode, no grad).

    input_multiple is the smallest m in 1, 2, 4, ... 64 for which a size that is an odd multiple of m
    (near `input_size`) runs and gives an output at an integer stride; output_stride is input/output
    there (None for a B x K output). Returns {"input_multiple", "output_stride", "probes": [...]}.
    """
    was_training = model.training
    model.eval()
    probes: list[Probe] = []
    try:
        found, hit = None, None
        for m in PROBE_MULTIPLES:
            size = (_odd_multiple(input_size[0], m), _odd_multiple(input_size[1], m))
            probe = _forward_probe(model, size)
            probes.append(probe)
            if probe.ok:
                found, hit = m, probe
                break
        reference = None
        if found is not None and tuple(input_size) != hit.size:
            reference = _forward_probe(model, tuple(input_size))
            probes.append(reference)
    finally:
        model.train(was_training)
    if found is None:
        return {"input_multiple": None, "output_stride": None, "probes": probes}
    stride = hit.stride
    if reference is not None and reference.ok and reference.stride != stride:
        return {"input_multiple": None, "output_stride": None, "probes": probes,
                "why": f"the output stride differs between sizes ({stride} vs {reference.stride})"}
    return {"input_multiple": found, "output_stride": stride, "probes": probes}


def model_geometry(model: nn.Module, input_size: tuple[int, int]) -> dict:
    """{"input_multiple", "output_stride"}: the model's declared values, probed where it declares none."""
    has_multiple = isinstance(getattr(model, "input_multiple", None), int)
    has_stride = hasattr(model, "output_stride")
    out = {"input_multiple": getattr(model, "input_multiple", None) if has_multiple else None,
           "output_stride": getattr(model, "output_stride", None) if has_stride else None}
    if not (has_multiple and has_stride):
        probed = probe_geometry(model, tuple(input_size))
        if not has_multiple:
            out["input_multiple"] = probed["input_multiple"] or 1
        if not has_stride:
            out["output_stride"] = probed["output_stride"]
    return out


# -- the whole contract -------------------------------------------------------------------------------
@dataclass
class Finding:
    level: str  # "ok" | "note" | "error"
    topic: str
    text: str

    def line(self) -> str:
        return f"{self.level:<5} {self.topic}: {self.text}"


def _random_plan(graph, fraction: float, seed: int) -> dict[int, list[int]]:
    generator = torch.Generator().manual_seed(seed)
    removed = {}
    for group in graph.groups:
        count = int(group.size * fraction)
        if group.size >= 2 and count >= 1:
            count = min(count, group.size - 1)
            removed[group.index] = sorted(torch.randperm(group.size, generator=generator)[:count].tolist())
    return removed


def check_contract(build, *, task: Optional[str] = None, input_size: tuple[int, int] = (64, 64),
                   num_classes: Optional[int] = None, fraction: float = 0.25, seed: int = 0) -> list[Finding]:
    """Check a model against the contract. `build()` returns a fresh dense model (same weights each call
    is not required). Returns one Finding per fact; any "error" means training would fail later."""
    from toolchain.prune.groups import build_pruning_graph, example_inputs
    from toolchain.prune.plan import apply_channel_plan
    from toolchain.prune.surgery import prune_model, relative_error

    findings: list[Finding] = []
    add = lambda level, topic, text: findings.append(Finding(level, topic, text))  # noqa: E731
    torch.manual_seed(seed)
    try:
        model = build()
    except ToolchainError as err:
        add("error", "build", str(err))
        return findings
    name = type(model).__name__
    params = sum(p.numel() for p in model.parameters())
    add("ok", "build", f"{name}, {params:,} parameters")

    # task
    declared = getattr(model, "task", None)
    if declared is not None and declared not in TASKS:
        add("error", "task", f"model.task is {declared!r}; use one of {', '.join(TASKS)}")
        declared = None
    if task and declared and task != declared:
        add("error", "task", f"model.task is '{declared}' but --task is '{task}'; they must agree")
    elif declared:
        add("ok", "task", f"{declared} (model.task)")
    elif task:
        add("note", "task", f"{task} (from --task / the config; the model has no `task` attribute)")
    else:
        add("error", "task", f"{name} has no `task` attribute; set task = 'segmentation' (or counting, "
                             "classification) on the class, or pass --task")
    task = task or declared

    # geometry
    probed = probe_geometry(model, input_size)
    tried = _describe_probes(probed["probes"])
    declared_multiple = getattr(model, "input_multiple", None)
    inferred = probed["input_multiple"]
    if inferred is None:
        add("error", "input_multiple", f"no probe size ran with an integer output stride: {tried}")
    elif declared_multiple is None:
        add("note", "input_multiple", f"{inferred} (inferred by probing: {tried}; declare input_multiple = {inferred} "
                                      "on the model to make it explicit)")
    elif not isinstance(declared_multiple, int) or declared_multiple < 1:
        add("error", "input_multiple", f"model.input_multiple is {declared_multiple!r}; it must be an int >= 1")
    elif declared_multiple % inferred:
        add("error", "input_multiple", f"model.input_multiple is {declared_multiple} but probing needs {inferred} "
                                       f"({tried}); set input_multiple = {inferred}")
    else:
        add("ok", "input_multiple", f"{declared_multiple} (declared; probing agrees: {tried})")
    multiple = declared_multiple if isinstance(declared_multiple, int) and declared_multiple >= 1 else (inferred or 1)
    size_ok = input_size[0] % multiple == 0 and input_size[1] % multiple == 0
    if not size_ok:
        add("error", "input size", f"{input_size[0]}x{input_size[1]} is not a multiple of {multiple}; use e.g. "
                                   f"{input_size[0] // multiple * multiple or multiple}x"
                                   f"{input_size[1] // multiple * multiple or multiple}")
    stride = probed["output_stride"]
    if inferred is not None:
        if hasattr(model, "output_stride"):
            if model.output_stride != stride:
                add("error", "output_stride", f"model.output_stride is {model.output_stride} but the output is at "
                                              f"stride {stride}; set output_stride = {stride}")
            else:
                add("ok", "output_stride", f"{stride} (declared; probing agrees)")
        else:
            add("note", "output_stride", f"{stride} (inferred by probing; declare output_stride = {stride})")
        hit = next(p for p in probed["probes"] if p.ok)
        shape = hit.output_shape
        expect = {"segmentation": "B x num_classes x H x W logits (output_stride 1)",
                  "counting": "a B x 1 x H/s x W/s density map", "classification": "B x num_classes logits"}
        wrong = {"segmentation": len(shape) != 4 or stride != 1 or (num_classes and shape[1] != num_classes),
                 "counting": len(shape) != 4 or shape[1] != 1,
                 "classification": len(shape) != 2 or (num_classes and shape[1] != num_classes)}
        if task in wrong:
            if wrong[task]:
                add("error", "output", f"{task} needs {expect[task]}, the model returns {tuple(shape)} for a "
                                       f"{hit.size[0]}x{hit.size[1]} input")
            else:
                add("ok", "output", f"{tuple(shape)} for a {hit.size[0]}x{hit.size[1]} image, as {task} needs")

    # output layers
    try:
        heads, traced = output_layer_names(model, input_size if size_ok else None, announce=False)
        if traced:
            add("note", "output_layers", f"no output_layers(); keeping {', '.join(heads)} (found from the traced "
                                         "graph: the layers producing the output)")
        else:
            from toolchain.prune.groups import output_layers

            output_layers(model)  # validates the instances
            add("ok", "output_layers", f"{', '.join(heads)} (declared)")
    except ToolchainError as err:
        add("error", "output_layers", str(err))
        return findings
    if not size_ok or inferred is None:
        return findings

    # tracing and surgery round-trip
    try:
        graph = build_pruning_graph(model, input_size)
    except ToolchainError as err:
        add("error", "tracer", str(err))
        return findings
    channels = sum(g.size for g in graph.groups)
    add("ok", "tracer", f"Torch-Pruning DependencyGraph built: {len(graph.groups)} prunable channel groups, "
                        f"{channels} channels")
    removed = _random_plan(graph, fraction, seed)
    try:
        slim, plan, error = prune_model(graph, removed, verify=True)
    except ToolchainError as err:
        add("error", "surgery", str(err))
        return findings
    gone = sum(len(v) for v in removed.values())
    add("ok", "surgery", f"removed {gone} random channels in {len(removed)} groups: the slim model equals the dense "
                         f"one with those channels zeroed (relative error {error:.1e})")
    try:
        torch.manual_seed(seed)
        rebuilt = apply_channel_plan(build(), plan).eval()
        rebuilt.load_state_dict(slim.state_dict())
        x = example_inputs(slim, input_size)
        with torch.no_grad():
            diff = relative_error(slim.eval()(x), rebuilt(x))
        if diff > 1e-5:
            raise ToolchainError(f"the model rebuilt from the channel plan computes differently (relative error "
                                 f"{diff:.1e}); the factory must build the same graph every call")
        if architecture_id(rebuilt) != architecture_id(slim):
            raise ToolchainError("the model rebuilt from the channel plan has different state-dict shapes")
    except (ToolchainError, RuntimeError) as err:
        add("error", "plan round-trip", _first_line(err))
        return findings
    add("ok", "plan round-trip", "a fresh model shrunk by the channel plan loads the slim weights and computes the "
                                 "same output (how slim checkpoints are reloaded)")
    return findings


def model_identity(cfg) -> dict:
    """What a cached stage (deploy) should key the model on.

    Zoo models: the config's `model` section, as before. User models (`file.py:factory`): the
    architecture (class + state-dict shapes) and the sha256 of the file that defines the class, plus
    width and kwargs, but not the path in `model.name`: moving the file or wrapping the same class in
    another file keeps the identity, editing the class's file changes it.
    """
    import inspect

    from toolchain.models.registry import build_from_config, is_user_spec

    section = cfg.model.model_dump(mode="json")
    if not is_user_spec(cfg.model.name):
        return section
    try:
        with torch.device("meta"):
            model = build_from_config(cfg)
    except ToolchainError:
        raise
    except Exception:  # a factory that cannot build on the meta device: build it for real
        model = build_from_config(cfg)
    source = inspect.getsourcefile(type(model))
    from toolchain.utils.io import sha256_file

    return {"width": section["width"], "kwargs": section["kwargs"], "architecture": architecture_id(model),
            "source_sha256": sha256_file(source) if source else None}
