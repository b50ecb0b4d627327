"""Pre- and post-processing in numpy: bilinear resizes with torch's align_corners=False rule, normalisation, argmax,
and dropping the classes the image-level classifier calls absent (`drop_absent_classes`).

The resize matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` without
antialiasing, which is what the official evaluation applies to images and logits. Images more than
twice the model size are first shrunk by an integer box filter (`Image.reduce`) so large photos do
not alias; images up to twice the model size (all of VOC and COCO at 448) take the exact path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaInputError

CLASS_THRESHOLD = 0.5
"""A class is present when sigmoid(its image-level logit) >= this (cosa.json postprocess.class_threshold)."""


def _source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel: the two source pixels and the weight of the second one.

    float32 index arithmetic, as torch's CPU kernel uses for float32 tensors.
    """
    scale = np.float32(in_size / out_size)
    half = np.float32(0.5)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + half) * scale - half, np.float32(0.0))
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, src - low.astype(np.float32)


def _interpolate(x: np.ndarray, axis: int, low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend the `low` and `high` slices of `x` along `axis` by `weight` (float32 out).

    The one place the bilinear arithmetic lives, so the full and the banded resizes agree bit for bit.
    """
    a = np.take(x, low, axis=axis).astype(np.float32, copy=False)
    b = np.take(x, high, axis=axis).astype(np.float32, copy=False)
    shape = [1] * x.ndim
    shape[axis] = -1
    b -= a
    b *= weight.reshape(shape)
    b += a
    return b


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    return _interpolate(x, axis, *_source_indices(x.shape[axis], out_size))


def _height_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Whether the height pass goes first: the order that leaves the smaller intermediate."""
    return out_size[0] * in_size[1] <= in_size[0] * out_size[1]


def resize_bilinear(x: np.ndarray, size: Sequence[int], *, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Bilinear resize of the two `axes` of `x` to `size` (height, width); float32 out.

    Separable: the axis whose pass leaves the smaller intermediate goes first.
    """
    ay, ax = (a % x.ndim for a in axes)
    h, w = x.shape[ay], x.shape[ax]
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) == (out_h, out_w):
        return x.astype(np.float32, copy=False)
    if _height_first((h, w), (out_h, out_w)):
        return _resize_axis(_resize_axis(x, ay, out_h), ax, out_w)
    return _resize_axis(_resize_axis(x, ax, out_w), ay, out_h)


def reduce_for(image: Image.Image, size: Sequence[int]) -> Image.Image:
    """Integer box-filter shrink of images more than twice `size` (height, width) on an axis."""
    fy = max(1, image.height // (2 * int(size[0])))
    fx = max(1, image.width // (2 * int(size[1])))
    if fx == 1 and fy == 1:
        return image
    return image.reduce((fx, fy))


class Normalizer:
    """uint8 RGB image -> normalised float32 (3, H, W) model input at a fixed size."""

    def __init__(self, *, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = (int(size[0]), int(size[1]))
        std_arr = np.asarray(std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * std_arr)).reshape(3, 1, 1)
        self._offset = (np.asarray(mean, dtype=np.float32) / std_arr).reshape(3, 1, 1)

    def __call__(self, image: Image.Image) -> np.ndarray:
        chw = np.asarray(reduce_for(image, self.size)).transpose(2, 0, 1)
        x = resize_bilinear(chw, self.size)
        if x.dtype != np.float32 or not x.flags.writeable or np.shares_memory(x, chw):
            x = x.astype(np.float32)
        x *= self._scale
        x -= self._offset
        return np.ascontiguousarray(x)


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """In-place softmax over `axis` of a float32 array (returned for chaining)."""
    logits -= logits.max(axis=axis, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function without overflow warnings: image-level class logits -> probabilities."""
    x = np.asarray(logits, dtype=np.float32)
    return np.exp(-np.logaddexp(np.float32(0.0), -x)).astype(np.float32, copy=False)


def drop_absent_classes(logits: np.ndarray, class_probs: np.ndarray, threshold: float = CLASS_THRESHOLD) -> np.ndarray:
    """A copy of `logits` with every foreground class the classifier calls absent set to -inf.

    logits: (K, H, W) or (N, K, H, W), channel 0 = background; class_probs: (C,) or (N, C) probabilities
    (sigmoid of the image-level logits), C = K - 1. A class is absent when its probability < `threshold`;
    background is never dropped, so with every class absent the argmax is background everywhere. Apply it
    at the size the argmax is taken at (after any resize): a bilinear resize of -inf gives NaN. The SDK
    (`logits_to_mask`) and scoring both call this, so what is measured is what deploys.
    """
    values = np.asarray(logits)
    probs = np.asarray(class_probs)
    if values.ndim not in (3, 4) or probs.shape != (*values.shape[:-3], values.shape[-3] - 1):
        raise CosaInputError(
            f"drop_absent_classes takes logits (K, H, W) or (N, K, H, W) with class probabilities (K-1,) or "
            f"(N, K-1), got {values.shape} and {probs.shape}"
        )
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float32
    out = values.astype(dtype, copy=True)
    out[..., 1:, :, :][probs < threshold] = -np.inf
    return out


def argmax_channels(logits: np.ndarray) -> np.ndarray:
    """Argmax over the first axis of (K, H, W) as uint8, one contiguous pass per class (first max wins)."""
    best = logits[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, logits.shape[0]):
        better = logits[k] > best
        index[better] = k
        np.maximum(best, logits[k], out=best)
    return index


_BAND_BYTES = 2 << 20
"""Target size of one float32 (K, rows, W) band: small enough to stay in cache and to bound peak memory."""


def _band_rows(channels: int, width: int) -> int:
    """Output rows per band so that a (channels, rows, width) float32 band is about `_BAND_BYTES`."""
    return max(1, _BAND_BYTES // (4 * max(1, channels) * max(1, width)))


def _resized_bands(logits: np.ndarray, size: tuple[int, int], band_rows: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (output rows, float32 (K, rows, W) resized logits) one band of output rows at a time.

    Each band resizes only the input rows it needs, in the same pass order and with the same
    per-pixel arithmetic as `resize_bilinear`, so stacking the bands gives its result bit for bit.
    """
    (h, w), (out_h, out_w) = logits.shape[-2:], size
    same = (h, w) == (out_h, out_w)
    rows, cols = _source_indices(h, out_h), _source_indices(w, out_w)
    height_first = _height_first((h, w), size)
    for start in range(0, out_h, band_rows):
        band = slice(start, min(start + band_rows, out_h))
        if same:
            yield band, logits[:, band].astype(np.float32, copy=False)
            continue
        low, high, weight = (v[band] for v in rows)
        if height_first:
            yield band, _interpolate(_interpolate(logits, 1, low, high, weight), 2, *cols)
            continue
        needed = np.unique(np.concatenate([low, high]))  # the input rows this band reads, sorted
        wide = _interpolate(np.take(logits, needed, axis=1), 2, *cols)
        yield band, _interpolate(wide, 1, np.searchsorted(needed, low), np.searchsorted(needed, high), weight)


def logits_to_mask(
    logits: np.ndarray,
    size: Sequence[int],
    *,
    with_scores: bool = False,
    class_probs: np.ndarray | None = None,
    class_threshold: float = CLASS_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, h, w) logits -> (mask uint8 (H, W), probabilities (K, H, W) or None) at `size`.

    The logits are resized before the argmax, as the official evaluation does. The work goes in
    bands of output rows, so without scores the extra memory is one band, not a (K, H, W) array.
    class_probs: (K-1,) image-level class probabilities; when given, the classes below `class_threshold`
    are dropped (`drop_absent_classes`) from each resized band, so they get neither pixels nor probability.
    """
    out_size = (int(size[0]), int(size[1]))
    mask = np.empty(out_size, dtype=np.uint8)
    scores = np.empty((logits.shape[0], *out_size), dtype=np.float32) if with_scores else None
    for band, resized in _resized_bands(logits, out_size, _band_rows(logits.shape[0], out_size[1])):
        if class_probs is not None:
            resized = drop_absent_classes(resized, class_probs, class_threshold)
        mask[band] = argmax_channels(resized)
        if scores is not None:
            if np.may_share_memory(resized, logits):  # same-size path: never softmax the caller's array
                resized = resized.copy()
            scores[:, band] = softmax(resized, axis=0)
    return mask, scores
