"""Inference backends (ONNX Runtime, TensorRT, torch) and the choice between them.

`backend="auto"` takes the fastest that can run here: TensorRT when the bundle has an engine, the
`tensorrt` package imports and a GPU is visible; else ONNX Runtime fp32 (CUDA when the session
really got the CUDA provider, CPU otherwise); else the torch backend. INT8 is used only when asked
for ("onnxruntime-int8"). Each skipped option leaves a note saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cosa_sdk.errors import CosaInputError, CosaModelError

if TYPE_CHECKING:
    from cosa_sdk.backends.base import Backend
    from cosa_sdk.bundle import Bundle

BACKENDS = ("auto", "onnxruntime", "onnxruntime-int8", "tensorrt", "torch")


def check_backend_name(name: str) -> str:
    """Normalise a backend name; CosaInputError listing the choices for anything else."""
    normalised = str(name).strip().lower().replace("_", "-")
    if normalised not in BACKENDS:
        raise CosaInputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return normalised


def open_backend(
    bundle: Bundle,
    name: str = "auto",
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> tuple[Backend, list[str]]:
    """The backend for `name` and the notes on options `auto` skipped."""
    name = check_backend_name(name)
    if name == "auto":
        return _auto(bundle, providers=providers, threads=threads)
    return _open(bundle, name, providers=providers, threads=threads), []


def _open(bundle: Bundle, name: str, *, providers: Sequence[str] | None, threads: int | None) -> Backend:
    if name == "tensorrt":
        from cosa_sdk.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(
            bundle.artifact("tensorrt"), input_name=bundle.onnx.input, output_name=bundle.onnx.output
        )
    if name == "torch":
        from cosa_sdk.backends.torch import TorchBackend

        return TorchBackend(bundle.artifact("torch"), bundle.config.get("model_config"))
    from cosa_sdk.backends.onnxruntime import CPU, OnnxRuntimeBackend

    int8 = name == "onnxruntime-int8"
    return OnnxRuntimeBackend(
        bundle.artifact("onnx_int8" if int8 else "onnx"),
        name=name,
        input_name=bundle.onnx.input,
        output_name=bundle.onnx.output,
        # quantised graphs are a CPU format; the CUDA provider would fall back op by op
        providers=[CPU] if int8 else providers,
        threads=threads,
    )


def _auto(bundle: Bundle, *, providers: Sequence[str] | None, threads: int | None) -> tuple[Backend, list[str]]:
    from cosa_sdk.backends import tensorrt

    notes: list[str] = []
    for name, artifact in (("tensorrt", "tensorrt"), ("onnxruntime", "onnx"), ("torch", "torch")):
        if artifact not in bundle.artifacts:
            continue
        if not bundle.has(artifact):
            notes.append(f"{name}: {bundle.artifacts[artifact]} is missing from the bundle")
            continue
        if name == "tensorrt" and (reason := tensorrt.unavailable_reason()) is not None:
            notes.append(f"tensorrt: {reason}")
            continue
        try:
            return _open(bundle, name, providers=providers, threads=threads), notes
        except CosaModelError as err:
            notes.append(f"{name}: {err}")
    if bundle.has("onnx_int8"):
        notes.append("onnxruntime-int8: present but only used when asked for (backend='onnxruntime-int8')")
    raise CosaModelError(f"no backend can run the bundle {bundle.source}: " + "; ".join(notes or ["no artifacts"]))
