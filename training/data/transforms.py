"""CoSA augmentation (docs/method.md, "Augmentation") and evaluation resizing, with PIL + numpy + torch.

One draw of `AugParams` fixes the geometry (rescale, flip, crop, padding offset) shared by the weak
and strong views; the strong view only adds one photometric op on top of the weak one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cosa_sdk.training.data.common import IGNORE_INDEX

STRONG_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "posterize",
)


@dataclass(frozen=True)
class AugParams:
    """Every random choice of one training sample, drawn up front in a fixed order."""

    scale: float
    flip: bool
    pad_y: int
    pad_x: int
    crop_y: int
    crop_x: int
    blur: bool
    blur_radius: float
    strong_op: str
    magnitude: int
    scaled_size: tuple[int, int]  # (width, height) after rescaling


def sample_params(
    rng: np.random.Generator,
    size: tuple[int, int],
    *,
    crop_size: int,
    rescale_range: tuple[float, float] = (0.5, 2.0),
    blur_prob: float = 0.5,
    base_size: int | None = None,
) -> AugParams:
    """Draw the augmentation of one sample for an image of (width, height) `size`.

    The rescale multiplies the image's own size, or with `base_size` the base_size x base_size square the
    image is evaluated at (aspect ratio not kept, as in evaluation), so training sees inference's scale.
    """
    width, height = (base_size, base_size) if base_size else size
    scale = float(rng.uniform(*rescale_range))
    sw, sh = max(1, int(scale * width)), max(1, int(scale * height))
    flip = bool(rng.random() < 0.5)
    canvas_h, canvas_w = max(sh, crop_size), max(sw, crop_size)
    pad_y = int(rng.integers(0, canvas_h - sh + 1))
    pad_x = int(rng.integers(0, canvas_w - sw + 1))
    crop_y = int(rng.integers(0, canvas_h - crop_size + 1))
    crop_x = int(rng.integers(0, canvas_w - crop_size + 1))
    blur = bool(rng.random() < blur_prob)
    radius = float(rng.uniform(0.1, 2.0))
    op = STRONG_OPS[int(rng.integers(len(STRONG_OPS)))]
    magnitude = int(rng.integers(1, 10))
    return AugParams(scale, flip, pad_y, pad_x, crop_y, crop_x, blur, radius, op, magnitude, (sw, sh))


def valid_box(params: AugParams, crop_size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the image content inside the crop; the rest is padding."""
    sw, sh = params.scaled_size
    y0 = max(params.pad_y - params.crop_y, 0)
    x0 = max(params.pad_x - params.crop_x, 0)
    y1 = min(params.pad_y + sh - params.crop_y, crop_size)
    x1 = min(params.pad_x + sw - params.crop_x, crop_size)
    return y0, y1, x0, x1


def _place(array: np.ndarray, params: AugParams, crop_size: int, fill: int) -> np.ndarray:
    """Paste a rescaled, flipped array on the padded canvas and cut the crop out of it."""
    out = np.full((crop_size, crop_size, *array.shape[2:]), fill, dtype=array.dtype)
    y0, y1, x0, x1 = valid_box(params, crop_size)
    src_y = y0 + params.crop_y - params.pad_y
    src_x = x0 + params.crop_x - params.pad_x
    out[y0:y1, x0:x1] = array[src_y : src_y + (y1 - y0), src_x : src_x + (x1 - x0)]
    return out


def apply_geometry(
    image: Image.Image, mask: np.ndarray | None, params: AugParams, crop_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale (bilinear / nearest), flip and crop with zero padding; masks get 255 on padding."""
    image = image.resize(params.scaled_size, Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if params.flip:
        pixels = pixels[:, ::-1]
    crop = _place(pixels, params, crop_size, fill=0)
    if mask is None:
        return crop, None
    mask = np.asarray(Image.fromarray(mask).resize(params.scaled_size, Image.NEAREST))
    if params.flip:
        mask = mask[:, ::-1]
    return crop, _place(mask, params, crop_size, fill=IGNORE_INDEX)


def strong_op(image: Image.Image, op: str, magnitude: int) -> Image.Image:
    """Apply one named photometric op with magnitude 1..9 (formulas in docs/method.md, "Augmentation")."""
    factor = magnitude * 0.18 + 0.1
    if op == "identity":
        return image
    if op == "autocontrast":
        return ImageOps.autocontrast(image)
    if op == "equalize":
        return ImageOps.equalize(image)
    if op == "solarize":
        return ImageOps.solarize(image, threshold=min(int(magnitude * 25.6), 255))
    if op == "posterize":
        return ImageOps.posterize(image, 4 - int(0.4 * magnitude))
    enhancers = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }
    if op not in enhancers:
        raise ValueError(f"unknown strong op {op!r}; expected one of {STRONG_OPS}")
    return enhancers[op](image).enhance(factor)


def weak_strong_views(
    image: Image.Image, mask: np.ndarray | None, params: AugParams, crop_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The weak view (geometry + optional blur), the strong view (weak + one op) and the mask, as uint8."""
    crop, mask_crop = apply_geometry(image, mask, params, crop_size)
    weak = Image.fromarray(crop)
    if params.blur:
        weak = weak.filter(ImageFilter.GaussianBlur(radius=params.blur_radius))
    strong = strong_op(weak, params.strong_op, params.magnitude)
    return np.asarray(weak), np.asarray(strong), mask_crop


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW, scaled to 0-1 then normalised with per-channel mean/std (0-1 scale)."""
    array = pixels.astype(np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def eval_image(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], eval_size: int | None) -> torch.Tensor:
    """Normalise, then resize to eval_size x eval_size (bilinear, aspect ratio not kept) as the official eval."""
    tensor = normalize(pixels, mean, std)
    if eval_size is None:
        return tensor
    return F.interpolate(tensor[None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[0]
