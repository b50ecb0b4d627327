"""Turning a segmentation into response bodies: palette PNG, JPEG overlay, JSON summary."""

from __future__ import annotations

import io
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads TypedDict schemas from typing_extensions before 3.12

from cosa_sdk.errors import CosaInputError
from cosa_sdk.result import SegmentationResult

from .uploads import UploadError

MASK_CHOICES = ("none", "png", "rle")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
JPEG_QUALITY = 90


class HFSegment(TypedDict):
    """One entry of `POST /segment_hf`: the Hugging Face image-segmentation format, masks as base64 PNG."""

    score: Annotated[float | None, Field(description="always null: semantic segmentation scores no segments")]
    label: Annotated[str, Field(description="the class name (see /info); one entry per class present")]
    mask: Annotated[
        str, Field(description="base64-encoded PNG, mode L, the upload's size: 255 where the class is, 0 elsewhere")
    ]


def hf_segments(result: SegmentationResult) -> list[HFSegment]:
    """`result.to_hf(encode=True)`: the Hugging Face Inference API's JSON for image segmentation."""
    return result.to_hf(encode=True)  # type: ignore[return-value]


def mask_encoding(form_value: str | None, query_value: str | None) -> str | None:
    """The `mask` option of /segment_json (form field first, then query string): None, "png" or "rle"."""
    raw = form_value if form_value not in (None, "") else query_value
    value = (raw or "none").strip().lower()
    if value not in MASK_CHOICES:
        raise UploadError(400, f"mask={raw!r} is not an option; choose one of {', '.join(MASK_CHOICES)}")
    return None if value == "none" else value


def drop_absent_option(form_value: str | bool | None, query_value: str | None) -> bool | None:
    """The `drop_absent` option of the image routes (form field first, then query string): True, False or
    None (not given: the bundle's default)."""
    raw = form_value if form_value not in (None, "") else query_value
    if raw in (None, ""):
        return None
    if isinstance(raw, bool):
        return raw
    value = raw.strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise UploadError(400, f"drop_absent={raw!r} is not an option; use true or false (or leave it out)")
    return value in TRUE_WORDS


def mask_png(result: SegmentationResult) -> bytes:
    """The palette ("P") PNG whose pixel values are class indices, at the upload's size."""
    buffer = io.BytesIO()
    result.colorized().save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def overlay_jpeg(result: SegmentationResult, alpha: float) -> bytes:
    """The upload with class colours blended in at `alpha`, as JPEG."""
    try:
        image = result.overlay(alpha=float(alpha))
    except CosaInputError as err:
        raise UploadError(400, str(err)) from None
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def summary(result: SegmentationResult, *, model_name: str, mask: str | None, total_s: float) -> dict[str, Any]:
    """JSON summary: model, size, present classes with pixel fractions, backend, timings, class scores when the
    model gives them, optional mask."""
    body = result.to_dict(mask=mask)  # type: ignore[arg-type]
    body["timings"]["total"] = round(total_s, 6)
    return {"model": model_name, **body}
