"""`export_bundle`: checkpoint -> verified model bundle (safetensors, ONNX, optional INT8 ONNX and TensorRT engine)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cosa_sdk.errors import CosaConfigError, CosaModelError
from cosa_sdk.export import tensorrt as trt_logic
from cosa_sdk.export.bundle import (
    ONNX_INT8_NAME,
    ONNX_NAME,
    WEIGHTS_NAME,
    bundle_config,
    jsonable,
    staged_bundle,
    write_config,
    write_weights,
)
from cosa_sdk.export.images import evaluation_images, prepare_batch, sample_images, skimage_photos
from cosa_sdk.export.onnx_export import INPUT_NAME, OUTPUT_NAME, OnnxExport, embed_metadata, export_onnx
from cosa_sdk.export.parity import Comparison, ParityReport, ort_session, verify_parity
from cosa_sdk.export.quantize import INT8_MIN_AGREEMENT, Int8Result, quantize_checked, quantize_int8
from cosa_sdk.export.source import ExportSource, load_source
from cosa_sdk.preprocess import CLASS_THRESHOLD

logger = logging.getLogger(__name__)

TENSORRT_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.98}


@dataclass
class ExportOptions:
    """Everything `cosa export` can be asked; defaults are the CLI's."""

    network: str = "auto"
    input_size: list[int] | None = None
    dynamic: bool | None = None  # None: dynamic when the checkpoint asks for multi-scale TTA (imported official runs)
    opset: int = 17
    exporter: str = "auto"
    int8: bool = False
    calibration: str = "static"
    tensorrt: bool = False
    fp16: bool = False
    data: str | None = None
    skip_parity: bool = False
    force: bool = False
    parity_images: int = 8
    calibration_images: int = 32
    int8_eval_images: int = 16
    int8_min_agreement: float = INT8_MIN_AGREEMENT
    # cosa.json postprocess.drop_absent, the SDK's default for segment(drop_absent=None); None: on when the graph
    # gives class scores (it never cost more than 0.03 mIoU on benchmarks v1-v4 and gave up to +3.3: docs/benchmarks.md,
    # "The SDK's post-processing on every benchmark")
    drop_absent: bool | None = None
    class_threshold: float = CLASS_THRESHOLD
    edge_aware: bool = False  # cosa.json postprocess.edge_aware: the SDK's default for segment(edge_aware=None)


@dataclass
class ExportResult:
    """What was written where, with the numbers the report prints."""

    path: Path
    config: dict[str, Any]
    source: ExportSource
    onnx: OnnxExport
    parity: ParityReport | None = None
    int8: Int8Result | None = None
    sizes: dict[str, int] = field(default_factory=dict)


