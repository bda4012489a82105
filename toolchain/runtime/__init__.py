"""Runners: one interface (load, infer on named numpy arrays, close) for torch, ONNX Runtime and TensorRT.

`load(bundle)` (the embedding API, `toolchain.runtime.bundle`) is built on these runners: it
verifies the bundle (`toolchain.artifacts.bundle.verify_bundle`) and runs the verified bytes.
"""
from toolchain.runtime.base import Runner, predict_fn, static_batch  # noqa: F401
from toolchain.runtime.ort_runner import OrtRunner  # noqa: F401
from toolchain.runtime.trt_runner import TrtRunner  # noqa: F401
from toolchain.runtime.bundle import DeployedModel, Prediction, load  # noqa: F401


def __getattr__(name: str):
    """`TorchRunner` is imported on first use, so `from toolchain.runtime import load` on a device
    with ONNX Runtime or TensorRT only does not need torch."""
    if name == "TorchRunner":
        from toolchain.runtime.torch_runner import TorchRunner

        return TorchRunner
    raise AttributeError(f"module 'toolchain.runtime' has no attribute {name!r}")
