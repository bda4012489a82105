"""Runner over a serialized TensorRT engine (TensorRT 8.5 to 11, TensorRT-RTX; name-based tensor API).

Loading checks the engine's sidecar first (checksum, TensorRT version, compute capability), so a
corrupt or foreign engine is a one-line "rebuild on the device" error. Device buffers come from
pycuda, or from cuda-python when pycuda is absent; inference runs `execute_async_v3` on a stream
and can replay a captured CUDA graph (cuda-python only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from toolchain.artifacts.sidecar import check_engine_compatible, read_sidecar, verify_engine_file
from toolchain.artifacts.trt_compat import detect_gpu, flavour_of, import_tensorrt
from toolchain.errors import MissingDependency, ToolchainError
from toolchain.runtime.base import Runner, Shape


class _CudaPython:
    """Device memory and streams through cuda-python (`cuda.bindings.runtime` or the older `cuda.cudart`)."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
            except ImportError:
                raise MissingDependency("cuda-python", "TensorRT inference without pycuda") from None
        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ToolchainError(f"CUDA call failed: {err}")
        return values[0] if len(values) == 1 else (values or None)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> Any:
        return self._ok(self.rt.cudaMalloc(max(int(nbytes), 1)))

    def pointer(self, alloc: Any) -> int:
        return int(alloc)

    def free(self, alloc: Any) -> None:
        self._ok(self.rt.cudaFree(alloc))

    def htod(self, alloc: Any, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(alloc, host.ctypes.data, host.nbytes, kind, self.stream))

    def dtoh(self, host: np.ndarray, alloc: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(host.ctypes.data, alloc, host.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def capture(self, enqueue) -> Any:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self._ok(self.rt.cudaStreamBeginCapture(self.stream, mode))
        enqueue()
        graph = self._ok(self.rt.cudaStreamEndCapture(self.stream))
        return self._ok(self.rt.cudaGraphInstantiate(graph, 0))

    def launch(self, graph_exec: Any) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph_exec, self.stream))

    def close(self) -> None:
        self._ok(self.rt.cudaStreamDestroy(self.stream))


class _Pycuda:
    """Device memory and streams through pycuda (no CUDA graph support)."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self) -> None:
        try:
            import pycuda.autoinit  # noqa: F401  (creates the context)
            import pycuda.driver as cuda
        except ImportError:
            raise MissingDependency("pycuda", "TensorRT inference") from None
        self.cuda = cuda
        self.stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def malloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(int(nbytes), 1))

    def pointer(self, alloc: Any) -> int:
        return int(alloc)

    def free(self, alloc: Any) -> None:
        alloc.free()

    def htod(self, alloc: Any, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(alloc, host, self.stream)

    def dtoh(self, host: np.ndarray, alloc: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, alloc, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream = None


def cuda_memory_backend(need_graphs: bool = False):
    """pycuda when installed (and graphs are not needed), else cuda-python."""
    if not need_graphs:
        try:
            return _Pycuda()
        except MissingDependency:
            pass
    return _CudaPython()


class TrtRunner(Runner):
    """`TrtRunner("model.engine")`: the sidecar `model.engine.json` must sit next to it."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, *, cuda_graph: bool = False) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.cuda_graph = cuda_graph
        self.sidecar: dict = {}
        self.warnings: list[str] = []
        self._trt = self._engine = self._context = self._cuda = None
        self._io: dict[str, dict] = {}
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._graph = None
        self._graph_shapes: Optional[dict] = None

    # -- load ----------------------------------------------------------------------------------
    def _load(self) -> None:
        self.sidecar = read_sidecar(self.engine_path)
        verify_engine_file(self.engine_path, self.sidecar)
        trt = import_tensorrt("running a TensorRT engine")
        self.warnings = check_engine_compatible(self.sidecar, trt.__version__, detect_gpu(), flavour_of(trt))
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if self.sidecar.get("dla_core") is not None:
            runtime.DLA_core = int(self.sidecar["dla_core"])
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise ToolchainError(f"TensorRT could not deserialize {self.engine_path} (corrupt, or built by another "
                                 "TensorRT version): rebuild it on this device")
        self._trt, self._runtime, self._engine = trt, runtime, engine
        self._context = engine.create_execution_context()
        self._io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._io[name] = {
                "input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                "shape": tuple(engine.get_tensor_shape(name)),
                "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
            }
        self._cuda = cuda_memory_backend(need_graphs=self.cuda_graph)

    # -- interface -----------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [n for n, io in self._io.items() if io["input"]]

    @property
    def output_names(self) -> list[str]:
        return [n for n, io in self._io.items() if not io["input"]]

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {n: tuple(d if d >= 0 else None for d in io["shape"]) for n, io in self._io.items() if io["input"]}

    def _buffer(self, name: str, nbytes: int) -> int:
        alloc, size = self._buffers.get(name, (None, 0))
        if size < nbytes:
            if alloc is not None:
                self._cuda.free(alloc)
            alloc = self._cuda.malloc(nbytes)
            self._buffers[name] = (alloc, nbytes)
            self._graph = None  # addresses changed
        return self._cuda.pointer(self._buffers[name][0])

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx, cuda = self._context, self._cuda
        shapes = {}
        for name in self.input_names:
            host = np.ascontiguousarray(feed[name], dtype=self._io[name]["dtype"])
            shapes[name] = host.shape
            ctx.set_input_shape(name, host.shape)
            ctx.set_tensor_address(name, self._buffer(name, host.nbytes))
            cuda.htod(self._buffers[name][0], host)
        outputs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self._io[name]["dtype"])
            ctx.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        self._enqueue(shapes)
        for name, host in outputs.items():
            cuda.dtoh(host, self._buffers[name][0])
        cuda.synchronize()
        return outputs

    def _enqueue(self, shapes: dict) -> None:
        run = lambda: self._context.execute_async_v3(self._cuda.stream_handle)  # noqa: E731
        if not self.cuda_graph:
            if not run():
                raise ToolchainError(f"TensorRT execution failed for input shapes {shapes}")
            return
        if self._graph is None or self._graph_shapes != shapes:
            run()  # TensorRT needs one enqueue with the new shapes before capture
            self._cuda.synchronize()
            self._graph = self._cuda.capture(run)
            self._graph_shapes = shapes
        self._cuda.launch(self._graph)

    def _close(self) -> None:
        if self._cuda is not None:
            for alloc, _ in self._buffers.values():
                self._cuda.free(alloc)
            self._cuda.close()
        self._buffers, self._graph = {}, None
        self._context = self._engine = self._cuda = None