def export_bundle(checkpoint: str | Path, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export a checkpoint's seg stream to a bundle at `out`; nothing is written unless every check passes."""
    options = options or ExportOptions()
    if options.fp16 and not options.tensorrt:
        raise CosaConfigError("--fp16 sets the precision of a TensorRT engine: add --tensorrt (ONNX stays fp32)")
    if options.calibration not in ("static", "dynamic"):
        raise CosaConfigError(f"--calibration {options.calibration!r}: use static or dynamic")
    if not 0.0 < options.class_threshold < 1.0:
        raise CosaConfigError(f"class_threshold {options.class_threshold} must be a probability between 0 and 1")
    if options.tensorrt:
        trt_logic.require_tensorrt()  # fail before minutes of work, not after
    source = load_source(checkpoint, network=options.network, input_size=options.input_size)
    if options.drop_absent and not source.stream.has_class_scores:
        raise CosaConfigError(
            "--drop-absent needs the classifier's class scores, and this run was trained with --supervision full "
            "without full_class_loss (masks only: its classifier never learned); export it without --drop-absent, "
            "or retrain with full_class_loss=true"
        )
    if options.drop_absent is None:
        options = dataclasses.replace(options, drop_absent=source.stream.has_class_scores)
    dynamic = options.dynamic if options.dynamic is not None else bool(source.tta_scales)
    spec = options.data or source.data_spec
    needs_images = not options.skip_parity or options.int8 or options.tensorrt
    images = sample_images(spec, options.parity_images) if needs_images else None
    metrics: dict[str, Any] = {"training": jsonable(source.record_metrics)} if source.record_metrics else {}
    artifacts = {"torch": WEIGHTS_NAME, "onnx": ONNX_NAME}
    with staged_bundle(out, force=options.force) as stage:
        write_weights(source.stream, stage / WEIGHTS_NAME)
        onnx = export_onnx(
            source.stream,
            stage / ONNX_NAME,
            input_size=source.input_size,
            num_outputs=len(source.classes),
            dynamic=dynamic,
            opset=options.opset,
            exporter=options.exporter,
            class_scores=source.stream.has_class_scores,
        )
        parity = None
        if not options.skip_parity:
            parity = verify_parity(
                source.stream,
                onnx.path,
                images,
                input_size=source.input_size,
                stride=source.stride,
                mean=source.mean,
                std=source.std,
                dynamic=dynamic,
            )
            metrics["parity"] = parity.metrics()
        calibration = None
        if options.int8 and (options.calibration == "static" or options.tensorrt):
            calibration = _normalised(source, spec, options.calibration_images)
        int8 = None
        int8_entries: dict[str, Any] = {}
        if options.int8:
            validation, validation_source = _validation(source, spec, options.int8_eval_images)
            photos = _photos(source, options.int8_eval_images)
            int8 = quantize_checked(
                onnx.path,
                stage / ONNX_INT8_NAME,
                validation,
                photos=photos,
                mode=options.calibration,
                calibration=calibration,
                min_agreement=options.int8_min_agreement,
            )
            artifacts[int8.artifact] = int8.path.name  # ONNX_INT8_NAME, or ONNX_INT8_VNNI_NAME for 8-bit weights
            metrics["int8"] = int8.metrics() | {
                "evaluation": {
                    "validation": {"images": len(validation), "source": validation_source},
                    "photos": {"images": len(photos), "source": "scikit-image photographs"},
                }
            }
            int8_entries[int8.artifact] = int8.bundle_entry(options.int8_min_agreement)
        if options.tensorrt:
            precision = trt_logic.engine_precision(fp16=options.fp16, int8=options.int8)
            name = trt_logic.engine_filename(precision)
            evaluation = prepare_batch(images.images, source.input_size, source.mean, source.std)
            metrics["tensorrt"] = _tensorrt(source, onnx, evaluation, calibration, stage / name, precision)
            artifacts["tensorrt"] = name
        config = bundle_config(
            source,
            artifacts=artifacts,
            onnx=onnx.info(),
            metrics=metrics,
            int8=int8_entries,
            postprocess=postprocess_entry(options),
        )
        for key, name in artifacts.items():
            if key.startswith("onnx"):
                embed_metadata(stage / name, config, artifact=key)
        write_config(stage, config)
        sizes = {key: (stage / name).stat().st_size for key, name in artifacts.items()}
    return ExportResult(
        path=Path(out).expanduser().absolute(),
        config=config,
        source=source,
        onnx=onnx,
        parity=parity,
        int8=int8,
        sizes=sizes,
    )


def postprocess_entry(options: ExportOptions) -> dict[str, Any]:
    """cosa.json "postprocess": whether the SDK, by default, drops the classes the classifier calls absent and
    snaps the upsampled class maps to the image's edges."""
    return {
        "drop_absent": bool(options.drop_absent),
        "class_threshold": float(options.class_threshold),
        "edge_aware": bool(options.edge_aware),
    }


def _normalised(source: ExportSource, spec: str | None, count: int) -> np.ndarray:
    """`count` real-looking images (training data when reachable) at the bundle's input size, normalised."""
    images = sample_images(spec, count)
    logger.info("using %d images from %s", len(images.images), images.source)
    return prepare_batch(images.images, source.input_size, source.mean, source.std)


def _validation(source: ExportSource, spec: str | None, count: int) -> tuple[np.ndarray, str]:
    """The INT8 gate's validation images (the dataset's evaluation split when readable), normalised."""
    images = evaluation_images(spec, count)
    logger.info("INT8 agreement: %d validation images from %s", len(images.images), images.source)
    return prepare_batch(images.images, source.input_size, source.mean, source.std), images.source


def _photos(source: ExportSource, count: int) -> np.ndarray:
    """The INT8 gate's photographs: scikit-image's sample photos, unlike any training set, normalised."""
    photos = skimage_photos(count)
    if not photos:
        raise CosaModelError(
            "the INT8 agreement check needs the scikit-image sample photographs: pip install scikit-image "
            "(or drop --int8)"
        )
    return prepare_batch(photos, source.input_size, source.mean, source.std)


def _tensorrt(
    source: ExportSource,
    exported: OnnxExport,
    evaluation: np.ndarray,
    calibration: np.ndarray | None,
    engine: Path,
    precision: str,
) -> dict[str, Any]:
    """Build the engine (from a symmetric QDQ graph for int8) and check its masks against ONNX Runtime fp32."""
    import onnx

    graph_path = exported.path
    if precision == "int8":
        graph_path = engine.with_name(".tensorrt-qdq.onnx")
        quantize_int8(
            exported.path, graph_path, mode="static", calibration=calibration, reduce_range=False, symmetric=True
        )
    model = onnx.load_model(str(graph_path), load_external_data=False)
    info = trt_logic.build_engine(
        graph_path,
        engine,
        precision=precision,
        profile=trt_logic.profile_shapes(model, input_size=source.input_size, stride=source.stride),
        pinned=trt_logic.fp32_pinned_nodes(model),
    )
    if graph_path != exported.path:
        os.remove(graph_path)
    info["argmax_agreement"] = _engine_agreement(engine, exported.path, evaluation)
    if info["argmax_agreement"] < TENSORRT_MIN_AGREEMENT[precision]:
        raise CosaModelError(
            f"the {precision} TensorRT engine agrees with fp32 ONNX on only {100 * info['argmax_agreement']:.2f} % "
            "of pixels; nothing was written. Try --fp16 without --int8, or plain fp32"
        )
    return info


def _engine_agreement(engine: Path, onnx_path: Path, evaluation: np.ndarray) -> float:
    """Argmax agreement of the engine (run by the SDK's TensorRT backend) with ONNX Runtime fp32."""
    from cosa_sdk.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(engine, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    reference = ort_session(onnx_path)
    comparison = Comparison()
    for start in range(len(evaluation)):
        one = evaluation[start : start + 1]
        comparison.add(reference.run(None, {INPUT_NAME: one})[0], np.asarray(backend.run(one), dtype=np.float32))
    backend.close()
    return comparison.agreement
