"""`make deploy` (TARGET=cpu, the built-in demo) from a clean copy of the committed tree."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_deploy_from_clean_copy_twice_gives_the_same_bundle(tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs make, git and a git checkout")
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "acsl").exists():
        pytest.skip(f"tests are not running from a virtual environment with `acsl` installed ({venv})")
    copy = tmp_path / "repo"
    copy.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    # The copy's own code (PYTHONPATH), this test's venv (VENV=..., its install stamp taken as up to date).
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1")
    pins = []
    for attempt in range(2):  # twice from clean: the same inputs must give the same bundle (issue 9)
        shutil.rmtree(copy / "runs", ignore_errors=True)
        shutil.rmtree(copy / "deploy", ignore_errors=True)
        proc = subprocess.run(["make", "-C", str(copy), "deploy", f"VENV={venv}", "-o", f"{venv}/.installed"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        bundle = copy / "deploy" / "cpu"
        pins.append(((bundle / "manifest.sha256").read_text(), json.loads((bundle / "manifest.json").read_text())))
    (first_pin, first), (second_pin, second) = pins
    models = {n: h for n, h in first["files"].items() if n.endswith((".onnx", ".engine"))}
    assert models and models == {n: h for n, h in second["files"].items() if n.endswith((".onnx", ".engine"))}
    assert first == second and first_pin == second_pin  # byte-identical manifest: the same pin both times
    assert "report: deploy/cpu/report.html" in proc.stdout

    from toolchain.artifacts.bundle import verify_bundle
    from toolchain.runtime import load

    manifest = verify_bundle(bundle)  # every sha256 in the manifest matches its file
    assert manifest["files"] and all((bundle / name).is_file() for name in manifest["files"])
    report = json.loads((bundle / "report.json").read_text())
    names = {row["variant"] for row in report["variants"]}
    assert {"dense-fp32", "slim-fp32"} <= names
    for row in report["variants"]:
        assert row["status"] in ("ok", "failed", "skipped") and ("accuracy" in row)
        if row["status"] == "ok":
            assert row["latency_median_ms"] > 0 and row["accuracy"] is not None
    model = load(bundle)
    frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    out = model(frame)
    assert out.class_map.shape == (64, 64) and np.isfinite(out.raw).all()
