"""Pre- and post-processing in numpy: bilinear resizes with torch's align_corners=False rule, normalisation, argmax.

The resize matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` without
antialiasing, which is what the official evaluation applies to images and logits. Images more than
twice the model size are first shrunk by an integer box filter (`Image.reduce`) so large photos do
not alias; images up to twice the model size (all of VOC and COCO at 448) take the exact path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


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


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    low, high, weight = _source_indices(x.shape[axis], out_size)
    a = np.take(x, low, axis=axis).astype(np.float32, copy=False)
    b = np.take(x, high, axis=axis).astype(np.float32, copy=False)
    shape = [1] * x.ndim
    shape[axis] = -1
    b -= a
    b *= weight.reshape(shape)
    b += a
    return b


def resize_bilinear(x: np.ndarray, size: Sequence[int], *, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Bilinear resize of the two `axes` of `x` to `size` (height, width); float32 out.

    Separable: the axis whose pass leaves the smaller intermediate goes first.
    """
    ay, ax = (a % x.ndim for a in axes)
    h, w = x.shape[ay], x.shape[ax]
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) == (out_h, out_w):
        return x.astype(np.float32, copy=False)
    if out_h * w <= h * out_w:
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


def argmax_channels(logits: np.ndarray) -> np.ndarray:
    """Argmax over the first axis of (K, H, W) as uint8, one contiguous pass per class (first max wins)."""
    best = logits[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, logits.shape[0]):
        better = logits[k] > best
        index[better] = k
        np.maximum(best, logits[k], out=best)
    return index


def logits_to_mask(
    logits: np.ndarray, size: Sequence[int], *, with_scores: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, h, w) logits -> (mask uint8 (H, W), probabilities (K, H, W) or None) at `size`.

    The logits are resized before the argmax, as the official evaluation does.
    """
    resized = resize_bilinear(logits, size)
    mask = argmax_channels(resized)
    if not with_scores:
        return mask, None
    if np.shares_memory(resized, logits):
        resized = resized.copy()
    return mask, softmax(resized, axis=0)
