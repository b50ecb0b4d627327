"""ONNX Runtime backend: CUDA when the session really got it, else CPU (fp32 or the INT8 model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.backends.base import Backend
from cosa_sdk.cpu import EXACT_KERNELS_OPTION
from cosa_sdk.errors import CosaModelError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise CosaModelError(
            'ONNX Runtime is not installed: pip install "cosa-sdk[cpu]" (or "cosa-sdk[gpu]" for CUDA)'
        ) from err
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it, CPU always as the fallback."""
    available = _ort().get_available_providers()
    return [CUDA, CPU] if CUDA in available else [CPU]


def create_session(
    path: str | Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    exact_int8: bool = False,
) -> Any:
    """An InferenceSession with full graph optimisation; load failures become CosaModelError.

    exact_int8: run int8 products on ONNX Runtime's u8 x u8 kernels, which never saturate (slower; only
    acts on x64 CPUs without VNNI, see `cosa_sdk.cpu`).
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    if exact_int8:
        options.add_session_config_entry(EXACT_KERNELS_OPTION, "1")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or default_providers()))
    except Exception as err:  # ORT raises its own pybind exception types
        raise CosaModelError(
            f"ONNX Runtime cannot load {path}: {str(err).strip()[:300]}; the file is damaged or was not written "
            "by `cosa export` (re-export it)"
        ) from err


def _pick(items: Sequence[Any], wanted: str, what: str, path: Path) -> Any:
    for item in items:
        if item.name == wanted:
            return item
    if len(items) == 1:
        return items[0]
    names = [item.name for item in items]
    raise CosaModelError(f"{path} has no {what} named {wanted!r} (it has {names}); fix the 'onnx' key in cosa.json")


class OnnxRuntimeBackend(Backend):
    """One InferenceSession; `run` is thread-safe because ONNX Runtime sessions are."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "onnxruntime",
        input_name: str = "image",
        output_name: str = "logits",
        scores_name: str | None = "class_scores",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        exact_int8: bool = False,
        int8: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.int8 = int8  # which INT8 artifact was chosen and why (see `cosa_sdk.backends.choose_int8`)
        exact = {"exact_int8": True} if exact_int8 else {}  # only when needed: fp32 sessions are made as before
        self.session = create_session(self.path, providers=providers, threads=threads, **exact)
        self.providers = list(self.session.get_providers())
        self.device = "cuda" if CUDA in self.providers else "cpu"
        graph_input = _pick(self.session.get_inputs(), input_name, "input", self.path)
        graph_output = _pick(self.session.get_outputs(), output_name, "output", self.path)
        self.input_name, self.output_name = graph_input.name, graph_output.name
        self.input_dtype = ORT_DTYPES.get(graph_input.type)
        shape = list(graph_input.shape)
        bad_channels = len(shape) == 4 and isinstance(shape[1], int) and shape[1] != 3
        if self.input_dtype is None or len(shape) != 4 or bad_channels:
            raise CosaModelError(
                f"{self.path} takes {graph_input.type} {shape}; a cosa model takes float images N x 3 x H x W "
                "(re-export it with `cosa export`)"
            )
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        spatial = shape[2:]
        self.fixed_size = (spatial[0], spatial[1]) if all(isinstance(s, int) for s in spatial) else None
        out_shape = list(graph_output.shape)
        self.num_outputs = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
        names = [o.name for o in self.session.get_outputs()]
        self.scores_name = scores_name if scores_name in names and scores_name != self.output_name else None
        self.has_class_scores = self.scores_name is not None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self._run([self.output_name], batch)
        return logits

    def run_with_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.scores_name is None:
            return self.run(batch), None
        logits, scores = self._run([self.output_name, self.scores_name], batch)
        return logits, scores

    def _run(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: batch.astype(self.input_dtype, copy=False)}
        try:
            outputs = self.session.run(names, feed)
        except Exception as err:  # ORT raises its own pybind exception types
            raise CosaModelError(f"ONNX Runtime failed on a {tuple(batch.shape)} batch: {err}") from err
        return [output.astype(np.float32, copy=False) for output in outputs]

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {**super().describe(), "providers": self.providers, "path": str(self.path)}
        if self.int8 is not None:
            info["int8"] = self.int8
        return info
