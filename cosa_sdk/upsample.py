"""Edge-aware upsampling of segmentation logits: bilinear probabilities refined by a guided filter.

The model's logits come from a coarse feature grid (a ViT's 14- or 16-pixel cells), so a bilinear
resize to the image size turns small and thin objects into blobs. The guided filter of He, Sun and
Tang ("Guided Image Filtering", ECCV 2010 / TPAMI 2013) fits, in every window, each class
probability as an affine function of the image colour; the result follows the image's edges
wherever the colour separates the classes, and stays the smooth bilinear input elsewhere. It moves
boundaries by up to about a window radius; it cannot bring back an object whose class never wins
in the coarse logits.

The filter is linear in the source, so the filtered probabilities of every pixel still sum to 1
(they may leave [0, 1] slightly near strong edges); their argmax is the label map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from cosa_sdk.errors import CosaConfigError, CosaInputError
from cosa_sdk.preprocess import CLASS_THRESHOLD, drop_absent_classes, logits_to_mask, resize_bilinear, softmax

ABSENT_LOGIT = -1e4
"""What an absent class's logits become before edge-aware upsampling: low enough never to win after the
softmax, finite so the bilinear resize inside stays free of NaN (-inf * 0)."""

DEFAULT_EPS = 1e-3
"""Regularisation of the colour fit (guide in [0, 1]): colour steps well above sqrt(eps) ~ 8 grey
levels count as edges, the noise of a photo does not."""

DEFAULT_RADIUS_PER_CELL = 0.5
"""Default window radius as a fraction of one feature-grid cell. A boundary moves onto an image edge
when the window reaches across the gap, so wider windows repair blobs that overflow their object
further, but they also erase objects thinner than a cell whose logits never win. On synthetic
scenes half a cell gained 6 to 9 mIoU points where the logits overflow the objects by a third of
a cell and lost about 1 where they are exact area averages (larger radii: more of both)."""

DEFAULT_MAX_SIDE = 1024
"""Longer side of the working size the filter runs at; larger images get the result resized up."""

Box = Callable[[np.ndarray], np.ndarray]


def _box_sum_last(x: np.ndarray, radius: int) -> np.ndarray:
    """Sums over the clipped window [i - radius, i + radius] along the last axis (float64 out).

    One float64 cumulative sum, padded with its first and last values so that every window is the
    difference of two slices; the last axis because numpy scans it several times faster than the others.
    """
    n = x.shape[-1]
    cumulative = np.empty((*x.shape[:-1], n + 2 * radius + 1), dtype=np.float64)
    cumulative[..., : radius + 1] = 0.0
    np.cumsum(x, axis=-1, dtype=np.float64, out=cumulative[..., radius + 1 : radius + 1 + n])
    cumulative[..., radius + 1 + n :] = cumulative[..., radius + n : radius + n + 1]
    return cumulative[..., 2 * radius + 1 :] - cumulative[..., :n]


def _window_counts(n: int, radius: int) -> np.ndarray:
    """Length of each clipped window [i - radius, i + radius] on an axis of `n` pixels."""
    index = np.arange(n)
    return (np.minimum(index + radius + 1, n) - np.maximum(index - radius, 0)).astype(np.float64)


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the clipped (2r+1)^2 window around every pixel of the last two axes of `x` (float32 out).

    O(1) per pixel whatever the radius: a cumulative-sum pass along the rows, then along the columns
    of the transposed result. The sums run in float64 so large windows keep float32 accuracy.
    """
    height, width = x.shape[-2:]
    rows = _box_sum_last(x, radius)
    rows /= _window_counts(width, radius)
    columns = _box_sum_last(np.ascontiguousarray(np.swapaxes(rows, -1, -2), dtype=np.float32), radius)
    columns /= _window_counts(height, radius)
    return np.ascontiguousarray(np.swapaxes(columns, -1, -2), dtype=np.float32)


def _check_int(name: str, value: object, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CosaConfigError(f"{name} must be an integer >= 1, got {value!r}: {hint}")


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)) or not np.isfinite(eps) or eps <= 0:
        raise CosaConfigError(f"eps must be a finite number > 0, got {eps!r}: try {DEFAULT_EPS} for a guide in [0, 1]")


