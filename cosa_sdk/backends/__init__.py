"""Inference backends (ONNX Runtime, TensorRT, torch) and the choice between them.

`backend="auto"` takes the fastest that can run here: TensorRT when the bundle has an engine, the
`tensorrt` package imports and a GPU is visible; else ONNX Runtime fp32 on CUDA when the session really
gets the CUDA provider; else, on a CPU, the INT8 model when one passed its agreement gate (on validation
images and photographs) and its weights are safe on this CPU; else ONNX Runtime fp32; else torch.
Each skipped option leaves a note saying why.

INT8 artifacts (`choose_int8`): `onnx_int8` has 7-bit weights, safe on every CPU; `onnx_int8_vnni` has
8-bit weights, used only on CPUs with VNNI (see `cosa_sdk.cpu`: elsewhere ONNX Runtime's u8 x s8 kernels
saturate). A bundle whose only INT8 model needs VNNI runs fp32 on other CPUs (auto) or is refused
(backend="onnxruntime-int8"); it is never run saturated.

The registry: `REGISTRY` maps each backend name to a `BackendEntry`: its opener, the bundle artifacts it
runs, the export command that creates them (named in "no such artifact" errors) and its place in `auto`
(`auto_rank`: lowest tried first; None: only when asked by name). The `auto` order is
tensorrt (10) -> onnxruntime-int8 (20) -> onnxruntime (30) -> torch (40); the onnxruntime-int8 step first
tries ONNX Runtime fp32 on CUDA when CUDA is asked for, which is how CUDA comes before INT8 on the CPU.
The names accepted by `check_backend_name` (`BACKENDS`) are "auto" and the registry's keys, in registry
order. A new backend is one module here (a `base.Backend` subclass) and one entry in `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosa_sdk import cpu as cpu_features
from cosa_sdk.errors import CosaInputError, CosaModelError

if TYPE_CHECKING:
    from cosa_sdk.backends.base import Backend
    from cosa_sdk.backends.onnxruntime import OnnxRuntimeBackend
    from cosa_sdk.bundle import Bundle, Int8Variant

INT8_ARTIFACTS = ("onnx_int8_vnni", "onnx_int8")  # preference order where both can run
ARTIFACT_KEY = "cosa.artifact"  # ONNX metadata: which bundle artifact a lone .onnx file is
EXPORT = "cosa export RUN_DIR/best.pt --out BUNDLE"  # how a bundle is written (export hints start with it)


@dataclass(frozen=True)
class BackendOptions:
    """What `cosa_sdk.load` passes every opener: ONNX Runtime execution providers and intra-op threads
    (None: the defaults); backends with no use for them ignore them."""

    providers: Sequence[str] | None = None
    threads: int | None = None


@dataclass(frozen=True)
class BackendEntry:
    """One inference backend of `REGISTRY`.

    open: `open(bundle, options) -> Backend`; raises CosaModelError when it cannot run (`bundle.artifact(key)`
        raises one naming `export_hint` when the artifact is absent). Import the backend's module (and its
        runtime) inside it, so that `import cosa_sdk` stays light.
    artifacts: the bundle artifacts (keys of cosa.json "artifacts") it runs; `auto` passes over it, without a
        note, when the bundle lists none of them.
    export_hint: the command that creates those artifacts, named when one is absent.
    auto_rank: its place in `auto`, lowest tried first (see the order in the module docstring); None: it is
        used only when asked for by name.
    unavailable: `unavailable() -> str | None`, why it cannot run on this machine (None: it can); `auto` notes
        the reason and moves on without opening it.
    auto_step: `auto_step(bundle, notes, options) -> Backend | None`, replacing `auto`'s usual step (artifact
        file present -> `unavailable` -> `open`, one note per option skipped) for a backend that decides more.
    """

    open: Callable[[Bundle, BackendOptions], Backend]
    artifacts: tuple[str, ...]
    export_hint: str
    auto_rank: int | None = None
    unavailable: Callable[[], str | None] | None = None
    auto_step: Callable[[Bundle, list[str], BackendOptions], Backend | None] | None = None


@dataclass(frozen=True)
class Int8Choice:
    """The INT8 artifact to run on this CPU (None: none can) and the reason, for notes and `seg.info()`."""

    key: str | None
    reason: str
    variant: Int8Variant | None = None
    cpu: cpu_features.CpuInfo | None = None

    def describe(self, file: str) -> dict[str, Any]:
        variant = self.variant
        return {
            "artifact": self.key,
            "file": file,
            "weight_bits": variant.weight_bits if variant else None,
            "needs_vnni": variant.needs_vnni if variant else None,
            "agreement": dict(variant.agreement) if variant else {},
            "gated": variant.gated if variant else False,
            "cpu": self.cpu.as_dict() if self.cpu else None,
            "exact_kernels": cpu_features.exact_kernels_needed(variant.weight_bits if variant else None),
            "reason": self.reason,
        }


def _weights(variant: Int8Variant, file: str) -> str:
    if variant.weight_bits is None:
        return f"{file} (weight width not recorded: exported by an older cosa-sdk)"
    return f"{file} ({variant.weight_bits}-bit weights)"


def choose_int8(bundle: Bundle, cpu: cpu_features.CpuInfo | None = None, *, gated_only: bool = False) -> Int8Choice:
    """Which INT8 artifact of `bundle` to run on `cpu` (default: `cosa_sdk.cpu.current()`), and why.

    8-bit weights are never chosen on a CPU without VNNI. `gated_only` (what `auto` asks): only artifacts that
    passed the export's agreement gate on validation images and photographs.
    """
    cpu = cpu or cpu_features.current()
    present = [key for key in INT8_ARTIFACTS if key in bundle.artifacts]
    if not present:
        return Int8Choice(None, "the bundle has no INT8 model (export it with --int8)", cpu=cpu)
    refused: list[str] = []
    for key in present:
        variant, file = bundle.int8_variant(key), bundle.artifacts[key]
        if not bundle.has(key):
            refused.append(f"{file} is missing from the bundle")
        elif variant.needs_vnni and not cpu.vnni:
            refused.append(
                f"{file} has 8-bit weights, which need a CPU with VNNI ({' / '.join(cpu_features.VNNI_FLAGS)}); "
                f"this CPU has {cpu.describe()}, where ONNX Runtime's u8 x s8 kernels would saturate"
            )
        elif gated_only and not variant.gated:
            refused.append(
                f"{file} has no recorded agreement gate on validation images and photographs (re-export it with "
                "this cosa-sdk); it is used only when asked for (backend='onnxruntime-int8')"
                if variant.min_agreement is None
                else f"{file} did not pass its agreement gate"
            )
        else:
            why = "safe on every CPU" if variant.needs_vnni is False else f"this CPU has {cpu.describe()}"
            if variant.needs_vnni is None:
                why = "no metadata to check against this CPU"
            gate = variant.gate_agreement
            agreed = f", {100 * gate:.2f} % agreement with fp32" if gate is not None else ""
            skipped = f" (not {'; '.join(refused)})" if refused else ""
            return Int8Choice(key, f"{_weights(variant, file)}: {why}{agreed}{skipped}", variant, cpu)
    return Int8Choice(None, "; ".join(refused), cpu=cpu)


def lone_onnx_artifact(metadata: dict[str, str], filename: str) -> str | None:
    """Which bundle artifact a lone .onnx file is: its "cosa.artifact" metadata, else its name in cosa.json."""
    import json

    if metadata.get(ARTIFACT_KEY):
        return metadata[ARTIFACT_KEY]
    try:
        artifacts = json.loads(metadata.get("cosa.json", "{}")).get("artifacts") or {}
    except (ValueError, AttributeError):
        return None
    return next((str(k) for k, v in artifacts.items() if v == filename), None) if isinstance(artifacts, dict) else None


def open_lone_onnx(
    path: Path, name: str, *, providers: Sequence[str] | None, threads: int | None
) -> tuple[OnnxRuntimeBackend, Bundle]:
    """A lone cosa-sdk .onnx file on ONNX Runtime, with its bundle from the metadata.

    An INT8 file follows the same CPU rule as in a bundle: 8-bit weights are refused on a CPU without VNNI,
    whatever backend was asked for.
    """
    import dataclasses

    from cosa_sdk.backends.onnxruntime import CPU, OnnxRuntimeBackend
    from cosa_sdk.bundle import bundle_from_onnx_metadata

    int8 = name == "onnxruntime-int8"
    runner = OnnxRuntimeBackend(
        path,
        name="onnxruntime-int8" if int8 else "onnxruntime",
        providers=[CPU] if int8 else providers,
        threads=threads,
    )
    metadata = runner.metadata
    bundle = bundle_from_onnx_metadata(metadata, path)
    key = lone_onnx_artifact(metadata, path.name)
    if key not in INT8_ARTIFACTS:
        return runner, bundle
    choice = choose_int8(dataclasses.replace(bundle, artifacts={key: path.name}))
    runner.close()
    if choice.key is None:
        raise CosaModelError(f"{path} cannot run on this CPU: {choice.reason}")
    return _open_int8(dataclasses.replace(bundle, artifacts={key: path.name}), choice, threads=threads), bundle


def _open_int8(bundle: Bundle, choice: Int8Choice, *, threads: int | None) -> OnnxRuntimeBackend:
    from cosa_sdk.backends.onnxruntime import CPU, OnnxRuntimeBackend

    assert choice.key is not None and choice.variant is not None
    return OnnxRuntimeBackend(
        bundle.artifact(choice.key),
        name="onnxruntime-int8",
        input_name=bundle.onnx.input,
        output_name=bundle.onnx.output,
        scores_name=bundle.onnx.class_scores,
        # quantised graphs are a CPU format; the CUDA provider would fall back op by op
        providers=[CPU],
        threads=threads,
        exact_int8=cpu_features.exact_kernels_needed(choice.variant.weight_bits),
        int8=choice.describe(bundle.artifacts[choice.key]),
    )


def _cuda_requested(providers: Sequence[str] | None) -> bool:
    from cosa_sdk.backends.onnxruntime import CUDA, default_providers

    return CUDA in list(providers or default_providers())


def _int8_on_cpu(bundle: Bundle, notes: list[str], options: BackendOptions) -> Backend | None:
    """`auto`'s INT8 step: the gated INT8 model for this CPU, unless the fp32 model really runs on CUDA."""
    choice = choose_int8(bundle, gated_only=True)
    if choice.key is None:
        notes.append(f"onnxruntime-int8: {choice.reason}")
        return None
    if bundle.has("onnx") and _cuda_requested(options.providers):
        try:
            fp32 = REGISTRY["onnxruntime"].open(bundle, options)
        except CosaModelError as err:
            notes.append(f"onnxruntime: {err}")
        else:
            if fp32.device == "cuda":
                notes.append("onnxruntime-int8: not used: the fp32 model runs on CUDA")
                return fp32
            fp32.close()
    try:
        return _open_int8(bundle, choice, threads=options.threads)
    except CosaModelError as err:
        notes.append(f"onnxruntime-int8: {err}")
        return None


