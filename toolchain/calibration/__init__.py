"""INT8: calibration set, Q/DQ quantisation (ONNX Runtime), TensorRT calibrators, accuracy gate."""
from toolchain.calibration.calib_set import CalibrationSet, cache_key, calibration_set  # noqa: F401
from toolchain.calibration.gate import GateResult, passes_gate, run_int8_gate  # noqa: F401
from toolchain.calibration.qdq import compute_nodes, quantize_qdq  # noqa: F401
from toolchain.calibration.trt_calibrator import CalibrationBatcher, CalibrationCache  # noqa: F401
