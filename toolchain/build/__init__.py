"""Engine builders: ONNX Runtime (session options, providers, optimised model) and TensorRT
(8.5-11 / RTX Python API, trtexec command, build_engine.sh). The engine sidecar and the TensorRT
capability layer they write against live in the bottom layer, `toolchain.artifacts`."""
from toolchain.build.builder import BuildResult, build, build_onnxruntime, build_tensorrt  # noqa: F401
from toolchain.build.shapes import optimisation_profile  # noqa: F401
from toolchain.build.trtexec import build_script, trtexec_command  # noqa: F401
