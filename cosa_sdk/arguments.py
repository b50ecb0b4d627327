"""Checks for the arguments `Segmenter` takes from callers, raising CosaInputError with the argument's name."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cosa_sdk.errors import CosaInputError


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise CosaInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_max_pixels(value: Any) -> int | None:
    return None if value is None else positive_int(value, "max_pixels")


def is_batch(images: Any) -> bool:
    return isinstance(images, list | tuple) or (isinstance(images, np.ndarray) and images.ndim == 4)


def check_drop_absent(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool | np.bool_):
        raise CosaInputError(f"drop_absent must be True, False or None (the bundle's default), got {value!r}")
    return None if value is None else bool(value)


def check_edge_aware(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool | np.bool_):
        raise CosaInputError(f"edge_aware must be True, False or None (the bundle's default), got {value!r}")
    return None if value is None else bool(value)


def image_label(item: Any, index: int, single: bool) -> str:
    """How error messages name an input: its path, or its place in the call."""
    if isinstance(item, str | os.PathLike):
        return str(item)
    return "the image" if single else f"image {index} of the batch"
