"""The bad-input catalogue (issue 9, item 9) as one table-driven suite; docs/RELIABILITY.md lists it.

Every row is a mistake a user makes: a setup (files written into the case's folder), the `acsl` argv and
what must come back. The promise checked for every row, with the CLI called in-process:
  - exit status 2 and no traceback;
  - stderr is one line `acsl <command>: error: <what was wrong and what to do>` (argparse usage errors:
    its usage lines, then that one line; `acsl data check`: one error line per problem and a count line;
    `acsl models --check`: its report on stdout, one `error` line per problem);
  - nothing left behind: the case's folder (which is also the working directory and the config's out_dir)
    and the shared fixtures' folder list the same files before and after;
  - the message names only paths that exist, except for rows about a path that does not.
Heavy faults (two concurrent deploys, disk full, Ctrl-C, kill -9 leftovers) live in tests/test_faults.py and
bundle tampering in depth in tests/test_runtime_bundle.py; RELIABILITY.md points at them.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from toolchain.cli import main as acsl
from toolchain.config import load_config
from toolchain.export import export_model
from toolchain.models import build_from_config
from toolchain.train.checkpoint import save_checkpoint

BASE = {"name": "tiny", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "ignore_index": 255,
                 "max_images": 8},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "seed": 0},
        "prune": {"sparsity": {"epochs": 1}}, "quantize": {"calib_images": 4}}


def _merge(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _write_config(folder: Path, name: str = "c.yaml", **extra) -> Path:
    raw = _merge(BASE, extra)
    raw.setdefault("out_dir", str(folder / "runs"))
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


# -- shared fixtures (built once: checkpoints and ONNX models of the tiny SegNet) -------------------------
@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kit")

    def model_and_cfg(name, **extra):
        cfg = load_config(_write_config(root, f"{name}.yaml", out_dir=str(root / "unused"), **extra))
        torch.manual_seed(0)
        return build_from_config(cfg).eval(), cfg

    net, cfg = model_and_cfg("dense")
    save_checkpoint(root / "dense.pt", net, cfg)
    data = (root / "dense.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    with torch.no_grad():
        next(net.parameters())[0].fill_(float("nan"))
    save_checkpoint(root / "nan.pt", net, cfg)
    for name, extra in [("unet", {"model": {"name": "unet"}}), ("six", {"data": {"num_classes": 6}})]:
        other, other_cfg = model_and_cfg(name, **extra)
        save_checkpoint(root / f"{name}.pt", other, other_cfg)
        export_model(other, other_cfg, root / f"{name}.onnx", real_images=0, log=None)
    net, cfg = model_and_cfg("dense")
    export_model(net, cfg, root / "ok.onnx", real_images=0, log=None)
    proto = onnx.load(str(root / "ok.onnx"))
    proto.opset_import[0].version = 99
    onnx.save(proto, str(root / "opset99.onnx"))
    proto = onnx.load(str(root / "ok.onnx"))  # fixed-size graph whose input/output claim any N, H, W
    for value in list(proto.graph.input) + list(proto.graph.output):
        for axis, label in ((0, "N"), (2, "H"), (3, "W")):
            value.type.tensor_type.shape.dim[axis].dim_param = label
    onnx.save(proto, str(root / "inconsistent_dims.onnx"))
    export_model(net, cfg, root / "dynamic.onnx", real_images=0, log=None, dynamic=["batch", "hw"])
    proto = onnx.load(str(root / "dynamic.onnx"))  # a truly dynamic graph, its axes named N, H, W
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    rename = {dims[axis].dim_param: label for axis, label in ((0, "N"), (2, "H"), (3, "W"))}
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = rename.get(dim.dim_param, dim.dim_param)
    onnx.save(proto, str(root / "nhw.onnx"))
    data = (root / "ok.onnx").read_bytes()
    (root / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (root / "not_onnx.onnx").write_bytes(b"\x08\x07 this is not an onnx model \xff" * 3)
    (root / "a_file").write_text("a plain file\n")
    (root / "no_factory.py").write_text("import torch\n\n\ndef other():\n    return torch.nn.Conv2d(3, 3, 1)\n")
    return root


# -- setups: write the bad input into the case's folder --------------------------------------------------
def _camvid(folder: Path, n: int = 2, size=(24, 32)) -> Path:
    root = folder / "camvid"
    h, w = size
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / split / "images" / f"{split}_{i}.jpg")
            label = np.zeros((h, w), np.uint8)
            label[:, w // 2:] = 2
            Image.fromarray(label).save(root / split / "labels" / f"{split}_{i}.png")
        (root / f"{split}.txt").write_text("".join(f"{split}_{i}\n" for i in range(n)))
    return root


def _shb(folder: Path, entry) -> Path:
    root = folder / "shb"
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        for i in (1, 2, 3):
            Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / split / "images" / f"IMG_{i}.jpg")
        points = {"IMG_1": [[3, 4], [40.5, 30]], "IMG_2": [], "IMG_3": [[10, 10]]}
        if split == "train":
            points["IMG_2"] = entry
        (root / split / "points.json").write_text(json.dumps(points))
    return root


def camvid_config(mutate: Optional[Callable[[Path], None]] = None):
    def setup(folder: Path, kit: Path) -> None:
        root = _camvid(folder)
        if mutate:
            mutate(root)
        _write_config(folder, data={"kind": "camvid", "root": str(root), "input_size": [24, 32], "num_classes": 3,
                                    "ignore_index": 255, "max_images": None})
    return setup


def points_config(entry):
    def setup(folder: Path, kit: Path) -> None:
        root = _shb(folder, entry)
        _write_config(folder, task="counting", model={"name": "csrnet", "width": 0.125},
                      data={"kind": "shanghaitech", "root": str(root), "input_size": [32, 48], "num_classes": 1,
                            "max_images": None})
    return setup


def config_text(text: str | bytes):
    def setup(folder: Path, kit: Path) -> None:
        path = folder / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def config_with(**extra):
    return lambda folder, kit: _write_config(folder, **extra)


def plain_config(folder: Path, kit: Path) -> None:
    _write_config(folder)


def _trained(folder: Path, kit: Path) -> None:
    """A finished one-epoch run in runs/tiny (its dense_last.pt is resumable)."""
    _write_config(folder)
    assert acsl(["train", str(folder / "c.yaml")]) == 0


def _small_label(root: Path) -> None:
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "train" / "labels" / "train_1.png")


def _bundle_setup(edit: Optional[str] = None):
    """A hand-made bundle (tests/test_runtime_bundle.py's) copied into the case's folder and then edited."""
    def setup(folder: Path, kit: Path) -> None:
        import test_runtime_bundle as rb

        (folder / "make").mkdir()
        bundle, _ = rb._bundle(folder / "make", name="bundle")
        shutil.move(str(bundle), str(folder / "bundle"))
        shutil.rmtree(folder / "make")
        bundle = folder / "bundle"
        if edit == "mean":  # re-signed manifest with other preprocessing: would change outputs silently
            rb._resign(bundle, rb._set("preprocessing.mean", [0.4, 0.5, 0.5]))
        elif edit == "traversal":
            rb._resign(bundle, rb._add_file("../../../../etc/passwd", "/etc/passwd", artifact=False))
        elif edit == "evil":
            rb._resign(bundle, rb._copy_in_evil)
        elif edit == "unsigned":  # manifest edited, manifest.sha256 not updated
            manifest = json.loads((bundle / "manifest.json").read_text())
            manifest["classes"] = ["road", "car", "person"]
            (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        elif edit == "missing_model":
            (bundle / "slim-fp32.onnx").unlink()
    return setup


# -- the table -----------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: list                        # {cfg} the case's c.yaml, {tmp} the case's folder, {kit} the shared fixtures
    match: str                        # regex the error line must contain
    setup: Optional[Callable] = plain_config
    style: str = "line"               # line | usage (argparse) | report (data check) | stdout (models --check)
    missing_path: bool = False        # the row is about a path that does not exist: the message may name it
    xfail: Optional[str] = None
    marks: list = field(default_factory=list)


PRUNE = ["prune", "{cfg}", "--checkpoint", "{kit}/dense.pt"]
BUILD = ["build", "{cfg}", "--target", "cpu", "--out", "{tmp}/build", "--onnx"]
PROFILE = ["profile", "--runs", "1", "--warmup-s", "0", "--batch", "1", "--bundle", "{tmp}/bundle"]
CASES = [
    # the command line itself
    Case("unknown-command", ["bogus"], r"invalid choice: 'bogus'", style="usage"),
    Case("missing-required-option", ["eval", "{cfg}"], r"required: --checkpoint", style="usage"),
    Case("bad-choice", ["build", "{cfg}", "--onnx", "{kit}/ok.onnx", "--precision", "int4"],
         r"invalid choice: 'int4'", style="usage"),
    Case("not-a-number-option", ["deploy", "{cfg}", "--target", "cpu", "--runs", "many"],
         r"invalid int value: 'many'", style="usage"),
    Case("bad-split", ["eval", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--split", "vall"],
         r"invalid choice: 'vall'", style="usage"),
    Case("bad-recover-choice", PRUNE + ["--recover", "retrain"], r"invalid choice: 'retrain'", style="usage"),
    # configs
    Case("missing-config", ["train", "{tmp}/nope.yaml"], r"config file not found", missing_path=True),
    Case("config-is-a-folder", ["train", "{tmp}"], r"config file not found"),
    Case("empty-config", ["train", "{cfg}"], r"must be a YAML mapping", setup=config_text("")),
    Case("config-is-a-list", ["train", "{cfg}"], r"must be a YAML mapping", setup=config_text("- a\n- b\n")),
    Case("bad-yaml", ["train", "{cfg}"], r"not valid YAML at line 2", setup=config_text("name: [unclosed\n")),
    Case("non-utf8-config", ["train", "{cfg}"], r"not UTF-8 text \(byte 0xe9",
         setup=config_text("name: caf\xe9\n".encode("latin-1"))),
    Case("config-key-typo", ["train", "{cfg}"], r"unknown key 'train.epocs' \(did you mean 'train.epochs'",
         setup=config_with(train={"epocs": 3})),
    Case("config-wrong-type", ["train", "{cfg}"], r"'train.epochs' input should be a valid integer",
         setup=config_with(train={"epochs": "three"})),
    Case("unknown-section", ["train", "{cfg}", "--set", "nosection.x=1"], r"unknown key 'nosection'"),
    Case("unknown-profile", ["train", "{cfg}", "--profile", "nope"], r"no profile 'nope'"),
    Case("set-unknown-key", ["train", "{cfg}", "--set", "train.epocs=3"], r"unknown key 'train.epocs'"),
    Case("set-bad-value-type", ["train", "{cfg}", "--set", "train.epochs=abc"], r"'train.epochs' .*valid integer"),
    Case("set-without-equals", ["train", "{cfg}", "--set", "train.epochs"], r"must look like key.sub=value"),
    Case("set-section-to-scalar", ["train", "{cfg}", "--set", "train=3"], r"'train' input should be a valid dict"),
    Case("set-width-absurd", ["train", "{cfg}", "--set", "model.width=1e9"], r"'model.width' .*less than or equal"),
    Case("set-width-zero", ["train", "{cfg}", "--set", "model.width=0"], r"'model.width'"),
    Case("set-width-not-a-number", ["train", "{cfg}", "--set", "model.width=abc"], r"'model.width' .*valid number"),
    Case("set-lr-inf", ["train", "{cfg}", "--set", "train.lr=.inf"], r"'train.lr' .*finite"),
    Case("set-lr-nan", ["train", "{cfg}", "--set", "train.lr=.nan"], r"'train.lr' .*finite"),
    Case("input-size-zero", ["train", "{cfg}", "--set", "data.input_size=[0,0]"], r"'data.input_size.0'"),
    Case("input-size-huge", ["train", "{cfg}", "--set", "data.input_size=[1000000,1000000]"], r"'data.input_size"),
    Case("input-size-not-a-pair", ["train", "{cfg}", "--set", "data.input_size=abc"], r"'data.input_size'"),
    Case("zero-classes", ["train", "{cfg}", "--set", "data.num_classes=0"], r"'data.num_classes'"),
    Case("zero-batch", ["train", "{cfg}", "--set", "train.batch_size=0"], r"'train.batch_size'"),
    Case("negative-epochs", ["train", "{cfg}", "--set", "train.epochs=-1"], r"'train.epochs'"),
    Case("unknown-task", ["train", "{cfg}", "--set", "task=detection"], r"'task' input should be 'segmentation'"),
    Case("unknown-data-kind", ["train", "{cfg}", "--set", "data.kind=nosuch"], r"'data.kind'"),
    Case("unknown-model", ["train", "{cfg}", "--set", "model.name=nosuchnet"], r"unknown model 'nosuchnet'"),
    Case("optimizer-typo", ["train", "{cfg}", "--set", "train.optimizer=adamz"],
         r"'train.optimizer' .*'sgd' or 'adamw'"),
    Case("model-of-another-task", ["train", "{cfg}", "--set", "task=counting", "--set", "data.num_classes=1"],
         r"'segnet' is a segmentation model but the config's task is counting"),
    Case("data-root-missing-in-config", ["train", "{cfg}"], r"data folder not found: .*nowhere", missing_path=True,
         setup=config_with(data={"kind": "camvid", "root": "nowhere", "max_images": None})),
    Case("target-yaml-missing-key", ["deploy", "{cfg}", "--target", "{tmp}/t.yaml"],
         r"t\.yaml: target key 'precisions': Field required",
         setup=lambda folder, kit: (plain_config(folder, kit), (folder / "t.yaml").write_text(
             "name: mine\nbackend: onnxruntime\nprecisionz: [fp32]\n"))),
    # a user's own model (file.py:factory)
    Case("user-model-file-missing", ["train", "{cfg}", "--set", "model.name=nofile.py:factory"],
         r"model file not found: .*nofile\.py .*relative paths resolve from the config file's folder",
         missing_path=True),
    Case("user-model-no-factory", ["train", "{cfg}", "--set", "model.name={kit}/no_factory.py:factory"],
         r"no_factory\.py has no callable 'factory' \(it defines: other\)"),
    Case("models-check-missing-file", ["models", "--check", "{tmp}/nofile.py:factory"],
         r"^error build: model file not found", style="stdout", missing_path=True),
    Case("models-check-no-factory", ["models", "--check", "{kit}/no_factory.py:factory"],
         r"^error build: no_factory\.py has no callable 'factory'", style="stdout"),
    Case("models-check-unknown-zoo-name", ["models", "--check", "nosuchnet"], r"^error build: unknown model",
         style="stdout"),
    Case("models-check-input-zero", ["models", "--check", "segnet", "--input", "0x0"], r"--input must look like HxW"),
    Case("models-check-task-disagrees", ["models", "--check", "{cfg}", "--task", "counting"],
         r"--task counting disagrees with the config's task 'segmentation'"),
    Case("prune-divisor-without-modelopt", PRUNE + ["--modelopt-divisor", "8"], r"applies to --method modelopt"),
    Case("models-input-size-zero", ["models", "--input-size", "0", "0"], r"--input-size must be two positive"),
    # data
    Case("data-folder-missing", ["train", "{cfg}", "--data", "{tmp}/nodata"], r"data folder .*not found",
         missing_path=True),
    Case("data-folder-is-a-file", ["train", "{cfg}", "--data", "{kit}/a_file"], r"a_file is a file, not a folder"),
    Case("wrong-task-data", ["data", "check", "{cfg}", "--set", "data.kind=shanghaitech", "--set", "task=counting",
                             "--set", "model.name=csrnet", "--set", "data.num_classes=1"],
         r"does not look like shanghaitech", setup=camvid_config(), style="report"),
    Case("label-of-another-size", ["data", "check", "{cfg}"], r"train_1\.png is 12x16 .*24x32|24x32.*12x16",
         setup=camvid_config(_small_label), style="report"),
    Case("label-of-another-size-train", ["train", "{cfg}"], r"train_1\.png", setup=camvid_config(_small_label)),
    Case("image-without-label", ["data", "check", "{cfg}"], r"train_1\.jpg has no label",
         setup=camvid_config(lambda r: (r / "train" / "labels" / "train_1.png").unlink()), style="report",
         missing_path=True),  # it names the label it expected
    Case("corrupt-image", ["data", "check", "{cfg}", "--full"], r"test_1\.jpg",
         setup=camvid_config(lambda r: (r / "test" / "images" / "test_1.jpg").write_bytes(b"\xff\xd8\xff junk")),
         style="report"),
    Case("points-four-values", ["data", "check", "{cfg}", "--full"], r"'IMG_2' point 0 is \[10, 20, 30, 40\]",
         setup=points_config([[10, 20, 30, 40]]), style="report"),
    Case("points-four-values-train", ["train", "{cfg}"], r"'IMG_2' point 0 is \[10, 20, 30, 40\]",
         setup=points_config([[10, 20, 30, 40]])),
    Case("points-four-values-deploy", ["deploy", "{cfg}", "--target", "cpu", "--runs", "1", "--warmup-s", "0"],
         r"'IMG_2' point 0 is \[10, 20, 30, 40\]", setup=points_config([[10, 20, 30, 40]])),
    Case("label-of-another-size-deploy", ["deploy", "{cfg}", "--target", "cpu", "--runs", "1", "--warmup-s", "0"],
         r"train_1\.png", setup=camvid_config(_small_label)),
    Case("points-entry-is-a-number", ["data", "check", "{cfg}"], r"'IMG_2' is 5, not a list",
         setup=points_config(5), style="report"),
    Case("points-three-values", ["data", "check", "{cfg}"], r"'IMG_2' point 0 is \[1, 2, 3\] \(3 values\)",
         setup=points_config([[1, 2, 3]]), style="report"),
    Case("points-strings", ["data", "check", "{cfg}"], r"x and y must be numbers",
         setup=points_config([["a", "b"]]), style="report"),
    Case("data-of-another-task", ["train", "{cfg}", "--data", "{tmp}/shb"],
         r"shb is a counting dataset \(shanghaitech\) but the config's task is segmentation",
         setup=lambda folder, kit: (plain_config(folder, kit), _shb(folder, [[1, 2]]))),
    Case("json-under-a-file", ["data", "check", "{cfg}", "--json", "{kit}/a_file/stats.json"],
         r"a_file is a file, not a folder", missing_path=True),
    # checkpoints
    Case("checkpoint-missing", ["eval", "{cfg}", "--checkpoint", "{tmp}/missing.pt"], r"checkpoint not found",
         missing_path=True),
    Case("checkpoint-truncated", ["eval", "{cfg}", "--checkpoint", "{kit}/truncated.pt"], r"truncated or corrupt"),
    Case("checkpoint-not-a-checkpoint", ["eval", "{cfg}", "--checkpoint", "{cfg}"], r"not a readable checkpoint"),
    Case("checkpoint-nan-weights-eval", ["eval", "{cfg}", "--checkpoint", "{kit}/nan.pt"], r"NaN/inf .*diverged"),
    Case("checkpoint-nan-weights-prune", PRUNE[:3] + ["{kit}/nan.pt"], r"NaN/inf .*diverged"),
    Case("checkpoint-nan-weights-export", ["export", "{cfg}", "--checkpoint", "{kit}/nan.pt"], r"NaN/inf"),
    Case("checkpoint-other-model", ["eval", "{cfg}", "--checkpoint", "{kit}/unet.pt"],
         r"holds model 'unet' .* config asks for 'segnet'"),
    Case("checkpoint-other-classes", ["export", "{cfg}", "--checkpoint", "{kit}/six.pt"],
         r"does not fit model 'segnet'.*classifier"),
    Case("eval-zero-images", ["eval", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--max-images", "0"],
         r"--max-images must be at least 1"),
    # prune
    Case("budget-above-one", PRUNE + ["--budget", "params=1.5"], r"between 0 and 1"),
    Case("budget-zero", PRUNE + ["--budget", "flops=0"], r"between 0 and 1"),
    Case("budget-not-a-budget", PRUNE + ["--budget", "half"], r"budget 'half' is not valid"),
    Case("unknown-prune-method", PRUNE + ["--method", "nosuch"], r"unknown pruning method 'nosuch'"),
    Case("prune-checkpoint-missing", ["prune", "{cfg}", "--checkpoint", "{tmp}/no.pt"], r"not found",
         missing_path=True),
    Case("prune-out-is-a-file", PRUNE + ["--out", "{kit}/a_file"], r"a_file is a file"),
    # export
    Case("export-opset-5", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--opset", "5"],
         r"opset 5 is outside"),
    Case("export-opset-99", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--opset", "99"],
         r"opset 99 is outside"),
    Case("export-bad-dynamic", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--dynamic", "banana"],
         r"--dynamic accepts batch, hw"),
    Case("export-negative-real-images", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--real-images", "-3"],
         r"--real-images must be 0"),
    Case("export-unknown-lint-target", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--target", "nosuch",
                                        "--real-images", "0"], r"unknown target 'nosuch'"),
    Case("export-config-target-unknown", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--real-images", "0",
                                          "--set", "deploy.target=nosuch"], r"unknown target 'nosuch'"),
    Case("export-out-is-a-folder", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--out", "{kit}"],
         r"is a folder; pass a file path", missing_path=True),  # it suggests a file to write
    Case("export-out-under-a-file", ["export", "{cfg}", "--checkpoint", "{kit}/dense.pt", "--out",
                                     "{kit}/a_file/m.onnx"], r"a_file is a file, not a folder", missing_path=True),
    # targets and build
    Case("unknown-target", ["targets", "nosuch"], r"unknown target 'nosuch': valid targets are"),
    Case("build-unknown-target", ["build", "{cfg}", "--onnx", "{kit}/ok.onnx", "--target", "nosuch"],
         r"unknown target 'nosuch'"),
    Case("build-onnx-missing", BUILD + ["{tmp}/missing.onnx"], r"ONNX file not found", missing_path=True),
    Case("build-not-onnx", BUILD + ["{kit}/not_onnx.onnx"], r"not a readable ONNX model"),
    Case("build-truncated-onnx", BUILD + ["{kit}/truncated.onnx"], r"re-run `acsl export`"),
    Case("build-onnx-other-input-size", BUILD + ["{kit}/ok.onnx", "--set", "data.input_size=[64,64]"],
         r"input_size is 64x64"),
    Case("build-gate-on-no-images", BUILD + ["{kit}/ok.onnx", "--precision", "int8", "--eval-images", "-1"],
         r"--eval-images must be at least 1"),
    Case("build-negative-dla-core", BUILD + ["{kit}/ok.onnx", "--dla-core", "-1"], r"--dla-core must be 0 or more"),
    Case("build-out-is-a-file", ["build", "{cfg}", "--target", "cpu", "--onnx", "{kit}/ok.onnx", "--out",
                                 "{kit}/a_file"], r"a_file is a file"),
    Case("build-opset-99-onnx", BUILD + ["{kit}/opset99.onnx"], r"opset"),
    Case("build-6-class-onnx-under-3-class-config", BUILD + ["{kit}/six.onnx"], r"class"),
    Case("build-unet-onnx-under-segnet-config", BUILD + ["{kit}/unet.onnx"], r"unet"),
    # deploy
    Case("deploy-unknown-target", ["deploy", "{cfg}", "--target", "nosuch"], r"unknown target 'nosuch'"),
    Case("deploy-checkpoint-missing", ["deploy", "{cfg}", "--target", "cpu", "--checkpoint", "{tmp}/no.pt"],
         r"not found", missing_path=True),
    Case("deploy-runs-zero", ["deploy", "{cfg}", "--target", "cpu", "--runs", "0"], r"--runs must be >= 1"),
    Case("deploy-warmup-negative", ["deploy", "{cfg}", "--target", "cpu", "--warmup-s", "-1"], r"--warmup-s >= 0"),
    Case("deploy-out-is-a-file", ["deploy", "{cfg}", "--target", "cpu", "--out", "{kit}/a_file"],
         r"a_file is a file"),
    Case("deploy-out-is-a-foreign-folder", ["deploy", "{cfg}", "--target", "cpu", "--out", "{kit}"],
         r"not a bundle; deploy replaces"),
    Case("deploy-nan-checkpoint", ["deploy", "{cfg}", "--target", "cpu", "--checkpoint", "{kit}/nan.pt"],
         r"NaN/inf"),
    Case("train-resume-with-another-width", ["train", "{cfg}", "--set", "model.width=0.25", "--resume"],
         r"cannot resume from .*dense_last\.pt: it was written for another model", setup=_trained),
    Case("train-out-is-a-file", ["train", "{cfg}", "--out", "{kit}/a_file"], r"a_file is a file"),
    # bundles and profiling
    Case("profile-bundle-missing", ["profile", "--bundle", "{tmp}/nobundle"], r"bundle not found",
         missing_path=True),
    Case("profile-engine-without-target", ["profile", "--engine", "{kit}/ok.onnx"], r"--engine needs --target"),
    Case("profile-bad-batch", ["profile", "--engine", "{kit}/ok.onnx", "--target", "cpu", "--batch", "abc"],
         r"--batch must look like 1,4"),
    Case("profile-engine-not-a-model", ["profile", "--engine", "{kit}/a_file", "--target", "cpu"],
         r"could not load"),
    Case("bundle-resigned-preprocessing", PROFILE, r"preprocessing.mean .* does not match the checksummed",
         setup=_bundle_setup("mean")),
    Case("bundle-path-traversal", PROFILE, r"not a plain path inside the bundle", setup=_bundle_setup("traversal")),
    Case("bundle-unlisted-artifact", PROFILE, r"'evil.onnx' is not listed", setup=_bundle_setup("evil")),
    Case("bundle-manifest-edited", PROFILE, r"manifest", setup=_bundle_setup("unsigned")),
    Case("bundle-model-deleted", PROFILE, r"slim-fp32.onnx", setup=_bundle_setup("missing_model")),
    Case("bundle-pin-mismatch", PROFILE + ["--expect-manifest-sha256", "1" * 64], r"not the pinned one",
         setup=_bundle_setup()),
    Case("profile-bundle-is-a-file", ["profile", "--bundle", "{kit}/a_file"], r"a_file is a file, not a bundle"),
    Case("profile-bundle-not-a-bundle", ["profile", "--bundle", "{tmp}/empty"], r"has no manifest.json",
         setup=lambda folder, kit: (folder / "empty").mkdir()),
    # compare and report
    Case("compare-missing-model", ["compare", "{tmp}/a.pt", "{kit}/dense.pt"], r"a\.pt not found",
         missing_path=True),
    Case("compare-bad-shape", ["compare", "{kit}/dense.pt", "{kit}/dense.pt", "--shape", "banana"],
         r"--shape banana: write it as NxCxHxW"),
    Case("report-not-a-report", ["report", "render", "{tmp}/r.json", "-o", "{tmp}/o"], r"not an acsl report",
         setup=lambda folder, kit: (folder / "r.json").write_text("{}")),
    Case("report-not-json", ["report", "combine", "{cfg}", "-o", "{tmp}/out.html"], r"not valid JSON"),
    Case("report-render-missing", ["report", "render", "{tmp}/r.json", "-o", "{tmp}/o"], r"r\.json",
         missing_path=True),
]


def _listing(*folders: Path) -> dict:
    return {str(p): (p.stat().st_size if p.is_file() else None)
            for folder in folders for p in sorted(folder.rglob("*"))}


def _check_paths_exist(line: str) -> None:
    """Every absolute path the line names exists (patterns such as train/images/*.jpg are not paths)."""
    for path in re.findall(r"(?:^|[\s(`'\"])(/[^\s;:,()`'\"*]+)(?=$|[\s;:,()`'\"])", line):
        assert Path(path.rstrip(".")).exists(), f"{path} named in {line!r} does not exist"


def _params():
    for case in CASES:
        marks = list(case.marks)
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_is_one_line_and_leaves_nothing(case: Case, kit, tmp_path, capsys, monkeypatch, record_property):
    folder = tmp_path / "case"
    folder.mkdir()
    if case.setup:
        case.setup(folder, kit)
        capsys.readouterr()  # a setup that runs acsl (a first training) prints
    monkeypatch.chdir(folder)
    subst = {"{cfg}": str(folder / "c.yaml"), "{tmp}": str(folder), "{kit}": str(kit)}
    argv = [re.sub(r"\{cfg\}|\{tmp\}|\{kit\}", lambda m: subst[m[0]], a) for a in case.argv]
    command = argv[0]
    before = _listing(folder, kit)
    try:
        code = acsl(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, f"exit {code}; stderr: {err!r}; stdout tail: {out[-500:]!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    if case.style == "line":
        assert len(lines) == 1, err
        line = lines[0]
        assert line.startswith(f"acsl {command}: error: "), line
    elif case.style == "usage":
        assert lines and lines[0].startswith("usage: acsl"), err
        errors = [line for line in lines if re.match(r"acsl( \w+)?: error: ", line)]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        line = errors[0]
    elif case.style == "report":
        assert all(line.startswith("acsl data") for line in lines), err
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and re.match(r"acsl data( check)?: ", errors[0]), err
        line = errors[0]
    else:  # stdout: a checker's report
        assert err == ""
        errors = [line for line in out.splitlines() if line.startswith("error")]
        assert len(errors) == 1, out
        line = errors[0]
    record_property("error_line", line.replace(str(folder), "CASE").replace(str(kit), "KIT"))  # docs/RELIABILITY.md
    assert re.search(case.match, line), f"{case.match!r} not in {line!r}"
    assert _listing(folder, kit) == before, "files were created, changed or removed"
    if not case.missing_path:
        _check_paths_exist(line)


def test_every_case_has_a_unique_id_a_command_and_a_row_in_reliability_md():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    from toolchain.cli import COMMANDS

    assert {case.argv[0] for case in CASES if case.argv[0] != "bogus"} <= set(COMMANDS)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text()
    listed = re.findall(r"^\| \d+ \| ([\w-]+) \|", doc, flags=re.M)
    assert listed == ids, "docs/RELIABILITY.md's table is out of date: regenerate it from a --junitxml run"
    assert f"| table-driven rows (`CASES`, table below) | {len(CASES)} |" in doc
    elsewhere = doc[doc.index("## Cases checked elsewhere"):doc.index("## Not covered")]
    pointers = 0
    for cell in re.findall(r"^\|.*\| (tests/\S+\.py::[^|]+) \|$", elsewhere, flags=re.M):
        source = None
        for ref in cell.split(", "):
            file, name = re.match(r"(tests/\w+\.py)?::(\w+)", ref.strip()).groups()
            source = (Path(__file__).resolve().parents[1] / file).read_text() if file else source
            assert f"def {name}(" in source, f"docs/RELIABILITY.md points at {ref}, which does not exist"
            pointers += 1
    assert pointers >= 40


@pytest.mark.parametrize("target,onnx_name", [("cpu", "nhw.onnx"), ("jetson-orin-nx-16gb", "nhw.onnx"),
                                              ("cpu", "inconsistent_dims.onnx")])
def test_symbolic_nhw_onnx_builds_at_the_config_size(target, onnx_name, kit, tmp_path, capsys):
    """Not a mistake: an ONNX with symbolic N, H, W builds for the config's input size (ONNX Runtime engine, or the
    TensorRT script where TensorRT is not installed); the record says which size. That includes a fixed-size graph
    whose input claims any N, H, W (inconsistent_dims.onnx): the build probes it at the config's size and at batch 2
    (a dynamic batch must really work) and it runs at both."""
    config = _write_config(tmp_path)
    code = acsl(["build", str(config), "--onnx", str(kit / onnx_name), "--target", target, "--precision", "fp32",
                 "--out", str(tmp_path / "build")])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads((tmp_path / "build" / "build.json").read_text())
    assert record["precision"] == "fp32" and "Traceback" not in out + err


# -- an engine's sidecar (read when a bundle's TensorRT engine is loaded) ---------------------------------------
GOOD_SIDECAR = {"tensorrt_version": "8.6.2", "compute_capability": "8.7", "gpu_name": "Orin"}
ORIN, RTX = {"name": "Orin", "compute_capability": "8.7"}, {"name": "RTX 4090", "compute_capability": "8.9"}
BAD_SIDECARS = [  # (id, edit, one-line error it must give); before: ValueError / KeyError tracebacks
    ("tensorrt-version-banana", {"tensorrt_version": "banana"}, r"tensorrt_version 'banana', which is not a version"),
    ("compute-capability-missing", {"compute_capability": "DROP"}, r"lacks compute_capability"),
    ("sidecar-not-json", "{not json", r"is corrupt \(not JSON\)"),
]


def _engine_with_sidecar(folder: Path, edit) -> Path:
    from toolchain.artifacts.sidecar import make_sidecar, sidecar_path, write_sidecar

    engine = folder / "model.engine"
    engine.write_bytes(b"engine bytes")
    side = make_sidecar(engine_path=engine, tensorrt_version="8.6.2", gpu=ORIN, precision="fp16",
                        input_shapes={"input": [1, 3, 32, 32]}, dla_core=None, onnx_sha256="0" * 64, target="jetson")
    if isinstance(edit, str):
        sidecar_path(engine).write_text(edit)
    else:
        write_sidecar(engine, {k: v for k, v in {**side, **edit}.items() if v != "DROP"})
    return engine


@pytest.mark.parametrize("edit,match", [b[1:] for b in BAD_SIDECARS], ids=[b[0] for b in BAD_SIDECARS])
def test_engine_sidecar_with_bad_fields_is_refused_in_one_line(tmp_path, edit, match):
    from toolchain.artifacts.sidecar import check_engine_compatible, read_sidecar
    from toolchain.errors import ToolchainError

    check_engine_compatible(read_sidecar(_engine_with_sidecar(tmp_path, {})), "8.6.2", ORIN)  # the good one loads
    engine = _engine_with_sidecar(tmp_path, edit)
    with pytest.raises(ToolchainError, match=match) as err:
        check_engine_compatible(read_sidecar(engine), "8.6.2", RTX)
    assert "\n" not in str(err.value)


def test_engine_sidecar_without_a_recorded_architecture_loads_with_a_warning(tmp_path):
    """`compute_capability: "unknown"` (no GPU found at build time) used to be accepted silently on any GPU."""
    from toolchain.artifacts.sidecar import check_engine_compatible, read_sidecar

    side = read_sidecar(_engine_with_sidecar(tmp_path, {"compute_capability": "unknown"}))
    warnings = check_engine_compatible(side, "8.6.2", RTX)
    assert any("does not record the GPU architecture" in w and "8.9" in w for w in warnings), warnings
    assert not any("architecture" in w for w in check_engine_compatible(GOOD_SIDECAR, "8.6.2", ORIN))