def _open_onnxruntime(bundle: Bundle, options: BackendOptions) -> Backend:
    from cosa_sdk.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        bundle.artifact("onnx"),
        name="onnxruntime",
        input_name=bundle.onnx.input,
        output_name=bundle.onnx.output,
        scores_name=bundle.onnx.class_scores,
        providers=options.providers,
        threads=options.threads,
    )


def _open_onnxruntime_int8(bundle: Bundle, options: BackendOptions) -> Backend:
    choice = choose_int8(bundle)
    if choice.key is None:
        if not any(key in bundle.artifacts for key in INT8_ARTIFACTS):
            bundle.artifact("onnx_int8")  # raises, naming the export command
        raise CosaModelError(f"no INT8 model of {bundle.source} can run on this CPU: {choice.reason}")
    return _open_int8(bundle, choice, threads=options.threads)


def _open_tensorrt(bundle: Bundle, options: BackendOptions) -> Backend:
    from cosa_sdk.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(
        bundle.artifact("tensorrt"),
        input_name=bundle.onnx.input,
        output_name=bundle.onnx.output,
        scores_name=bundle.onnx.class_scores,
    )


def _tensorrt_unavailable() -> str | None:
    from cosa_sdk.backends import tensorrt

    return tensorrt.unavailable_reason()


