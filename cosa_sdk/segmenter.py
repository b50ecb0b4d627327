"""`load()` and `Segmenter`: decode, preprocess, run the backend, postprocess to original-size masks.

Calls keep all their state local, so one Segmenter can serve many threads at once (the backends'
`run` is thread-safe). Images always enter the model at the bundle's input size (aspect ratio not
kept, as in the official evaluation); a dynamic graph is only needed for multi-scale TTA.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cosa_sdk.arguments import (
    check_drop_absent,
    check_edge_aware,
    check_max_pixels,
    image_label,
    is_batch,
    positive_int,
)
from cosa_sdk.backends import check_backend_name, open_backend, open_lone_onnx
from cosa_sdk.backends.base import Backend
from cosa_sdk.bundle import Bundle, read_bundle
from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.inputs import DEFAULT_MAX_PIXELS, decode_image
from cosa_sdk.model_runner import ModelRunner
from cosa_sdk.preprocess import Normalizer, argmax_channels, logits_to_mask
from cosa_sdk.result import TIMING_KEYS, SegmentationResult
from cosa_sdk.timing import time_segment
from cosa_sdk.upsample import drop_absent_before_upsampling, edge_aware_mask, edge_aware_upsample

_UNSET: Any = object()


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
        self.batch_size = positive_int(batch_size, "batch_size")
        self.max_pixels = check_max_pixels(max_pixels)
        self.notes = list(notes)
        self._model = ModelRunner(bundle, backend)
        self._normalizer = Normalizer(size=bundle.input_size, mean=bundle.mean, std=bundle.std)

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
    def has_class_scores(self) -> bool:
        """True when the model gives image-level class scores (`result.class_scores`, `drop_absent`)."""
        return self._backend.has_class_scores

    def drop_absent_setting(self, drop_absent: bool | None = None) -> bool:
        """What `segment(..., drop_absent=drop_absent)` does: None is the bundle's default (cosa.json
        postprocess.drop_absent, off when missing). CosaConfigError when True needs class scores the model lacks."""
        asked = check_drop_absent(drop_absent)
        if asked is None:
            return self.bundle.postprocess.drop_absent
        if asked and not self.has_class_scores:
            raise CosaConfigError(
                f"drop_absent needs the classifier's class scores, and the model of {self.bundle.source} has none "
                "(exported before they existed: re-export the bundle with `cosa export`; or trained with "
                "--supervision full, whose classifier never learned); segment without drop_absent"
            )
        return asked

    def edge_aware_setting(self, edge_aware: bool | None = None) -> bool:
        """What `segment(..., edge_aware=edge_aware)` does: None is the bundle's default (cosa.json
        postprocess.edge_aware, off when missing)."""
        asked = check_edge_aware(edge_aware)
        return self.bundle.postprocess.edge_aware if asked is None else asked

    @property
    def dynamic(self) -> bool:
        """True when the model takes other input sizes, which multi-scale TTA needs."""
        return self._model.dynamic

    def tta_sizes(self) -> list[tuple[int, int]]:
        """Input sizes TTA runs (each with its flip): the bundle's scales, rounded to the patch size.

        A fixed-size graph runs flip-only TTA at the input size.
        """
        return self._model.tta_sizes()

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
            "postprocess": {
                "drop_absent": self.bundle.postprocess.drop_absent,
                "class_threshold": self.bundle.postprocess.class_threshold,
                "edge_aware": self.bundle.postprocess.edge_aware,
            },
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
        drop_absent: bool | None = None,
        edge_aware: bool | None = None,
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
        drop_absent: a pixel may only take background or a class the classifier scores present
        (sigmoid >= the bundle's class_threshold; with TTA the sigmoids are averaged over the passes).
        None: the bundle's default (`drop_absent_setting`); True on a model without class scores raises
        CosaConfigError. `result.class_scores` holds the probabilities whenever the model gives them.
        edge_aware: the class maps reach the image size through a guided filter that snaps their boundaries
        to the image's edges (`cosa_sdk.upsample`) instead of the plain bilinear resize; it costs about
        10-30 ms per 500x375 image with 7 classes, 1-3 s at 2000x1500. None: the bundle's default
        (`edge_aware_setting`).
        """
        if is_batch(images):
            return list(
                self.iter_segment(
                    images,
                    tta=tta,
                    return_scores=return_scores,
                    batch_size=batch_size,
                    max_pixels=max_pixels,
                    keep_image=keep_image,
                    drop_absent=drop_absent,
                    edge_aware=edge_aware,
                )
            )
        limit = self.max_pixels if max_pixels is _UNSET else check_max_pixels(max_pixels)
        drop = self.drop_absent_setting(drop_absent)
        edge = self.edge_aware_setting(edge_aware)
        labels = [image_label(images, 0, single=True)]
        return self._segment_chunk([images], labels, tta, return_scores, limit, keep_image, drop, edge)[0]

    def iter_segment(
        self,
        images: Iterable[Any],
        *,
        tta: bool = False,
        return_scores: bool = False,
        batch_size: int | None = None,
        max_pixels: int | None = _UNSET,
        keep_image: bool = True,
        drop_absent: bool | None = None,
        edge_aware: bool | None = None,
    ) -> Iterator[SegmentationResult]:
        """Like `segment(list)`, but lazily: reads and yields one chunk of `batch_size` images at a time."""
        size = self.batch_size if batch_size is None else positive_int(batch_size, "batch_size")
        limit = self.max_pixels if max_pixels is _UNSET else check_max_pixels(max_pixels)
        drop = self.drop_absent_setting(drop_absent)
        edge = self.edge_aware_setting(edge_aware)
        chunk: list[Any] = []
        labels: list[str] = []
        for index, item in enumerate(images):
            chunk.append(item)
            labels.append(image_label(item, index, single=False))
            if len(chunk) == size:
                yield from self._segment_chunk(chunk, labels, tta, return_scores, limit, keep_image, drop, edge)
                chunk, labels = [], []
        if chunk:
            yield from self._segment_chunk(chunk, labels, tta, return_scores, limit, keep_image, drop, edge)

    def _segment_chunk(
        self,
        items: Sequence[Any],
        labels: Sequence[str],
        tta: bool,
        return_scores: bool,
        max_pixels: int | None,
        keep_image: bool,
        drop_absent: bool,
        edge_aware: bool,
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
        logits, class_probs = self._infer(np.stack(inputs), tta=tta)
        model_share = (time.perf_counter() - start) / len(items)
        threshold = self.bundle.postprocess.class_threshold
        results = []
        for i, image in enumerate(decoded):
            start = time.perf_counter()
            probs = None if class_probs is None else class_probs[i]
            if edge_aware:
                mask, scores = self._edge_aware(logits[i], image, return_scores, probs if drop_absent else None)
            else:
                mask, scores = logits_to_mask(
                    logits[i],
                    (image.height, image.width),
                    with_scores=return_scores,
                    class_probs=probs if drop_absent else None,
                    class_threshold=threshold,
                )
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
                    class_scores=self._named(probs),
                )
            )
        return results

    def _edge_aware(
        self, logits: np.ndarray, image: Image.Image, with_scores: bool, class_probs: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mask, probabilities or None) at the image's size through `cosa_sdk.upsample`; the classes
        `class_probs` calls absent get `ABSENT_LOGIT` at the input size, so they never win after the filter."""
        if class_probs is not None:
            logits = drop_absent_before_upsampling(logits, class_probs, self.bundle.postprocess.class_threshold)
        (in_h, in_w), patch = self.input_size, self.bundle.patch_size
        cell = patch * float(np.sqrt(image.height / in_h * image.width / in_w))
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        if not with_scores:
            return edge_aware_mask(logits, pixels, cell=cell), None
        scores = edge_aware_upsample(logits, pixels, cell=cell)
        return argmax_channels(scores), scores

    def _named(self, probs: np.ndarray | None) -> dict[str, float] | None:
        """{foreground class name: probability}, in class order (None without class scores)."""
        if probs is None:
            return None
        return {name: float(p) for name, p in zip(self.classes[1:], probs)}

    def _infer(self, batch: np.ndarray, *, tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return self._model.infer(batch, tta=tta)

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
        timed = time_segment(self.segment, image, batch_size=batch_size, runs=runs, warmup=warmup, tta=tta)
        return {"backend": self.backend, "device": self.device, **timed}


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
