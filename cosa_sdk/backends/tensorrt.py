"""TensorRT 10 backend: a serialized engine run through the name-based tensor API.

Device buffers come from torch when it has CUDA, else from cuda-python (`cuda.bindings.runtime`).
Engines are specific to a GPU model and TensorRT version; the bundle keeps ONNX as the portable
artifact. One execution context serves all threads under a lock (contexts are not thread-safe).
Every output tensor of the engine gets a device buffer (TensorRT needs an address for each before it
runs); `logits` come back from `run`, and `class_scores` too from `run_with_scores` when the engine has them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.backends.base import Backend
from cosa_sdk.errors import CosaModelError


def _cudart() -> Any | None:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            return None
    return cudart


def gpu_count() -> int:
    """Visible CUDA devices, asked of cuda-python (no torch import) or else torch."""
    cudart = _cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        return int(count or 0) if err == cudart.cudaError_t.cudaSuccess else 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (None when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'TensorRT is not installed (pip install "cosa-sdk[trt]")'
    if gpu_count() == 0:
        return "no CUDA GPU is visible"
    return None


class _TorchMemory:
    """Device buffers as torch CUDA tensors on a private stream."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def upload(self, array: np.ndarray) -> tuple[Any, int]:
        with self.torch.cuda.stream(self.stream):
            tensor = self.torch.from_numpy(array).to("cuda", non_blocking=False)
        return tensor, int(tensor.data_ptr())

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        torch_dtype = self.torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        with self.torch.cuda.stream(self.stream):
            tensor = self.torch.empty(shape, dtype=torch_dtype, device="cuda")
        return tensor, int(tensor.data_ptr())

    def download(self, handle: Any) -> np.ndarray:
        self.stream.synchronize()
        return handle.cpu().numpy()

    def free(self, handle: Any) -> None:
        del handle


class _CudaPythonMemory:
    """Device buffers from cuda-python's runtime API."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.stream = self._check(cudart.cudaStreamCreate())
        self.stream_handle = int(self.stream)

    def _check(self, result: tuple) -> Any:
        err, *value = result
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise CosaModelError(f"CUDA call failed: {err}")
        return value[0] if value else None

    def upload(self, array: np.ndarray) -> tuple[Any, int]:
        ptr = self._check(self.cudart.cudaMalloc(array.nbytes))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, kind))
        return (ptr, array.shape, array.dtype), int(ptr)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self._check(self.cudart.cudaMalloc(nbytes))
        return (ptr, shape, np.dtype(dtype)), int(ptr)

    def download(self, handle: Any) -> np.ndarray:
        ptr, shape, dtype = handle
        self._check(self.cudart.cudaStreamSynchronize(self.stream))
        host = np.empty(shape, dtype=dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, kind))
        return host

    def free(self, handle: Any) -> None:
        self._check(self.cudart.cudaFree(handle[0]))


def _memory() -> _TorchMemory | _CudaPythonMemory:
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchMemory()
    except ImportError:
        pass
    cudart = _cudart()
    if cudart is None:
        raise CosaModelError(
            "the TensorRT backend needs torch with CUDA or cuda-python to allocate GPU memory: "
            "pip install cuda-python, or use backend='onnxruntime'"
        )
    return _CudaPythonMemory(cudart)


class TensorRTBackend(Backend):
    """A deserialized engine with one optimisation profile (profile 0)."""

    def __init__(
        self,
        path: str | Path,
        *,
        input_name: str = "image",
        output_name: str = "logits",
        scores_name: str | None = "class_scores",
    ) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise CosaModelError(f"the TensorRT backend cannot run here: {reason}; use backend='onnxruntime'")
        import tensorrt as trt

        self.path = Path(path)
        self.name = "tensorrt"
        self.device = "cuda"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CosaModelError(
                f"TensorRT could not load {self.path}: engines only run on the GPU model and TensorRT version "
                "that built them; rebuild it here with `cosa export ... --tensorrt` or use backend='onnxruntime'"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name = input_name if input_name in inputs else inputs[0]
        self.output_name = output_name if output_name in outputs else outputs[0]
        self.scores_name = scores_name if scores_name in outputs and scores_name != self.output_name else None
        self.has_class_scores = self.scores_name is not None
        self.output_names = outputs
        low, _, high = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self._low, self._high = low, high
        self.fixed_batch = low[0] if low[0] == high[0] else None
        self.max_batch = high[0]
        self.fixed_size = (low[2], low[3]) if low[2:] == high[2:] else None
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in outputs}
        self.context = self.engine.create_execution_context()
        self.memory = _memory()
        self._lock = threading.Lock()

    def accepts_size(self, height: int, width: int) -> bool:
        return self._low[2] <= height <= self._high[2] and self._low[3] <= width <= self._high[3]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._execute(batch)[self.output_name]

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._execute(batch)
        return outputs[self.output_name], outputs[self.scores_name] if self.scores_name else None

    def _execute(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output tensor of the engine for one batch, as float32 host arrays."""
        host = np.ascontiguousarray(batch, dtype=self.input_dtype)
        with self._lock:
            if not self.context.set_input_shape(self.input_name, tuple(host.shape)):
                raise CosaModelError(
                    f"the TensorRT engine does not accept a {tuple(host.shape)} batch "
                    f"(its profile covers {self._low} to {self._high}); rebuild it with a wider profile"
                )
            source, source_ptr = self.memory.upload(host)
            targets: dict[str, Any] = {}
            try:
                self.context.set_tensor_address(self.input_name, source_ptr)
                for name in self.output_names:
                    shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                    targets[name], pointer = self.memory.empty(shape, self.output_dtypes[name])
                    self.context.set_tensor_address(name, pointer)
                if not self.context.execute_async_v3(self.memory.stream_handle):
                    raise CosaModelError(f"TensorRT failed to run {self.path} on a {tuple(host.shape)} batch")
                results = {name: self.memory.download(target) for name, target in targets.items()}
            finally:
                self.memory.free(source)
                for target in targets.values():
                    self.memory.free(target)
        return {name: array.astype(np.float32, copy=False) for name, array in results.items()}