# The torch backend rebuilds the training network, so it lives in the training package; named by path here
# so the SDK never imports training code (tests/test_layers.py).
TORCH_BACKEND = "cosa_sdk.training.model.sdk_backend:TorchBackend"


def _open_torch(bundle: Bundle, options: BackendOptions) -> Backend:
    import importlib

    module_name, class_name = TORCH_BACKEND.split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(bundle.artifact("torch"), bundle.config.get("model_config"))


# name -> entry, in the order error messages and `--backend` help list them; `auto_rank` orders `auto`.
REGISTRY: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry(
        open=_open_onnxruntime,
        artifacts=("onnx",),
        export_hint=EXPORT,
        auto_rank=30,
    ),
    "onnxruntime-int8": BackendEntry(
        open=_open_onnxruntime_int8,
        artifacts=INT8_ARTIFACTS,
        export_hint=f"{EXPORT} --int8",
        auto_rank=20,  # on a CPU only: its step returns ONNX Runtime fp32 when that runs on CUDA
        auto_step=_int8_on_cpu,
    ),
    "tensorrt": BackendEntry(
        open=_open_tensorrt,
        artifacts=("tensorrt",),
        export_hint=f"{EXPORT} --tensorrt --fp16 (on the GPU that will run it)",
        auto_rank=10,
        unavailable=_tensorrt_unavailable,
    ),
    "torch": BackendEntry(
        open=_open_torch,
        artifacts=("torch",),
        export_hint=EXPORT,
        auto_rank=40,
    ),
}


