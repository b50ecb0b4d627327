"""Uploaded bytes -> a decoded RGB image, or an `UploadError` carrying the HTTP status to answer with.

The header is read first and its size checked against the limits, so a decompression bomb is
refused before a single pixel is decoded; the decoding itself is the SDK's (`cosa_sdk.inputs`), so
the service sees exactly the pixels `cosa_sdk.load(...).segment(bytes)` would.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from cosa_sdk.errors import CosaInputError
from cosa_sdk.inputs import decode_image

LABEL = "the uploaded image"
FORMATS_HINT = "upload a JPEG, PNG, WebP, TIFF or BMP file"


class UploadError(Exception):
    """A request the service refuses: `status` is the HTTP code, the message says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_header(data: bytes, *, max_pixels: int, max_side: int) -> tuple[int, int]:
    """(width, height) from the image header; UploadError for non-images and images over the limits."""
    if not data:
        raise UploadError(400, f"{LABEL} is empty (0 bytes); {FORMATS_HINT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as err:
        raise UploadError(
            413, f"{LABEL} is a likely decompression bomb ({err}); the service limit is {max_pixels:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{LABEL} is not an image file the server can read; {FORMATS_HINT}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise UploadError(400, f"{LABEL} has a corrupt header ({err}); re-save it and upload again") from None
    if width <= 0 or height <= 0:
        raise UploadError(400, f"{LABEL} is empty ({width}x{height} pixels)")
    if max(width, height) > max_side:
        raise UploadError(
            413, f"{LABEL} is {width}x{height}; the longest side may be at most {max_side} pixels, downscale it first"
        )
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{LABEL} is {width}x{height} = {width * height / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.1f} MP, "
            "downscale it first",
        )
    return width, height


def decode_upload(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Check the header, then decode with the SDK (EXIF rotation, alpha dropped, any mode to RGB)."""
    check_header(data, max_pixels=max_pixels, max_side=max_side)
    try:
        return decode_image(data, max_pixels=max_pixels, label=LABEL)
    except CosaInputError as err:
        raise UploadError(400, str(err)) from None
    except Exception as err:  # a decoder bug on hostile bytes must still be the client's 400, not a 500
        raise UploadError(400, f"{LABEL} cannot be decoded ({type(err).__name__}: {err})") from None
