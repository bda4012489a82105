"""The benchmark scripts answer a mistyped config, profile or checkpoint with one line, never a traceback."""
import subprocess
import sys

import pytest
from conftest import REPO

CASES = [
    ("dense.py", ["configs/demo.yaml", "--profile", "nope"], "no profile 'nope'"),
    ("compression.py", ["configs/demo.yaml", "--profile", "nope"], "no profile 'nope'"),
    ("proximal_sparsity.py", ["configs/demo.yaml", "--profile", "nope"], "no profile 'nope'"),
    ("sparsity_overhead.py", ["configs/demo.yaml", "--profile", "nope"], "no profile 'nope'"),
    ("group_reduction_val.py", ["configs/demo.yaml", "--profile", "nope"], "no profile 'nope'"),
    ("surgery_precision.py", ["configs/demo.yaml", "missing.pt", "2"], "checkpoint not found: missing.pt"),
    ("plan_overlap.py", ["missing.json"], "missing.json is not a file"),
    ("int8.py", ["--config", "configs/demo.yaml", "--checkpoint", "missing.pt"], "checkpoint not found: missing.pt"),
    ("latency_budget.py", ["--models", "nope"], "--models nope: not measured here"),
    ("trt_build_matrix.py", ["--target", "nope"], "unknown target 'nope'"),
    ("trt_build_matrix.py", ["--models", "nope"], "--models nope: not in the model zoo"),
]


@pytest.mark.parametrize("script,args,expected", CASES, ids=[f"{c[0]}-{c[1][-1]}" for c in CASES])
def test_bad_input_is_one_line(script, args, expected):
    done = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert expected in lines[-1]
    assert len([line for line in lines if "error" in line]) == 1, done.stderr
