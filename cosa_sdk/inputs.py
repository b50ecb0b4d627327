"""Turning whatever the caller has (path, bytes, file object, PIL image, numpy array) into an RGB image.

Decisions, applied to every input kind alike:
- EXIF orientation is applied, so masks match the image as viewers display it.
- Alpha is dropped (RGBA, LA, PA, HxWx4 arrays): transparent pixels keep their stored colour.
- Gray, palette, CMYK and 1-bit images are converted to RGB; 16-bit images (I;16*) are scaled by
  255/65535; 32-bit integer images ("I") are taken as 8-bit when their maximum is <= 255, else as
  16-bit; float images ("F") as 0-1 when their maximum is <= 1, else as 0-255 (clipped).
- Images above `max_pixels` are refused before their pixels are decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cosa_sdk.errors import CosaInputError

DEFAULT_MAX_PIXELS = 50_000_000
EXIF_ORIENTATION = 0x0112
SUPPORTED = "a file path, bytes, a binary file object, a PIL image or an HxWx3 uint8 RGB numpy array"


def check_pixels(width: int, height: int, max_pixels: int | None, label: str) -> None:
    """Refuse empty images and images above the pixel limit, naming the fix."""
    if width <= 0 or height <= 0:
        raise CosaInputError(f"{label} is empty ({width}x{height} pixels); pass an image with pixels in it")
    if max_pixels is not None and width * height > max_pixels:
        raise CosaInputError(
            f"{label} has {width}x{height} = {width * height / 1e6:.1f} MP, above max_pixels={max_pixels:,}; "
            "downscale it first or pass a larger max_pixels to load()/segment()"
        )


def decode_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, label: str | None = None) -> Image.Image:
    """Decode one input into a loaded "RGB" PIL image at its displayed (EXIF-rotated) size."""
    if isinstance(source, Image.Image):
        label = label or "the PIL image"
        check_pixels(*source.size, max_pixels, label)
        return to_rgb(_orient(source, in_place=False), label)
    if isinstance(source, np.ndarray):
        return array_to_image(source, max_pixels=max_pixels, label=label or "the array")
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        label = label or str(path)
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            raise CosaInputError(f"{source!r} is a URL: download the image first and pass the file or its bytes")
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise CosaInputError(f"image file {label!r} {what}; pass the path of an image file")
        return _open(path, max_pixels, label)
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise CosaInputError(f"{label or 'the bytes input'} is empty; pass the bytes of an image file")
        return _open(io.BytesIO(bytes(source)), max_pixels, label or "the bytes input")
    if hasattr(source, "read"):
        return _open(source, max_pixels, label or "the file object")
    raise CosaInputError(f"cannot segment a {type(source).__name__}: pass {SUPPORTED}")


def _open(fp: Any, max_pixels: int | None, label: str) -> Image.Image:
    try:
        image = Image.open(fp)
    except Image.DecompressionBombError as err:
        raise CosaInputError(
            f"{label} is too large for PIL's safety limit ({err}); downscale it, or raise both max_pixels "
            "and PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from err
    except UnidentifiedImageError as err:
        raise CosaInputError(f"{label} is not an image file PIL can read; pass a JPEG, PNG, WebP, TIFF or BMP") from err
    except OSError as err:
        raise CosaInputError(f"cannot read {label}: {err}") from err
    check_pixels(*image.size, max_pixels, label)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise CosaInputError(f"{label} is truncated or corrupt ({err}); re-save or re-download it") from err
    return to_rgb(_orient(image, in_place=True), label)


def _orient(image: Image.Image, *, in_place: bool) -> Image.Image:
    """Apply the EXIF orientation tag; images without one pass through uncopied."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return image
    if orientation in (None, 1):
        return image
    if in_place:
        ImageOps.exif_transpose(image, in_place=True)
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image, label: str = "the image") -> Image.Image:
    """Any PIL mode to "RGB" following the module's documented rules."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_high_depth_to_uint8(np.asarray(image), mode))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise CosaInputError(
            f"{label} has PIL mode {mode!r}, which cannot be converted to RGB; convert it yourself first"
        ) from err


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        wide = values.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        wide = values.astype(np.int64)
        if wide.size and wide.max() > 255:
            return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.clip(wide, 0, 255).astype(np.uint8)
    floats = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if floats.size and floats.max() <= 1.0:
        floats = floats * 255.0
    return np.clip(np.rint(floats), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def array_to_image(
    array: np.ndarray, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, label: str = "the array"
) -> Image.Image:
    """HxWx3 uint8 RGB (also HxW / HxWx1 gray and HxWx4 RGBA, alpha dropped) to a PIL "RGB" image."""
    if array.dtype != np.uint8:
        hint = (
            " (for 0-1 floats: (arr * 255).round().astype(np.uint8))" if np.issubdtype(array.dtype, np.floating) else ""
        )
        raise CosaInputError(f"{label} has dtype {array.dtype}; pass uint8 RGB values 0-255{hint}")
    shape = array.shape
    if array.ndim == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        raise CosaInputError(
            f"{label} has shape {shape}, which looks channels-first; pass HxWx3 (arr.transpose(1, 2, 0))"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        extra = "; for a batch pass a list of arrays" if array.ndim == 4 else ""
        raise CosaInputError(f"{label} has shape {shape}; pass HxWx3 RGB, HxW gray or HxWx4 RGBA{extra}")
    check_pixels(shape[1], shape[0], max_pixels, label)
    if array.ndim == 2 or shape[2] == 1:
        return _gray_to_rgb(array.reshape(shape[0], shape[1]))
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]), "RGB")
