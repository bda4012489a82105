"""One small Runner interface for every backend (in the spirit of Polygraphy's runners).

    with OrtRunner("model.onnx") as runner:
        outputs = runner.infer({"input": batch})      # dict of named numpy arrays in and out
        runner.last_inference_s                        # wall time of that call (host to host)

Profiling, accuracy checks and the embedding API use runners only, so they work unchanged on
torch, ONNX Runtime and TensorRT.
"""
from __future__ import annotations

import abc
import time
from typing import Callable, Optional, Sequence

import numpy as np

from toolchain.errors import ToolchainError

Shape = tuple  # a shape may hold ints or symbolic names (str) / None for dynamic dimensions


class Runner(abc.ABC):
    """Load once, infer many times on named numpy arrays, close."""

    backend: str = "abstract"

    def __init__(self) -> None:
        self.last_inference_s: Optional[float] = None
        self._loaded = False

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self) -> "Runner":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    # -- inference -----------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise ToolchainError(f"{self.backend} runner used before load(); use `with runner:` or call load()")
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ToolchainError(f"{self.backend} runner: missing input(s) {missing}; the model expects "
                                 f"{self.input_names}")
        start = time.perf_counter()
        outputs = self._infer(feed)
        self.last_inference_s = time.perf_counter() - start
        return outputs

    # -- what subclasses provide ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def input_shapes(self) -> dict[str, Shape]: ...

    @property
    @abc.abstractmethod
    def output_names(self) -> list[str]: ...

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:
        """Release resources; the default has nothing to release."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, loaded={self._loaded})"


def static_batch(shape: Sequence) -> Optional[int]:
    """The fixed batch size of an input shape, or None when the batch dimension is dynamic."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None


def predict_fn(runner: Runner, input_name: Optional[str] = None,
               output_name: Optional[str] = None) -> Callable[[np.ndarray], np.ndarray]:
    """A `callable(NCHW float32 batch) -> output array` over a loaded runner, for `train.evaluate`.

    A model exported with a static batch size is fed in chunks of that size (the last chunk padded
    by repetition and the padding dropped), so any evaluation batch size works.
    """
    runner.load()
    name = input_name or runner.input_names[0]
    out_name = output_name or runner.output_names[0]
    fixed = static_batch(runner.input_shapes[name])

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if fixed is None or batch.shape[0] == fixed:
            return runner.infer({name: batch})[out_name]
        pieces = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start:start + fixed]
            real = chunk.shape[0]
            if real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            pieces.append(runner.infer({name: chunk})[out_name][:real])
        return np.concatenate(pieces)

    return predict
