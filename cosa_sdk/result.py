"""What `Segmenter.segment` returns: the mask at the image's size, plus views and summaries of it."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaInputError
from cosa_sdk.palette import RGB, palette_array, pil_palette

TIMING_KEYS = ("decode", "preprocess", "model", "postprocess")
MASK_SUFFIXES = frozenset({".png", ".gif", ".bmp", ".tif", ".tiff"})
OVERLAY_SUFFIXES = frozenset({".jpg", ".jpeg", ".webp"})


@dataclass(repr=False)
class SegmentationResult:
    """One segmented image.

    `mask` is (H, W) uint8 at the input image's (EXIF-rotated) size, values index `classes`.
    `present` maps each class in the mask to its pixel fraction, largest first. `scores` holds
    (K, H, W) float32 probabilities when `segment(..., return_scores=True)`. `timings` holds seconds
    spent on decode, preprocess, model and postprocess for this image; in a batch the model time of
    a chunk is shared equally between its images. `class_scores` maps each foreground class to the
    image-level classifier's probability that it is in the image (None for models without class scores).
    """

    mask: np.ndarray
    classes: list[str]
    palette: list[RGB]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None
    image: Image.Image | None = None
    class_scores: dict[str, float] | None = None
    present: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))
        total = max(int(self.mask.size), 1)
        order = np.argsort(-counts, kind="stable")
        self.present = {self.classes[i]: float(counts[i]) / total for i in order if counts[i] > 0}

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as PIL reports sizes."""
        return int(self.mask.shape[1]), int(self.mask.shape[0])

    @property
    def total_time(self) -> float:
        return float(sum(self.timings.get(k, 0.0) for k in TIMING_KEYS))

    def colorized(self) -> Image.Image:
        """The mask as a "P" image with the bundle's palette: pixel values stay class indices."""
        image = Image.fromarray(self.mask, "P")
        image.putpalette(pil_palette(self.palette))
        return image

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The input image with the class colours blended in at `alpha`; background pixels untouched."""
        if self.image is None:
            raise CosaInputError("this result does not hold its image (it was dropped); overlay needs it")
        if not 0.0 <= alpha <= 1.0:
            raise CosaInputError(f"alpha={alpha} must be between 0 and 1")
        colours = Image.fromarray(palette_array(self.palette)[self.mask], "RGB")
        blended = Image.blend(self.image, colours, alpha)
        return Image.composite(blended, self.image, Image.fromarray((self.mask > 0).view(np.uint8) * 255, "L"))

    def save(self, path: str | Path, *, kind: Literal["auto", "mask", "overlay"] = "auto") -> Path:
        """Write the palette mask (.png, .gif, .bmp, .tif) or, for .jpg/.webp or kind="overlay", the overlay.

        Lossy formats would corrupt class indices, so they always get the overlay.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if kind == "auto":
            kind = "overlay" if suffix in OVERLAY_SUFFIXES else "mask"
        if kind == "mask" and suffix not in MASK_SUFFIXES:
            raise CosaInputError(
                f"cannot save a class mask as {path.name!r}: use a lossless .png (or .gif/.bmp/.tif), "
                "or a .jpg for the overlay"
            )
        if kind == "overlay" and suffix not in OVERLAY_SUFFIXES | MASK_SUFFIXES:
            raise CosaInputError(f"cannot save an overlay as {path.name!r}: use .jpg, .webp or .png")
        image = self.colorized() if kind == "mask" else self.overlay()
        options = {"quality": 90} if suffix in OVERLAY_SUFFIXES else {}
        image.save(path, **options)
        return path

    def to_dict(self, *, mask: Literal[None, "png", "rle"] = None) -> dict[str, Any]:
        """JSON-able summary; `mask="png"` adds the palette PNG as base64, `mask="rle"` a run-length code.
        `class_scores` ({class: probability}) is there when the model gives them.

        The RLE is row-major: {"encoding": "rle", "size": [H, W], "values": [...], "counts": [...]};
        `decode_mask` reverses both encodings.
        """
        out: dict[str, Any] = {
            "width": self.size[0],
            "height": self.size[1],
            "present": {name: round(frac, 6) for name, frac in self.present.items()},
            "backend": self.backend,
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
        }
        if self.class_scores is not None:
            out["class_scores"] = {name: round(float(p), 6) for name, p in self.class_scores.items()}
        if mask == "png":
            buffer = io.BytesIO()
            self.colorized().save(buffer, format="PNG")
            out["mask"] = {"encoding": "png-base64", "data": base64.b64encode(buffer.getvalue()).decode("ascii")}
        elif mask == "rle":
            out["mask"] = encode_rle(self.mask)
        elif mask is not None:
            raise CosaInputError(f"mask={mask!r}: choose None, 'png' or 'rle'")
        return out

    def to_hf(self, *, encode: bool = False) -> list[dict[str, Any]]:
        """The output of Hugging Face's `pipeline("image-segmentation")` for a semantic model.

        A list with one `{"score": None, "label": name, "mask": image}` per class present in the
        mask, in class-index order, background included: transformers' semantic subtask lists every
        label of its argmax map, so a model with a "background" label returns that segment too.
        `mask` is a PIL "L" image at the input image's size, 255 where the class is and 0 elsewhere;
        `score` is None, as the pipeline gives for every semantic model. Code written for the
        pipeline's output runs unchanged; neither torch nor transformers is needed.

        `encode=True` gives the JSON form of the Hugging Face Inference API instead: each mask a
        base64-encoded PNG (mode "L") string. That is what `POST /segment_hf` answers;
        `decode_hf` turns the strings back into PIL images.
        """
        counts = np.bincount(self.mask.ravel(), minlength=len(self.classes))
        segments: list[dict[str, Any]] = []
        for index in np.flatnonzero(counts):
            image = Image.fromarray((self.mask == index).view(np.uint8) * np.uint8(255))
            mask: Image.Image | str = _png_base64(image) if encode else image
            segments.append({"score": None, "label": self.classes[int(index)], "mask": mask})
        return segments

    def __repr__(self) -> str:
        width, height = self.size
        shown = ", ".join(f"{name!r}: {frac:.2f}" for name, frac in list(self.present.items())[:6])
        more = ", ..." if len(self.present) > 6 else ""
        return (
            f"SegmentationResult({width}x{height}, present={{{shown}{more}}}, backend={self.backend!r}, "
            f"{1000 * self.total_time:.1f} ms)"
        )


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_hf(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inverse of `to_hf(encode=True)` (e.g. the JSON of `POST /segment_hf`): masks as PIL "L" images.

    The result is what `to_hf()` and Hugging Face's `pipeline("image-segmentation")` return.
    """
    decoded = []
    for segment in segments:
        mask = segment["mask"]
        if isinstance(mask, str):
            with Image.open(io.BytesIO(base64.b64decode(mask))) as image:
                mask = image.convert("L")
        decoded.append({**segment, "mask": mask})
    return decoded


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Row-major run-length code of a label mask: runs of equal values."""
    flat = mask.ravel()
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]]) if flat.size else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, flat.size])
    return {
        "encoding": "rle",
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "values": flat[starts].tolist(),
        "counts": counts.tolist(),
    }


def decode_mask(encoded: dict[str, Any]) -> np.ndarray:
    """Inverse of `to_dict(mask=...)["mask"]`: the (H, W) uint8 mask."""
    encoding = encoded.get("encoding")
    if encoding == "rle":
        height, width = encoded["size"]
        flat = np.repeat(np.asarray(encoded["values"], dtype=np.uint8), np.asarray(encoded["counts"], dtype=np.int64))
        return flat.reshape(height, width)
    if encoding == "png-base64":
        with Image.open(io.BytesIO(base64.b64decode(encoded["data"]))) as image:
            return np.asarray(image).astype(np.uint8, copy=False)
    raise CosaInputError(f"unknown mask encoding {encoding!r}: expected 'rle' or 'png-base64'")
