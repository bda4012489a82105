"""Runners: one interface (load, infer on named numpy arrays, close) for torch, ONNX Runtime and TensorRT.

`load(bundle)` (the embedding API, `toolchain.runtime.bundle`) is built on these runners: it
verifies the bundle (`toolchain.artifacts.bundle.verify_bundle`) and runs the verified bytes.
"""
from toolchain.runtime.base import Runner, predict_fn, static_batch  # noqa: F401
from toolchain.runtime.ort_runner import OrtRunner  # noqa: F401
from toolchain.runtime.torch_runner import TorchRunner  # noqa: F401
from toolchain.runtime.trt_runner import TrtRunner  # noqa: F401
from toolchain.runtime.bundle import DeployedModel, Prediction, load  # noqa: F401
