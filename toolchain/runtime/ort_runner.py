"""Runner over an ONNX Runtime InferenceSession (CPU, CUDA or TensorRT execution providers)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolchain.errors import ToolchainError
from toolchain.runtime.base import Runner, Shape

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                 "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
                 "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def filter_providers(wanted: Sequence, available: Sequence[str]) -> tuple[list, list[str]]:
    """Keep the wanted providers (names or (name, options)) that are available, in order; CPU last resort."""
    kept, skipped = [], []
    for entry in wanted:
        name = entry[0] if isinstance(entry, (tuple, list)) else entry
        (kept if name in available else skipped).append(entry if name in available else name)
    if not kept:
        kept = ["CPUExecutionProvider"]
    return kept, skipped


def session_options(opt_level: str = "all", threads: Optional[int] = None, profile_prefix: Optional[str] = None,
                    optimized_model_path: Optional[str | Path] = None):
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise ToolchainError(f"graph optimisation level must be one of {', '.join(OPT_LEVELS)} (got {opt_level})")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    if threads:
        opts.intra_op_num_threads = int(threads)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if optimized_model_path:
        opts.optimized_model_filepath = str(optimized_model_path)
    opts.log_severity_level = 3
    return opts


class OrtRunner(Runner):
    """`OrtRunner("m.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])`.

    Providers that are not installed are skipped (recorded in `skipped_providers`);
    `profile_prefix` turns on ONNX Runtime's profiler, whose JSON path `close()` stores in
    `profile_path`. `model_bytes` (the serialized model) is loaded instead of reading `model_path`,
    which then only names the model in messages: the bundle loader passes the bytes it verified.
    """

    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, providers: Optional[Sequence] = None, *, opt_level: str = "all",
                 threads: Optional[int] = None, profile_prefix: Optional[str] = None,
                 model_bytes: Optional[bytes] = None) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.model_bytes = model_bytes
        self.requested_providers = list(providers or ["CPUExecutionProvider"])
        self.opt_level, self.threads, self.profile_prefix = opt_level, threads, profile_prefix
        self.providers: list[str] = []
        self.skipped_providers: list[str] = []
        self.profile_path: Optional[str] = None
        self.session = None

    def _load(self) -> None:
        import onnxruntime as ort

        if self.model_bytes is None and not self.model_path.is_file():
            raise ToolchainError(f"ONNX model not found: {self.model_path}")
        kept, self.skipped_providers = filter_providers(self.requested_providers, available_providers())
        names = [p[0] if isinstance(p, (tuple, list)) else p for p in kept]
        options = [dict(p[1]) if isinstance(p, (tuple, list)) else {} for p in kept]
        opts = session_options(self.opt_level, self.threads, self.profile_prefix)
        try:
            model = self.model_bytes if self.model_bytes is not None else os.fspath(self.model_path)
            self.session = ort.InferenceSession(model, opts, providers=names,
                                                provider_options=options)
        except Exception as err:  # noqa: BLE001 - ORT raises several unrelated exception types
            raise ToolchainError(f"ONNX Runtime could not load {self.model_path}: {str(err).splitlines()[0]}") from None
        self.providers = list(self.session.get_providers())

    def _require(self):
        if self.session is None:
            raise ToolchainError("onnxruntime runner used before load(); use `with runner:` or call load()")
        return self.session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._require().get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._require().get_outputs()]

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {i.name: tuple(i.shape) for i in self._require().get_inputs()}

    @property
    def input_dtypes(self) -> dict[str, type]:
        return {i.name: _NUMPY_OF_ORT.get(i.type, np.float32) for i in self._require().get_inputs()}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dtypes = self.input_dtypes
        inputs = {name: np.ascontiguousarray(feed[name], dtype=dtypes[name]) for name in self.input_names}
        try:
            values = self.session.run(None, inputs)
        except Exception as err:  # noqa: BLE001
            shapes = {k: tuple(v.shape) for k, v in inputs.items()}
            raise ToolchainError(f"ONNX Runtime inference failed for inputs {shapes} (model expects "
                                 f"{self.input_shapes}): {str(err).splitlines()[0]}") from None
        return dict(zip(self.output_names, values))

    def _close(self) -> None:
        if self.session is not None and self.profile_prefix:
            self.profile_path = self.session.end_profiling()
        self.session = None
