"""`load()` and `Segmenter`: decode, preprocess, run the backend, postprocess to original-size masks.

Calls keep all their state local, so one Segmenter can serve many threads at once (the backends'
`run` is thread-safe). Images always enter the model at the bundle's input size (aspect ratio not
kept, as in the official evaluation); a dynamic graph is only needed for multi-scale TTA.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cosa_sdk.backends import check_backend_name, open_backend, open_lone_onnx
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import Bundle, read_bundle
from cosa_sdk.errors import CosaInputError, CosaModelError
from cosa_sdk.inputs import DEFAULT_MAX_PIXELS, decode_image
from cosa_sdk.preprocess import Normalizer, logits_to_mask, resize_bilinear
from cosa_sdk.result import TIMING_KEYS, SegmentationResult

_UNSET: Any = object()


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise CosaInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_max_pixels(value: Any) -> int | None:
    return None if value is None else _positive_int(value, "max_pixels")


def _is_batch(images: Any) -> bool:
    return isinstance(images, list | tuple) or (isinstance(images, np.ndarray) and images.ndim == 4)


def _label(item: Any, index: int, single: bool) -> str:
    if isinstance(item, str | os.PathLike):
        return str(item)
    return "the image" if single else f"image {index} of the batch"


class Segmenter:
    """A loaded bundle on one backend. Create it with `cosa_sdk.load(bundle, backend=...)`."""

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        *,
        batch_size: int = 8,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        notes: Sequence[str] = (),
    ) -> None:
        self.bundle = bundle
        self._backend = backend
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.max_pixels = _check_max_pixels(max_pixels)
        self.notes = list(notes)
        if backend.num_outputs is not None and backend.num_outputs != bundle.num_classes:
            raise CosaModelError(
                f"the model outputs {backend.num_outputs} classes but cosa.json lists {bundle.num_classes} "
                "classes; the bundle's files do not belong together (re-export it)"
            )
        if backend.fixed_size is not None and backend.fixed_size != bundle.input_size:
            raise CosaModelError(
                f"the model takes {backend.fixed_size[0]}x{backend.fixed_size[1]} images but cosa.json says "
                f"input_size {list(bundle.input_size)}; the bundle's files do not belong together (re-export it)"
            )
        self._normalizer = Normalizer(size=bundle.input_size, mean=bundle.mean, std=bundle.std)
        if backend.num_outputs is None:  # the graph does not state K: one probe run checks it at load
            self._run(np.zeros((1, 3, *bundle.input_size), dtype=np.float32))

    # -- description ------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.bundle.palette)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every image is resized to before the model."""
        return self.bundle.input_size

    @property
    def backend(self) -> str:
        """The backend in use: "onnxruntime", "onnxruntime-int8", "tensorrt" or "torch" (see `device`)."""
        return self._backend.name

    @property
    def device(self) -> str:
        """ "cuda" or "cpu": where the model really runs (ONNX Runtime falls back to CPU silently)."""
        return self._backend.device

    @property
    def dynamic(self) -> bool:
        """True when the model takes other input sizes, which multi-scale TTA needs."""
        return self._backend.fixed_size is None

    def tta_sizes(self) -> list[tuple[int, int]]:
        """Input sizes TTA runs (each with its flip): the bundle's scales, rounded to the patch size.

        A fixed-size graph runs flip-only TTA at the input size.
        """
        height, width = self.input_size
        if not self.dynamic:
            return [(height, width)]
        patch = self.bundle.patch_size
        sizes: list[tuple[int, int]] = []
        for scale in self.bundle.tta_scales:
            size = (max(patch, round(scale * height / patch) * patch), max(patch, round(scale * width / patch) * patch))
            if size not in sizes and self._backend.accepts_size(*size):
                sizes.append(size)
        return sizes or [(height, width)]

    def info(self) -> dict[str, Any]:
        """JSON-able description for logs and the service's /info."""
        return {
            "name": self.bundle.name,
            "classes": self.classes,
            "input_size": list(self.input_size),
            "trained_at": self.bundle.config.get("trained_at"),  # the run's crop and evaluation side
            "backend": self.backend,
            "device": self.device,
            "dynamic": self.dynamic,
            "tta_sizes": [list(s) for s in self.tta_sizes()],
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
            "notes": self.notes,
            "source": str(self.bundle.source),
            **{k: v for k, v in self._backend.describe().items() if k not in ("backend", "device")},
        }

    def __repr__(self) -> str:
        height, width = self.input_size
        return (
            f"Segmenter({self.bundle.name!r}, classes={len(self.classes)}, input_size={height}x{width}, "
            f"backend={self.backend!r}, device={self.device!r})"
        )

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- segmentation -----------------------------------------------------------------------------
    def segment(
        self,
        images: Any,
        *,
        tta: bool = False,
        return_scores: bool = False,
        batch_size: int | None = None,
        max_pixels: int | None = _UNSET,
        keep_image: bool = True,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image (result) or a list/tuple/4-D array of images (list of results).

        Inputs: file path (str or Path), bytes, binary file object, PIL image (any mode) or numpy
        uint8 array (HxWx3 RGB, HxW gray, HxWx4 RGBA with alpha dropped); see `cosa_sdk.inputs`.
        Lists run through the model in chunks of `batch_size`. Masks come at each image's own
        (EXIF-rotated) size: the logits are resized bilinearly to it before the argmax.

        tta: the bundle's `tta_scales` (default `constants.TTA_SCALES`, times the input size), each
        with a horizontal flip; logits resized back to the input size, un-flipped and summed. With a
        fixed-size graph only the flip is added (`seg.dynamic` tells which).
        return_scores: also give `result.scores`, (K, H, W) float32 softmax probabilities.
        keep_image: keep the decoded image in the result (needed by `overlay()`).
        """
        if _is_batch(images):
            return list(
                self.iter_segment(
                    images,
                    tta=tta,
                    return_scores=return_scores,
                    batch_size=batch_size,
                    max_pixels=max_pixels,
                    keep_image=keep_image,
                )
            )
        limit = self.max_pixels if max_pixels is _UNSET else _check_max_pixels(max_pixels)
        labels = [_label(images, 0, single=True)]
        return self._segment_chunk([images], labels, tta, return_scores, limit, keep_image)[0]

    def iter_segment(
        self,
        images: Iterable[Any],
        *,
        tta: bool = False,
        return_scores: bool = False,
        batch_size: int | None = None,
        max_pixels: int | None = _UNSET,
        keep_image: bool = True,
    ) -> Iterator[SegmentationResult]:
        """Like `segment(list)`, but lazily: reads and yields one chunk of `batch_size` images at a time."""
        size = self.batch_size if batch_size is None else _positive_int(batch_size, "batch_size")
        limit = self.max_pixels if max_pixels is _UNSET else _check_max_pixels(max_pixels)
        chunk: list[Any] = []
        labels: list[str] = []
        for index, item in enumerate(images):
            chunk.append(item)
            labels.append(_label(item, index, single=False))
            if len(chunk) == size:
                yield from self._segment_chunk(chunk, labels, tta, return_scores, limit, keep_image)
                chunk, labels = [], []
        if chunk:
            yield from self._segment_chunk(chunk, labels, tta, return_scores, limit, keep_image)

    def _segment_chunk(
        self,
        items: Sequence[Any],
        labels: Sequence[str],
        tta: bool,
        return_scores: bool,
        max_pixels: int | None,
        keep_image: bool,
    ) -> list[SegmentationResult]:
        decoded: list[Image.Image] = []
        inputs: list[np.ndarray] = []
        timings: list[dict[str, float]] = []
        for item, label in zip(items, labels):
            start = time.perf_counter()
            image = decode_image(item, max_pixels=max_pixels, label=label)
            decoded_at = time.perf_counter()
            inputs.append(self._normalizer(image))
            timings.append({"decode": decoded_at - start, "preprocess": time.perf_counter() - decoded_at})
            decoded.append(image)
        start = time.perf_counter()
        logits = self._infer(np.stack(inputs), tta=tta)
        model_share = (time.perf_counter() - start) / len(items)
        results = []
        for i, image in enumerate(decoded):
            start = time.perf_counter()
            mask, scores = logits_to_mask(logits[i], (image.height, image.width), with_scores=return_scores)
            timing = {**timings[i], "model": model_share, "postprocess": time.perf_counter() - start}
            results.append(
                SegmentationResult(
                    mask=mask,
                    classes=self.classes,
                    palette=self.palette,
                    backend=self.backend,
                    timings={k: timing[k] for k in TIMING_KEYS},
                    scores=scores,
                    image=image if keep_image else None,
                )
            )
        return results

    def _infer(self, batch: np.ndarray, *, tta: bool) -> np.ndarray:
        """Logits (N, K, h, w) at the input size, TTA-fused when asked."""
        if not tta:
            return self._run(batch)
        count = batch.shape[0]
        total: np.ndarray | None = None
        for size in self.tta_sizes():
            scaled = batch if size == self.input_size else resize_bilinear(batch, size)
            logits = self._run(np.concatenate([scaled, scaled[..., ::-1]], axis=0))
            fused = logits[:count] + logits[count:, ..., ::-1]
            if size != self.input_size:
                fused = resize_bilinear(fused, self.input_size)
            total = fused if total is None else total + fused
        assert total is not None
        return total

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the backend, splitting or padding the batch to what the model accepts."""
        backend = self._backend
        step = backend.fixed_batch or backend.max_batch or batch.shape[0]
        outputs = []
        for start in range(0, batch.shape[0], step):
            part = batch[start : start + step]
            real = part.shape[0]
            if backend.fixed_batch is not None and real < backend.fixed_batch:
                padding = np.zeros((backend.fixed_batch - real, *part.shape[1:]), dtype=part.dtype)
                part = np.concatenate([part, padding], axis=0)
            logits = backend.run(np.ascontiguousarray(part, dtype=np.float32))
            if logits.ndim != 4 or logits.shape[1] != self.bundle.num_classes:
                raise CosaModelError(
                    f"the model outputs logits of shape {tuple(logits.shape)} but cosa.json lists "
                    f"{self.bundle.num_classes} classes; the bundle's files do not belong together (re-export it)"
                )
            outputs.append(logits[:real])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    # -- measurement ------------------------------------------------------------------------------
    def benchmark(
        self,
        image: Any = None,
        *,
        batch_size: int = 1,
        runs: int = 10,
        warmup: int = 2,
        tta: bool = False,
    ) -> dict[str, Any]:
        """Time `segment` on `batch_size` copies of `image` (default: a random 500x375 photo-sized image).

        Returns images/s, the median call latency and the mean per-image split between decode,
        preprocess, model and postprocess (seconds), plus the fraction of time spent outside the model.
        """
        runs = _positive_int(runs, "runs")
        if image is None:
            image = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        images = [image] * _positive_int(batch_size, "batch_size")
        for _ in range(warmup):
            self.segment(images, tta=tta, batch_size=batch_size, keep_image=False)
        walls, splits = [], []
        for _ in range(runs):
            start = time.perf_counter()
            results = self.segment(images, tta=tta, batch_size=batch_size, keep_image=False)
            walls.append(time.perf_counter() - start)
            splits.extend(r.timings for r in results)
        split = {k: float(np.mean([s[k] for s in splits])) for k in TIMING_KEYS}
        per_image = sum(split.values())
        return {
            "backend": self.backend,
            "device": self.device,
            "batch_size": batch_size,
            "tta": tta,
            "images_per_s": len(images) * runs / sum(walls),
            "latency_s": statistics.median(walls),
            "per_image_s": split,
            "outside_model_fraction": (per_image - split["model"]) / per_image if per_image else 0.0,
        }


def load(
    path: str | Path,
    backend: str = "auto",
    *,
    batch_size: int = 8,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Segmenter:
    """Load a bundle folder (or its cosa.json, or a lone cosa-sdk .onnx file) on a backend.

    backend: "auto" (TensorRT if an engine, the package and a GPU are there; else ONNX Runtime fp32 on
    CUDA when available; else the INT8 model on a CPU when it passed its agreement gate and its weights
    suit this CPU; else ONNX Runtime fp32; else torch), "onnxruntime", "onnxruntime-int8" (the INT8
    model for this CPU: 8-bit weights only with VNNI, see `cosa_sdk.cpu`), "tensorrt" or "torch".
    `seg.info()["int8"]` says which INT8 file was chosen and why; `seg.notes` why auto skipped options.
    providers / threads: ONNX Runtime execution providers and intra-op threads (defaults: CUDA when
    available then CPU; all cores). max_pixels: refuse larger images (None: no limit).
    """
    name = check_backend_name(backend)
    source = Path(path).expanduser()
    if source.is_file() and source.suffix.lower() == ".onnx":
        return _load_lone_onnx(
            source, name, batch_size=batch_size, max_pixels=max_pixels, providers=providers, threads=threads
        )
    bundle = read_bundle(source)
    runner, notes = open_backend(bundle, name, providers=providers, threads=threads)
    return Segmenter(bundle, runner, batch_size=batch_size, max_pixels=max_pixels, notes=notes)


def _load_lone_onnx(
    path: Path,
    name: str,
    *,
    batch_size: int,
    max_pixels: int | None,
    providers: Sequence[str] | None,
    threads: int | None,
) -> Segmenter:
    if name not in ("auto", "onnxruntime", "onnxruntime-int8"):
        raise CosaInputError(
            f"a lone .onnx file runs on ONNX Runtime only, not backend={name!r}; pass the bundle folder for "
            "the other backends, or backend='onnxruntime'"
        )
    runner, bundle = open_lone_onnx(path, name, providers=providers, threads=threads)
    return Segmenter(bundle, runner, batch_size=batch_size, max_pixels=max_pixels)
