"""Tiny datasets of every format, written into a folder on the fly: VOC 2012, COCO 2014 and the custom format.

The reader conformance tests (conformance.py, test_readers.py) and the format tests share them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cosa_sdk.training.data.common import voc_palette

CLASSES = ["cat", "dog", "bird"]  # the custom datasets' classes.txt


def noise_image(path: Path, width: int, height: int, seed: int) -> None:
    """A random RGB image (values 0-255) of width x height."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def bands(values: list[int], width: int = 32, height: int = 24) -> np.ndarray:
    """An index mask with one horizontal band per value and an ignore (255) bottom row."""
    mask = np.zeros((height, width), np.uint8)
    for i, value in enumerate(values):
        mask[2 + 5 * i : 6 + 5 * i, 4:28] = value
    mask[-1] = 255
    return mask


def make_voc(root: Path, with_aug: bool = True) -> Path:
    """VOCdevkit/VOC2012 under root: 2 train and 2 val images with masks; with_aug adds SBD's train_aug."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    contents = {"2007_000001": [15], "2007_000002": [1, 7], "2007_000003": [20], "2008_000004": [12, 15]}
    palette = [value for rgb in voc_palette(256) for value in rgb]
    for i, (name, values) in enumerate(contents.items()):
        noise_image(voc / "JPEGImages" / f"{name}.jpg", 32, 24, i)
        png = Image.fromarray(bands(values), mode="P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{name}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n2008_000004\n")
    if with_aug:
        (voc / "SegmentationClassAug").mkdir()
        noise_image(voc / "JPEGImages" / "2011_000005.jpg", 32, 24, 9)
        Image.fromarray(bands([5]), mode="L").save(voc / "SegmentationClassAug" / "2011_000005.png")
        Image.fromarray(bands([15]), mode="L").save(voc / "SegmentationClassAug" / "2007_000001.png")
        (lists / "train_aug.txt").write_text("2007_000001\n2011_000005\n")
    return voc


def make_coco(root: Path) -> Path:
    """train2014 (2 images) and val2014 (1 image) with their PNG masks under SegmentationClass."""
    for split, names in (("train", ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]),
                         ("val", ["COCO_val2014_000000000042"])):  # fmt: skip
        (root / f"{split}2014").mkdir(parents=True)
        (root / "SegmentationClass" / f"{split}2014").mkdir(parents=True)
        for i, name in enumerate(names):
            noise_image(root / f"{split}2014" / f"{name}.jpg", 32, 24, i)
            values = [1, 80] if i == 0 else [18]
            Image.fromarray(bands(values), mode="L").save(root / "SegmentationClass" / f"{split}2014" / f"{name}.png")
    return root


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A random RGB image (values 1-255) of (width, height) = size."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(1, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def make_custom(
    root: Path,
    rows: dict[str, str] | None = None,
    masks: tuple[str, ...] = ("a", "c"),
    size: tuple[int, int] = (40, 30),
    extra_lines: str = "",
) -> Path:
    """images a..d (png), labels for all of them, masks for `masks` (labels painted as blocks)."""
    rows = rows if rows is not None else {"a": "cat", "b": "dog bird", "c": "bird", "d": "cat dog"}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    lines = ["image,labels"]
    for i, (stem, labels) in enumerate(rows.items()):
        write_image(root / "images" / f"{stem}.png", size, i)
        lines.append(f"{stem}.png,{labels}")
        if stem in masks:
            mask = np.zeros((size[1], size[0]), np.uint8)
            for j, name in enumerate(labels.split()):
                mask[5 + j * 8 : 12 + j * 8, 5:30] = CLASSES.index(name) + 1
            mask[0, :] = 255
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n" + extra_lines)
    return root
