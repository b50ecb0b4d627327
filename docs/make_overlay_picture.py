"""Redraw docs/images/sdk_overlay.jpg: the first six held-out benchmark images and their SDK overlays.

Usage: python docs/make_overlay_picture.py [BUNDLE] [OUT]   (defaults: demo_out/bundle, the README's picture)
Needs the bundle `make demo` wrote; the images are the benchmark's val split in file order (not picked).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

import cosa_sdk
from cosa_sdk.training.data import ensure_synthetic

COUNT = 6
CELL = 224


def main(bundle: str = "demo_out/bundle", out: str = "docs/images/sdk_overlay.jpg") -> Path:
    root = ensure_synthetic()
    stems = (root / "val.txt").read_text().split()[:COUNT]
    sheet = Image.new("RGB", (CELL * COUNT, CELL * 2), "white")
    with cosa_sdk.load(bundle) as segmenter:
        for column, stem in enumerate(stems):
            image = Image.open(root / "images" / f"{stem}.jpg").convert("RGB")
            overlay = segmenter.segment(image).overlay()
            sheet.paste(image.resize((CELL, CELL)), (column * CELL, 0))
            sheet.paste(overlay.resize((CELL, CELL)), (column * CELL, CELL))
    sheet.save(out, quality=88)
    print(f"wrote {out}")
    return Path(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
