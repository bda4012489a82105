"""Layering (docs/ARCHITECTURE.md, "Layers"): what ships forms the bottom layer.

- `toolchain.artifacts` (bundle format + verification, engine sidecar, TensorRT capability layer,
  deployment preprocessing, the table of artifact kinds) imports only `toolchain.errors`,
  `toolchain.utils` and third-party packages;
- `toolchain.runtime` (what ships to devices) imports, transitively, nothing but itself, the
  bottom layer, errors and utils: nothing from training, pruning, data, models, build or deploy;
- no import cycle among build, runtime, deploy, export, calibration and artifacts.

Every import counts, function-level ones included (they are how a cycle hides), read with `ast`.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import toolchain

ROOT = Path(toolchain.__file__).resolve().parent
BOTTOM = "artifacts"
# what the bottom layer may import (the root package only holds __version__)
BOTTOM_MAY_IMPORT = {"", "errors", "utils", BOTTOM}
# what the shipped runtime may reach, transitively
RUNTIME_MAY_REACH = BOTTOM_MAY_IMPORT | {"runtime"}
ACYCLIC = ("build", "runtime", "deploy", "export", "calibration", BOTTOM)


def _module_name(path: Path) -> str:
    parts = ["toolchain", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute toolchain module, line) for every import in the file, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            # `from toolchain.x import y`: y may be the submodule toolchain.x.y
            found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "toolchain" or name.startswith("toolchain.")]


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (an attribute import resolves to its module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _subpackage(module: str) -> str:
    """'toolchain.build.builder' -> 'build'; the root package (__version__) -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_edges() -> dict[str, list[tuple[str, str]]]:
    """module -> [(imported module, 'file:line')], packages' __init__ included as importers."""
    modules = _modules()
    edges: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for module, path in modules.items():
        for name, line in _imports(path):
            target = _resolve(name, modules)
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            while target and target != module:  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
                edges[module].append((target, where))
                target = _resolve(target.rpartition(".")[0], modules)
    return edges


def test_bottom_layer_and_runtime_import_nothing_from_the_training_or_deploy_side():
    edges = _module_edges()
    bad = [f"{where}: {module} imports {target}" for module, out in edges.items() if _subpackage(module) == BOTTOM
           for target, where in out if _subpackage(target) not in BOTTOM_MAY_IMPORT]
    # everything the shipped runtime reaches, through any chain of imports
    seen, todo, via = set(), [m for m in _modules() if _subpackage(m) == "runtime"], {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target, where in edges.get(module, []):
            if target not in seen:
                via.setdefault(target, f"{where}: {module} imports {target}")
                todo.append(target)
    bad += [f"runtime reaches {m} ({via[m]})" for m in sorted(seen) if _subpackage(m) not in RUNTIME_MAY_REACH]
    assert not bad, "layering broken:\n" + "\n".join(bad)
    assert any(_subpackage(m) == BOTTOM for m in _modules()), "toolchain.artifacts (the bottom layer) is missing"


def test_importing_the_runtime_loads_only_the_runtime_and_the_bottom_layer():
    """The same rule, observed: what `from toolchain.runtime import load` really imports."""
    code = ("import sys\nfrom toolchain.runtime import load, OrtRunner, TrtRunner\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('toolchain.') or m == 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = out.stdout.split()
    assert "toolchain.runtime.bundle" in loaded  # the import really ran
    assert "torch" not in loaded  # a device with ONNX Runtime or TensorRT only needs no torch (TorchRunner is lazy)
    assert [m for m in loaded if m != "torch" and _subpackage(m) not in RUNTIME_MAY_REACH] == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_build_runtime_deploy_export_calibration_artifacts():
    graph: dict[str, set[str]] = defaultdict(set)
    evidence: dict[tuple[str, str], str] = {}
    for module, out in _module_edges().items():
        src = _subpackage(module)
        for target, where in out:
            dst = _subpackage(target)
            if src in ACYCLIC and dst in ACYCLIC and src != dst:
                graph[src].add(dst)
                evidence.setdefault((src, dst), f"{where} ({module} -> {target})")
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle " + " -> ".join(cycle) + ":\n" + "\n".join(
        evidence[(a, b)] for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_reports_one():  # the checker itself can fail
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_kinds_table_covers_every_file_the_bundle_writer_produces():
    from toolchain.artifacts import bundle, kinds
    from toolchain.deploy import adapters, pipeline

    # the names the bundle writer gives: exported variants, reserved records, build outputs it keeps,
    # the deployed artifact of every kind a build returns (as the pipeline names it), the reports
    names = [f"{v}.onnx" for v in bundle.VARIANTS] + list(bundle.RESERVED) + list(adapters._BUNDLE_NAMES)
    names += [f"slim-int8/model{suffix}" for suffix in adapters._BUNDLE_SUFFIXES]
    for kind in kinds.KINDS:
        if kind.name in bundle.ARTIFACT_KINDS:
            for suffix in kind.suffixes:
                names.append(pipeline._bundle_name("slim-int8", Path(f"out/model{suffix}")))
    names += [f"report{s}" for s in (".json", ".md", ".html")] + ["report_latency.png"]
    unknown = [n for n in names if kinds.kind_of(n) is None]
    assert not unknown, f"bundle files with no row in the kinds table: {unknown}"
    # every kind a manifest may name is a model kind in the table, with a backend and a loader
    for name in bundle.ARTIFACT_KINDS:
        row = kinds.by_name(name)
        assert row.is_model and row.backend and row.loaded_by and row.precisions
    # suffixes are matched longest first: the engine's sidecar is not an engine, a Q/DQ ONNX is ONNX
    assert kinds.kind_of("a/model.engine.json") is kinds.ENGINE_SIDECAR
    assert kinds.kind_of("a/model.engine") is kinds.TENSORRT_ENGINE
    assert kinds.kind_of("m.int8.qdq.onnx") is kinds.ONNX and kinds.kind_of("M.ONNX") is kinds.ONNX
    assert kinds.kind_of("weights.bin") is None
    # the sidecar next to an engine (as the builder writes it) is a sidecar for every engine suffix
    from toolchain.artifacts.sidecar import sidecar_path

    for suffix in kinds.TENSORRT_ENGINE.suffixes:
        assert kinds.kind_of(sidecar_path(f"slim-fp16/model{suffix}")) is kinds.ENGINE_SIDECAR
