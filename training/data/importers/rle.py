"""COCO segmentation decoding without pycocotools: polygons (PIL), uncompressed and compressed RLE."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def string_to_counts(text: str) -> list[int]:
    """pycocotools' compressed RLE string (LEB128-like, 6 bits per char, deltas from i-2) to run lengths."""
    counts: list[int] = []
    pos = 0
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    while pos < len(data):
        value = 0
        shift = 0
        more = True
        while more:
            c = data[pos] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def counts_to_string(counts: list[int]) -> str:
    """The inverse of `string_to_counts` (pycocotools' rleToString)."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_counts(counts: list[int], height: int, width: int) -> np.ndarray:
    """Run lengths (alternating 0s and 1s, starting with 0s, column-major) to a bool HxW array."""
    total = height * width
    if sum(counts) != total:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {height}x{width} = {total}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T


def encode_counts(mask: np.ndarray) -> list[int]:
    """A bool HxW array to run lengths (column-major, starting with the count of 0s)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return runs


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygon list, uncompressed or compressed RLE) to a bool HxW array."""
    if isinstance(segm, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segm:
            if len(poly) >= 6:
                draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
        return np.array(canvas, dtype=bool)
    if isinstance(segm, dict) and "counts" in segm:
        h, w = segm.get("size", (height, width))
        if (int(h), int(w)) != (height, width):
            raise ValueError(f"RLE size {h}x{w} differs from the image's {height}x{width}")
        counts = segm["counts"]
        if isinstance(counts, (str, bytes)):
            counts = string_to_counts(counts if isinstance(counts, str) else counts.decode("ascii"))
        return decode_counts([int(c) for c in counts], height, width)
    raise ValueError(f"unknown segmentation of type {type(segm).__name__}")
