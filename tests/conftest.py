"""Shared test fixtures. Tests run on 2 CPU cores: keep models tiny and threads few."""
from pathlib import Path

import pytest
import torch
import yaml



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest and never oversubscribes 2 shared cores.

    Restored after each test, since fit() applies a config's train.threads.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_benchmark(name: str):
    """Import benchmarks/<name>.py (a script, not a package module) for testing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_data(name: str) -> Path:
    """Path to a real dataset under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name} not found at {path}")
    return path


@pytest.fixture
def tiny_seg_config(tmp_path):
    """A tiny synthetic segmentation experiment (segnet width 0.125, 32x32) as a YAML file."""
    raw = {
        "name": "tiny_seg", "task": "segmentation",
        "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "ignore_index": 255,
                 "max_images": 16},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0},
        "out_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "tiny_seg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def tiny_synthetic_config(tmp_path, name: str = "tiny", **quantize):
    """A validated tiny synthetic segmentation config (segnet 0.125, 32x32, 4 images) for export/build tests."""
    from toolchain.config import validate_config

    return validate_config({"name": name, "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
                            "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 4},
                            "train": {"batch_size": 2}, "quantize": {"calib_images": 4, **quantize},
                            "out_dir": str(tmp_path / "runs")})