def backend_names() -> tuple[str, ...]:
    """The names `check_backend_name` accepts: "auto", then the registry's, in registry order."""
    return ("auto", *REGISTRY)


def __getattr__(name: str) -> Any:
    """`BACKENDS`: `backend_names()`, read from the registry each time."""
    if name == "BACKENDS":
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def auto_order() -> tuple[str, ...]:
    """The backends `auto` tries, first to last: the registry's entries by `auto_rank` (None: never)."""
    ranked = [(name, entry.auto_rank) for name, entry in REGISTRY.items() if entry.auto_rank is not None]
    return tuple(name for name, _ in sorted(ranked, key=lambda item: item[1]))


def export_hint(artifact: str) -> str:
    """The command that creates the bundle artifact `artifact` (from the backend that runs it)."""
    return next((entry.export_hint for entry in REGISTRY.values() if artifact in entry.artifacts), "cosa export")


def check_backend_name(name: str) -> str:
    """Normalise a backend name; CosaInputError listing the choices for anything else."""
    normalised = str(name).strip().lower().replace("_", "-")
    if normalised != "auto" and normalised not in REGISTRY:
        raise CosaInputError(f"unknown backend {name!r}: choose one of {', '.join(backend_names())}")
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
    options = BackendOptions(providers=providers, threads=threads)
    if name == "auto":
        return _auto(bundle, options)
    return REGISTRY[name].open(bundle, options), []


def _auto_step(
    name: str, entry: BackendEntry, bundle: Bundle, notes: list[str], options: BackendOptions
) -> Backend | None:
    """`auto`'s usual step for one backend whose artifacts the bundle lists: None (with a note) when it cannot run."""
    listed = [key for key in entry.artifacts if key in bundle.artifacts]
    if not any(bundle.has(key) for key in listed):
        notes.append(f"{name}: {bundle.artifacts[listed[0]]} is missing from the bundle")
        return None
    if entry.unavailable is not None and (reason := entry.unavailable()) is not None:
        notes.append(f"{name}: {reason}")
        return None
    try:
        return entry.open(bundle, options)
    except CosaModelError as err:
        notes.append(f"{name}: {err}")
        return None


def _auto(bundle: Bundle, options: BackendOptions) -> tuple[Backend, list[str]]:
    """The first backend of `auto_order()` that runs the bundle here, and a note for each one skipped."""
    notes: list[str] = []
    for name in auto_order():
        entry = REGISTRY[name]
        if not any(key in bundle.artifacts for key in entry.artifacts):
            continue
        if entry.auto_step is not None:
            backend = entry.auto_step(bundle, notes, options)
        else:
            backend = _auto_step(name, entry, bundle, notes, options)
        if backend is not None:
            return backend, notes
    raise CosaModelError(f"no backend can run the bundle {bundle.source}: " + "; ".join(notes or ["no artifacts"]))
