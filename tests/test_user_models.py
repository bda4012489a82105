"""User models (`path/to/file.py:factory`) as a first-class path (issue 9, item 7) and the prune output
names (item 8): path resolution from the config's folder, `acsl models --check`, output layers found
from the traced graph, geometry probing, checkpoint identity by architecture, ONNX metadata."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from toolchain.cli import main
from toolchain.config import load_config
from toolchain.errors import ToolchainError
from toolchain.models import build_from_config, create_model
from toolchain.models.contract import architecture_id, model_geometry, probe_geometry, traced_output_layers
from toolchain.train.checkpoint import load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "user_model"


def _config(folder: Path, model_name: str, *, width: float = 0.25, size: int = 32, **extra) -> Path:
    raw = {
        "name": "user", "task": "segmentation", "model": {"name": model_name, "width": width},
        "data": {"kind": "synthetic", "input_size": [size, size], "num_classes": 3, "max_images": 8},
        "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0, "threads": 1},
        "prune": {"min_channels": 2, "sparsity": {"epochs": 0}, "recover": {"epochs": 1}},
        "export": {"simplify": "none"},
        "out_dir": str(folder / "runs"), **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def project(tmp_path):
    """A user's project: configs/config.yaml naming models/seg_model.py:build (relative to the config)."""
    (tmp_path / "configs" / "models").mkdir(parents=True)
    shutil.copy(EXAMPLE / "seg_model.py", tmp_path / "configs" / "models" / "seg_model.py")
    return _config(tmp_path / "configs", "models/seg_model.py:build")


