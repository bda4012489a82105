"""Engine builders: ONNX Runtime (session options, providers, optimised model) and TensorRT
(8.5-10.x Python API, trtexec command, build_engine.sh, engine sidecar)."""
from toolchain.build.builder import BuildResult, build, build_onnxruntime, build_tensorrt  # noqa: F401
from toolchain.build.shapes import optimisation_profile  # noqa: F401
from toolchain.build.sidecar import check_engine_compatible, read_sidecar  # noqa: F401
from toolchain.build.trtexec import build_script, trtexec_command  # noqa: F401
