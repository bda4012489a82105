"""Runner over a PyTorch module: CPU or CUDA, FP32 or FP16, optional CUDA graph capture."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.runtime.base import Runner, Shape


class TorchRunner(Runner):
    """`TorchRunner(model, input_shape=(1, 3, H, W))`; `infer({"input": x}) -> {"output": y}`.

    `cuda_graph=True` (CUDA only) captures one static-shape CUDA graph at load and replays it; a
    feed with another shape falls back to eager execution.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, input_shape: Shape = (1, 3, 224, 224), *, device: str = "cpu",
                 precision: str = "fp32", cuda_graph: bool = False, input_name: str = "input",
                 output_name: str = "output") -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ToolchainError(f"torch runner precision must be fp32 or fp16 (got {precision})")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ToolchainError(f"torch runner: device '{device}' requested but CUDA is not available; use --device cpu")
        if (precision == "fp16" or cuda_graph) and not device.startswith("cuda"):
            raise ToolchainError("torch runner: fp16 and CUDA graphs need a CUDA device (device='cuda')")
        self.model, self.device, self.precision, self.cuda_graph = model, torch.device(device), precision, cuda_graph
        self._input_shape = tuple(input_shape)
        self._input_name, self._output_name = input_name, output_name
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_in: Optional[torch.Tensor] = None
        self._static_out: Optional[torch.Tensor] = None

    @property
    def input_names(self) -> list[str]:
        return [self._input_name]

    @property
    def output_names(self) -> list[str]:
        return [self._output_name]

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {self._input_name: self._input_shape}

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32

    def _load(self) -> None:
        self.model = self.model.to(self.device).eval()
        if self.precision == "fp16":
            self.model = self.model.half()
        if self.cuda_graph:
            self._capture()

    def _capture(self) -> None:
        self._static_in = torch.zeros(self._input_shape, device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                self.model(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._static_out = self.model(self._static_in)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(feed[self._input_name]))
        with torch.inference_mode():
            if self._graph is not None and tuple(x.shape) == self._input_shape:
                self._static_in.copy_(x.to(self.device, dtype=self.dtype))
                self._graph.replay()
                out = self._static_out
            else:
                out = self.model(x.to(self.device, dtype=self.dtype))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return {self._output_name: out.float().cpu().numpy()}

    def _close(self) -> None:
        self._graph = self._static_in = self._static_out = None