# -- path resolution ------------------------------------------------------------------------------------
def test_model_path_resolves_from_the_config_folder_not_the_working_directory(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = build_from_config(load_config(project))
    assert type(model).__name__ == "MobileSeg"
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_missing_model_file_is_one_line_naming_the_config_folder(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = _config(tmp_path / "configs", "models/nope.py:build")
    with pytest.raises(ToolchainError, match="model file not found: models/nope.py") as err:
        build_from_config(load_config(bad))
    assert "\n" not in str(err.value) and str((tmp_path / "configs" / "models").resolve()) in str(err.value)
    assert main(["models", "--check", str(bad)]) == 2
    out = capsys.readouterr()
    assert "model file not found" in out.out + out.err and "Traceback" not in out.out + out.err


def test_bad_specs_are_one_line_errors(project):
    folder = project.parent
    with pytest.raises(ToolchainError, match="path/to/file.py:factory"):
        create_model("models/seg_model.py", 3, base_dir=folder)
    with pytest.raises(ToolchainError, match="no callable 'nope'.*defines: .*build"):
        create_model("models/seg_model.py:nope", 3, base_dir=folder)
    (folder / "broken.py").write_text("import not_a_real_module_xyz\n")
    with pytest.raises(ToolchainError, match="importing broken.py failed: ModuleNotFoundError"):
        create_model("broken.py:build", 3, base_dir=folder)


# -- the contract check ------------------------------------------------------------------------------------
def test_check_the_example_reports_every_contract_item(capsys):
    code = main(["models", "--check", str(EXAMPLE / "seg_model.py") + ":build", "--input", "64x64",
                 "--num-classes", "4", "--width", "0.25"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {line.split(":")[0].split()[-1]: line for line in out.splitlines() if line[:5].strip() in ("ok", "note")}
    assert lines["input_multiple"].startswith("note") and "input_multiple: 16 (inferred" in lines["input_multiple"]
    assert "output_stride: 1 (inferred" in lines["output_stride"]
    assert "keeping classifier" in lines["output_layers"]
    assert lines["tracer"].startswith("ok") and lines["surgery"].startswith("ok")
    assert lines["round-trip"].startswith("ok")
    assert "contract: ok" in out


def test_check_from_a_config_uses_its_model_task_and_size(project, capsys):
    assert main(["models", "--check", str(project)]) == 0
    out = capsys.readouterr().out
    assert "checking seg_model.py:build (width 0.25, 3 classes) at 32x32" in out


BAD_MODELS = textwrap.dedent('''
    import torch, torch.nn as nn, torch.nn.functional as F

    def cbr(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class EqUnpool(nn.Module):
        """SegNet-style unpooling written with ==: autograd cannot see the encoder/decoder coupling."""
        task = "segmentation"
        def __init__(self, num_classes, width=1.0):
            super().__init__()
            self.enc, self.mid, self.dec = cbr(3, 8), cbr(8, 8), cbr(8, 8)
            self.head = nn.Conv2d(8, num_classes, 1)
        def forward(self, x):
            e = self.enc(x)
            p = F.max_pool2d(e, 2)
            up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")
            return self.head(self.dec(up(self.mid(p)) * (up(p) == e).float()))

    class Lies(EqUnpool):
        input_multiple = 1          # wrong: the unpooling needs even sizes
        def forward(self, x):
            e = self.enc(x)
            return self.head(self.dec(F.interpolate(self.mid(F.max_pool2d(e, 2)), scale_factor=2.0)))

    class NoTask(nn.Module):
        def __init__(self, num_classes, width=1.0):
            super().__init__()
            self.body, self.head = cbr(3, 8), nn.Conv2d(8, num_classes, 1)
        def forward(self, x):
            return self.head(self.body(x))

    class Classifier(NoTask):
        task = "classification"
        def forward(self, x):
            return self.head(self.body(x)).mean((2, 3))

    def coupling(num_classes, width=1.0): return EqUnpool(num_classes, width)
    def lies(num_classes, width=1.0): return Lies(num_classes, width)
    def notask(num_classes, width=1.0): return NoTask(num_classes, width)
    def classifier(num_classes, width=1.0): return Classifier(num_classes, width)
''')


@pytest.mark.parametrize("factory,args,expect", [
    ("coupling", [], "error surgery: surgery check failed"),
    ("lies", [], "error input_multiple: model.input_multiple is 1 but probing needs 2"),
    ("notask", [], "error task: NoTask has no `task` attribute"),
    ("classifier", ["--task", "segmentation"], "error task: model.task is 'classification' but --task is"),
])
def test_check_catches_contract_breaks_before_training(tmp_path, capsys, factory, args, expect):
    (tmp_path / "bad.py").write_text(BAD_MODELS)
    code = main(["models", "--check", f"{tmp_path / 'bad.py'}:{factory}", "--input", "32x32", "--num-classes", "3",
                 *args])
    out = capsys.readouterr().out
    assert code == 2
    assert any(line.startswith(expect) for line in out.splitlines()), out
    assert "problem(s); fix them before training" in out.splitlines()[-1]


def test_no_task_is_fine_when_given(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(BAD_MODELS)
    assert main(["models", "--check", f"{tmp_path / 'bad.py'}:notask", "--task", "segmentation",
                 "--input", "32x32", "--num-classes", "3"]) == 0
    assert "note  task: segmentation (from --task" in capsys.readouterr().out


def test_check_bad_input_argument(capsys):
    assert main(["models", "--check", "segnet", "--input", "64by64"]) == 2
    assert "--input must look like HxW" in capsys.readouterr().err


# -- output layers and geometry ------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    """Logits = main head + upsampled auxiliary head (both produce the output channels); no output_layers()."""
    task = "segmentation"

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 1)
        self.aux = nn.Sequential(nn.Conv2d(8, 3, 1, bias=False), nn.BatchNorm2d(3))

    def forward(self, x):
        f = self.body(x)
        aux = torch.nn.functional.interpolate(self.aux(self.down(f)), size=x.shape[-2:], mode="bilinear")
        return torch.relu(self.head(f)) + aux


def test_output_layers_found_from_the_traced_graph_are_never_pruned(capsys):
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.surgery import prune_model

    torch.manual_seed(0)
    model = TwoHeads()
    graph = build_pruning_graph(model, (16, 16))
    assert traced_output_layers(model) == ["head", "aux.0"]
    assert "keeping head, aux.0 unpruned" in capsys.readouterr().err
    assert {g.root for g in graph.groups} == {"body.0", "down.0"}  # the heads root no group
    removed = {g.index: [0, 1] for g in graph.groups}
    slim, _, error = prune_model(graph, removed)
    assert error < 1e-4 and slim.head.out_channels == 3 and slim.aux[0].out_channels == 3
    assert slim.body[0].out_channels == 6


def test_geometry_probed_when_absent_and_declared_values_win():
    model = create_model(str(EXAMPLE / "seg_model.py") + ":build", 3, width=0.25)
    probed = probe_geometry(model, (64, 64))
    assert (probed["input_multiple"], probed["output_stride"]) == (16, 1)
    assert model_geometry(model, (64, 64)) == {"input_multiple": 16, "output_stride": 1}
    csrnet = create_model("csrnet", 1, width=0.125)
    assert model_geometry(csrnet, (64, 64)) == {"input_multiple": 8, "output_stride": 8}
    assert probe_geometry(csrnet, (64, 64))["output_stride"] == 8  # the probe agrees with the zoo's declaration
    resnet = create_model("resnet20", 10, width=0.25)
    assert probe_geometry(resnet, (32, 32))["output_stride"] is None


# -- checkpoint identity -----------------------------------------------------------------------------------
WRAPPER = textwrap.dedent('''
    """The same network, wrapped in another file (a user reorganising their project)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs" / "models"))
    from seg_model import MobileSeg

    def make_net(num_classes, width=1.0, **kwargs):
        return MobileSeg(num_classes, width=width, **kwargs)
''')


def test_checkpoint_identity_is_the_architecture_not_the_factory_path(project, tmp_path):
    cfg = load_config(project)
    torch.manual_seed(0)
    model = build_from_config(cfg)
    save_checkpoint(tmp_path / "dense.pt", model, cfg)
    saved = torch.load(tmp_path / "dense.pt", weights_only=True)
    assert saved["architecture"] == architecture_id(model) and saved["architecture"]["class"] == "MobileSeg"

    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "net.py").write_text(WRAPPER)
    other = load_config(_config(tmp_path / "wrapped", "net.py:make_net"))
    loaded, _ = load_model(tmp_path / "dense.pt", other)  # no retraining: same class, same state-dict shapes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())

    wider = load_config(_config(tmp_path / "wrapped", "net.py:make_net", width=0.5))
    with pytest.raises(ToolchainError, match="holds model 'models/seg_model.py:build' at width 0.25"):
        load_model(tmp_path / "dense.pt", wider)
    # same shapes, another class: refused (a different network that happens to fit)
    (tmp_path / "wrapped" / "renamed.py").write_text(WRAPPER + "\nclass Other(MobileSeg):\n    pass\n\n"
                                                     "def make(num_classes, width=1.0):\n"
                                                     "    return Other(num_classes, width=width)\n")
    renamed = load_config(_config(tmp_path / "wrapped", "renamed.py:make"))
    with pytest.raises(ToolchainError, match="holds model"):
        load_model(tmp_path / "dense.pt", renamed)


# -- export metadata -----------------------------------------------------------------------------------------
def test_onnx_metadata_comes_from_the_model_and_embeds_no_folder(project, tmp_path):
    from toolchain.export.exporter import export_model
    from toolchain.export.metadata import read_onnx_metadata

    cfg = load_config(project)
    torch.manual_seed(0)
    result = export_model(build_from_config(cfg), cfg, tmp_path / "user.onnx", real_images=0, log=lambda *_: None)
    meta = read_onnx_metadata(result.onnx_path)
    assert meta["input_multiple"] == "16" and json.loads(meta["output_stride"]) == 1
    assert meta["model_name"] == "seg_model.py:build"
    data = Path(result.onnx_path).read_bytes()
    for folder in {str(tmp_path), str(tmp_path.resolve()), "models/seg_model.py"}:
        assert folder.encode() not in data


# -- prune end to end: traced heads recorded, the recovered model is slim.pt -----------------------------------
def test_prune_a_user_model_without_output_layers(project, tmp_path, capsys):
    from toolchain.prune.pipeline import run_prune
    from toolchain.train.trainer import fit

    cfg = load_config(project)
    torch.manual_seed(0)
    dense = fit(cfg, build_from_config(cfg), cfg.run_dir(), epochs=1).best_path
    record = run_prune(cfg, dense, method="l1", budget="params=0.3", recover_method="finetune", evaluate_test=False)
    run = Path(record["checkpoint"]).parent
    assert Path(record["checkpoint"]).name == "slim.pt" and (run / "slim_before_recovery.pt").is_file()
    assert not (run / "pruned.pt").exists()
    select = json.loads((run / "records" / "select.json").read_text())
    assert select["output_layers"] == {"names": ["classifier"], "traced": True}
    model, _ = load_model(run / "slim.pt", cfg)
    assert model.classifier.out_channels == 3
    assert sum(p.numel() for p in model.parameters()) == record["after"]["params"]


def test_model_identity_follows_the_class_file_not_the_path(project, tmp_path):
    from toolchain.models.contract import model_identity

    ident = model_identity(load_config(project))
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "net.py").write_text(WRAPPER)
    assert model_identity(load_config(_config(tmp_path / "wrapped", "net.py:make_net"))) == ident
    source = project.parent / "models" / "seg_model.py"
    source.write_text(source.read_text().replace("mode=\"bilinear\"", "mode=\"nearest\""))
    assert model_identity(load_config(project))["source_sha256"] != ident["source_sha256"]
    zoo = load_config(_config(tmp_path, "segnet"))
    assert model_identity(zoo) == zoo.model.model_dump(mode="json")  # zoo keys unchanged


@pytest.mark.parametrize("name", ["segnet", "unet", "pspnet", "csrnet", "resnet20", "vgg16_cifar",
                                  "mobilenetv2_lraspp"])
def test_every_zoo_model_passes_its_own_contract(name):
    from toolchain.models.contract import check_contract
    from toolchain.models.registry import list_models, model_task

    if name not in list_models():
        pytest.skip(f"{name} is not in this zoo")
    task = model_task(name)
    classes = 1 if task == "counting" else 4
    findings = check_contract(lambda: create_model(name, classes, width=0.125), task=task, input_size=(64, 64),
                              num_classes=classes)
    assert [f.line() for f in findings if f.level != "ok"] == []
    assert [f.topic for f in findings] == ["build", "task", "input_multiple", "output_stride", "output",
                                           "output_layers", "tracer", "surgery", "plan round-trip"]


@pytest.mark.slow
def test_deploy_a_user_model_named_with_a_folder_and_load_the_bundle(project, tmp_path):
    """The bundle records the model as `seg_model.py:build` in the manifest and the ONNX alike, so the
    loader's cross-check passes; the model file's folder is in no bundle file."""
    import numpy as np

    from toolchain.deploy.pipeline import run_deploy
    from toolchain.runtime import load

    cfg = load_config(project, overrides={
        "deploy": {"out_dir": str(tmp_path / "deploy"), "eval_images": 4},
        "data": {"max_images": 8}, "prune": {"recover": {"epochs": 1}}, "quantize": {"calib_images": 4, "gate": 0.01}})
    result = run_deploy(cfg, "cpu", runs=3, warmup_s=0.0, log=lambda *_: None)
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == "seg_model.py:build"
    for path in result.bundle.rglob("*"):  # the model file's folder is in no bundle file
        if path.is_file():
            data = path.read_bytes()
            assert b"models/seg_model.py" not in data and str(project.parent / "models").encode() not in data, path
    model = load(result.bundle)
    out = model(np.zeros((32, 32, 3), dtype=np.uint8))
    assert out is not None