def _check_filter_args(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> None:
    _check_int("radius", radius, "pass the window radius in pixels")
    _check_eps(eps)
    if source.ndim != 3 or source.shape[0] < 1:
        raise CosaInputError(f"source must be a (K, H, W) array with K >= 1, got shape {source.shape}")
    if not np.issubdtype(source.dtype, np.floating):
        raise CosaInputError(f"source must be a float array, got {source.dtype}: convert it with .astype(np.float32)")
    if guide.ndim not in (2, 3) or (guide.ndim == 3 and guide.shape[2] != 3):
        raise CosaInputError(f"guide must be (H, W) or (H, W, 3), got shape {guide.shape}")
    if not np.issubdtype(guide.dtype, np.floating):
        raise CosaInputError(f"guide must be a float array in [0, 1], got {guide.dtype}: divide a uint8 image by 255")
    if guide.shape[:2] != source.shape[1:]:
        raise CosaInputError(
            f"guide is {guide.shape[0]}x{guide.shape[1]} but source is {source.shape[1]}x{source.shape[2]}:"
            " resize one to the other's height and width"
        )


def _grey_coefficients(
    guide: np.ndarray, mean_guide: np.ndarray, variance: np.ndarray, plane: np.ndarray, box: Box
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window affine fit q = a*I + b of one source plane to a grey guide: (a, b)."""
    mean_plane = box(plane)
    a = box(guide * plane)
    a -= mean_guide * mean_plane
    a /= variance
    mean_plane -= a * mean_guide
    return a, mean_plane


def _inverse_covariance(guide: np.ndarray, mean_guide: np.ndarray, eps: float, box: Box) -> np.ndarray:
    """Per-pixel inverse of the guide's 3x3 window covariance + eps*I, as (3, 3, H, W) float32.

    Symmetric, so by its cofactors divided by the determinant (positive: the matrix is positive definite).
    """
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = np.stack([guide[i] * guide[j] for i, j in pairs])
    cov = box(products)
    for n, (i, j) in enumerate(pairs):
        cov[n] -= mean_guide[i] * mean_guide[j]
        if i == j:
            cov[n] += np.float32(eps)
    rr, rg, rb, gg, gb, bb = cov
    c_rr, c_rg, c_rb = gg * bb - gb * gb, rb * gb - rg * bb, rg * gb - rb * gg
    c_gg, c_gb, c_bb = rr * bb - rb * rb, rg * rb - rr * gb, rr * gg - rg * rg
    inverse_det = 1.0 / (rr * c_rr + rg * c_rg + rb * c_rb)
    rows = [[c_rr, c_rg, c_rb], [c_rg, c_gg, c_gb], [c_rb, c_gb, c_bb]]
    return np.stack([np.stack(row) for row in rows]) * inverse_det


def _colour_coefficients(
    guide: np.ndarray, mean_guide: np.ndarray, inverse: np.ndarray, plane: np.ndarray, box: Box
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window affine fit q = a.I + b of one source plane to a colour guide: (a (3, H, W), b)."""
    mean_plane = box(plane)
    cov = box(guide * plane)
    cov -= mean_guide * mean_plane
    a = np.einsum("ijhw,jhw->ihw", inverse, cov)
    mean_plane -= np.einsum("ihw,ihw->hw", a, mean_guide)
    return a, mean_plane


def guided_filter(guide: np.ndarray, source: np.ndarray, *, radius: int, eps: float) -> np.ndarray:
    """Guided filter (He, Sun and Tang) of every plane of `source` (K, H, W) by `guide` (H, W[, 3]) in [0, 1].

    A colour guide gets the per-pixel 3x3 covariance solve, a grey one the scalar fit. Each output
    pixel is the window mean of the affine fits q = a.I + b of all windows that cover it: edges of
    the guide with a colour step well above sqrt(eps) pass into the output, flat areas get a box
    mean of radius `radius`. float32 out; the memory beyond the output is a few (H, W) planes per
    guide channel, since the source is filtered one plane at a time.
    """
    guide, source = np.asarray(guide), np.asarray(source)
    _check_filter_args(guide, source, radius, eps)

    def box(x: np.ndarray) -> np.ndarray:
        return _box_mean(x, int(radius))

    colour = guide.ndim == 3
    guide32 = np.ascontiguousarray(guide.transpose(2, 0, 1) if colour else guide, dtype=np.float32)
    mean_guide = box(guide32)
    if colour:
        inverse = _inverse_covariance(guide32, mean_guide, eps, box)
    else:
        variance = box(guide32 * guide32)
        variance -= mean_guide * mean_guide
        variance += np.float32(eps)
    out = np.empty(source.shape, dtype=np.float32)
    for k in range(source.shape[0]):
        plane = source[k].astype(np.float32, copy=False)
        if colour:
            a, b = _colour_coefficients(guide32, mean_guide, inverse, plane, box)
            out[k] = np.einsum("ihw,ihw->hw", box(a), guide32)
        else:
            a, b = _grey_coefficients(guide32, mean_guide, variance, plane, box)
            out[k] = box(a) * guide32
        out[k] += box(b)
    return out


def _check_upsample_args(
    logits: np.ndarray, image: np.ndarray, cell: float, radius: int | None, eps: float, max_side: int
) -> None:
    if logits.ndim != 3 or 0 in logits.shape:
        raise CosaInputError(f"logits must be a non-empty (K, h, w) array with K >= 1, got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise CosaInputError(f"logits must be a float array, got {logits.dtype}: pass the model's raw output")
    if image.dtype != np.uint8:
        raise CosaInputError(f"image must be uint8, got {image.dtype}: pass np.asarray(pil_image.convert('RGB'))")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise CosaInputError(f"image must be (H, W, 3) RGB or (H, W) greyscale, got shape {image.shape}")
    if isinstance(cell, bool) or not isinstance(cell, (int, float, np.number)) or not np.isfinite(cell) or cell <= 0:
        raise CosaConfigError(
            f"cell must be a number > 0, got {cell!r}: pass one feature-grid cell in image pixels,"
            " e.g. patch_size * image_height / input_height"
        )
    if radius is not None:
        _check_int("radius", radius, "pass the window radius in image pixels, or None to derive it from cell")
    _check_eps(eps)
    _check_int("max_side", max_side, f"try {DEFAULT_MAX_SIDE}")


def working_size(size: Sequence[int], max_side: int) -> tuple[int, int]:
    """`size` (height, width) shrunk so that its longer side is at most `max_side` (aspect kept, sides >= 1)."""
    height, width = int(size[0]), int(size[1])
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def default_radius(cell: float) -> int:
    """Window radius for a feature-grid cell of `cell` pixels: `DEFAULT_RADIUS_PER_CELL` of it, at least 1."""
    return max(1, round(DEFAULT_RADIUS_PER_CELL * cell))


def _working_radius(radius: int | None, cell: float, scale: float) -> int:
    """The window radius at the working size: `radius` (image pixels) or the default for `cell`, scaled."""
    if radius is None:
        return default_radius(cell * scale)
    return max(1, round(radius * scale))


def _filtered_probabilities(
    logits: np.ndarray, image: np.ndarray, cell: float, radius: int | None, eps: float, max_side: int
) -> np.ndarray:
    """Guided-filtered class probabilities (K, h', w') at the working size of `image`."""
    logits, image = np.asarray(logits), np.asarray(image)
    _check_upsample_args(logits, image, cell, radius, eps, max_side)
    full = image.shape[:2]
    work = working_size(full, max_side)
    if work != full:
        image = np.asarray(Image.fromarray(image).resize(work[::-1], Image.Resampling.BOX))
    probabilities = resize_bilinear(logits, work)
    if np.may_share_memory(probabilities, logits):  # same size: never softmax the caller's array in place
        probabilities = probabilities.copy()
    softmax(probabilities, axis=0)
    guide = image.astype(np.float32) / np.float32(255.0)
    return guided_filter(guide, probabilities, radius=_working_radius(radius, cell, work[0] / full[0]), eps=eps)


def edge_aware_upsample(
    logits: np.ndarray,
    image: np.ndarray,
    *,
    cell: float,
    radius: int | None = None,
    eps: float = DEFAULT_EPS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """(K, h, w) logits -> (K, H, W) float32 class probabilities snapped to the edges of `image` (H, W[, 3]) uint8.

    Softmax of the bilinearly resized logits, guided-filtered with the image. `cell` is one
    feature-grid cell in image pixels (e.g. 14 * H / 224 for a ViT-B/14 at 224); `radius` (image
    pixels) defaults to `default_radius(cell)`. Images with a side over `max_side` are filtered at a
    working size and the result is resized up bilinearly; use `edge_aware_mask` for big images,
    which never holds K full-size planes. The argmax over axis 0 is the label map.
    """
    filtered = _filtered_probabilities(logits, image, cell, radius, eps, max_side)
    full = np.asarray(image).shape[:2]
    return resize_bilinear(filtered, full) if filtered.shape[1:] != full else filtered


def edge_aware_mask(
    logits: np.ndarray,
    image: np.ndarray,
    *,
    cell: float,
    radius: int | None = None,
    eps: float = DEFAULT_EPS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """(K, h, w) logits -> (H, W) uint8 label map snapped to the edges of `image`; see `edge_aware_upsample`.

    The working-size probabilities go to the full size in bands of rows (`preprocess.logits_to_mask`),
    so the memory is K planes of the working size, not of the image.
    """
    logits = np.asarray(logits)
    if logits.ndim == 3 and logits.shape[0] > 256:
        raise CosaInputError(f"a uint8 label map holds at most 256 classes, got {logits.shape[0]}")
    filtered = _filtered_probabilities(logits, image, cell, radius, eps, max_side)
    mask, _ = logits_to_mask(filtered, np.asarray(image).shape[:2])
    return mask


def drop_absent_before_upsampling(
    logits: np.ndarray, class_probs: np.ndarray, threshold: float = CLASS_THRESHOLD
) -> np.ndarray:
    """(K, h, w) logits with the classes `class_probs` (C,) calls absent set to ABSENT_LOGIT (background kept):
    `drop_absent_classes` made safe for resizing, for use before `edge_aware_mask` / `edge_aware_upsample`."""
    dropped = drop_absent_classes(logits, class_probs, threshold)
    dropped[np.isneginf(dropped)] = ABSENT_LOGIT
    return dropped
