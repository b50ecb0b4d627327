"""Reading one image or mask file for the dataset check: full decode, upright size, hash, mask values
and instances. Results are plain dicts so the cache (`check_cache.py`) can store them as JSON."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cosa_sdk.training.data.common import BAD_IMAGE_ERRORS, IGNORE_INDEX

EXIF_ORIENTATION = 0x0112


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the axes."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except BAD_IMAGE_ERRORS:
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_image_file(path: Path) -> dict[str, Any]:
    """Decode one image completely; returns {"size": [w, h] upright, "sha1"} or {"error", "fix"}."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {"error": f"cannot read the image ({exc.strerror or exc})", "fix": "check the file's permissions"}
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return {"sha1": digest, "error": "the image file is empty (0 bytes)", "fix": "re-export or remove it"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                size = _upright_size(img)
                img.load()
                mode = img.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return {
            "sha1": digest,
            "error": f"the image is larger than PIL's safety limit ({exc})",
            "fix": "downscale it (training crops are at most a few hundred pixels)",
        }
    except (*BAD_IMAGE_ERRORS, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            text = "PIL cannot identify the format"
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            what, fix = f"the image is truncated ({text})", "re-download or re-export it, or remove it"
        else:
            what, fix = f"the file is not a readable image ({text})", "re-save it as JPEG or PNG, or remove it"
        return {"sha1": digest, "error": what, "fix": fix}
    if size[0] <= 0 or size[1] <= 0:
        return {"sha1": digest, "error": f"the image has no pixels ({size[0]}x{size[1]})", "fix": "remove it"}
    return {"size": list(size), "sha1": digest, "mode": mode}


def check_mask_file(path: Path) -> dict[str, Any]:
    """Read one mask: mode, size, values present with pixel counts, instances per value (4-connected).

    Returns {"mode", "size", "values", "pixels", "instances"} or {"error", "fix"}; range and size
    checks against the classes and the image happen in `validate_dataset` (so the cache stays valid).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode, size = img.mode, list(img.size)
            mask = np.asarray(img)
    except OSError as exc:
        if not path.exists():
            return {"error": "the mask file is missing", "fix": "add it or remove the item from the name list"}
        return {"error": f"cannot read this mask ({exc})", "fix": "re-save it as an 8-bit PNG"}
    except (*BAD_IMAGE_ERRORS, EOFError) as exc:
        return {"error": f"cannot read this mask ({exc})", "fix": "re-save it as an 8-bit PNG"}
    info: dict[str, Any] = {"mode": mode, "size": size}
    if mode not in ("L", "P") or mask.ndim != 2:
        return info
    values, pixels = np.unique(mask, return_counts=True)
    info["values"] = [int(v) for v in values]
    info["pixels"] = [int(n) for n in pixels]
    info["instances"] = _instances(mask, values)
    return info


def _instances(mask: np.ndarray, values: np.ndarray) -> list[int]:
    """Connected regions per mask value (0 for background and ignore)."""
    try:
        from scipy import ndimage
    except ImportError:  # pragma: no cover - scipy comes with the training extra
        return [1 if 0 < v < IGNORE_INDEX else 0 for v in values]
    counts = []
    for value in values:
        if value == 0 or value == IGNORE_INDEX:
            counts.append(0)
            continue
        counts.append(int(ndimage.label(mask == value)[1]))
    return counts
