"""Redraw docs/images/sdk_overlay.jpg: the first six held-out benchmark images and their SDK overlays.

Usage: python docs/make_overlay_picture.py [BUNDLE] [OUT] [--data synthetic:version=3] [--postprocess-row]
(defaults: demo_out/bundle, the README's picture, the default benchmark). The images are the benchmark's val
split in file order (not picked); the bundle must have been trained on the same benchmark. Rows: the images,
the SDK's default overlays and, with --postprocess-row, the overlays with drop_absent and edge_aware on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import cosa_sdk
from cosa_sdk.training.data import ensure_synthetic, parse_data_spec

COUNT = 6
CELL = 224


def main(
    bundle: str = "demo_out/bundle",
    out: str = "docs/images/sdk_overlay.jpg",
    data: str = "synthetic",
    *,
    postprocess_row: bool = False,
) -> Path:
    root = ensure_synthetic(parse_data_spec(data).params)
    stems = (root / "val.txt").read_text().split()[:COUNT]
    settings = [{}] + ([{"drop_absent": True, "edge_aware": True}] if postprocess_row else [])
    sheet = Image.new("RGB", (CELL * COUNT, CELL * (1 + len(settings))), "white")
    with cosa_sdk.load(bundle) as segmenter:
        for column, stem in enumerate(stems):
            image = Image.open(root / "images" / f"{stem}.jpg").convert("RGB")
            sheet.paste(image.resize((CELL, CELL)), (column * CELL, 0))
            for row, options in enumerate(settings, start=1):
                overlay = segmenter.segment(image, **options).overlay()
                sheet.paste(overlay.resize((CELL, CELL)), (column * CELL, row * CELL))
    sheet.save(out, quality=88)
    print(f"wrote {out}")
    return Path(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="demo_out/bundle")
    parser.add_argument("out", nargs="?", default="docs/images/sdk_overlay.jpg")
    parser.add_argument("--data", default="synthetic", help="the synthetic benchmark the bundle was trained on")
    parser.add_argument("--postprocess-row", action="store_true", help="a third row: drop_absent and edge_aware on")
    args = parser.parse_args()
    main(args.bundle, args.out, args.data, postprocess_row=args.postprocess_row)
