"""Class colours: the bundle's palette, completed with the PASCAL VOC colour map for missing entries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cosa_sdk.errors import CosaModelError

RGB = tuple[int, int, int]


def voc_colormap(num_colors: int = 256) -> list[RGB]:
    """The PASCAL VOC colour map: the bits of the class index spread over R, G and B, high bit first."""
    index = np.arange(num_colors)
    rgb = np.zeros((num_colors, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return [(int(r), int(g), int(b)) for r, g, b in rgb]


def complete_palette(palette: Sequence[Sequence[int]] | None, num_classes: int) -> list[RGB]:
    """One RGB triple per class: the given colours first, VOC colours for the rest.

    Raises CosaModelError for entries that are not three integers in 0-255.
    """
    given = list(palette or [])
    colours: list[RGB] = []
    for i, entry in enumerate(given[:num_classes]):
        try:
            rgb = tuple(int(v) for v in entry)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise CosaModelError(
                f"palette entry {i} is {entry!r}: each entry must be [r, g, b] with integers 0-255; "
                "fix or delete the 'palette' key in cosa.json"
            )
        colours.append(rgb)  # type: ignore[arg-type]
    fallback = voc_colormap(max(num_classes, 1))
    colours.extend(fallback[len(colours) : num_classes])
    return colours


def pil_palette(colours: Sequence[RGB]) -> list[int]:
    """Flat 768-value list for `Image.putpalette`, unused entries black."""
    flat = [v for rgb in colours[:256] for v in rgb]
    return flat + [0] * (768 - len(flat))


def palette_array(colours: Sequence[RGB]) -> np.ndarray:
    """(256, 3) uint8 lookup table: `table[mask]` colours a mask."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    return table
